//! moat: an MQTT 3.1.1 and 5.0 broker (layout doc written once the modules settle).
pub mod codec;
pub mod topic;
