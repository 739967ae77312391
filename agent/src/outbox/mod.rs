//! The outbox: a durable, per-stream queue of everything the agent must deliver (samples,
//! features, predictions, alarms, later drift summaries and events), with independent cursors
//! per destination (each MQTT output, later the fleet sync).
//!
//! Delivery contract (what a consumer can rely on):
//! - every record gets the next sequence number of its stream: no gaps except counted drops;
//! - live destinations (MQTT outputs) get a record as soon as it is appended; the fleet upload
//!   only once it is durable (after a group commit). A sequence number once seen by a
//!   consumer always means the same record, crash or not: numbers handed out live are
//!   reserved durably ahead of time (a lease), and after an unclean stop the numbers of the
//!   lease that were never committed are skipped, not reused (logged, counted in `skipped`);
//! - a destination's cursor moves only over records that the destination confirmed and that
//!   are durable; after a crash a destination may see records again that were confirmed in the
//!   last commit interval (at-least-once); a gap only where numbers were skipped (above);
//! - a record is deleted when every configured destination has confirmed it, or dropped by the
//!   stream's size/age limit (counted per stream and reported);
//! - when the disk fills up, alarms, drift and events are still stored from a reserve kept
//!   for them ([`reserve`]); samples, features and predictions are dropped (counted) until
//!   space returns. Every record that could not be stored is counted in its stream's drops.

pub mod config;
pub mod reserve;
pub mod sled_outbox;
pub mod writer;

pub use config::{OutboxConfig, Stream, WhenFull};
pub use reserve::DiskReserve;
pub use sled_outbox::{OpenReport, SledOutbox};
pub use writer::OutboxWriter;

/// Counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// The stream's name (`samples`, `features`, ...).
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
    /// Sequence numbers skipped at this start after an unclean stop (reserved for live
    /// delivery, never committed).
    pub skipped: u64,
}

/// Why an outbox operation failed. The operation is not retried: the caller counts and logs,
/// and the next operation tries again.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// sled reported something other than an I/O error (corruption, a bug); the message is sled's.
    #[error("outbox storage error: {0}")]
    Storage(String),
    /// An I/O error under sled (usually the disk is full); the outbox reopens the database.
    #[error("outbox I/O error (disk full?): {0}")]
    Io(String),
    /// The database is being reopened after an I/O error; try again shortly.
    #[error("the outbox is unavailable (reopening after an I/O error)")]
    Unavailable,
    /// Low-space mode: records of this stream (named) are refused until the disk has room.
    #[error("disk full: the outbox keeps its reserve for alarms, drift and events; {0} records are dropped (counted) until space returns")]
    LowSpace(&'static str),
    /// No cursor of that name: it is not a configured destination.
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
