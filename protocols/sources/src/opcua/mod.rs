//! OPC-UA client source (async-opcua): config, and the subscriber/poller with its session
//! supervision (reconnect, fatal-error classification, certificate trust).

pub mod config;
#[cfg(feature = "opcua")]
mod source;
#[cfg(feature = "opcua")]
pub mod values;

pub use config::{OpcUaSourceConfig, OpcUaTagConfig};
#[cfg(feature = "opcua")]
pub use source::OpcUaSource;
