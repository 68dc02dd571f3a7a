//! Copies the contract from `wit/` with its version raised to 0.1.7, as a later patch release
//! of moat:policy would be, so this plugin is built for a version the host does not name.

use std::path::PathBuf;

fn main() {
    let wit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../wit");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("wit");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/wit");
    for entry in std::fs::read_dir(&wit).expect("read wit/") {
        let path = entry.expect("a wit/ entry").path();
        if path.extension().is_some_and(|e| e == "wit") {
            println!("cargo:rerun-if-changed={}", path.display());
            let text = std::fs::read_to_string(&path).expect("read a .wit file");
            let text = text.replace("moat:policy@0.1.0", "moat:policy@0.1.7");
            std::fs::write(out.join(path.file_name().expect("a file name")), text)
                .expect("write a .wit file");
        }
    }
}
