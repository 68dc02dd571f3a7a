//! Logging through the broker's log, tagged with the plugin's name.
//!
//! ```ignore
//! moat_plugin_sdk::info!("loaded {} rules", rules.len());
//! ```

pub use crate::bindings::moat::policy::host::Level;

/// Writes one line to the broker's log.
pub fn log(level: Level, message: &str) {
    crate::bindings::moat::policy::host::log(level, message);
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &format!($($arg)*)) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &format!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &format!($($arg)*)) };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &format!($($arg)*)) };
}
