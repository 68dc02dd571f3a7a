//! The plugins embedded in the binary, built from `plugins/` by the build script.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The component of the bundled plugin `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Whether a plugin called `name` is bundled.
pub fn exists(name: &str) -> bool {
    get(name).is_some()
}

/// The names of the bundled plugins.
pub fn names() -> Vec<&'static str> {
    BUNDLED.iter().map(|(n, _)| *n).collect()
}
