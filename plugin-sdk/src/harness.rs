//! Testing a plugin without a broker (feature `harness`, on the host).
//!
//! [`Harness`] is the broker's own loader: the same engine, sandbox, limits and host imports
//! as in production, with the hooks called directly. [`build`] turns the plugin crate into the
//! component it loads. In a plugin's `tests/`:
//!
//! ```ignore
//! use moat_plugin_sdk::harness::{self, Answer, AuthStep, Harness};
//!
//! #[tokio::test]
//! async fn lets_alice_in() {
//!     let wasm = harness::build(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME")).unwrap();
//!     let plugin = Harness::load_file(&wasm, r#"{"users": {"alice": "secret"}}"#).await.unwrap();
//!     let client = Harness::client("dev-1", Some("alice"));
//!     let answer = plugin.authenticate(&client, &Harness::password("secret")).await;
//!     assert!(matches!(answer, Ok(Answer::Decided(AuthStep::Allow { .. }))));
//! }
//! ```

use std::path::{Path, PathBuf};

pub use moat::policy::wasm::calls::{Decision, SubscribeDecision};
pub use moat::policy::wasm::{Answer, AuthStep, Failure, Harness, Limits, LoadError};

/// Builds the plugin crate at `crate_dir` (its package `package`) for `wasm32-wasip2` in
/// release mode, into `<crate_dir>/target/harness`, and returns the component's path.
pub fn build(crate_dir: impl AsRef<Path>, package: &str) -> Result<PathBuf, String> {
    let dir = crate_dir.as_ref();
    let built = moat_plugin_build::build(
        &dir.join("Cargo.toml"),
        &[package],
        &dir.join("target").join("harness"),
    )?;
    Ok(built.into_iter().next().map(|b| b.path).unwrap_or_default())
}
