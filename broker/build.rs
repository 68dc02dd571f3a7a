//! Builds the bundled plugins (`plugins/`) into WebAssembly components and generates
//! `bundled.rs`, which embeds them in the binary. See `moat-plugin-build` for how.

use std::path::{Path, PathBuf};

/// The plugins embedded in the `moat` binary, by package name.
const BUNDLED: &[&str] = &["allow-anonymous", "static-acl", "jwt", "ldap", "sql"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = out.join("bundled.rs");
    if std::env::var_os("CARGO_FEATURE_BUNDLED_PLUGINS").is_none() {
        std::fs::write(&generated, "pub const BUNDLED: &[(&str, &[u8])] = &[];\n")
            .expect("write bundled.rs");
        return;
    }
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir.parent().expect("broker/ has a parent");
    let plugins = root.join("plugins");
    for dir in BUNDLED {
        moat_plugin_build::rerun_if_changed(&plugins.join(dir));
    }
    for shared in ["plugin-sdk/src", "plugin-sdk/topic/src", "wit"] {
        moat_plugin_build::rerun_if_changed(&root.join(shared));
    }
    for file in [
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugin-sdk/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let target = moat_plugin_build::outer_target_dir(&out)
        .unwrap_or_else(|| out.clone())
        .join("wasm-plugins");
    let built = match moat_plugin_build::build(&plugins.join("Cargo.toml"), BUNDLED, &target) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let mut code = String::from("pub const BUNDLED: &[(&str, &[u8])] = &[\n");
    for b in &built {
        code.push_str(&format!(
            "    ({:?}, include_bytes!({:?})),\n",
            b.package,
            path_str(&b.path)
        ));
    }
    code.push_str("];\n");
    std::fs::write(&generated, code).expect("write bundled.rs");
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("a UTF-8 target path").to_owned()
}
