//! Building a chain from the configuration: each `[[plugin]]` read (from its file or the
//! binary), checked against its pinned digest, loaded into a first generation; and the default
//! chain of a configuration that names no plugin.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::slot::Slot;
use crate::config::{Config, PluginConfig};
use crate::policy::wasm::{
    DiskCache, Generation, Hooks, Limits, LoadError, PluginContext, bundled,
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

pub(super) async fn load_slot(
    spec: &PluginConfig,
    disk: Option<&DiskCache>,
) -> Result<Slot, ChainError> {
    let (bytes, source_name) = match (&spec.wasm, &spec.bundled) {
        (Some(path), _) => (
            std::fs::read(path).map_err(|e| LoadError::Read {
                path: path.clone(),
                why: e.to_string(),
            }),
            path.display().to_string(),
        ),
        (None, Some(name)) => (
            bundled::get(name)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| LoadError::Read {
                    path: format!("bundled:{name}").into(),
                    why: "no such bundled plugin in this build".into(),
                }),
            format!("bundled:{name}"),
        ),
        (None, None) => (
            Err(LoadError::Read {
                path: "".into(),
                why: "no `wasm` or `bundled` given".into(),
            }),
            String::new(),
        ),
    };
    let fail = |error| ChainError {
        plugin: spec.name.clone(),
        source_name: source_name.clone(),
        error,
    };
    let bytes = bytes.map_err(fail)?;
    if let Some(expected) = &spec.sha256 {
        let actual = crate::policy::wasm::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(fail(LoadError::Hash {
                expected: expected.clone(),
                actual,
            }));
        }
    }
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let epoch = Arc::new(AtomicU64::new(0));
    let ctx = Arc::new(PluginContext::new(
        name.clone(),
        epoch.clone(),
        &spec.grants,
    ));
    let limits = Limits {
        min_instances: spec.min_instances as usize,
        max_instances: spec.max_instances as usize,
        memory_bytes: (spec.memory_limit_mib as usize) << 20,
        cpu_budget: Duration::from_millis(spec.cpu_budget_ms.into()),
        authenticate_timeout: Duration::from_millis(spec.authenticate_timeout_ms.into()),
        authorize_timeout: Duration::from_millis(spec.authorize_timeout_ms.into()),
    };
    let config_json = serde_json::Value::Object(spec.config.clone()).to_string();
    let generation = Generation::load(name.clone(), 1, &bytes, config_json, limits, ctx, disk)
        .await
        .map_err(fail)?;
    let hooks = match &spec.hooks {
        Some(names) => generation
            .manifest
            .hooks
            .intersection(Hooks::from_names(names)),
        None => generation.manifest.hooks,
    };
    Ok(Slot {
        name,
        hooks,
        listeners: spec
            .listeners
            .as_ref()
            .map(|ls| ls.iter().map(|l| Arc::from(l.as_str())).collect()),
        on_failure: spec.on_failure,
        current: ArcSwap::new(generation),
        epoch,
        failure_log: Mutex::new((None, 0)),
    })
}
