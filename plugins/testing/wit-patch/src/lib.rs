//! `wit-patch`: the smallest useful plugin, built against `moat:policy@0.1.7`: it lets in
//! clients whose user name is `patch` and says `next` to everything else.

wit_bindgen::generate!({
    path: concat!(env!("OUT_DIR"), "/wit"),
    world: "plugin",
});

use exports::moat::policy::hooks::Guest;
use moat::policy::types::{
    AuthOutcome, Authenticated, Client, Credentials, Hooks, Identity, Manifest, Publish,
    SubscribeVerdict, Subscription, Verdict,
};

struct WitPatch;

impl Guest for WitPatch {
    fn init(_config: String) -> Result<Manifest, String> {
        Ok(Manifest {
            hooks: Hooks::AUTHENTICATE,
            needs_payload: false,
            session_state_version: 0,
        })
    }

    fn on_connect(_: Client) -> Verdict {
        Verdict::Next
    }

    fn authenticate(client: Client, _: Credentials) -> AuthOutcome {
        if client.username.as_deref() != Some("patch") {
            return AuthOutcome::Next;
        }
        AuthOutcome::Allow(Authenticated {
            identity: Identity {
                principal: "patch".into(),
                roles: vec![],
                expires_at: None,
                session_state: vec![],
            },
            auth_data: None,
        })
    }

    fn continue_auth(_: Client, _: Vec<u8>, _: Vec<u8>) -> AuthOutcome {
        AuthOutcome::Next
    }

    fn authorize_publish(_: Client, _: Identity, _: Publish) -> Verdict {
        Verdict::Next
    }

    fn authorize_subscribe(_: Client, _: Identity, _: Subscription) -> SubscribeVerdict {
        SubscribeVerdict::Next
    }

    fn authorize_deliver(_: Client, _: Identity, _: String) -> Verdict {
        Verdict::Next
    }
}

export!(WitPatch);
