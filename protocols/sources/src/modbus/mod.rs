//! Modbus TCP and RTU sources (tokio-modbus): config, value codec, read planning, and the
//! poller that drives them.

pub mod codec;
pub mod config;
pub mod plan;
#[cfg(feature = "modbus")]
mod poller;

pub use config::{ModbusSourceConfig, ModbusTagConfig, Parity, RtuConfig, TcpConfig};
#[cfg(feature = "modbus")]
pub use poller::ModbusPoller;
