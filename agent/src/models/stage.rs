//! [`ModelStage`]: samples -> windows -> features -> model -> predictions, for one
//! `[[models]]` entry. Windowing and features run on the pipeline task (microseconds);
//! inference runs on a dedicated thread fed by a bounded queue, so a slow model never stalls
//! the sources — a window that finds the queue full is dropped and counted.
//!
//! Hot reload: the bundle file is checked every `reload_check` (an operator replacing it by
//! hand), and loaded at once when asked through the stage's [`ModelControl`] (the fleet
//! updater, which gets the typed outcome back); a changed file goes through every check of
//! [`LoadedBundle::load`] and replaces the running model only if it passes. A failing bundle
//! is logged and the previous one keeps serving. The [`ModelHealth`] watch counts what the
//! serving bundle did since it started.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Instant, SystemTime};

use ed25519_dalek::VerifyingKey;
use tokio::sync::{mpsc, watch};

use super::config::{ModelConfig, WhenBusy};
use super::control::{LoadError, ModelControl, ModelHealth, ReloadRequest};
use super::drift::{Closed, DriftTracker};
use super::floor::FloorStore;
use super::loaded::{LoadedBundle, TagCatalog};
use crate::features::{model_input, FeatureRow, Featurizer};
use crate::pipeline::record::{AlarmEvent, FeatureRecord, Prediction, Record};
use crate::pipeline::{Stage, StageFuture};
use edge_wire::drift::Hysteresis;

/// Counters of one model, exposed as metrics.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Windows completed (the window assembler's count as of the last batch).
    pub windows: AtomicU64,
    /// Windows skipped for too many missing points (as of the last batch).
    pub skipped_missing: AtomicU64,
    /// Samples dropped for arriving older than their tag's latest (as of the last batch).
    pub late_samples: AtomicU64,
    /// Windows whose features were not finite (never fed to the model).
    pub skipped_nonfinite: AtomicU64,
    /// Windows dropped because inference was busy.
    pub dropped_busy: AtomicU64,
    /// Predictions made (windows whose inference succeeded).
    pub predictions: AtomicU64,
    /// Windows whose inference failed.
    pub inference_errors: AtomicU64,
    /// Predictions outside the manifest's declared output ranges.
    pub out_of_range: AtomicU64,
    /// Sum of inference times, microseconds.
    pub inference_us: AtomicU64,
    /// Bundles swapped in after the first: hot reloads and control requests.
    pub reloads: AtomicU64,
    /// Replacement bundles refused (the running one stayed).
    pub reload_failures: AtomicU64,
    /// Version number of the bundle being served (0 = none).
    pub version_number: AtomicU64,
    /// Sum of the shadow challenger's inference times, microseconds.
    pub shadow_inference_us: AtomicU64,
    /// The window assembler's counters as of the last batch (`replay` reports grid
    /// misalignment from them).
    pub window_stats: std::sync::Mutex<crate::features::WindowStats>,
}

struct Job {
    bundle: Arc<LoadedBundle>,
    /// A challenger run in shadow on the same input (`[[models]] shadow`).
    shadow: Option<Arc<LoadedBundle>>,
    row: FeatureRow,
    input: Vec<f32>,
}

/// The model stage of one `[[models]]` entry.
pub struct ModelStage {
    cfg: ModelConfig,
    trusted: Vec<VerifyingKey>,
    floors: FloorStore,
    tags: Box<dyn TagCatalog + Send>,
    stats: Arc<ModelStats>,
    current: Arc<LoadedBundle>,
    /// The challenger of `[[models]] shadow`, if it loaded.
    shadow: Option<Arc<LoadedBundle>>,
    /// The bundle file as last tried (modification time, size) and what came of it.
    last_load: Option<((SystemTime, u64), LoadOutcome)>,
    control: ModelControl,
    requests: Option<mpsc::Receiver<ReloadRequest>>,
    health: Arc<watch::Sender<ModelHealth>>,
}

/// What loading a bundle file gave: the bundle that serves, or why it was refused.
type LoadOutcome = Result<Arc<crate::pipeline::record::BundleRef>, Arc<LoadError>>;

impl std::fmt::Debug for ModelStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStage")
            .field("model", &self.cfg.name)
            .finish()
    }
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

impl ModelStage {
    /// Loads the configured bundle (every check) and raises its version floor.
    pub fn load(
        cfg: ModelConfig,
        trusted: Vec<VerifyingKey>,
        floors: FloorStore,
        tags: Box<dyn TagCatalog + Send>,
    ) -> Result<ModelStage, LoadError> {
        let file_stamp = stamp(&cfg.bundle);
        let current = Arc::new(Self::load_bundle(&cfg, &trusted, &floors, &*tags)?);
        super::labels::check(cfg.labels.as_ref(), &current, &*tags).map_err(|e| {
            LoadError::Incompatible {
                path: cfg.bundle.clone(),
                reason: e.to_string(),
            }
        })?;
        let stats = Arc::new(ModelStats::default());
        stats
            .version_number
            .store(current.source.version_number, Ordering::Relaxed);
        let shadow = cfg.shadow.as_ref().and_then(|path| {
            match Self::load_shadow(&cfg, path, &current, &trusted, &floors, &*tags) {
                Ok(b) => {
                    tracing::info!(model = %cfg.name, challenger = %b.source.bundle, version = %b.source.version,
                        version_number = b.source.version_number,
                        "shadow challenger loaded: compared on every window, never published");
                    Some(Arc::new(b))
                }
                Err(e) => {
                    tracing::error!(model = %cfg.name, "shadow challenger not started: {e}");
                    None
                }
            }
        });
        let (requests_tx, requests) = mpsc::channel(4);
        let (health, health_rx) = watch::channel(ModelHealth::default());
        Ok(ModelStage {
            last_load: file_stamp.map(|s| (s, Ok(current.source.clone()))),
            cfg,
            trusted,
            floors,
            tags,
            stats,
            current,
            shadow,
            control: ModelControl {
                requests: requests_tx,
                health: health_rx,
            },
            requests: Some(requests),
            health: Arc::new(health),
        })
    }

    /// The challenger: every check of a bundle (signature, floor, spec, model), without
    /// raising the floor, and the same feature spec as the champion (it runs on the same
    /// model input).
    fn load_shadow(
        cfg: &ModelConfig,
        path: &std::path::Path,
        champion: &LoadedBundle,
        trusted: &[VerifyingKey],
        floors: &FloorStore,
        tags: &dyn TagCatalog,
    ) -> Result<LoadedBundle, LoadError> {
        let (bytes, floor) = read_with_floor(path, floors)?;
        let b = LoadedBundle::load(&cfg.name, path, &bytes, trusted, floor, tags)?;
        if b.manifest.features != champion.manifest.features {
            return Err(LoadError::Incompatible {
                path: path.to_path_buf(),
                reason: "its feature spec differs from the serving bundle's; a shadow challenger runs on the same windows and model input (pack it with the same [spec])".into(),
            });
        }
        Ok(b)
    }

    /// The challenger loaded for `[[models]] shadow`.
    pub fn shadow(&self) -> Option<Arc<LoadedBundle>> {
        self.shadow.clone()
    }

    fn load_bundle(
        cfg: &ModelConfig,
        trusted: &[VerifyingKey],
        floors: &FloorStore,
        tags: &dyn TagCatalog,
    ) -> Result<LoadedBundle, LoadError> {
        let (bytes, floor) = read_with_floor(&cfg.bundle, floors)?;
        let b = LoadedBundle::load(&cfg.name, &cfg.bundle, &bytes, trusted, floor, tags)?;
        floors.raise(&b.manifest.name, b.manifest.version_number)?;
        Ok(b)
    }

    /// The counters, shared with the metrics registry.
    pub fn stats(&self) -> Arc<ModelStats> {
        self.stats.clone()
    }

    /// The bundle being served now.
    pub fn current(&self) -> Arc<LoadedBundle> {
        self.current.clone()
    }

    /// The handle that reloads this stage's bundle and watches its health.
    pub fn control(&self) -> ModelControl {
        self.control.clone()
    }

    /// Loads the bundle file if it changed since it was last tried, and swaps the new bundle
    /// in if it passes every check. `asked`: a control request, which also wants an answer
    /// when the file is missing (the periodic check waits quietly for one to appear).
    /// Returns the bundle swapped in, if any, and the outcome for the file as it is now.
    fn reload(&mut self, asked: bool) -> (Option<Arc<LoadedBundle>>, Option<LoadOutcome>) {
        let now = stamp(&self.cfg.bundle);
        if let Some((s, outcome)) = &self.last_load {
            if now == Some(*s) || (now.is_none() && !asked) {
                return (None, Some(outcome.clone()));
            }
        } else if now.is_none() && !asked {
            return (None, None);
        }
        let (swapped, outcome) = self.load_now();
        if let Some(s) = now {
            self.last_load = Some((s, outcome.clone()));
        }
        (swapped, Some(outcome))
    }

    fn load_now(&mut self) -> (Option<Arc<LoadedBundle>>, LoadOutcome) {
        match Self::load_bundle(&self.cfg, &self.trusted, &self.floors, &*self.tags) {
            Ok(b) => {
                let b = Arc::new(b);
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .version_number
                    .store(b.source.version_number, Ordering::Relaxed);
                tracing::info!(model = %self.cfg.name, bundle = %b.source.bundle, version = %b.source.version,
                    version_number = b.source.version_number, "new bundle loaded");
                self.current = b.clone();
                // The loader's code ran once more; let the kernel reclaim it again.
                crate::memory::release_executable_pages();
                let source = b.source.clone();
                (Some(b), Ok(source))
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(model = %self.cfg.name, "refused the new bundle: {e}; still serving {} {} (#{})",
                    self.current.source.bundle, self.current.source.version, self.current.source.version_number);
                (None, Err(Arc::new(e)))
            }
        }
    }

    async fn run_loop(
        mut self: Box<Self>,
        mut input: mpsc::Receiver<Record>,
        output: mpsc::Sender<Record>,
    ) {
        let name = self.cfg.name.clone();
        let stats = self.stats.clone();
        let label_tag = self.cfg.labels.as_ref().map(|l| l.tag.clone());
        // Each window's inference outcome comes back for the drift tracker (outputs, labels).
        // At most `queue` + 1 are in flight, so the channel stays small.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
        let (jobs, worker) = spawn_worker(
            &name,
            self.cfg.queue,
            output.clone(),
            stats.clone(),
            self.health.clone(),
            done_tx,
        );
        let mut requests = self.requests.take();
        // Drift alarm states survive restarts: `<data_dir>/bundles/drift-alarms-<model>.json`.
        let state_file = self.floors.dir().join(format!(
            "drift-alarms-{}.json",
            name.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "_"
            )
        ));
        let new_tracker = |b: &LoadedBundle, cfg: &ModelConfig, shadow: Option<&LoadedBundle>| {
            DriftTracker::new(b, cfg.drift_interval, &cfg.drift, cfg.labels.as_ref())
                .with_state(state_file.clone())
                .with_shadow(shadow)
        };
        let mut drift = new_tracker(&self.current, &self.cfg, self.shadow.as_deref());
        let mut skipped_seen = 0u64;
        let mut featurizer = Featurizer::new(&self.current.manifest.features);
        let mut rows = Vec::new();
        let mut tick = tokio::time::interval(self.cfg.reload_check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut busy_logged = false;
        tracing::info!(model = %name, bundle = %self.current.source.bundle, version = %self.current.source.version,
            version_number = self.current.source.version_number, inputs = ?self.current.manifest.features.input_shape(),
            "model serving");
        loop {
            let step = tokio::select! {
                r = input.recv() => match r { Some(r) => Step::Record(r), None => break },
                Some(o) = done_rx.recv() => {
                    let c = drift_outcome(&mut drift, o);
                    if !send_closed(&name, c, &output).await {
                        break;
                    }
                    continue;
                }
                Some(req) = async { requests.as_mut()?.recv().await } => {
                    let (swapped, outcome) = self.reload(true);
                    if let Some(outcome) = outcome {
                        // The requester may have given up waiting: nothing to tell then.
                        let _ = req.reply.send(outcome);
                    }
                    Step::Reloaded(swapped)
                }
                _ = tick.tick() => Step::Reloaded(self.reload(false).0),
            };
            let rec = match step {
                Step::Record(r) => r,
                Step::Reloaded(None) => continue,
                Step::Reloaded(Some(b)) => {
                    if b.manifest.features != featurizer.spec().clone() {
                        featurizer = Featurizer::new(&b.manifest.features);
                        skipped_seen = 0;
                    }
                    // The old bundle's interval ends here and its drift alarms clear: the
                    // new bundle has its own reference.
                    let mut c = drift.close();
                    c.alarms.extend(drift.retire(edge_wire::now_ns()));
                    if self
                        .shadow
                        .as_ref()
                        .is_some_and(|sh| sh.manifest.features != b.manifest.features)
                    {
                        tracing::warn!(model = %name, "the new bundle's feature spec differs from the shadow challenger's: the challenger stops");
                        self.shadow = None;
                    }
                    drift = new_tracker(&b, &self.cfg, self.shadow.as_deref());
                    if !send_closed(&name, c, &output).await {
                        break;
                    }
                    continue;
                }
            };
            let Record::Samples(batch) = rec else {
                continue;
            };
            // Outcomes that came back meanwhile first (one batch makes several windows; the
            // select above takes one outcome at a time): the drift tracker's open intervals
            // stay at most the inference queue behind.
            let mut caught_up = Closed::default();
            while let Ok(o) = done_rx.try_recv() {
                caught_up = caught_up.and(drift_outcome(&mut drift, o));
            }
            if !send_closed(&name, caught_up, &output).await {
                break;
            }
            if let Some(tag) = &label_tag {
                for smp in batch.iter().filter(|smp| &*smp.tag == tag.as_str()) {
                    let v = if smp.quality == edge_wire::Quality::Bad {
                        f64::NAN
                    } else {
                        smp.value.as_f64().unwrap_or(f64::NAN)
                    };
                    drift.add_label(smp.ts_ns, v);
                }
            }
            featurizer.push(&batch, &mut rows);
            let ws = featurizer.stats();
            // Windows skipped for missing data count as missing values in the drift summaries.
            drift.add_missing_windows(ws.skipped_missing.saturating_sub(skipped_seen));
            skipped_seen = ws.skipped_missing;
            stats.windows.store(ws.windows, Ordering::Relaxed);
            stats
                .skipped_missing
                .store(ws.skipped_missing, Ordering::Relaxed);
            stats.late_samples.store(ws.late_samples, Ordering::Relaxed);
            if let Ok(mut w) = stats.window_stats.lock() {
                w.clone_from(ws);
            }
            for row in rows.drain(..) {
                let bundle = self.current.clone();
                let input = model_input(&bundle.manifest.features, &row);
                if row.values.iter().any(|v| !v.is_finite()) || input.iter().any(|v| !v.is_finite())
                {
                    stats.skipped_nonfinite.fetch_add(1, Ordering::Relaxed);
                    drift.add_missing_windows(1);
                    continue;
                }
                // Every window counts for drift, also those inference has no time for.
                if Arc::ptr_eq(drift.source(), &bundle.source) {
                    let c = drift.add_window(row.start_ns, row.end_ns, row.drift_values());
                    if !send_closed(&name, c, &output).await {
                        break;
                    }
                }
                if self.cfg.features {
                    let rec = FeatureRecord {
                        source: bundle.source.clone(),
                        start_ns: row.start_ns,
                        end_ns: row.end_ns,
                        names: bundle.names.clone(),
                        values: row.values.clone(),
                    };
                    if output.send(Record::Features(Arc::new(rec))).await.is_err() {
                        break;
                    }
                }
                // The drift tracker waits for the outcome of each window it counted.
                let tracked = Arc::ptr_eq(drift.source(), &bundle.source);
                let shadow = self.shadow.clone();
                match jobs.try_send(Job {
                    bundle,
                    shadow,
                    row,
                    input,
                }) {
                    Ok(()) if tracked => drift.window_sent(),
                    Ok(()) => {}
                    Err(std_mpsc::TrySendError::Full(job))
                        if self.cfg.when_busy == WhenBusy::Wait =>
                    {
                        let j = jobs.clone();
                        match tokio::task::spawn_blocking(move || j.send(job)).await {
                            Ok(Ok(())) if tracked => drift.window_sent(),
                            Ok(Ok(())) => {}
                            _ => {
                                tracing::error!(model = %name, "inference thread stopped");
                                break;
                            }
                        }
                    }
                    Err(std_mpsc::TrySendError::Full(_)) => {
                        stats.dropped_busy.fetch_add(1, Ordering::Relaxed);
                        if !busy_logged {
                            busy_logged = true;
                            tracing::warn!(model = %name, queue = self.cfg.queue,
                                "inference is slower than windows arrive: dropping windows (counted in \
                                 edge_model_windows_skipped_busy_total); raise hop or queue");
                        }
                    }
                    Err(std_mpsc::TrySendError::Disconnected(_)) => {
                        tracing::error!(model = %name, "inference thread stopped");
                        break;
                    }
                }
            }
        }
        drop(jobs);
        // Let the worker finish what is queued (its results still reach the outputs).
        if let Some(r) = crate::task::joined(
            "inference thread",
            tokio::task::spawn_blocking(move || worker.join()).await,
        ) {
            crate::task::thread_joined("inference thread", r);
        }
        // The interval in progress is not lost at shutdown.
        let mut closed = Closed::default();
        while let Ok(o) = done_rx.try_recv() {
            closed = closed.and(drift_outcome(&mut drift, o));
        }
        send_closed(&name, closed.and(drift.close()), &output).await;
        let ws = featurizer.stats();
        tracing::info!(model = %name, windows = ws.windows, skipped_missing = ws.skipped_missing,
            late_samples = ws.late_samples, dropped_busy = stats.dropped_busy.load(Ordering::Relaxed),
            predictions = stats.predictions.load(Ordering::Relaxed), "model stage stopped");
    }
}

/// What woke the stage's loop up: a record to process, or a reload (with the bundle swapped
/// in, if one was).
enum Step {
    Record(Record),
    Reloaded(Option<Arc<LoadedBundle>>),
}

/// The file's bytes and the version floor of the bundle name it holds (the floor is per name:
/// the name is read before anything else is trusted).
fn read_with_floor(
    path: &std::path::Path,
    floors: &FloorStore,
) -> Result<(Vec<u8>, u64), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = edge_wire::bundle::file::parse(&bytes)
        .map(|u| u.manifest.name)
        .map_err(|source| LoadError::Refused {
            path: path.to_path_buf(),
            source,
        })?;
    let floor = floors.floor(&name)?;
    Ok((bytes, floor))
}

/// What inference made of one window, for the drift tracker.
struct Outcome {
    source: Arc<crate::pipeline::record::BundleRef>,
    start_ns: i64,
    end_ns: i64,
    /// `None`: inference failed.
    result: Option<Inferred>,
}

struct Inferred {
    outputs: Vec<(String, Vec<f64>)>,
    score: Option<f64>,
    label: Option<String>,
    over: Option<bool>,
    /// The shadow challenger on the same input: `None` without one, `Some(None)` when its
    /// inference failed, else its (score, label, over threshold).
    shadow: Option<Option<Decision>>,
}

/// What postprocess decided for one window: score, label, over the threshold.
type Decision = (Option<f64>, Option<String>, Option<bool>);

fn drift_outcome(drift: &mut DriftTracker, o: Outcome) -> Closed {
    // Outcomes of the bundle that was just replaced no longer count.
    if !Arc::ptr_eq(drift.source(), &o.source) {
        return Closed::default();
    }
    match o.result {
        Some(i) => {
            if let Some(sh) = &i.shadow {
                drift.add_shadow(
                    o.end_ns,
                    (i.score, i.label.as_deref(), i.over),
                    sh.as_ref().map(|d| (d.0, d.1.as_deref(), d.2)),
                );
            }
            drift.add_prediction(o.start_ns, o.end_ns, &i.outputs, i.score, i.over)
        }
        None => drift.add_failed_prediction(o.end_ns),
    }
}

/// Sends a closed interval's record and alarm changes; false when the pipeline closed.
async fn send_closed(name: &str, c: Closed, output: &mpsc::Sender<Record>) -> bool {
    for rec in c.records {
        if !rec.drifting.is_empty() {
            tracing::warn!(model = %name, drifting = ?rec.drifting, dataset_drift = rec.dataset_drift,
                metric = rec.metric.name(), "columns drift from the bundle's reference");
        }
        if output.send(Record::Drift(Arc::new(rec))).await.is_err() {
            return false;
        }
    }
    for a in c.alarms {
        if let Some(d) = &a.drift {
            if a.active {
                tracing::warn!(model = %name, subject = %d.subject, kind = d.kind.as_str(), metric = %d.metric,
                    value = a.score, threshold = ?a.threshold, "drift alarm raised ({} intervals)", d.intervals);
            } else {
                tracing::info!(model = %name, subject = %d.subject, kind = d.kind.as_str(), metric = %d.metric,
                    value = a.score, "drift alarm cleared");
            }
        }
        if output.send(Record::Alarm(Arc::new(a))).await.is_err() {
            return false;
        }
    }
    true
}

fn spawn_worker(
    name: &str,
    queue: usize,
    output: mpsc::Sender<Record>,
    stats: Arc<ModelStats>,
    health: Arc<watch::Sender<ModelHealth>>,
    done: mpsc::UnboundedSender<Outcome>,
) -> (std_mpsc::SyncSender<Job>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std_mpsc::sync_channel::<Job>(queue);
    let name = name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("infer-{name}"))
        .spawn(move || {
            let mut err_logged = false;
            let mut alarm = Hysteresis::default();
            while let Ok(job) = rx.recv() {
                let t0 = Instant::now();
                let res = job.bundle.model.run(&job.input);
                stats
                    .inference_us
                    .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                let mut outputs = match res {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = done.send(Outcome {
                            source: job.bundle.source.clone(),
                            start_ns: job.row.start_ns,
                            end_ns: job.row.end_ns,
                            result: None,
                        });
                        stats.inference_errors.fetch_add(1, Ordering::Relaxed);
                        health.send_modify(|h| h.count(&job.bundle.source, true, false));
                        if !err_logged {
                            err_logged = true;
                            tracing::error!(model = %name, "inference failed: {e}");
                        }
                        continue;
                    }
                };
                let in_range = job.bundle.in_range(&outputs);
                if !in_range {
                    stats.out_of_range.fetch_add(1, Ordering::Relaxed);
                }
                let (score, label, over) = job.bundle.postprocess(&mut outputs, &job.input);
                let named: Vec<(String, Vec<f64>)> =
                    outputs.into_iter().map(|o| (o.name, o.values)).collect();
                let mut outcome = Outcome {
                    source: job.bundle.source.clone(),
                    start_ns: job.row.start_ns,
                    end_ns: job.row.end_ns,
                    result: Some(Inferred {
                        outputs: named.clone(),
                        score,
                        label: label.clone(),
                        over,
                        shadow: None,
                    }),
                };
                let rule = job.bundle.manifest.postprocess.score.as_ref();
                let state = match (over, rule) {
                    (Some(o), Some(r)) => {
                        let (state, changed) = alarm.update(o, r.raise_after.max(1), r.clear_after.max(1));
                        if changed {
                            let score = score.unwrap_or(f64::NAN);
                            let ev = AlarmEvent {
                                source: job.bundle.source.clone(),
                                ts_ns: job.row.end_ns,
                                active: state,
                                score,
                                threshold: r.threshold,
                                drift: None,
                            };
                            if output.blocking_send(Record::Alarm(Arc::new(ev))).is_err() {
                                break;
                            }
                            if state {
                                tracing::warn!(model = %name, score, threshold = ?r.threshold, window_end_ns = job.row.end_ns,
                                    "alarm raised ({} windows past the threshold)", r.raise_after);
                            } else {
                                tracing::info!(model = %name, score, threshold = ?r.threshold, window_end_ns = job.row.end_ns,
                                    "alarm cleared ({} windows back within the threshold)", r.clear_after);
                            }
                        }
                        Some(state)
                    }
                    _ => None,
                };
                let p = Prediction {
                    source: job.bundle.source.clone(),
                    start_ns: job.row.start_ns,
                    end_ns: job.row.end_ns,
                    outputs: named,
                    score,
                    label,
                    over_threshold: over,
                    alarm: state,
                };
                stats.predictions.fetch_add(1, Ordering::Relaxed);
                health.send_modify(|h| h.count(&job.bundle.source, false, !in_range));
                if output
                    .blocking_send(Record::Prediction(Arc::new(p)))
                    .is_err()
                {
                    break;
                }
                // The challenger runs after the champion's prediction went out, on the same
                // input; only the comparison is kept.
                if let (Some(sh), Some(r)) = (&job.shadow, outcome.result.as_mut()) {
                    let t0 = Instant::now();
                    let decided = sh.model.run(&job.input).ok().map(|mut outs| sh.postprocess(&mut outs, &job.input));
                    stats
                        .shadow_inference_us
                        .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    r.shadow = Some(decided);
                }
                let _ = done.send(outcome);
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the inference thread: {e}"));
    (tx, handle)
}

impl Stage for ModelStage {
    fn kind(&self) -> &'static str {
        "model"
    }
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        output: mpsc::Sender<Record>,
    ) -> StageFuture {
        Box::pin(self.run_loop(input, output))
    }
}
