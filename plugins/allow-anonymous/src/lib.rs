//! `allow-anonymous`: lets clients in without credentials, on the listeners it is given, and
//! lets those clients publish and subscribe anywhere a client may.
//!
//! This is the broker's default chain when the configuration names no plugin: it is then given
//! the listeners bound to a loopback address, so a broker started with no configuration is
//! usable from the same machine and from nowhere else. Whether a client may come in is a
//! property of the listener it arrived through, never of the peer's address (which a local
//! proxy would forge).
//!
//! Clients on other listeners, clients asking for enhanced authentication, and clients another
//! plugin authenticated are not its business: it answers `next`.

use moat_plugin_sdk::{
    AuthOutcome, Client, Credentials, Hooks, Identity, Plugin, Publish, SubscribeGrant,
    SubscribeVerdict, Subscription, Verdict, allow, authenticated, state,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Names of the listeners on which clients need no credentials.
    listeners: Vec<String>,
}

struct AllowAnonymous {
    listeners: Vec<String>,
}

/// Session state that marks a client this plugin let in.
const MARK: u8 = 1;

/// How long the broker may reuse an allow: the rule never changes while the plugin runs.
const CACHE_SECONDS: u32 = 3600;

impl AllowAnonymous {
    fn mine(&self, identity: &Identity) -> bool {
        state::decode::<Self>(identity) == Some(MARK)
    }
}

impl Plugin for AllowAnonymous {
    type Config = Config;
    type State = u8;

    const HOOKS: Hooks = Hooks::AUTHENTICATE
        .union(Hooks::AUTHORIZE_PUBLISH)
        .union(Hooks::AUTHORIZE_SUBSCRIBE);

    fn new(config: Config) -> Result<Self, String> {
        Ok(AllowAnonymous {
            listeners: config.listeners,
        })
    }

    fn authenticate(&self, client: &Client, credentials: &Credentials) -> AuthOutcome {
        // An enhanced-authentication method is some other plugin's business (or, if none
        // takes it on, refused with 0x8C by the broker).
        if !self.listeners.contains(&client.listener) || credentials.auth_method.is_some() {
            return AuthOutcome::Next;
        }
        authenticated(state::identity::<Self>(
            "anonymous",
            vec!["anonymous".into()],
            &MARK,
        ))
    }

    fn authorize_publish(&self, _: &Client, identity: &Identity, _: &Publish) -> Verdict {
        if self.mine(identity) {
            allow(CACHE_SECONDS)
        } else {
            Verdict::Next
        }
    }

    fn authorize_subscribe(
        &self,
        _: &Client,
        identity: &Identity,
        _: &Subscription,
    ) -> SubscribeVerdict {
        if self.mine(identity) {
            SubscribeVerdict::Allow(SubscribeGrant {
                check_each_delivery: false,
            })
        } else {
            SubscribeVerdict::Next
        }
    }
}

moat_plugin_sdk::export_plugin!(AllowAnonymous);
