// tenant-isolation: a moat policy plugin in JavaScript.
//
// Each user belongs to one tenant and may only publish to, and subscribe within, the topics
// under `tenants/<tenant>/`. Users, their passwords and tenants come from the plugin's
// configuration:
//
//     {"users": {"alice": {"password": "...", "tenant": "acme"}}, "cache_seconds": 300}
//
// What it does not know (users not in its table, clients without a user name, enhanced
// authentication, clients another plugin authenticated) it answers `next`, so the next plugin
// in the chain decides.
//
// componentize-js evaluates this module's top level when it builds the component (a Wizer
// snapshot): nothing here may depend on the configuration, which only arrives in `init`.
// The component is built without WASI (see build.mjs), so there is no console: log through
// `host.log`.

import { count, log } from 'moat:policy/host@0.1.0';

// The format of the session state (the tenant's name, UTF-8); bump it if that changes.
const STATE_VERSION = 1;
const DEFAULT_CACHE_SECONDS = 300;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Set by `init`: user name -> {password (bytes), tenant}, and how long allows may be cached.
let users = new Map();
let cacheSeconds = DEFAULT_CACHE_SECONDS;

const next = { tag: 'next' };

/** The configuration as {users, cacheSeconds}; throws a message saying what is wrong. */
function parseConfig(text) {
  let config;
  try {
    config = JSON.parse(text || '{}');
  } catch (e) {
    throw `invalid configuration: ${e.message}`;
  }
  const fail = (why) => {
    throw `invalid configuration: ${why}`;
  };
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    fail('the configuration is not a table');
  }
  for (const key of Object.keys(config)) {
    if (key !== 'users' && key !== 'cache_seconds') fail(`unknown key '${key}'`);
  }
  const table = config.users ?? {};
  if (typeof table !== 'object' || table === null || Array.isArray(table)) {
    fail('users: must be a table of user name -> {password, tenant}');
  }
  const parsed = new Map();
  for (const [name, user] of Object.entries(table)) {
    const keys = Object.keys(user ?? {}).sort().join(',');
    if (typeof user !== 'object' || keys !== 'password,tenant') {
      fail(`users.${name}: needs exactly \`password\` and \`tenant\``);
    }
    if (typeof user.password !== 'string' || user.password === '') {
      fail(`users.${name}.password: must be a non-empty string`);
    }
    // A tenant is one topic level: a `/`, `+` or `#` in it would widen the subtree.
    if (typeof user.tenant !== 'string' || user.tenant === '' || /[/+#\0]/.test(user.tenant)) {
      fail(`users.${name}.tenant: must be one topic level (no /, + or #)`);
    }
    parsed.set(name, { password: encoder.encode(user.password), tenant: user.tenant });
  }
  const seconds = config.cache_seconds ?? DEFAULT_CACHE_SECONDS;
  if (!Number.isInteger(seconds) || seconds < 0 || seconds >= 2 ** 32) {
    fail('cache_seconds: must be a whole number of seconds');
  }
  return { users: parsed, cacheSeconds: seconds };
}

/**
 * True if the byte strings are equal, in a time that depends on their lengths only: a
 * password check must not tell how much of a guess was right.
 */
function constantTimeEqual(a, b) {
  let diff = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) {
    diff |= a[i] ^ (i < b.length ? b[i] : 0);
  }
  return diff === 0;
}

/**
 * The tenant of a client this plugin authenticated; undefined for anyone else (whose session
 * state the broker hands us empty).
 */
function tenantOf(identity) {
  return identity.sessionState.length ? decoder.decode(identity.sessionState) : undefined;
}

/**
 * True if every topic the filter (or name) matches lies in the tenant's subtree
 * `tenants/<tenant>/#`: a subset test, so a wildcard may only stand below the tenant's level.
 */
function withinTenant(filter, tenant) {
  const [root, level] = filter.split('/', 2);
  return root === 'tenants' && level === tenant;
}

function denial(message) {
  return { reason: 'not-authorized', message };
}

export const hooks = {
  init(config) {
    ({ users, cacheSeconds } = parseConfig(config));
    const tenants = new Set([...users.values()].map((u) => u.tenant));
    log('info', `${users.size} users in ${tenants.size} tenants`);
    return {
      hooks: { authenticate: true, authorizePublish: true, authorizeSubscribe: true },
      needsPayload: false,
      sessionStateVersion: STATE_VERSION,
    };
  },

  onConnect(_client) {
    return next;
  },

  authenticate(client, credentials) {
    const user = client.username === undefined ? undefined : users.get(client.username);
    if (user === undefined || credentials.authMethod !== undefined) {
      return next;
    }
    const password = credentials.password;
    if (password === undefined || !constantTimeEqual(password, user.password)) {
      count('bad-password', 1n);
      log('warn', `wrong password for ${client.username}`);
      return { tag: 'deny', val: { reason: 'bad-credentials' } };
    }
    count('logins', 1n);
    const identity = {
      principal: client.username,
      roles: [`tenant:${user.tenant}`],
      sessionState: encoder.encode(user.tenant),
    };
    return { tag: 'allow', val: { identity } };
  },

  continueAuth(_client, _state, _data) {
    return next;
  },

  authorizePublish(_client, identity, message) {
    const tenant = tenantOf(identity);
    if (tenant === undefined) return next;
    if (withinTenant(message.topic, tenant)) {
      return { tag: 'allow', val: { cacheSeconds } };
    }
    count('denied-publish', 1n);
    return { tag: 'deny', val: denial(`${message.topic} is outside tenant ${tenant}`) };
  },

  authorizeSubscribe(_client, identity, subscription) {
    const tenant = tenantOf(identity);
    if (tenant === undefined) return next;
    if (withinTenant(subscription.filter, tenant)) {
      return { tag: 'allow', val: { checkEachDelivery: false } };
    }
    count('denied-subscribe', 1n);
    return { tag: 'deny', val: denial(`${subscription.filter} is outside tenant ${tenant}`) };
  },

  authorizeDeliver(_client, _identity, _topic) {
    return next;
  },
};
