//! Wire-side code shared by the edge agent and the fleet server: the [`Sample`] every sensor
//! produces, the [`Source`] trait, the sensor adapters (OPC-UA, Modbus TCP/RTU, MQTT) with
//! their config keys, and the formats both binaries speak (bundles, sync messages, outbox
//! records, deltas, drift statistics).
//!
//! Architecture invariant: this crate never depends on `edge-agent` or `fleet-server`.
//! Each adapter is behind a cargo feature (`opcua`, `modbus`, `mqtt`) so an integrator can
//! leave out what a gateway does not need; config structs and pure codecs compile always, so
//! `edge-agent check` can name a disabled source kind instead of rejecting it as unknown.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod backoff;
pub mod bundle;
pub mod config_check;
#[cfg(feature = "sync")]
pub mod delta;
pub mod drift;
pub mod error_latch;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
#[cfg(feature = "drift")]
pub mod records;
pub mod sample;
pub mod secret;
pub mod source;
pub mod sparkplug;
#[cfg(feature = "sync")]
pub mod sync;
#[cfg(any(feature = "mqtt", feature = "sync"))]
pub mod tls;

pub use sample::{now_ns, Quality, Sample, Tag, Value};
pub use source::{
    BackpressurePolicy, PipelineClosed, SampleBatch, SampleSender, Source, SourceContext,
    SourceError, SourceFuture, SourceStats,
};
