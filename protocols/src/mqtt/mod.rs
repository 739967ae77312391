//! MQTT (rumqttc, rustls/ring): broker connection options shared by every MQTT client of the
//! agent, payload decoding, topic filters, and the subscribing source.

pub mod config;
pub mod payload;
pub mod topic;
#[cfg(feature = "mqtt")]
pub mod client;
#[cfg(feature = "mqtt")]
mod subscriber;

pub use config::{BrokerConfig, MqttSourceConfig, MqttTagConfig};
#[cfg(feature = "mqtt")]
pub use subscriber::MqttSubscriber;
