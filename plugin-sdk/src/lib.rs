//! The Rust SDK for moat policy plugins; filled by the plugin-runtime issue (see README.md).
