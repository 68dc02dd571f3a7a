// Drives headless Debian Chromium (playwright-core, no browser download) to the test page and
// prints the page's results as JSON. Exits 0 only if every check on the page passed.
//
// usage: node run.mjs PAGE_URL SPKI_SHA256_BASE64
//
// The wss listener's certificate comes from a CA the test made; Chromium is told to accept
// exactly that key (--ignore-certificate-errors-spki-list, which only takes effect with an
// explicit --user-data-dir), not to ignore certificate errors in general.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [pageUrl, spki] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'moat-chromium-'));
let code = 1;
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
  const page = await context.newPage();
  page.on('console', (m) => console.error(`page: ${m.text()}`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.moatResult !== undefined, null, { timeout: 60000 });
  const results = await page.evaluate(() => window.moatResult);
  console.log(JSON.stringify(results));
  code = results.length > 0 && results.every((r) => r.ok) ? 0 : 1;
} catch (e) {
  console.error(`browser test failed: ${e}`);
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
