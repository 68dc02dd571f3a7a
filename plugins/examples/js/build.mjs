// Builds tenant-isolation.js into a WebAssembly component for moat:
//
//     npm ci && node build.mjs [OUTPUT]      (default OUTPUT: tenant-isolation.wasm)
//
// componentize-js is called as a library: the `jco componentize` command failed on the
// machines this was written on ("failed to get path metadata", os error 44), the function
// works. componentize-js 0.23.0 imports @bytecodealliance/preview2-shim without declaring it,
// and with the 0.26 shim that jco brings its file reads fail the same way (os error 44), so
// package.json pins the shim at 0.25.0. Every optional feature of the JS engine is disabled
// (console, random numbers, clocks, fetch), so the component imports nothing but the
// moat:policy contract; jco then reads the component's world back to check that it does.

import { componentize } from '@bytecodealliance/componentize-js';
import { componentWit } from '@bytecodealliance/jco';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';

const here = fileURLToPath(new URL('.', import.meta.url));
const output = resolve(process.argv[2] ?? resolve(here, 'tenant-isolation.wasm'));

const { component } = await componentize({
  sourcePath: resolve(here, 'tenant-isolation.js'),
  witPath: resolve(here, '../../../wit'),
  worldName: 'plugin',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});

const foreign = (await componentWit(component))
  .split('\n')
  .map((line) => line.trim())
  .filter((line) => /^(import|export) /.test(line) && !/ moat:policy\//.test(line));
if (foreign.length) {
  console.error(`build.mjs: the component uses more than moat:policy:\n  ${foreign.join('\n  ')}`);
  process.exit(1);
}

await writeFile(output, component);
console.log(`build.mjs: wrote ${output} (${component.length} bytes)`);
