//! The bindings `wit-bindgen` generates from the `moat:policy` WIT package (`../wit`).
//!
//! Plugin authors normally use the re-exports at the crate root; this module is public so
//! that the [`crate::export_plugin!`] macro (and authors who want the raw interface) can reach
//! the generated `export!` macro and the `Guest` trait.

wit_bindgen::generate!({
    path: "../wit",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "export",
    default_bindings_module: "moat_plugin_sdk::bindings",
    additional_derives: [PartialEq],
});
