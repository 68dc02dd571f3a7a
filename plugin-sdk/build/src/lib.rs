//! Builds Rust plugin crates into WebAssembly components, from a build script or a test.
//!
//! The broker embeds its bundled plugins and the tests load test plugins, so both need the
//! components built before they compile. Their build scripts call [`build`], which runs a
//! nested `cargo build --target wasm32-wasip2 --release` on the plugins' own workspace
//! (`plugins/`) with its own target directory: it never waits on the lock of the outer build,
//! and plugin crates are never built for the host. This is how wasmtime builds its test
//! programs (`crates/test-programs/artifacts/build.rs`).
//!
//! Nothing here depends on anything but `std`, so it adds nothing to a build script's compile
//! time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target plugins are built for: its output is a component, no adapter needed.
pub const TARGET: &str = "wasm32-wasip2";

/// One built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The package name, e.g. `allow-anonymous`.
    pub package: String,
    /// The `.wasm` component.
    pub path: PathBuf,
}

/// Builds `packages` of the workspace at `workspace` (a `Cargo.toml`) into components under
/// `target_dir`, in release mode, with the lock file as it is (`--locked`).
///
/// Environment the outer cargo sets for build scripts (flags, wrappers such as clippy's) is
/// cleared so it does not leak into the nested build; the jobserver is kept, so the nested
/// build shares the outer one's CPU budget.
pub fn build(workspace: &Path, packages: &[&str], target_dir: &Path) -> Result<Vec<Built>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--quiet")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(workspace)
        .arg("--target-dir")
        .arg(target_dir);
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "CARGO_MAKEFLAGS" | "CARGO_NET_OFFLINE");
        let outer = key.starts_with("CARGO_")
            || matches!(
                key,
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTDOCFLAGS"
            );
        if outer && !keep {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build plugins: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the plugins in {} for {TARGET} failed (is the target installed? \
             `rustup target add {TARGET}`)",
            workspace.display()
        ));
    }
    let out = target_dir.join(TARGET).join("release");
    packages
        .iter()
        .map(|p| {
            let path = out.join(format!("{}.wasm", p.replace('-', "_")));
            if path.is_file() {
                Ok(Built {
                    package: p.to_string(),
                    path,
                })
            } else {
                Err(format!(
                    "plugin `{p}` built, but {} is missing (is its crate-type cdylib?)",
                    path.display()
                ))
            }
        })
        .collect()
}

/// The outer build's target directory, found from a build script's `OUT_DIR` (cargo marks
/// the root of a target directory with `CACHEDIR.TAG`).
pub fn outer_target_dir(out_dir: &Path) -> Option<PathBuf> {
    out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

/// Tells cargo to rerun the build script when anything under `dir` changes (target
/// directories excluded).
pub fn rerun_if_changed(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
