//! [`OutboxWriter`]: the pipeline output that puts records into the outbox, encoded as CBOR,
//! one stream per kind. Samples can be decimated per tag before they are stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge_sources::error_latch::ErrorLatch;
use edge_wire::{Quality, Sample, Tag};
use tokio::sync::mpsc;

use super::{OutboxError, SledOutbox, Stream};
use crate::pipeline::record::{Record, RecordKind};
use crate::pipeline::{Output, OutputFuture, OutputStats};
use edge_wire::records;

/// The pipeline output that appends every record to its outbox stream (samples decimated
/// if asked). A failed append is counted as a failed write and a drop of the stream, then
/// the next record is tried.
#[derive(Debug)]
pub struct OutboxWriter {
    outbox: Arc<SledOutbox>,
    /// Keep at most one sample per tag per interval (quality changes always pass).
    decimate: Option<Duration>,
}

/// Per-tag decimation state: last kept timestamp and quality.
#[derive(Default)]
struct Decimator {
    last: HashMap<Tag, (i64, Quality)>,
}

impl Decimator {
    fn keep(&mut self, s: &Sample, every_ns: i64) -> bool {
        match self.last.get(&s.tag) {
            Some(&(ts, q)) if s.ts_ns - ts < every_ns && q == s.quality => false,
            _ => {
                self.last.insert(s.tag.clone(), (s.ts_ns, s.quality));
                true
            }
        }
    }
}

impl OutboxWriter {
    /// A writer into `outbox`; `decimate`: keep at most one sample per tag per interval.
    pub fn new(outbox: Arc<SledOutbox>, decimate: Option<Duration>) -> Self {
        OutboxWriter { outbox, decimate }
    }

    async fn run_loop(self: Box<Self>, mut input: mpsc::Receiver<Record>, stats: Arc<OutputStats>) {
        let mut dec = Decimator::default();
        let mut latch = ErrorLatch::default();
        let every_ns = self.decimate.map(|d| d.as_nanos() as i64);
        while let Some(rec) = input.recv().await {
            let n = rec.len();
            let (stream, payload) = match &rec {
                Record::Samples(batch) => {
                    let kept: Vec<&Sample> = match every_ns {
                        Some(e) => batch.iter().filter(|s| dec.keep(s, e)).collect(),
                        None => batch.iter().collect(),
                    };
                    if kept.is_empty() {
                        stats.add_written(n);
                        continue;
                    }
                    (Stream::Samples, records::encode_samples(kept))
                }
                Record::Features(f) => (Stream::Features, records::encode_features(f)),
                Record::Prediction(p) => (Stream::Predictions, records::encode_prediction(p)),
                Record::Alarm(a) => (Stream::Alarms, records::encode_alarm(a)),
                Record::Drift(d) => (Stream::Drift, records::encode_drift(d)),
            };
            let outbox = self.outbox.clone();
            // sled writes are fast but may touch disk: keep them off the async workers.
            let res = tokio::task::spawn_blocking(move || outbox.append(stream, &[payload])).await;
            match res {
                Ok(Ok(_)) => {
                    if latch.ok().is_some() {
                        tracing::info!(stream = stream.name(), "outbox writes work again");
                    }
                    stats.add_written(n);
                }
                Ok(Err(e)) => {
                    self.outbox.count_lost(stream, 1);
                    stats.add_failed(n);
                    if latch.fail(&e.to_string()) {
                        if let OutboxError::LowSpace(_) = e {
                            tracing::warn!(stream = stream.name(), "{e}");
                        } else {
                            tracing::error!(stream = stream.name(),
                                "outbox write failed: {e}; records are dropped and counted until it works (disk full?)");
                        }
                    }
                }
                Err(e) => {
                    stats.add_failed(n);
                    tracing::error!("outbox write task failed: {e}");
                }
            }
        }
    }
}

impl Output for OutboxWriter {
    fn kind(&self) -> &'static str {
        "outbox"
    }

    fn accepts(&self, kind: RecordKind) -> bool {
        let stream = match kind {
            RecordKind::Samples => Stream::Samples,
            RecordKind::Features => Stream::Features,
            RecordKind::Predictions => Stream::Predictions,
            RecordKind::Alarms => Stream::Alarms,
            RecordKind::Drift => Stream::Drift,
        };
        self.outbox.consumed(stream)
    }

    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        stats: Arc<OutputStats>,
    ) -> OutputFuture {
        Box::pin(self.run_loop(input, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimation_keeps_one_per_interval_and_every_quality_change() {
        let mut d = Decimator::default();
        let t: Tag = Arc::from("t");
        let s = |ts: i64, q: Quality| Sample::new(t.clone(), ts, edge_wire::Value::Float(1.0), q);
        let kept: Vec<bool> = [
            s(0, Quality::Good),
            s(400, Quality::Good),
            s(999, Quality::Good),
            s(1000, Quality::Good),
            s(1100, Quality::Bad),
            s(1200, Quality::Bad),
            s(1300, Quality::Good),
        ]
        .iter()
        .map(|x| d.keep(x, 1000))
        .collect();
        assert_eq!(kept, [true, false, false, true, true, false, true]);
    }
}
