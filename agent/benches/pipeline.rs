//! Samples/s through the source -> pipeline path, against a named baseline in the same run.
//!
//! - baseline: a bare tokio mpsc channel carrying the same batches (the floor any design pays);
//! - edge-agent: `SampleSender` (backpressure policy, counters) -> hub (fan-out, `Arc` record)
//!   -> one output task that counts and discards — the real path minus I/O.
//!
//! Run: `cargo bench -p edge-agent --bench pipeline` (results in BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::metrics::Metrics;
use edge_agent::pipeline::record::Record;
use edge_agent::pipeline::Pipeline;
use edge_agent::pipeline::PipelineConfig;
use edge_agent::pipeline::{Output, OutputFuture, OutputStats};
use edge_sources::{SampleBatch, Source, SourceContext, SourceFuture};
use edge_wire::{Quality, Sample, Tag, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 100;
const BATCHES: usize = 20_000;

fn batch(tags: &[Tag], i: usize) -> SampleBatch {
    tags.iter()
        .map(|t| {
            Sample::new(
                t.clone(),
                i as i64,
                Value::Float(i as f64 * 0.5),
                Quality::Good,
            )
        })
        .collect()
}

fn tags() -> Vec<Tag> {
    (0..BATCH).map(|i| Arc::from(format!("tag{i}"))).collect()
}

struct Burst {
    tags: Vec<Tag>,
}

impl Source for Burst {
    fn kind(&self) -> &'static str {
        "bench"
    }
    fn tags(&self) -> Vec<Tag> {
        self.tags.clone()
    }
    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
        Box::pin(async move {
            for i in 0..BATCHES {
                if ctx.out.send(batch(&self.tags, i)).await.is_err() {
                    break;
                }
            }
            ctx.shutdown.cancelled().await;
            Ok(())
        })
    }
}

struct Count {
    done: CancellationToken,
}

impl Output for Count {
    fn kind(&self) -> &'static str {
        "count"
    }
    fn run(
        self: Box<Self>,
        mut input: mpsc::Receiver<Record>,
        stats: Arc<OutputStats>,
    ) -> OutputFuture {
        Box::pin(async move {
            let mut n = 0usize;
            while let Some(r) = input.recv().await {
                n += r.len();
                stats.add_written(r.len());
                if n == BATCH * BATCHES {
                    self.done.cancel();
                }
            }
        })
    }
}

async fn baseline(tags: &[Tag]) -> Duration {
    let (tx, mut rx) = mpsc::channel::<SampleBatch>(1024);
    let t0 = Instant::now();
    let tags = tags.to_vec();
    let prod = tokio::spawn(async move {
        for i in 0..BATCHES {
            tx.send(batch(&tags, i)).await.unwrap();
        }
    });
    let mut n = 0;
    while let Some(b) = rx.recv().await {
        n += b.len();
    }
    prod.await.unwrap();
    assert_eq!(n, BATCH * BATCHES);
    t0.elapsed()
}

async fn agent_path(tags: &[Tag]) -> Duration {
    let mut p = Pipeline::new(PipelineConfig::default());
    let done = CancellationToken::new();
    p.add_source(
        "burst",
        Box::new(Burst {
            tags: tags.to_vec(),
        }),
    );
    p.add_output("count", Box::new(Count { done: done.clone() }));
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let run = tokio::spawn(p.run(stop.clone(), Arc::new(Metrics::new())));
    done.cancelled().await;
    let took = t0.elapsed();
    stop.cancel();
    let report = run.await.unwrap();
    assert_eq!(report.samples as usize, BATCH * BATCHES);
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tags = tags();
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    rt.block_on(async {
        baseline(&tags).await; // warm-up
        agent_path(&tags).await;
        for _ in 0..7 {
            base.push(baseline(&tags).await);
            ours.push(agent_path(&tags).await);
        }
    });
    let n = (BATCH * BATCHES) as f64;
    let (b, o) = (median(base), median(ours));
    println!("source->pipeline, {BATCHES} batches x {BATCH} samples, median of 7:");
    println!(
        "  baseline tokio mpsc      {:>8.2} M samples/s",
        n / b.as_secs_f64() / 1e6
    );
    println!(
        "  edge-agent source->hub->output {:>8.2} M samples/s",
        n / o.as_secs_f64() / 1e6
    );
    println!(
        "  ratio edge-agent / baseline: {:.2}",
        b.as_secs_f64() / o.as_secs_f64()
    );
}
