//! Test harness for interop and end-to-end tests: starts independent peers (Mosquitto,
//! the asyncua OPC-UA server, pymodbus over TCP and over a socat pty pair) on free ports,
//! runs sources against them and collects what they produce. One module per peer:
//! `peer` (processes, ports, waiting), `mosquitto`, `opcua`, `modbus`, `listener` (the
//! MQTT/Sparkplug listener), `proxy` (a cuttable TCP link), `harness` (a source in-process),
//! `fleet` (fleet-server, agents enrolled with it, PostgreSQL, HAProxy), `faults` (network
//! faults and process sampling), `recordings` (shared recordings and models).
//!
//! The peers are installed by `tests/peers/setup.sh` (called by `tests/run.sh`) into
//! `$EDGE_PEERS_DIR` (default `tests/.peers`). A missing install is a test failure with the
//! command to run, never a silent skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

pub mod faults;
pub mod fleet;
mod harness;
mod listener;
mod modbus;
mod mosquitto;
mod opcua;
mod peer;
mod proxy;
mod recordings;

pub use harness::*;
pub use listener::*;
pub use modbus::*;
pub use mosquitto::*;
pub use opcua::*;
pub use peer::*;
pub use proxy::*;
pub use recordings::*;
