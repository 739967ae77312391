//! The outbox: a durable, per-stream queue of everything the agent must deliver (samples,
//! features, predictions, alarms, later drift summaries and events), with independent cursors
//! per destination (each MQTT output, later the fleet sync).
//!
//! Delivery contract (what a consumer can rely on):
//! - every record gets the next sequence number of its stream: no gaps except counted drops;
//! - a record is handed to destinations only once it is durable (after a group commit), so a
//!   sequence number once seen by a consumer always means the same record, crash or not;
//! - a destination's cursor moves only when the destination confirmed delivery; after a crash a
//!   destination may see records again that were confirmed in the last commit interval
//!   (at-least-once), never a gap;
//! - a record is deleted when every configured destination has confirmed it, or dropped by the
//!   stream's size/age limit (counted per stream and reported).

pub mod config;
pub mod sled_outbox;
pub mod writer;

pub use config::{OutboxConfig, Stream, WhenFull};
pub use sled_outbox::{OpenReport, SledOutbox};
pub use writer::OutboxWriter;

/// Counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub stream: &'static str,
    /// Last assigned sequence number.
    pub head: u64,
    /// Last sequence number made durable.
    pub durable: u64,
    /// Records stored (not yet confirmed by every destination).
    pub records: u64,
    /// Bytes stored (payloads and headers).
    pub bytes: u64,
    /// Records dropped by the size/age limit or a failed write.
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox storage error: {0}")]
    Storage(String),
    #[error("outbox I/O error (disk full?): {0}")]
    Io(String),
    #[error("the outbox is unavailable (reopening after an I/O error)")]
    Unavailable,
    #[error("unknown destination `{0}`")]
    UnknownDestination(String),
}

impl From<sled::Error> for OutboxError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => OutboxError::Io(io.to_string()),
            other => OutboxError::Storage(other.to_string()),
        }
    }
}
