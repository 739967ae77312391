//! One source run in-process against a peer, its samples collected.

use std::sync::Arc;
use std::time::Duration;

use edge_sources::{
    BackpressurePolicy, SampleBatch, SampleSender, Source, SourceContext, SourceStats,
};
use edge_wire::Sample;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Runs one source in-process and collects its samples.
#[derive(Debug)]
pub struct Harness {
    rx: mpsc::Receiver<SampleBatch>,
    pub stop: CancellationToken,
    pub stats: Arc<SourceStats>,
    task: tokio::task::JoinHandle<Result<(), edge_sources::SourceError>>,
    /// Everything consumed so far.
    pub seen: Vec<Sample>,
    pending: std::collections::VecDeque<Sample>,
}

impl Harness {
    pub fn start(name: &str, source: Box<dyn Source>) -> Harness {
        let (tx, rx) = mpsc::channel(4096);
        let stats = Arc::new(SourceStats::default());
        let stop = CancellationToken::new();
        let ctx = SourceContext {
            name: Arc::from(name),
            out: SampleSender::new(
                tx,
                BackpressurePolicy::Block,
                stats.clone(),
                CancellationToken::new(),
            ),
            shutdown: stop.clone(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(source.run(ctx));
        Harness {
            rx,
            stop,
            stats,
            task,
            seen: Vec::new(),
            pending: Default::default(),
        }
    }

    /// Consumes samples in arrival order until `pred` holds; returns that sample (later
    /// samples of the same batch stay queued for the next call). Fails the test on timeout
    /// like [`crate::wait_until`] ([`crate::timed_out`]'s message, with the last samples
    /// seen), or when the source ends first.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Sample) -> bool,
    ) -> Sample {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(s) = self.pending.pop_front() {
                self.seen.push(s.clone());
                if pred(&s) {
                    return s;
                }
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => self.pending.extend(batch),
                Ok(None) => panic!(
                    "source ended while waiting for {what}; result {:?}",
                    self.task.is_finished()
                ),
                Err(_) => {
                    let tail: Vec<String> = self
                        .seen
                        .iter()
                        .rev()
                        .take(12)
                        .map(|s| format!("{s:?}"))
                        .collect();
                    crate::timed_out(
                        what,
                        timeout,
                        &format!("last samples:\n{}", tail.join("\n")),
                    );
                }
            }
        }
    }

    /// Receives everything for `d` (plus anything still queued).
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Sample> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out: Vec<Sample> = self.pending.drain(..).collect();
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.extend(batch);
        }
        self.seen.extend(out.iter().cloned());
        out
    }

    /// Stops the source; returns its result. Panics if it does not stop within 5 s.
    /// The next batch the source sent, as it came (`None` once the source stopped).
    pub async fn next_batch(&mut self) -> Option<SampleBatch> {
        self.rx.recv().await
    }

    pub async fn stop(self) -> Result<(), edge_sources::SourceError> {
        self.stop.cancel();
        let mut rx = self.rx;
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let r = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("source did not stop within 5 s of shutdown")
            .expect("source task panicked");
        drain.abort();
        r
    }

    /// Waits (polling the counters) until `pred` holds for the source's counters; fails the
    /// test naming `what` after `timeout`.
    pub async fn wait_stats(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&SourceStats) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(&self.stats) {
            if tokio::time::Instant::now() >= deadline {
                crate::timed_out(what, timeout, &format!("counters: {:?}", self.stats));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stat(&self, f: impl Fn(&SourceStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.stats).load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Latest usable value of `tag` among samples.
pub fn last_value(samples: &[Sample], tag: &str) -> Option<f64> {
    samples
        .iter()
        .rev()
        .find(|s| &*s.tag == tag)
        .and_then(|s| s.usable_f64())
}
