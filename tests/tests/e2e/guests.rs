//! The example plugins written in Python and JavaScript (`plugins/examples/`), built into
//! components for the tests on demand.
//!
//! Rust test plugins are built by `tests/build.rs`; these are not, because their tools come
//! from pip and npm (`.ci/run` installs them) and a build script that needs them would stop
//! every test, and `cargo clippy`, on a machine without them. Here only the tests that use
//! these plugins need the tools, and they fail with a message that says how to install them.
//!
//! They go to `target/wasm-plugins/examples/` (`tenant_python.wasm`, `tenant_js.wasm`), where
//! the plugin benchmark (`broker/benches/policy.rs`) finds them after a test run. A component
//! is rebuilt when it is missing or older than one of its inputs (its source, the WIT
//! contract, the build script, the installed tool), under a file lock so that parallel
//! tests, and parallel test processes, build it once. Compiling one of these components in
//! wasmtime takes seconds, so [`Guest::component`] also has the first caller in the process
//! load it into a broker, which leaves the compiled code in the runtime's memory and in the
//! tests' shared disk cache; the other tests then find it there instead of compiling it
//! again at the same time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use moat::config::PluginConfig;
use serde_json::{Value, json};

/// A plugin language other than Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    Python,
    Js,
}

impl Guest {
    /// The built `tenant-isolation` component in this language, compiled once in this process.
    pub async fn component(self) -> &'static Path {
        let path = self.built();
        let cell = match self {
            Guest::Python => &COMPILED[0],
            Guest::Js => &COMPILED[1],
        };
        cell.get_or_init(|| async {
            let b = crate::harness::start_with(|c| {
                c.plugin_chain = vec![self.plugin_at(path, "warm-up", json!({}))];
            })
            .await;
            b.stop().await;
        })
        .await;
        path
    }

    /// A `[[plugin]]` running this language's `tenant-isolation` with `config`.
    pub async fn plugin(self, name: &str, config: Value) -> PluginConfig {
        let path = self.component().await;
        self.plugin_at(path, name, config)
    }

    fn plugin_at(self, path: &Path, name: &str, config: Value) -> PluginConfig {
        let Value::Object(config) = config else {
            panic!("a plugin config is a JSON object");
        };
        PluginConfig {
            name: name.into(),
            wasm: Some(path.to_owned()),
            config,
            ..PluginConfig::default()
        }
    }

    /// The component file, built if it is stale (blocking: at most once per process).
    fn built(self) -> &'static Path {
        let cell = match self {
            Guest::Python => &BUILT[0],
            Guest::Js => &BUILT[1],
        };
        cell.get_or_init(|| self.build()).as_path()
    }

    fn build(self) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent");
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the tests' temporary directory is in the target directory")
            .join("wasm-plugins/examples");
        std::fs::create_dir_all(&out_dir).expect("create the example plugins' directory");
        let (name, inputs) = match self {
            Guest::Python => {
                let dir = root.join("plugins/examples/python");
                ("tenant_python", vec![dir.join("tenant_isolation.py")])
            }
            Guest::Js => {
                let dir = root.join("plugins/examples/js");
                let engine = dir.join("node_modules/.package-lock.json");
                assert!(
                    engine.is_file() && dir.join("node_modules/@bytecodealliance").is_dir(),
                    "the JavaScript plugin's build tools are not installed: run .ci/run, or \
                     `npm ci` in {}",
                    dir.display()
                );
                let inputs = ["tenant-isolation.js", "build.mjs", "package-lock.json"];
                let mut inputs: Vec<PathBuf> = inputs.iter().map(|f| dir.join(f)).collect();
                inputs.push(engine);
                ("tenant_js", inputs)
            }
        };
        let output = out_dir.join(format!("{name}.wasm"));
        let lock = File::create(out_dir.join(format!("{name}.lock"))).expect("create a lock file");
        lock.lock().expect("lock the build of a test plugin");
        let mut inputs = inputs;
        inputs.extend(wit_files(&root.join("wit")));
        if let Some(tool) = self.tool_file() {
            inputs.push(tool);
        }
        if newest(&inputs) < modified(&output) {
            return output;
        }
        let partial = out_dir.join(format!("{name}.wasm.partial"));
        let mut cmd = match self {
            Guest::Python => {
                let mut c = Command::new("componentize-py");
                c.arg("--quiet")
                    .arg("-d")
                    .arg(root.join("wit"))
                    .args(["-w", "plugin", "componentize", "-p"])
                    .arg(root.join("plugins/examples/python"))
                    .arg("tenant_isolation")
                    .arg("-o")
                    .arg(&partial)
                    // Keep __pycache__ out of the source tree.
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                c
            }
            Guest::Js => {
                let mut c = Command::new("node");
                c.arg("build.mjs")
                    .arg(&partial)
                    .current_dir(root.join("plugins/examples/js"));
                c
            }
        };
        let result = cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} to build the {self:?} test plugin ({e}): {}",
                cmd.get_program(),
                self.install_hint()
            )
        });
        assert!(
            result.status.success(),
            "building the {self:?} test plugin failed ({}):\n{}{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::rename(&partial, &output).expect("move the built component into place");
        output
    }

    /// The file of the installed build tool, so that installing another version rebuilds.
    fn tool_file(self) -> Option<PathBuf> {
        match self {
            Guest::Python => {
                let out = Command::new("python3")
                    .args([
                        "-c",
                        "import componentize_py; print(componentize_py.__file__)",
                    ])
                    .output()
                    .ok()?;
                let path = String::from_utf8(out.stdout).ok()?;
                out.status.success().then(|| PathBuf::from(path.trim()))
            }
            // The lock file's copy in node_modules is an input already.
            Guest::Js => None,
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Guest::Python => "run .ci/run, or `python3 -m pip install componentize-py==0.25.1`",
            Guest::Js => "run .ci/run, or install Node.js and `npm ci` in plugins/examples/js",
        }
    }
}

static BUILT: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
static COMPILED: [tokio::sync::OnceCell<()>; 2] = [
    tokio::sync::OnceCell::const_new(),
    tokio::sync::OnceCell::const_new(),
];

fn wit_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read wit/")
        .map(|e| e.expect("a wit/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wit"))
        .collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of `paths` (`None` sorts first, so a missing output is
/// always older).
fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    paths
        .iter()
        .map(|p| Some(modified(p).unwrap_or_else(|| panic!("{} is missing", p.display()))))
        .max()
        .flatten()
}
