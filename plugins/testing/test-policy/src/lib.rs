//! `test-policy`: a plugin whose every answer comes from its configuration, so one component
//! serves the broker's end-to-end tests: allow, deny and `next` per hook and topic, users with
//! passwords, roles and expiry, a challenge/response enhanced authentication, revocation through
//! the `kv` capability and `invalidate`, and faults on demand (trap, endless loop, unbounded
//! memory, oversized answers) triggered by topic or client id so that other clients are
//! unaffected.

use std::collections::HashMap;

use moat_plugin_sdk::{
    AuthOutcome, Challenge, Client, Credentials, Denial, Grant, Hooks, Identity, Manifest, Plugin,
    Publish, Reason, SubscribeGrant, SubscribeVerdict, Subscription, Verdict, authenticated, host,
    kv, state, topic,
};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Hooks to declare; default: all.
    hooks: Option<Vec<String>>,
    needs_payload: bool,
    state_version: u32,
    /// Make `init` fail with this message.
    init_error: Option<String>,
    /// on-connect: client ids (filters, `+`/`#` allowed) refused as banned.
    banned: Vec<String>,
    /// on-connect: refuse every client, with the TLS facts the plugin was given as the
    /// message (`version|cipher|sni|subject|san,san|fingerprint`), so a test can read them in
    /// the CONNACK's reason string.
    echo_tls: bool,
    auth: Auth,
    publish: Vec<Rule>,
    subscribe: Vec<Rule>,
    deliver: Vec<Rule>,
    /// A publish to `<revoke_topic>/<topic>` revokes `<topic>`: later publishes to it and
    /// deliveries of it are denied (kept in `kv`, so every instance sees it) and cached
    /// decisions are dropped (`invalidate`).
    revoke_topic: Option<String>,
    /// A publish to `<version_topic>/<v>` is allowed (cached for a minute) when `v` is the
    /// version baked into this component ([`baked`]) and denied otherwise; so is a
    /// subscription to that filter. The baked value
    /// `initerr` makes `init` fail and `trapped` makes every authorize-publish trap.
    version_topic: Option<String>,
    faults: Vec<Fault>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Auth {
    /// user name -> account
    users: HashMap<String, User>,
    /// What a client without a user name gets: "allow", "deny" or "next" (default).
    anonymous: Option<String>,
    /// What an unknown user gets: "deny" (default) or "next".
    unknown: Option<String>,
    /// An enhanced-authentication method this plugin answers with one challenge: it sends
    /// "challenge" and expects "response:<user>" back.
    method: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct User {
    password: String,
    roles: Vec<String>,
    /// The identity expires this many seconds after authentication.
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// A topic filter, with `%c`, `%u` and `${role}` placeholders.
    filter: String,
    /// "allow", "deny" or "next".
    verdict: String,
    #[serde(default)]
    cache: u32,
    #[serde(default)]
    check_each_delivery: bool,
    /// Only for clients with this role.
    role: Option<String>,
    /// Deny with this reason (default not-authorized).
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fault {
    /// "connect", "authenticate", "publish", "subscribe" or "deliver".
    hook: String,
    /// A topic filter (publish, subscribe, deliver) or client id (connect, authenticate).
    when: String,
    /// "trap", "loop", "hog", "huge-message", "huge-principal", "spin:<ms>".
    kind: String,
}

struct TestPolicy {
    config: Config,
}

/// The component's version: seven ASCII characters after a marker that tests look for in the
/// component's bytes and overwrite, to make distinct components (distinct hashes, distinct
/// policies) from one build. The marker is written nowhere else in this crate.
static BAKED: [u8; 32] = *b"moat-test-policy-version:0000000";

/// The baked version, read through `black_box` so the compiler cannot fold the original in.
fn baked() -> &'static str {
    let bytes: &'static [u8; 32] = std::hint::black_box(&BAKED);
    std::str::from_utf8(&bytes[25..]).unwrap_or("")
}

impl TestPolicy {
    fn fault(&self, hook: &str, subject: &str) {
        for f in &self.config.faults {
            if f.hook == hook && (f.when == subject || topic::matches(&f.when, subject)) {
                run_fault(&f.kind);
            }
        }
    }

    fn rule<'r>(
        &self,
        rules: &'r [Rule],
        client: &Client,
        identity: &Identity,
        subject: &str,
        subset: bool,
    ) -> Option<&'r Rule> {
        rules.iter().find(|r| {
            if let Some(role) = &r.role
                && !identity.roles.contains(role)
            {
                return false;
            }
            let expanded = topic::expand_pattern(&r.filter, |k| match k {
                "client_id" => Some(client.client_id.as_str()),
                "username" => client.username.as_deref(),
                "principal" => Some(identity.principal.as_str()),
                _ => None,
            });
            match expanded {
                Some(f) if subset => topic::filter_within(&f, subject),
                Some(f) => topic::matches(&f, subject),
                None => false,
            }
        })
    }

    fn revoked(&self, topic: &str) -> bool {
        matches!(kv::get(&format!("revoked:{topic}")), Ok(Some(_)))
    }
}

fn run_fault(kind: &str) {
    match kind {
        "trap" => panic!("test-policy: trap on demand"),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        k if k.starts_with("spin:") => {
            let ms: u64 = k[5..].parse().unwrap_or(0);
            let until = host::now_ms() + ms;
            while host::now_ms() < until {
                std::hint::black_box(0);
            }
        }
        _ => {}
    }
}

fn verdict_of(rule: Option<&Rule>) -> Verdict {
    let Some(rule) = rule else {
        return Verdict::Next;
    };
    match rule.verdict.as_str() {
        "allow" => Verdict::Allow(Grant {
            cache_seconds: rule.cache,
        }),
        "deny" => Verdict::Deny(denial(rule)),
        _ => Verdict::Next,
    }
}

fn denial(rule: &Rule) -> Denial {
    let reason = match rule.reason.as_deref() {
        Some("quota-exceeded") => Reason::QuotaExceeded,
        Some("topic-invalid") => Reason::TopicInvalid,
        Some("payload-invalid") => Reason::PayloadInvalid,
        Some("server-busy") => Reason::ServerBusy,
        Some("unspecified") => Reason::Unspecified,
        _ => Reason::NotAuthorized,
    };
    Denial {
        reason,
        message: rule.message.clone(),
    }
}

fn huge(kind: &str) -> Option<AuthOutcome> {
    match kind {
        "huge-principal" => Some(authenticated(Identity {
            principal: "x".repeat(1 << 20),
            roles: vec![],
            expires_at: None,
            session_state: vec![],
        })),
        "huge-message" => Some(AuthOutcome::Deny(Denial {
            reason: Reason::NotAuthorized,
            message: Some("y".repeat(1 << 20)),
        })),
        _ => None,
    }
}

impl Plugin for TestPolicy {
    type Config = Config;
    type State = String;

    const HOOKS: Hooks = Hooks::all();

    fn new(config: Config) -> Result<Self, String> {
        if let Some(e) = &config.init_error {
            return Err(e.clone());
        }
        if config.version_topic.is_some() && baked() == "initerr" {
            return Err("the baked version says: fail init".into());
        }
        Ok(TestPolicy { config })
    }

    fn manifest(&self) -> Manifest {
        let hooks = match &self.config.hooks {
            None => Hooks::all(),
            Some(names) => names.iter().fold(Hooks::empty(), |h, n| {
                h | match n.as_str() {
                    "on-connect" => Hooks::ON_CONNECT,
                    "authenticate" => Hooks::AUTHENTICATE,
                    "authorize-publish" => Hooks::AUTHORIZE_PUBLISH,
                    "authorize-subscribe" => Hooks::AUTHORIZE_SUBSCRIBE,
                    "authorize-deliver" => Hooks::AUTHORIZE_DELIVER,
                    _ => Hooks::empty(),
                }
            }),
        };
        Manifest {
            hooks,
            needs_payload: self.config.needs_payload,
            session_state_version: self.config.state_version,
        }
    }

    fn on_connect(&self, client: &Client) -> Verdict {
        self.fault("connect", &client.client_id);
        if self.config.echo_tls {
            let facts = match &client.tls {
                None => "no TLS".to_owned(),
                Some(t) => format!(
                    "{}|{}|{}|{}|{}|{}",
                    t.version,
                    t.cipher,
                    t.sni.as_deref().unwrap_or("-"),
                    t.peer_subject.as_deref().unwrap_or("-"),
                    t.peer_sans.join(","),
                    t.peer_fingerprint_sha256.as_deref().unwrap_or("-"),
                ),
            };
            return Verdict::Deny(Denial {
                reason: Reason::NotAuthorized,
                message: Some(format!("{}|{facts}", client.listener)),
            });
        }
        if self
            .config
            .banned
            .iter()
            .any(|b| topic::matches(b, &client.client_id))
        {
            return Verdict::Deny(Denial {
                reason: Reason::Banned,
                message: Some("banned client id".into()),
            });
        }
        Verdict::Next
    }

    fn authenticate(&self, client: &Client, credentials: &Credentials) -> AuthOutcome {
        self.fault("authenticate", &client.client_id);
        for f in &self.config.faults {
            if f.hook == "authenticate"
                && f.when == client.client_id
                && let Some(answer) = huge(&f.kind)
            {
                return answer;
            }
        }
        let auth = &self.config.auth;
        if let Some(method) = &credentials.auth_method {
            if Some(method) != auth.method.as_ref() {
                return AuthOutcome::Next;
            }
            return AuthOutcome::Challenge(Challenge {
                data: b"challenge".to_vec(),
                state: client.client_id.as_bytes().to_vec(),
            });
        }
        let Some(name) = &client.username else {
            return match auth.anonymous.as_deref() {
                Some("allow") => authenticated(state::identity::<Self>(
                    "anonymous",
                    vec![],
                    &"anonymous".to_string(),
                )),
                Some("deny") => AuthOutcome::Deny(Denial {
                    reason: Reason::NotAuthorized,
                    message: None,
                }),
                _ => AuthOutcome::Next,
            };
        };
        match auth.users.get(name) {
            Some(user) if credentials.password.as_deref() == Some(user.password.as_bytes()) => {
                self.allow_user(name, user)
            }
            Some(_) => AuthOutcome::Deny(Denial {
                reason: Reason::BadCredentials,
                message: Some("wrong password".into()),
            }),
            None if auth.unknown.as_deref() == Some("next") => AuthOutcome::Next,
            None => AuthOutcome::Deny(Denial {
                reason: Reason::BadCredentials,
                message: Some("unknown user".into()),
            }),
        }
    }

    fn continue_auth(&self, client: &Client, st: &[u8], data: &[u8]) -> AuthOutcome {
        if st != client.client_id.as_bytes() {
            return AuthOutcome::Deny(Denial {
                reason: Reason::NotAuthorized,
                message: Some("state mismatch".into()),
            });
        }
        let answer = String::from_utf8_lossy(data);
        match answer
            .strip_prefix("response:")
            .and_then(|u| self.config.auth.users.get_key_value(u))
        {
            Some((name, user)) => self.allow_user(name, user),
            None => AuthOutcome::Deny(Denial {
                reason: Reason::NotAuthorized,
                message: Some("bad response".into()),
            }),
        }
    }

    fn authorize_publish(&self, client: &Client, identity: &Identity, msg: &Publish) -> Verdict {
        self.fault("publish", &msg.topic);
        if let Some(prefix) = &self.config.version_topic {
            if baked() == "trapped" {
                panic!("test-policy: the baked version says: trap");
            }
            if let Some(v) = msg
                .topic
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
            {
                return match v == baked() {
                    true => Verdict::Allow(Grant { cache_seconds: 60 }),
                    false => Verdict::Deny(Denial {
                        reason: Reason::NotAuthorized,
                        message: Some(format!("this is version {}", baked())),
                    }),
                };
            }
        }
        if let Some(target) = self
            .config
            .revoke_topic
            .as_ref()
            .and_then(|prefix| msg.topic.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
        {
            let _ = kv::set(&format!("revoked:{target}"), b"1", None);
            host::invalidate();
            host::count("revocations", 1);
            return Verdict::Allow(Grant { cache_seconds: 0 });
        }
        if self.revoked(&msg.topic) {
            return Verdict::Deny(Denial {
                reason: Reason::NotAuthorized,
                message: Some("revoked".into()),
            });
        }
        verdict_of(self.rule(&self.config.publish, client, identity, &msg.topic, false))
    }

    fn authorize_subscribe(
        &self,
        client: &Client,
        identity: &Identity,
        sub: &Subscription,
    ) -> SubscribeVerdict {
        self.fault("subscribe", &sub.filter);
        if let Some(v) = self.config.version_topic.as_ref().and_then(|prefix| {
            sub.filter
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
        }) {
            return match v == baked() {
                true => SubscribeVerdict::Allow(SubscribeGrant {
                    check_each_delivery: false,
                }),
                false => SubscribeVerdict::Deny(Denial {
                    reason: Reason::NotAuthorized,
                    message: Some(format!("this is version {}", baked())),
                }),
            };
        }
        let rule = self.rule(&self.config.subscribe, client, identity, &sub.filter, true);
        match (rule, verdict_of(rule)) {
            (Some(r), Verdict::Allow(_)) => SubscribeVerdict::Allow(SubscribeGrant {
                check_each_delivery: r.check_each_delivery,
            }),
            (_, Verdict::Deny(d)) => SubscribeVerdict::Deny(d),
            _ => SubscribeVerdict::Next,
        }
    }

    fn authorize_deliver(&self, client: &Client, identity: &Identity, topic: &str) -> Verdict {
        self.fault("deliver", topic);
        if self.revoked(topic) {
            return Verdict::Deny(Denial {
                reason: Reason::NotAuthorized,
                message: Some("revoked".into()),
            });
        }
        verdict_of(self.rule(&self.config.deliver, client, identity, topic, false))
    }
}

impl TestPolicy {
    fn allow_user(&self, name: &str, user: &User) -> AuthOutcome {
        let mut identity = state::identity::<Self>(name, user.roles.clone(), &name.to_string());
        identity.expires_at = user.expires_in.map(|s| host::now_ms() / 1000 + s);
        authenticated(identity)
    }
}

moat_plugin_sdk::export_plugin!(TestPolicy);
