//! The [`Source`] trait every sensor adapter implements, and the [`SourceContext`] it runs in:
//! the bounded output channel with its [`BackpressurePolicy`], the shutdown signal, and the
//! per-source counters the agent exposes as metrics.
//!
//! Architecture invariant: nothing in a source task blocks a thread. Sources are async; the
//! only way out of a source is [`SampleSender`], whose policy decides between waiting (nothing
//! lost) and dropping (counted) when the pipeline is slower than the plant.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use edge_wire::sample::{Quality, Sample, Tag};

/// Samples travel between stages in batches: one poll, one subscription notification or one
/// MQTT message gives one batch, so the channel cost is paid per batch, not per sample.
pub type SampleBatch = Vec<Sample>;

/// What happens when a source produces faster than the pipeline consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackpressurePolicy {
    /// The source waits for room in the channel. Nothing is lost; polled sources (Modbus,
    /// OPC-UA reads, simulated) poll less often, and subscription sources (OPC-UA, MQTT) let
    /// their peer's own queueing and flow control absorb the burst.
    #[default]
    Block,
    /// The source never waits: a batch that does not fit is dropped and counted in
    /// `edge_source_dropped_samples_total`. Sources keep their timing; data is lost under overload.
    DropNewest,
}

/// Why a message a source received could not be used (the `reason` label of
/// `edge_source_bad_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadMessage {
    /// Larger than the source's `max_packet_size`: acknowledged and dropped unread.
    Oversize,
    /// Not UTF-8 text.
    NotUtf8,
    /// A plain payload that is not a number or true/false.
    NotANumber,
    /// Not valid JSON (a tag with `json_pointer`).
    BadJson,
    /// The tag's `json_pointer` is not in the payload.
    Missing,
    /// The value at the pointer is not a number, boolean or numeric string.
    WrongType,
    /// The timestamp at `timestamp_pointer` cannot be read (the value is kept, uncertain).
    BadTimestamp,
    /// NaN, infinity or a number past f64's range.
    NotFinite,
}

impl BadMessage {
    /// Every reason, in metric order.
    pub const ALL: [BadMessage; 8] = [
        BadMessage::Oversize,
        BadMessage::NotUtf8,
        BadMessage::NotANumber,
        BadMessage::BadJson,
        BadMessage::Missing,
        BadMessage::WrongType,
        BadMessage::BadTimestamp,
        BadMessage::NotFinite,
    ];

    /// The reason's label in `edge_source_bad_messages_total{reason}`.
    pub fn name(self) -> &'static str {
        match self {
            BadMessage::Oversize => "oversize",
            BadMessage::NotUtf8 => "not_utf8",
            BadMessage::NotANumber => "not_a_number",
            BadMessage::BadJson => "bad_json",
            BadMessage::Missing => "missing",
            BadMessage::WrongType => "wrong_type",
            BadMessage::BadTimestamp => "bad_timestamp",
            BadMessage::NotFinite => "not_finite",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one source, read by the agent's metrics registry at scrape time.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Samples handed to the pipeline (all qualities).
    pub samples: AtomicU64,
    /// Of those, samples with `Quality::Bad`.
    pub bad_samples: AtomicU64,
    /// Samples dropped because the pipeline was full (policy `drop_newest`) or shut down.
    pub dropped_samples: AtomicU64,
    /// Read, decode and connection errors.
    pub errors: AtomicU64,
    /// Successful (re)connections after the first one.
    pub reconnects: AtomicU64,
    /// Whether the source currently has a working session/connection to its device.
    pub connected: AtomicBool,
    /// Messages that could not be used, per [`BadMessage`] reason (message-based sources).
    bad_messages: [AtomicU64; BadMessage::ALL.len()],
}

impl SourceStats {
    /// Counts one error.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts one unusable message (also as an error).
    pub fn bad_message(&self, why: BadMessage) {
        self.bad_messages[why.index()].fetch_add(1, Ordering::Relaxed);
        self.error();
    }
    /// Messages counted as unusable for `why`.
    pub fn bad_messages(&self, why: BadMessage) -> u64 {
        self.bad_messages[why.index()].load(Ordering::Relaxed)
    }
    /// Records whether the source has a working connection to its device.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }
    /// Whether the source has a working connection to its device.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// The value of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The pipeline is gone (agent shutting down); the source should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline has shut down")]
pub struct PipelineClosed;

/// A source's handle on the pipeline's input channel.
#[derive(Debug, Clone)]
pub struct SampleSender {
    tx: mpsc::Sender<SampleBatch>,
    policy: BackpressurePolicy,
    stats: Arc<SourceStats>,
    /// Fires when the agent gives up waiting at shutdown: a send blocked on a full channel
    /// then drops (and counts) its batch instead of hanging the shutdown.
    abort: CancellationToken,
}

impl SampleSender {
    /// A sender into `tx` with `policy`, counting into `stats`; `abort` fires when shutdown stops waiting.
    pub fn new(
        tx: mpsc::Sender<SampleBatch>,
        policy: BackpressurePolicy,
        stats: Arc<SourceStats>,
        abort: CancellationToken,
    ) -> Self {
        SampleSender {
            tx,
            policy,
            stats,
            abort,
        }
    }

    /// Hands a batch to the pipeline following the policy. An empty batch is a no-op.
    pub async fn send(&self, batch: SampleBatch) -> Result<(), PipelineClosed> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.policy {
            BackpressurePolicy::Block => {
                let n = batch.len();
                let bad = count_bad(&batch);
                tokio::select! {
                    r = self.tx.send(batch) => match r {
                        Ok(()) => {
                            self.count_sent(n, bad);
                            Ok(())
                        }
                        Err(mpsc::error::SendError(batch)) => {
                            self.count_dropped(batch.len(), "the pipeline has shut down");
                            Err(PipelineClosed)
                        }
                    },
                    _ = self.abort.cancelled() => {
                        self.count_dropped(n, "shutdown deadline reached while the pipeline was full");
                        Err(PipelineClosed)
                    }
                }
            }
            BackpressurePolicy::DropNewest => self.try_send(batch),
        }
    }

    /// Non-waiting send for contexts that must never block (e.g. OPC-UA data-change callbacks,
    /// which run on the session's event loop). A full channel drops and counts the batch.
    pub fn try_send(&self, batch: SampleBatch) -> Result<(), PipelineClosed> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        let bad = count_bad(&batch);
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.count_sent(n, bad);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.count_dropped(
                    batch.len(),
                    "pipeline full (backpressure policy drop_newest)",
                );
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(batch)) => {
                self.count_dropped(batch.len(), "the pipeline has shut down");
                Err(PipelineClosed)
            }
        }
    }

    fn count_sent(&self, n: usize, bad: usize) {
        self.stats.samples.fetch_add(n as u64, Ordering::Relaxed);
        self.stats
            .bad_samples
            .fetch_add(bad as u64, Ordering::Relaxed);
    }

    fn count_dropped(&self, n: usize, why: &str) {
        let total = self
            .stats
            .dropped_samples
            .fetch_add(n as u64, Ordering::Relaxed)
            + n as u64;
        // Log the first drop and then every 10 000th, so an overload is visible but not noisy.
        if total == n as u64 || total % 10_000 < n as u64 {
            tracing::warn!(dropped_total = total, "dropped {n} samples: {why}");
        }
    }
}

fn count_bad(batch: &[Sample]) -> usize {
    batch.iter().filter(|s| s.quality == Quality::Bad).count()
}

/// Everything a running source gets from the agent.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The source's configured name, for logs.
    pub name: Arc<str>,
    /// Where the source sends its samples.
    pub out: SampleSender,
    /// Fires when the agent stops: the source returns.
    pub shutdown: CancellationToken,
    /// The source's counters (metrics).
    pub stats: Arc<SourceStats>,
}

impl SourceContext {
    /// Sleeps for `d` unless shutdown comes first; returns `false` on shutdown.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Emits a `Bad` sample for each tag: the device is unreachable. Sent with the source's
    /// normal policy so the outage is recorded like any other measurement.
    pub async fn mark_bad(&self, tags: &[Tag]) -> Result<(), PipelineClosed> {
        let ts = edge_wire::sample::now_ns();
        self.out
            .send(tags.iter().map(|t| Sample::bad(t.clone(), ts)).collect())
            .await
    }
}

/// Why a source stopped for good. Transient faults never end a source: they are retried with
/// backoff. Only a configuration that can never work (a certificate file that does not parse,
/// a serial port that does not exist at start) ends it, and the agent keeps the other sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A configuration that can never work, with the reason.
    #[error("{0}")]
    Config(String),
}

/// A boxed, sendable future: the return type of [`Source::run`].
pub type SourceFuture = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// A sensor adapter: connects to its devices and turns what they report into [`Sample`]s.
pub trait Source: Send + 'static {
    /// Protocol name for logs and metrics (`"opcua"`, `"modbus"`, `"mqtt"`, `"simulated"`).
    fn kind(&self) -> &'static str;
    /// Every tag this source can produce.
    fn tags(&self) -> Vec<Tag>;
    /// Runs until `ctx.shutdown` fires. Reconnects by itself; returns `Err` only on a
    /// configuration that can never work.
    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture;
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_wire::sample::Value;

    fn batch(n: usize) -> SampleBatch {
        (0..n)
            .map(|i| Sample::new(Arc::from("t"), i as i64, Value::Float(1.0), Quality::Good))
            .collect()
    }

    #[tokio::test]
    async fn drop_newest_counts_drops_and_never_waits() {
        let (tx, mut rx) = mpsc::channel(1);
        let stats = Arc::new(SourceStats::default());
        let s = SampleSender::new(
            tx,
            BackpressurePolicy::DropNewest,
            stats.clone(),
            CancellationToken::new(),
        );
        s.send(batch(3)).await.unwrap();
        s.send(batch(5)).await.unwrap(); // channel full: dropped
        assert_eq!(SourceStats::get(&stats.samples), 3);
        assert_eq!(SourceStats::get(&stats.dropped_samples), 5);
        assert_eq!(rx.recv().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn block_waits_for_room_and_loses_nothing() {
        let (tx, mut rx) = mpsc::channel(1);
        let stats = Arc::new(SourceStats::default());
        let s = SampleSender::new(
            tx,
            BackpressurePolicy::Block,
            stats.clone(),
            CancellationToken::new(),
        );
        let producer = tokio::spawn(async move {
            for _ in 0..10 {
                s.send(batch(2)).await.unwrap();
            }
        });
        let mut got = 0;
        while got < 20 {
            got += rx.recv().await.unwrap().len();
        }
        producer.await.unwrap();
        assert_eq!(SourceStats::get(&stats.samples), 20);
        assert_eq!(SourceStats::get(&stats.dropped_samples), 0);
    }

    #[tokio::test]
    async fn abort_unblocks_a_full_channel_and_counts_the_drop() {
        let (tx, _rx) = mpsc::channel(1);
        let stats = Arc::new(SourceStats::default());
        let abort = CancellationToken::new();
        let s = SampleSender::new(tx, BackpressurePolicy::Block, stats.clone(), abort.clone());
        s.send(batch(1)).await.unwrap();
        let blocked = tokio::spawn(async move { s.send(batch(4)).await });
        tokio::task::yield_now().await;
        abort.cancel();
        assert_eq!(blocked.await.unwrap(), Err(PipelineClosed));
        assert_eq!(SourceStats::get(&stats.dropped_samples), 4);
    }

    #[tokio::test]
    async fn closed_pipeline_is_reported_and_counted() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let stats = Arc::new(SourceStats::default());
        let s = SampleSender::new(
            tx,
            BackpressurePolicy::Block,
            stats.clone(),
            CancellationToken::new(),
        );
        assert_eq!(s.send(batch(2)).await, Err(PipelineClosed));
        assert_eq!(SourceStats::get(&stats.dropped_samples), 2);
    }
}
