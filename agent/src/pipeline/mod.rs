//! The pipeline runtime: starts every source and output as its own task, connects them with
//! bounded channels through the hub, and runs the shutdown sequence.
//!
//! ```text
//! sources --(fan-in, bounded, BackpressurePolicy)--> hub --(one bounded queue each)--> outputs
//! ```
//! Shutdown (SIGTERM/SIGINT): sources stop reading and return; the hub forwards everything
//! already read, then closes the output queues; outputs drain and flush. If that takes longer
//! than `pipeline.shutdown_timeout`, whatever is still queued is dropped, counted and logged —
//! never silently.
//!
//! Architecture invariant: a failing or panicking source ends only its own task; the other
//! sources and the outputs keep running.

mod config;
mod output;
pub mod record;

pub use config::PipelineConfig;
pub use output::{Output, OutputFuture, OutputStats};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_sources::{SampleBatch, SampleSender, Source, SourceContext, SourceStats};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use record::{Record, RecordKind};

/// Counters of the hub.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Sample batches received from the sources.
    pub batches: AtomicU64,
    /// Samples received from the sources.
    pub samples: AtomicU64,
    /// Samples read but dropped because the shutdown deadline passed.
    pub dropped_at_shutdown: AtomicU64,
    /// Beats on every record the hub routes and on an idle tick; stops when the hub is stuck
    /// (what the systemd watchdog watches).
    pub heartbeat: AtomicU64,
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Samples the hub received from the sources.
    pub samples: u64,
    /// Samples that were read but not delivered because shutdown hit its deadline.
    pub dropped_at_shutdown: u64,
    /// Whether everything stopped within the deadline.
    pub clean: bool,
}

/// A boxed, sendable future: the return type of [`Stage::run`].
pub type StageFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A transform between sources and outputs (e.g. windows -> features -> model). It receives
/// every sample record and emits derived records (features, predictions), which go to the
/// outputs. It must drain its input until it closes, then finish what it holds and return.
pub trait Stage: Send + 'static {
    /// Stage kind, e.g. `"model"`.
    fn kind(&self) -> &'static str;
    /// Consumes sample records from `input` until it closes, emitting derived records on
    /// `output`; then finishes what it holds and returns (dropping `output`).
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        output: mpsc::Sender<Record>,
    ) -> StageFuture;
}

/// What the pipeline tells about the parts it starts, so they can be observed: the agent's
/// metrics implement it (`crate::metrics`); the pipeline never depends on its observer.
/// Observers hold weak handles on queues: they must never keep a queue open.
pub trait PipelineObserver: Send + Sync {
    /// The sources -> pipeline channel.
    fn fan_in(&self, _queue: &mpsc::Sender<SampleBatch>) {}
    /// The pipeline's own counters.
    fn pipeline(&self, _stats: Arc<PipelineStats>) {}
    /// A source was started.
    fn source(&self, _name: &str, _kind: &'static str, _stats: Arc<SourceStats>) {}
    /// An output was started, with its input queue.
    fn output(
        &self,
        _name: &str,
        _kind: &'static str,
        _stats: Arc<OutputStats>,
        _queue: &mpsc::Sender<Record>,
    ) {
    }
}

/// Observes nothing (offline commands, benchmarks).
impl PipelineObserver for () {}

/// A pipeline before it runs: named sources, stages and outputs.
pub struct Pipeline {
    cfg: PipelineConfig,
    sources: Vec<(Arc<str>, Box<dyn Source>)>,
    stages: Vec<(Arc<str>, Box<dyn Stage>)>,
    outputs: Vec<(Arc<str>, Box<dyn Output>)>,
    /// Told once every task runs (the service's readiness).
    started: Option<tokio::sync::oneshot::Sender<Arc<PipelineStats>>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "sources",
                &self.sources.iter().map(|s| &s.0).collect::<Vec<_>>(),
            )
            .field(
                "outputs",
                &self.outputs.iter().map(|s| &s.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Pipeline {
    /// An empty pipeline; add sources, stages and outputs, then [`Pipeline::run`].
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            cfg,
            sources: Vec::new(),
            stages: Vec::new(),
            outputs: Vec::new(),
            started: None,
        }
    }

    /// `tx` receives the pipeline's counters once sources, stages, outputs and the hub run.
    pub fn on_started(&mut self, tx: tokio::sync::oneshot::Sender<Arc<PipelineStats>>) {
        self.started = Some(tx);
    }

    /// Adds a source; `name` labels its logs and metrics.
    pub fn add_source(&mut self, name: &str, s: Box<dyn Source>) {
        self.sources.push((Arc::from(name), s));
    }

    /// Adds a stage; it receives every sample record, and what it emits goes to the outputs.
    pub fn add_stage(&mut self, name: &str, s: Box<dyn Stage>) {
        self.stages.push((Arc::from(name), s));
    }

    /// Adds an output; it receives the records of the kinds it [`Output::accepts`].
    pub fn add_output(&mut self, name: &str, o: Box<dyn Output>) {
        self.outputs.push((Arc::from(name), o));
    }

    /// Runs until `shutdown` fires, then stops everything (see the module docs).
    pub async fn run(
        self,
        shutdown: CancellationToken,
        metrics: Arc<dyn PipelineObserver>,
    ) -> RunReport {
        let abort = CancellationToken::new();
        let (tx, rx) = mpsc::channel::<SampleBatch>(self.cfg.channel_capacity);
        metrics.fan_in(&tx);
        let stats = Arc::new(PipelineStats::default());
        metrics.pipeline(stats.clone());

        let mut source_tasks = JoinSet::new();
        for (name, src) in self.sources {
            let kind = src.kind();
            let sstats = Arc::new(SourceStats::default());
            metrics.source(&name, kind, sstats.clone());
            let ctx = SourceContext {
                name: name.clone(),
                out: SampleSender::new(
                    tx.clone(),
                    self.cfg.backpressure,
                    sstats.clone(),
                    abort.clone(),
                ),
                shutdown: shutdown.child_token(),
                stats: sstats,
            };
            source_tasks.spawn(async move {
                // A panic stays inside this task; report it like an error.
                let res = tokio::spawn(src.run(ctx)).await;
                match res {
                    Ok(Ok(())) => tracing::debug!(source = %name, "source finished"),
                    Ok(Err(e)) => tracing::error!(source = %name, kind,
                        "source stopped: {e}; the other sources keep running"),
                    Err(e) => tracing::error!(source = %name, kind,
                        "source crashed: {e}; the other sources keep running"),
                }
            });
        }
        drop(tx);

        let mut output_txs = Vec::new();
        let mut output_stats = Vec::new();
        let mut output_tasks = JoinSet::new();
        for (name, out) in self.outputs {
            let (otx, orx) = mpsc::channel::<Record>(self.cfg.output_capacity);
            let ostats = Arc::new(OutputStats::default());
            metrics.output(&name, out.kind(), ostats.clone(), &otx);
            let accepts: Vec<RecordKind> = RecordKind::ALL
                .into_iter()
                .filter(|k| out.accepts(*k))
                .collect();
            output_txs.push(OutputLink {
                name: name.clone(),
                tx: otx,
                stats: ostats.clone(),
                accepts,
            });
            output_stats.push((name.clone(), ostats.clone()));
            output_tasks.spawn(out.run(orx, ostats));
        }

        let (derived_tx, derived_rx) = mpsc::channel::<Record>(self.cfg.output_capacity);
        let mut stage_txs = Vec::new();
        let mut stage_tasks = JoinSet::new();
        for (name, stage) in self.stages {
            let (stx, srx) = mpsc::channel::<Record>(self.cfg.channel_capacity);
            stage_txs.push((name.clone(), stx));
            let out = derived_tx.clone();
            stage_tasks.spawn(async move {
                if let Err(e) = tokio::spawn(stage.run(srx, out)).await {
                    tracing::error!(stage = %name, "stage crashed: {e}; its records are lost, sources keep running");
                }
            });
        }
        drop(derived_tx);

        let hub = tokio::spawn(hub(
            rx,
            derived_rx,
            stage_txs,
            output_txs,
            stats.clone(),
            abort.clone(),
        ));
        if let Some(tx) = self.started {
            let _ = tx.send(stats.clone());
        }

        shutdown.cancelled().await;
        tracing::info!("shutting down: stopping sources, delivering what was read");
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        let clean = tokio::time::timeout_at(deadline, async {
            while let Some(r) = source_tasks.join_next().await {
                crate::task::joined("source", r);
            }
        })
        .await
        .is_ok();
        let mut hub = hub;
        let mut clean = clean
            && match tokio::time::timeout_at(deadline, &mut hub).await {
                Ok(r) => {
                    crate::task::joined("pipeline hub", r);
                    true
                }
                Err(_) => false,
            }
            && tokio::time::timeout_at(deadline, async {
                while let Some(r) = output_tasks.join_next().await {
                    crate::task::joined("output", r);
                }
            })
            .await
            .is_ok();
        if clean {
            // The hub ended after every stage did: their outcomes are in.
            while let Some(r) = stage_tasks.try_join_next() {
                crate::task::joined("model stage", r);
            }
        }
        if !clean {
            tracing::warn!(timeout = ?self.cfg.shutdown_timeout,
                "shutdown deadline reached: dropping what is still queued");
            abort.cancel();
            // Give tasks a moment to count and log what they drop, then stop them.
            let grace = Duration::from_secs(1);
            let _ = tokio::time::timeout(grace, async {
                while let Some(r) = source_tasks.join_next().await {
                    crate::task::joined("source", r);
                }
            })
            .await;
            if let Ok(r) = tokio::time::timeout(grace, &mut hub).await {
                crate::task::joined("pipeline hub", r);
            }
            let _ = tokio::time::timeout(grace, async {
                while let Some(r) = output_tasks.join_next().await {
                    crate::task::joined("output", r);
                }
            })
            .await;
            source_tasks.abort_all();
            hub.abort();
            stage_tasks.abort_all();
            output_tasks.abort_all();
            for (name, o) in &output_stats {
                let lost = o.in_flight();
                if lost > 0 {
                    stats.dropped_at_shutdown.fetch_add(lost, Ordering::Relaxed);
                    tracing::warn!(output = %name, "shutdown deadline: {lost} samples queued for this output were not written");
                }
            }
            clean = false;
        }
        let dropped = stats.dropped_at_shutdown.load(Ordering::Relaxed);
        let samples = stats.samples.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!("shutdown dropped {dropped} samples that were read but not delivered");
        }
        tracing::info!(samples, dropped, clean, "pipeline stopped");
        RunReport {
            samples,
            dropped_at_shutdown: dropped,
            clean,
        }
    }
}

/// The hub's handle on one output.
struct OutputLink {
    name: Arc<str>,
    tx: mpsc::Sender<Record>,
    stats: Arc<OutputStats>,
    /// The kinds of record the output takes.
    accepts: Vec<RecordKind>,
}

/// Hands one record to every output that accepts it, waiting for room (or the shutdown
/// deadline, which drops and counts it).
async fn route(
    rec: Record,
    outputs: &[OutputLink],
    stats: &PipelineStats,
    abort: &CancellationToken,
) {
    let n = rec.len() as u64;
    let kind = rec.kind();
    for OutputLink {
        name,
        tx: otx,
        stats: ostats,
        accepts,
    } in outputs
    {
        if !accepts.contains(&kind) {
            continue;
        }
        tokio::select! {
            r = otx.send(rec.clone()) => match r {
                Ok(()) => ostats.add_enqueued(n),
                Err(_) => tracing::error!(output = %name, "output stopped; {n} items not delivered to it"),
            },
            _ = abort.cancelled() => {
                if let Record::Samples(_) = rec {
                    stats.dropped_at_shutdown.fetch_add(n, Ordering::Relaxed);
                }
                tracing::warn!(output = %name, "shutdown deadline: {n} items not delivered to this output");
            }
        }
    }
}

/// Fans each sample batch out to every stage and output, and every derived record (features,
/// predictions) to every output; waits for room in each queue.
///
/// Shutdown order: when the sources' channel closes, the stage inputs are closed; stages
/// finish and drop their outputs; once no stage can emit anymore the output queues close.
async fn hub(
    mut rx: mpsc::Receiver<SampleBatch>,
    mut derived: mpsc::Receiver<Record>,
    mut stages: Vec<(Arc<str>, mpsc::Sender<Record>)>,
    outputs: Vec<OutputLink>,
    stats: Arc<PipelineStats>,
    abort: CancellationToken,
) {
    let mut samples_open = true;
    let mut derived_open = true;
    let mut idle = tokio::time::interval(Duration::from_millis(250));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while samples_open || derived_open {
        stats.heartbeat.fetch_add(1, Ordering::Relaxed);
        let rec = tokio::select! {
            _ = idle.tick() => continue,
            b = rx.recv(), if samples_open => match b {
                Some(b) => {
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats.samples.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Record::Samples(Arc::new(b))
                }
                None => {
                    samples_open = false;
                    stages.clear(); // closes the stage inputs
                    continue;
                }
            },
            d = derived.recv(), if derived_open => match d {
                Some(d) => d,
                None => {
                    derived_open = false;
                    continue;
                }
            },
            _ = abort.cancelled() => break,
        };
        let n = rec.len() as u64;
        if let Record::Samples(_) = rec {
            for (name, stx) in &stages {
                // While a stage's input is full, its derived records keep flowing to the
                // outputs: a stage waiting to emit (or on inference that waits to emit) can
                // always make progress, so the hub and a stage never wait on each other.
                let send = stx.send(rec.clone());
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        r = &mut send => {
                            if r.is_err() {
                                tracing::error!(stage = %name, "stage stopped; {n} samples not delivered to it");
                            }
                            break;
                        }
                        d = derived.recv(), if derived_open => match d {
                            Some(d) => route(d, &outputs, &stats, &abort).await,
                            None => derived_open = false,
                        },
                        _ = abort.cancelled() => {
                            tracing::warn!(stage = %name, "shutdown deadline: {n} samples not delivered to this stage");
                            break;
                        }
                    }
                }
            }
        }
        route(rec, &outputs, &stats, &abort).await;
    }
    tracing::debug!("hub finished");
    // Anything still queued from sources at an aborted shutdown is counted, not lost silently.
    rx.close();
    let mut left = 0u64;
    while let Ok(b) = rx.try_recv() {
        left += b.len() as u64;
    }
    if left > 0 {
        stats.dropped_at_shutdown.fetch_add(left, Ordering::Relaxed);
        tracing::warn!("shutdown deadline: {left} queued samples not delivered to any output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use edge_sources::{SourceError, SourceFuture};
    use edge_wire::{Quality, Sample, Tag, Value};
    use std::sync::Mutex;

    /// Emits `n` batches of one sample, then waits for shutdown.
    struct CountingSource {
        n: usize,
        fail: bool,
    }
    impl Source for CountingSource {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn tags(&self) -> Vec<Tag> {
            vec![Arc::from("t")]
        }
        fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
            Box::pin(async move {
                if self.fail {
                    return Err(SourceError::Config("broken on purpose".into()));
                }
                for i in 0..self.n {
                    let s = Sample::new(
                        ctx.name.clone(),
                        i as i64,
                        Value::Int(i as i64),
                        Quality::Good,
                    );
                    if ctx.out.send(vec![s]).await.is_err() {
                        break;
                    }
                }
                ctx.shutdown.cancelled().await;
                Ok(())
            })
        }
    }

    /// Collects everything; optionally sleeps per record (a slow output).
    struct Collect {
        got: Arc<Mutex<Vec<Sample>>>,
        delay: Duration,
    }
    impl Output for Collect {
        fn kind(&self) -> &'static str {
            "collect"
        }
        fn run(
            self: Box<Self>,
            mut input: mpsc::Receiver<Record>,
            stats: Arc<OutputStats>,
        ) -> OutputFuture {
            Box::pin(async move {
                while let Some(Record::Samples(s)) = input.recv().await {
                    tokio::time::sleep(self.delay).await;
                    stats.add_written(s.len());
                    self.got.lock().unwrap().extend(s.iter().cloned());
                }
            })
        }
    }

    fn cfg(capacity: usize, timeout_ms: u64) -> PipelineConfig {
        PipelineConfig {
            channel_capacity: capacity,
            output_capacity: capacity,
            shutdown_timeout: Duration::from_millis(timeout_ms),
            ..PipelineConfig::default()
        }
    }

    #[tokio::test]
    async fn every_sample_reaches_every_output_and_a_failing_source_is_isolated() {
        let mut p = Pipeline::new(cfg(4, 2000));
        p.add_source(
            "a",
            Box::new(CountingSource {
                n: 500,
                fail: false,
            }),
        );
        p.add_source(
            "b",
            Box::new(CountingSource {
                n: 300,
                fail: false,
            }),
        );
        p.add_source("broken", Box::new(CountingSource { n: 0, fail: true }));
        let got1 = Arc::new(Mutex::new(Vec::new()));
        let got2 = Arc::new(Mutex::new(Vec::new()));
        p.add_output(
            "o1",
            Box::new(Collect {
                got: got1.clone(),
                delay: Duration::ZERO,
            }),
        );
        p.add_output(
            "o2",
            Box::new(Collect {
                got: got2.clone(),
                delay: Duration::ZERO,
            }),
        );
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let run = tokio::spawn(p.run(stop.clone(), metrics.clone()));
        // Wait until both sources delivered everything, then stop.
        for _ in 0..500 {
            if got1.lock().unwrap().len() == 800 && got2.lock().unwrap().len() == 800 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        let report = run.await.unwrap();
        assert!(report.clean);
        assert_eq!(report.samples, 800);
        assert_eq!(report.dropped_at_shutdown, 0);
        for got in [got1, got2] {
            let got = got.lock().unwrap();
            let a: Vec<i64> = got
                .iter()
                .filter(|s| &*s.tag == "a")
                .map(|s| s.ts_ns)
                .collect();
            assert_eq!(a, (0..500).collect::<Vec<_>>(), "in order, no gaps");
            assert_eq!(got.iter().filter(|s| &*s.tag == "b").count(), 300);
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"edge_source_samples_total{source="a",kind="test"} 500"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn shutdown_waits_for_delivery_of_what_was_read() {
        let mut p = Pipeline::new(cfg(64, 5000));
        p.add_source(
            "a",
            Box::new(CountingSource {
                n: 100,
                fail: false,
            }),
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        p.add_output(
            "slow",
            Box::new(Collect {
                got: got.clone(),
                delay: Duration::from_millis(2),
            }),
        );
        let stop = CancellationToken::new();
        let run = tokio::spawn(p.run(stop.clone(), Arc::new(Metrics::new())));
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.cancel(); // most batches are still queued
        let report = run.await.unwrap();
        assert!(report.clean);
        assert_eq!(
            got.lock().unwrap().len(),
            100,
            "everything read was delivered"
        );
    }

    #[tokio::test]
    async fn a_stuck_output_cannot_hang_shutdown_and_drops_are_counted() {
        let mut p = Pipeline::new(cfg(2, 300));
        p.add_source("a", Box::new(CountingSource { n: 50, fail: false }));
        let got = Arc::new(Mutex::new(Vec::new()));
        p.add_output(
            "stuck",
            Box::new(Collect {
                got: got.clone(),
                delay: Duration::from_secs(3600),
            }),
        );
        let stop = CancellationToken::new();
        let run = tokio::spawn(p.run(stop.clone(), Arc::new(Metrics::new())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let t0 = std::time::Instant::now();
        let report = run.await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "shutdown took {:?}",
            t0.elapsed()
        );
        assert!(!report.clean);
        assert!(report.dropped_at_shutdown > 0, "{report:?}");
    }
}
