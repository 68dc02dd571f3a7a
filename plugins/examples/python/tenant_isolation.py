"""tenant-isolation: a moat policy plugin in Python.

Each user belongs to one tenant and may only publish to, and subscribe within, the topics under
`tenants/<tenant>/`. Users, their passwords and tenants come from the plugin's configuration:

    {"users": {"alice": {"password": "...", "tenant": "acme"}}, "cache_seconds": 300}

What it does not know (users not in its table, clients without a user name, enhanced
authentication, clients another plugin authenticated) it answers `next`, so the next plugin in
the chain decides.

componentize-py runs this module's top level when it builds the component and freezes the
result into it: nothing here may depend on the configuration, which only arrives in `init`.
"""

import hmac
import json

from wit_world import exports
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    AuthOutcome_Allow,
    AuthOutcome_Deny,
    AuthOutcome_Next,
    Authenticated,
    Denial,
    Grant,
    Hooks as HookSet,
    Identity,
    Manifest,
    Reason,
    SubscribeGrant,
    SubscribeVerdict_Allow,
    SubscribeVerdict_Deny,
    SubscribeVerdict_Next,
    Verdict_Allow,
    Verdict_Deny,
    Verdict_Next,
)

# The format of the session state (the tenant's name, UTF-8); bump it if that changes.
STATE_VERSION = 1
DEFAULT_CACHE_SECONDS = 300

# Set by `init`: user name -> (password bytes, tenant), and how long allows may be cached.
users = {}
cache_seconds = DEFAULT_CACHE_SECONDS


def parse_config(text):
    """The configuration as (users, cache_seconds), or a ValueError saying what is wrong."""
    config = json.loads(text or "{}")
    if not isinstance(config, dict):
        raise ValueError("the configuration is not a table")
    unknown = set(config) - {"users", "cache_seconds"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    if not isinstance(config.get("users", {}), dict):
        raise ValueError("users: must be a table of user name -> {password, tenant}")
    table = {}
    for name, user in config.get("users", {}).items():
        if not isinstance(user, dict) or set(user) != {"password", "tenant"}:
            raise ValueError(f"users.{name}: needs exactly `password` and `tenant`")
        password, tenant = user["password"], user["tenant"]
        if not isinstance(password, str) or not password:
            raise ValueError(f"users.{name}.password: must be a non-empty string")
        # A tenant is one topic level: a `/`, `+` or `#` in it would widen the subtree.
        if not isinstance(tenant, str) or not tenant or any(c in tenant for c in "/+#\0"):
            raise ValueError(f"users.{name}.tenant: must be one topic level (no /, + or #)")
        table[name] = (password.encode(), tenant)
    seconds = config.get("cache_seconds", DEFAULT_CACHE_SECONDS)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 <= seconds < 2**32:
        raise ValueError("cache_seconds: must be a whole number of seconds")
    return table, seconds


def tenant_of(identity):
    """The tenant of a client this plugin authenticated; None for anyone else (whose session
    state the broker hands us empty)."""
    state = identity.session_state
    if not state:
        return None
    return state.decode()


def within_tenant(levels, tenant):
    """True if every topic the filter (or name) split into `levels` matches lies in the
    tenant's subtree `tenants/<tenant>/#`: a subset test, so a wildcard may only stand below
    the tenant's level."""
    return levels[:2] == ["tenants", tenant]


def denial(message):
    return Denial(reason=Reason.NOT_AUTHORIZED, message=message)


class Hooks(exports.Hooks):
    def init(self, config):
        global users, cache_seconds
        try:
            users, cache_seconds = parse_config(config)
        except ValueError as e:
            raise Err(f"invalid configuration: {e}")
        tenants = len({tenant for _, tenant in users.values()})
        host.log(host.Level.INFO, f"{len(users)} users in {tenants} tenants")
        return Manifest(
            hooks=HookSet.AUTHENTICATE | HookSet.AUTHORIZE_PUBLISH | HookSet.AUTHORIZE_SUBSCRIBE,
            needs_payload=False,
            session_state_version=STATE_VERSION,
        )

    def on_connect(self, client):
        return Verdict_Next()

    def authenticate(self, client, credentials):
        user = users.get(client.username) if client.username is not None else None
        if user is None or credentials.auth_method is not None:
            return AuthOutcome_Next()
        password, tenant = user
        # compare_digest takes the same time wherever the first difference is.
        if credentials.password is None or not hmac.compare_digest(credentials.password, password):
            host.count("bad-password", 1)
            host.log(host.Level.WARN, f"wrong password for {client.username}")
            return AuthOutcome_Deny(Denial(reason=Reason.BAD_CREDENTIALS, message=None))
        host.count("logins", 1)
        identity = Identity(
            principal=client.username,
            roles=[f"tenant:{tenant}"],
            expires_at=None,
            session_state=tenant.encode(),
        )
        return AuthOutcome_Allow(Authenticated(identity=identity, auth_data=None))

    def continue_auth(self, client, state, data):
        return AuthOutcome_Next()

    def authorize_publish(self, client, identity, message):
        tenant = tenant_of(identity)
        if tenant is None:
            return Verdict_Next()
        if within_tenant(message.topic.split("/"), tenant):
            return Verdict_Allow(Grant(cache_seconds=cache_seconds))
        host.count("denied-publish", 1)
        return Verdict_Deny(denial(f"{message.topic} is outside tenant {tenant}"))

    def authorize_subscribe(self, client, identity, subscription):
        tenant = tenant_of(identity)
        if tenant is None:
            return SubscribeVerdict_Next()
        if within_tenant(subscription.filter.split("/"), tenant):
            return SubscribeVerdict_Allow(SubscribeGrant(check_each_delivery=False))
        host.count("denied-subscribe", 1)
        return SubscribeVerdict_Deny(denial(f"{subscription.filter} is outside tenant {tenant}"))

    def authorize_deliver(self, client, identity, topic):
        return Verdict_Next()
