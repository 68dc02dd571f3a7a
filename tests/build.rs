//! Builds the test plugins (`plugins/testing/`) into WebAssembly components and generates
//! `test_plugins.rs`, with the path of each, for the end-to-end tests.
//!
//! Every crate under `plugins/testing/` must be listed here (the build fails otherwise), so no
//! test plugin is built without a test using it.

use std::path::PathBuf;

/// Test plugins, by package name, and the constant that names their component.
const TEST_PLUGINS: &[(&str, &str)] = &[("test-policy", "TEST_POLICY"), ("wit-patch", "WIT_PATCH")];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir.parent().expect("tests/ has a parent");
    let testing = root.join("plugins/testing");
    let listed: Vec<&str> = TEST_PLUGINS.iter().map(|(p, _)| *p).collect();
    for entry in std::fs::read_dir(&testing).expect("read plugins/testing") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            listed.contains(&&*name),
            "plugins/testing/{name} is not in tests/build.rs TEST_PLUGINS: every test plugin needs a test"
        );
    }
    moat_plugin_build::rerun_if_changed(&testing);
    for shared in ["plugin-sdk/src", "plugin-sdk/topic/src", "wit"] {
        moat_plugin_build::rerun_if_changed(&root.join(shared));
    }
    for file in ["plugins/Cargo.toml", "plugins/Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let target = moat_plugin_build::outer_target_dir(&out)
        .unwrap_or_else(|| out.clone())
        .join("wasm-plugins");
    let built = moat_plugin_build::build(&root.join("plugins/Cargo.toml"), &listed, &target)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut code = String::new();
    for (b, (_, constant)) in built.iter().zip(TEST_PLUGINS) {
        code.push_str(&format!(
            "/// The `{}` test plugin's component.\npub const {constant}: &str = {:?};\n",
            b.package,
            b.path.to_str().expect("a UTF-8 path")
        ));
    }
    std::fs::write(out.join("test_plugins.rs"), code).expect("write test_plugins.rs");
}
