//! [`Harness`]: a plugin without a broker, for unit tests of plugins.
//!
//! It loads a component exactly as the broker does (same engine, sandbox, limits and host
//! imports) and calls its hooks directly with the broker's own types:
//!
//! ```ignore
//! let h = Harness::load_file("target/wasm32-wasip2/release/my_plugin.wasm", r#"{"users":{}}"#).await?;
//! let client = Harness::client("dev-1", Some("alice"));
//! assert!(matches!(h.authenticate(&client, &Harness::password("secret")).await, Ok(Answer::Decided(AuthStep::Allow { .. }))));
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use super::plugin::{Generation, Limits};
use super::{Compiling, LoadError, PluginContext};
use crate::codec::{ProtocolVersion, QoS};
use crate::config::{Grants, KvGrant};
use crate::message::{Message, MessageProperties};
use crate::policy::{ClientInfo, Credentials};

/// A loaded plugin and nothing else; it dereferences to its [`Generation`], whose methods call
/// the hooks.
pub struct Harness {
    generation: Arc<Generation>,
}

impl std::ops::Deref for Harness {
    type Target = Generation;

    fn deref(&self) -> &Generation {
        &self.generation
    }
}

impl Harness {
    /// Loads a component with `config` (JSON, as the broker passes it), default limits, and a
    /// `kv` grant.
    pub async fn load(bytes: &[u8], config: &str) -> Result<Harness, LoadError> {
        Harness::load_with(bytes, config, Limits::default()).await
    }

    /// Loads a component from a file.
    pub async fn load_file(path: impl AsRef<Path>, config: &str) -> Result<Harness, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        Harness::load(&bytes, config).await
    }

    /// Loads a component with the given limits.
    pub async fn load_with(
        bytes: &[u8],
        config: &str,
        limits: Limits,
    ) -> Result<Harness, LoadError> {
        let grants = Grants {
            kv: Some(KvGrant::default()),
            ..Grants::default()
        };
        Harness::load_with_grants(bytes, config, limits, &grants).await
    }

    /// Loads a component with the given limits and grants (files are read as the broker reads
    /// them; [`Harness::reload_files`] rereads them).
    pub async fn load_with_grants(
        bytes: &[u8],
        config: &str,
        limits: Limits,
        grants: &Grants,
    ) -> Result<Harness, LoadError> {
        let name: Arc<str> = Arc::from("harness");
        let ctx = Arc::new(PluginContext::new(
            name.clone(),
            Arc::new(AtomicU64::new(0)),
            grants,
        )?);
        let generation = Generation::load(
            name,
            1,
            bytes,
            config.to_owned(),
            limits,
            ctx,
            None,
            Compiling::AllCores,
        )
        .await?;
        Ok(Harness { generation })
    }

    /// Rereads the granted files into a new generation, as the broker does when one changes;
    /// on an error (say `init` refuses the new content) the current generation stays.
    pub async fn reload_files(&mut self) -> Result<(), LoadError> {
        let files = super::plugin::read_files(&self.generation.ctx).await?;
        self.generation = self
            .generation
            .renew(self.generation.number + 1, files)
            .await?;
        Ok(())
    }

    /// A client on listener `default` from 127.0.0.1, speaking MQTT 5.
    pub fn client(client_id: &str, username: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: ByteString::from(client_id),
            username: username.map(ByteString::from),
            remote_addr: "127.0.0.1:50000".parse().expect("a literal address"),
            listener: Arc::from("default"),
            protocol: ProtocolVersion::V5,
            tls: None,
        }
    }

    /// A QoS 1 message on `topic`, not retained, without properties, for `authorize_publish`.
    pub fn message(topic: &str, payload: &[u8]) -> Message {
        Message {
            topic: ByteString::from(topic),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            received: Instant::now(),
            expiry: None,
            publisher: None,
        }
    }

    /// Credentials with a password only.
    pub fn password(password: &str) -> Credentials {
        Credentials {
            password: Some(Bytes::copy_from_slice(password.as_bytes())),
            ..Credentials::default()
        }
    }
}
