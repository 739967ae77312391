//! Publishing to SCADA systems and historians: MQTT outputs fed from the outbox. One output is
//! put together in `output.rs`; topics are defined in `topics.rs`; the connection in `link.rs`; the outbox-to-broker loop in
//! `forwarder.rs`; message formats in `json.rs` (bodies in `json_body.rs`, shared with `replay`) and
//! `sparkplug/`.

pub mod config;
#[cfg(feature = "mqtt")]
pub mod forwarder;
#[cfg(feature = "mqtt")]
pub mod json;
pub mod json_body;
#[cfg(feature = "mqtt")]
pub mod link;
#[cfg(feature = "mqtt")]
pub mod output;
#[cfg(feature = "mqtt")]
pub mod sparkplug;
pub mod topics;

pub use config::{MqttFormat, MqttOutputConfig};
