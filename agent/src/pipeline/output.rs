//! The [`Output`] trait: where records leave the pipeline. Each output is one task fed by its
//! own bounded queue; the pipeline waits for room (nothing is dropped between the pipeline and
//! an output while the agent runs). Implementations: the file outputs (`crate::outputs`), the
//! outbox writer (`crate::outbox::writer`), replay's JSON writer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::record::{Record, RecordKind};

/// Counters of one output, exposed as metrics.
#[derive(Debug, Default)]
pub struct OutputStats {
    /// Items handed to the output's queue by the pipeline.
    pub enqueued: AtomicU64,
    /// Items (samples, ...) written.
    pub written: AtomicU64,
    /// Items that could not be written (I/O errors), after logging.
    pub failed: AtomicU64,
}

impl OutputStats {
    /// Counts `n` items handed to the queue.
    pub fn add_enqueued(&self, n: u64) {
        self.enqueued.fetch_add(n, Ordering::Relaxed);
    }
    /// Items queued or being written right now.
    pub fn in_flight(&self) -> u64 {
        let done = self.written.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.enqueued.load(Ordering::Relaxed).saturating_sub(done)
    }
    /// Counts `n` items written.
    pub fn add_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Counts `n` items that could not be written.
    pub fn add_failed(&self, n: usize) {
        self.failed.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A boxed, sendable future: the return type of [`Output::run`].
pub type OutputFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A destination for records.
pub trait Output: Send + 'static {
    /// Output kind for logs and metrics (`"file"`, ...).
    fn kind(&self) -> &'static str;
    /// Whether the output takes records of this kind (the pipeline sends it only those).
    fn accepts(&self, _kind: RecordKind) -> bool {
        true
    }
    /// Consumes records until the queue closes, then flushes and returns.
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        stats: std::sync::Arc<OutputStats>,
    ) -> OutputFuture;
}
