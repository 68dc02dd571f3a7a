//! Topic names and topic filters: the rules live in the `moat-topic` crate, which the plugin SDK
//! shares, so that the broker and its plugins agree on what a filter matches.

pub use moat_topic::*;
