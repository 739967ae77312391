//! `edge-agent replay`: the live pipeline run over a recording — the config's models with
//! their windows, features, inference, postprocess, alarms and drift — as fast as it goes
//! (`--speed max`) or paced. Nothing connects anywhere: the config's sources, MQTT outputs,
//! fleet sync and metrics endpoint are left out, and every window waits for inference
//! (`when_busy = "wait"`), so each one gets its prediction.
//!
//! What it writes is what a live agent publishes on its plain-JSON MQTT topics for the same
//! samples: the same bodies (`publish/json_body.rs`), with `seq` numbered per stream from 1
//! as a fresh outbox would. With `--output DIR`: `DIR/predictions.jsonl`, `alarms.jsonl`,
//! `drift.jsonl` (and `features.jsonl` with `--features`), one payload per line; without,
//! standard output, one `{"stream", "name", "payload"}` object per line.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::models::WhenBusy;
use crate::outbox::Stream;
use crate::pipeline::record::{Record, RecordKind};
use crate::pipeline::Pipeline;
use crate::pipeline::{Output, OutputFuture, OutputStats};
use crate::publish::json_body;
use crate::sources::replay::{ReplaySource, ReplaySourceConfig, ReplaySpeed};
use crate::sources::SourcesConfig;

/// What a replay did, for its closing summary.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Samples the replay source read.
    pub samples: u64,
    /// Wall time of the whole replay.
    pub elapsed: Duration,
    /// Per stream written, its record count.
    pub written: Vec<(Stream, u64)>,
    /// Per model: windows, predictions, skipped windows (missing data, non-finite), and a
    /// grid-misalignment warning.
    pub models: Vec<ModelReport>,
}

/// One model's counters over a replay.
#[derive(Debug)]
pub struct ModelReport {
    /// The `[[models]]` name.
    pub name: String,
    /// Windows cut and featurized.
    pub windows: u64,
    /// Predictions made.
    pub predictions: u64,
    /// Windows skipped for too many missing points.
    pub skipped_missing: u64,
    /// Windows skipped because a feature was not finite (never fed to the model).
    pub skipped_nonfinite: u64,
    /// Windows whose inference failed.
    pub inference_errors: u64,
    /// Time spent in inference (the serving bundle), microseconds.
    pub inference_us: u64,
    /// A warning when most samples sit off the feature grid
    /// ([`crate::features::WindowStats::grid_warning`]).
    pub grid_warning: Option<String>,
}

/// The config as replay runs it: one replay source, the models, no network.
fn replay_config(
    mut cfg: AgentConfig,
    input: &Path,
    speed: ReplaySpeed,
    tags: Vec<String>,
) -> AgentConfig {
    cfg.sources = SourcesConfig {
        replay: vec![ReplaySourceConfig {
            name: "replay".into(),
            path: input.to_path_buf(),
            speed,
            // Every tag of the file (no per-sample filter), already read.
            tags: Vec::new(),
            file_tags: std::sync::OnceLock::from(Ok(tags)),
        }],
        ..Default::default()
    };
    cfg.outputs.mqtt.clear();
    cfg.outputs.file.clear();
    cfg.sync = None;
    cfg.metrics.listen = None;
    cfg.pipeline.backpressure = edge_sources::BackpressurePolicy::Block;
    // Everything read is processed: the end of the file is not a deadline.
    cfg.pipeline.shutdown_timeout = Duration::from_secs(365 * 24 * 3600);
    for m in &mut cfg.models {
        m.when_busy = WhenBusy::Wait;
    }
    cfg
}

/// Feature records only when they are written (`--features`): nobody else reads them here.
fn with_features(mut cfg: AgentConfig, features: bool) -> AgentConfig {
    for m in &mut cfg.models {
        m.features = features;
    }
    cfg
}

/// Runs the replay. `features`: also write feature records.
pub async fn replay(
    cfg: AgentConfig,
    input: &Path,
    output: Option<&Path>,
    speed: ReplaySpeed,
    features: bool,
) -> anyhow::Result<ReplayReport> {
    anyhow::ensure!(
        !cfg.models.is_empty(),
        "the config has no [[models]]: replay runs models over a recording"
    );
    // Read through once for its tags: a recording that cannot be read fails here, with its
    // line, before any model starts.
    let tags = crate::sources::replay::recording_tags(input).map_err(|e| anyhow::anyhow!(e))?;
    let mut cfg = with_features(replay_config(cfg, input, speed, tags), features);
    // A data directory of its own: the device's version floor and drift alarm states are
    // neither read nor changed (any bundle version replays, each run starts calm).
    let scratch = ScratchDir::create()?;
    cfg.agent.data_dir = scratch.0.clone();
    let started = Instant::now();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut pipeline = Pipeline::new(cfg.pipeline.clone());
    let shutdown = CancellationToken::new();
    let source_failure = Arc::new(std::sync::Mutex::new(None));
    let source = ReplaySource::new(cfg.sources.replay[0].clone())
        .on_end(shutdown.clone())
        .report_failure(source_failure.clone());
    pipeline.add_source("replay", Box::new(source));
    let stages = crate::build_models(&cfg)?;
    anyhow::ensure!(
        stages.len() == cfg.models.len(),
        "a model did not load (the error is logged above): nothing to replay it with"
    );
    let stats: Vec<_> = stages.iter().map(|(n, s)| (n.clone(), s.stats())).collect();
    for (name, stage) in stages {
        pipeline.add_stage(&name, Box::new(stage));
    }
    let sink = match output {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Sink::Dir(dir.to_path_buf())
        }
        None => Sink::Stdout,
    };
    let counts = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let failed = Arc::new(std::sync::Mutex::new(None));
    pipeline.add_output(
        "replay",
        Box::new(ReplayWriter {
            sink,
            features,
            counts: counts.clone(),
            failed: failed.clone(),
        }),
    );
    let run = pipeline.run(shutdown, metrics).await;
    if let Some(e) = source_failure.lock().ok().and_then(|mut f| f.take()) {
        anyhow::bail!("{e}");
    }
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        anyhow::bail!("writing the replay output failed: {e}");
    }
    anyhow::ensure!(
        run.dropped_at_shutdown == 0,
        "{} samples were read but not processed",
        run.dropped_at_shutdown
    );
    let rates: HashMap<String, f64> = cfg
        .models
        .iter()
        .filter_map(|m| {
            let bytes = std::fs::read(&m.bundle).ok()?;
            let spec = edge_wire::bundle::file::parse(&bytes)
                .ok()?
                .manifest
                .features;
            Some((m.name.clone(), spec.rate_hz))
        })
        .collect();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let models = stats
        .iter()
        .map(|(name, s)| ModelReport {
            name: name.clone(),
            windows: load(&s.windows),
            predictions: load(&s.predictions),
            skipped_missing: load(&s.skipped_missing),
            skipped_nonfinite: load(&s.skipped_nonfinite),
            inference_errors: load(&s.inference_errors),
            inference_us: load(&s.inference_us),
            grid_warning: s
                .window_stats
                .lock()
                .ok()
                .and_then(|w| rates.get(name).and_then(|r| w.grid_warning(*r))),
        })
        .collect();
    let written = counts
        .lock()
        .map(|c| {
            let mut v: Vec<(Stream, u64)> = c.iter().map(|(s, n)| (*s, *n)).collect();
            v.sort_by_key(|(s, _)| *s);
            v
        })
        .unwrap_or_default();
    Ok(ReplayReport {
        samples: run.samples,
        elapsed: started.elapsed(),
        written,
        models,
    })
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("edge-agent-replay-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Sink {
    Dir(PathBuf),
    Stdout,
}

/// The output of a replay: records as the JSON MQTT output's bodies.
struct ReplayWriter {
    sink: Sink,
    features: bool,
    counts: Arc<std::sync::Mutex<HashMap<Stream, u64>>>,
    /// The first write error: the command fails with it.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl ReplayWriter {
    /// Runs on a blocking thread: formats and writes every record it is given.
    fn write_all(
        self,
        mut rx: mpsc::Receiver<Record>,
        stats: Arc<OutputStats>,
    ) -> std::io::Result<()> {
        let mut files: HashMap<Stream, std::io::BufWriter<std::fs::File>> = HashMap::new();
        let stdout = std::io::stdout();
        let mut seqs: HashMap<Stream, u64> = HashMap::new();
        let mut line = Vec::new();
        while let Some(rec) = rx.blocking_recv() {
            let n = rec.len();
            let stream = match &rec {
                Record::Features(_) => Stream::Features,
                Record::Prediction(_) => Stream::Predictions,
                Record::Alarm(_) => Stream::Alarms,
                Record::Drift(_) => Stream::Drift,
                Record::Samples(_) => continue,
            };
            let seq = seqs.entry(stream).or_insert(0);
            *seq += 1;
            // The bodies the JSON MQTT output makes of the same record after its outbox round
            // trip (lossless), without the round trip.
            let bodies = json_body::record_bodies(&rec);
            for mut b in bodies {
                b.body.insert("seq".into(), serde_json::json!(*seq));
                line.clear();
                match &self.sink {
                    Sink::Dir(dir) => {
                        serde_json::to_writer(&mut line, &serde_json::Value::Object(b.body))?;
                        line.push(b'\n');
                        let f = match files.entry(stream) {
                            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
                            std::collections::hash_map::Entry::Vacant(v) => {
                                let p = dir.join(format!("{}.jsonl", stream.name()));
                                let f = std::fs::File::create(&p).map_err(|e| {
                                    std::io::Error::new(
                                        e.kind(),
                                        format!("creating {}: {e}", p.display()),
                                    )
                                })?;
                                v.insert(std::io::BufWriter::new(f))
                            }
                        };
                        f.write_all(&line)?;
                    }
                    Sink::Stdout => {
                        let obj = serde_json::json!({
                            "stream": stream.name(),
                            "name": b.name,
                            "payload": serde_json::Value::Object(b.body),
                        });
                        serde_json::to_writer(&mut line, &obj)?;
                        line.push(b'\n');
                        stdout.lock().write_all(&line)?;
                    }
                }
            }
            if let Ok(mut c) = self.counts.lock() {
                *c.entry(stream).or_insert(0) += 1;
            }
            stats.add_written(n);
        }
        for (_, mut f) in files {
            f.flush()?;
        }
        stdout.lock().flush()
    }
}

impl Output for ReplayWriter {
    fn kind(&self) -> &'static str {
        "replay"
    }

    fn accepts(&self, kind: RecordKind) -> bool {
        match kind {
            RecordKind::Samples => false,
            RecordKind::Features => self.features,
            RecordKind::Predictions | RecordKind::Alarms | RecordKind::Drift => true,
        }
    }

    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        stats: Arc<OutputStats>,
    ) -> OutputFuture {
        let failed = self.failed.clone();
        Box::pin(async move {
            let res = tokio::task::spawn_blocking(move || self.write_all(input, stats)).await;
            let err = match res {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!("replay output failed: {err}");
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert(err);
            }
        })
    }
}
