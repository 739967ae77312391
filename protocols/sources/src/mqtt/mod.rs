//! MQTT (rumqttc, rustls/ring): broker connection options shared by every MQTT client of the
//! agent, payload decoding, topic filters, and the subscribing source.

#[cfg(feature = "mqtt")]
pub mod client;
pub mod config;
pub mod payload;
#[cfg(feature = "mqtt")]
mod subscriber;
pub mod topic;

pub use config::{BrokerConfig, MqttSourceConfig, MqttTagConfig};
#[cfg(feature = "mqtt")]
pub use subscriber::MqttSubscriber;
