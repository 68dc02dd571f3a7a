//! Building a chain from the configuration: each `[[plugin]]` read (from its file or the
//! binary), checked against its pinned digest, loaded into a first generation; and the default
//! chain of a configuration that names no plugin.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::slot::Slot;
use crate::config::{Config, PluginConfig};
use crate::policy::wasm::{
    Compiling, DiskCache, Generation, Limits, LoadError, PluginContext, bundled,
};

/// A plugin could not be loaded into the chain.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` ({source_name}): {error}")]
pub struct ChainError {
    pub plugin: String,
    /// The file, or `bundled:NAME`.
    pub source_name: String,
    pub error: LoadError,
}

/// The chain of a configuration with no `[[plugin]]`: `allow-anonymous` on the listeners bound
/// to a loopback address (on every listener with `security.allow_anonymous_remote`).
pub fn default_chain(config: &Config) -> Vec<PluginConfig> {
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .filter(|l| l.bind.ip().is_loopback() || config.security.allow_anonymous_remote)
        .map(|l| l.name.clone())
        .collect();
    let mut plugin_config = serde_json::Map::new();
    plugin_config.insert("listeners".into(), listeners.clone().into());
    vec![PluginConfig {
        name: "allow-anonymous".into(),
        bundled: Some("allow-anonymous".into()),
        // Also the chain's own listener filter, so that the broker knows nothing
        // authenticates clients on the other listeners.
        listeners: Some(listeners),
        config: plugin_config,
        ..PluginConfig::default()
    }]
}

pub(super) fn open_cache(config: &Config) -> Result<Option<DiskCache>, ChainError> {
    let dir = config
        .plugins
        .cache_dir
        .clone()
        .or_else(crate::policy::wasm::disk_cache::default_dir);
    let Some(dir) = dir else {
        tracing::warn!(
            "no cache directory for compiled plugins (no HOME); compiling at every start"
        );
        return Ok(None);
    };
    DiskCache::open(&dir).map(Some).map_err(|error| ChainError {
        plugin: "*".into(),
        source_name: "plugins.cache_dir".into(),
        error,
    })
}

/// The bytes of the component `spec` names (its file, or the bundled one), and how to name
/// that source in messages.
pub(super) fn read_source(spec: &PluginConfig) -> (Result<Vec<u8>, LoadError>, String) {
    let bytes = match (&spec.wasm, &spec.bundled) {
        (Some(path), _) => std::fs::read(path).map_err(|e| LoadError::Read {
            path: path.clone(),
            why: e.to_string(),
        }),
        (None, Some(name)) => {
            bundled::get(name)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| LoadError::Read {
                    path: format!("bundled:{name}").into(),
                    why: "no such bundled plugin in this build".into(),
                })
        }
        (None, None) => Err(LoadError::Read {
            path: "".into(),
            why: "no `wasm` or `bundled` given".into(),
        }),
    };
    (bytes, read_source_name(spec))
}

/// Refuses bytes that do not match the configuration's `sha256` pin, if it has one.
pub(super) fn check_pin(spec: &PluginConfig, bytes: &[u8]) -> Result<(), LoadError> {
    if let Some(expected) = &spec.sha256 {
        let actual = crate::policy::wasm::sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(LoadError::Hash {
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// The sandbox limits `spec` sets.
fn limits(spec: &PluginConfig) -> Limits {
    Limits {
        min_instances: spec.min_instances as usize,
        max_instances: spec.max_instances as usize,
        memory_bytes: (spec.memory_limit_mib as usize) << 20,
        cpu_budget: Duration::from_millis(spec.cpu_budget_ms.into()),
        authenticate_timeout: Duration::from_millis(spec.authenticate_timeout_ms.into()),
        authorize_timeout: Duration::from_millis(spec.authorize_timeout_ms.into()),
    }
}

/// A new plugin context for `spec`: a fresh epoch, counters and the capabilities its grants
/// give (an error if a grant cannot be served, e.g. an unreadable `ca_file`).
fn new_context(spec: &PluginConfig) -> Result<Arc<PluginContext>, LoadError> {
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let epoch = Arc::new(AtomicU64::new(0));
    PluginContext::new(name, epoch, &spec.grants).map(Arc::new)
}

/// Loads generation `number` of the plugin `spec` declares from `bytes` (already checked
/// against the pin), sharing `ctx` with the generations before it. A component no cache holds
/// is compiled as `compiling` says: on all cores at start, in the background during a swap.
pub(super) async fn load_generation(
    spec: &PluginConfig,
    number: u64,
    bytes: &[u8],
    ctx: Arc<PluginContext>,
    disk: Option<&DiskCache>,
    compiling: Compiling,
) -> Result<Arc<Generation>, LoadError> {
    let config_json = serde_json::Value::Object(spec.config.clone()).to_string();
    Generation::load(
        ctx.name.clone(),
        number,
        bytes,
        config_json,
        limits(spec),
        ctx,
        disk,
        compiling,
    )
    .await
}

/// The component's bytes: `bytes` if given, else read from the source `spec` names; checked
/// against its pin. Errors name the plugin and the source.
pub(super) fn checked_bytes(
    spec: &PluginConfig,
    bytes: Option<Vec<u8>>,
) -> Result<Vec<u8>, ChainError> {
    let (bytes, source_name) = match bytes {
        Some(b) => (Ok(b), "the bytes given".to_owned()),
        None => read_source(spec),
    };
    let fail = |error| ChainError {
        plugin: spec.name.clone(),
        source_name: source_name.clone(),
        error,
    };
    let bytes = bytes.map_err(fail)?;
    check_pin(spec, &bytes).map_err(fail)?;
    Ok(bytes)
}

/// Names a failure to load `spec`, from the bytes given or from its configured source.
pub(super) fn load_failed(
    spec: &PluginConfig,
    given: bool,
) -> impl Fn(LoadError) -> ChainError + '_ {
    move |error| ChainError {
        plugin: spec.name.clone(),
        source_name: match given {
            true => "the bytes given".into(),
            false => read_source_name(spec),
        },
        error,
    }
}

fn read_source_name(spec: &PluginConfig) -> String {
    match (&spec.wasm, &spec.bundled) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(name)) => format!("bundled:{name}"),
        (None, None) => String::new(),
    }
}

/// A new slot for `spec`, with its first generation (numbered `first`) loaded from `bytes`
/// (or, when `None`, from the source the configuration names).
pub(super) async fn load_slot_from(
    spec: &PluginConfig,
    bytes: Option<Vec<u8>>,
    first: u64,
    disk: Option<&DiskCache>,
    compiling: Compiling,
) -> Result<Slot, ChainError> {
    let given = bytes.is_some();
    let bytes = checked_bytes(spec, bytes)?;
    let ctx = new_context(spec).map_err(load_failed(spec, given))?;
    let generation = load_generation(spec, first, &bytes, ctx, disk, compiling)
        .await
        .map_err(load_failed(spec, given))?;
    Ok(Slot::new(spec.clone(), generation))
}

/// A slot for `spec` as the broker starts (nothing is being decided yet: compiling may take
/// every core).
pub(super) async fn load_slot(
    spec: &PluginConfig,
    disk: Option<&DiskCache>,
) -> Result<Slot, ChainError> {
    load_slot_from(spec, None, 1, disk, Compiling::AllCores).await
}
