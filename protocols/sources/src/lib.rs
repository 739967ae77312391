//! The edge agent's sensor sources: the [`Source`] trait and the [`SourceContext`] a source
//! runs in (bounded channel with its [`BackpressurePolicy`], shutdown, counters), and the
//! adapters with their configuration keys — [`opcua`] (async-opcua), [`modbus`] (tokio-modbus,
//! TCP and RTU) and [`mqtt`] (rumqttc). Shared by every source: [`backoff`] (reconnect
//! timing), [`error_latch`] (log a recurring error once), [`secret`] (passwords from files or
//! the environment). What a source produces, [`edge_wire::Sample`], is a wire type.
//!
//! Architecture invariants: this crate depends on `edge-wire` only, never on `edge-agent` or
//! `fleet-server`; nothing in a source task blocks a thread.
//! Each adapter is behind a cargo feature (`opcua`, `modbus`, `mqtt`) so an integrator can
//! leave out what a gateway does not need; config structs and pure codecs compile always, so
//! `edge-agent check` can name a disabled source kind instead of rejecting it as unknown.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]
#![warn(missing_docs)]

pub mod backoff;
pub mod error_latch;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod secret;
pub mod source;

pub use source::{
    BackpressurePolicy, PipelineClosed, SampleBatch, SampleSender, Source, SourceContext,
    SourceError, SourceFuture, SourceStats,
};
