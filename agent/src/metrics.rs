//! The one metrics registry of the agent: every stage's counters, read at scrape time, and the
//! optional Prometheus `/metrics` endpoint (`[metrics] listen`).
//!
//! Metric names (all prefixed `edge_`):
//! - `source_samples_total`, `source_bad_samples_total`, `source_dropped_samples_total`,
//!   `source_errors_total`, `source_reconnects_total`, `source_connected` — label `source`, `kind`;
//!   `source_bad_messages_total` — labels `source`, `kind`, `reason` (see `BadMessage`)
//! - `pipeline_batches_total`, `pipeline_samples_total`, `pipeline_dropped_at_shutdown_total`,
//!   `pipeline_queue_batches` (fan-in queue depth)
//! - `output_written_total`, `output_failed_total`, `output_queue_records` — label `output`, `kind`
//! - `sync_checkins_total`, `sync_failures_total`, `sync_uploaded_records_total`,
//!   `sync_uploaded_bytes_total`, `sync_updates_applied_total`, `sync_updates_failed_total`,
//!   `sync_last_checkin_seconds`
//! - `agent_info` — label `version`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edge_sources::{SampleBatch, SourceStats};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::models::ModelStats;
use crate::pipeline::record::Record;
use crate::pipeline::OutputStats;
use crate::pipeline::{PipelineObserver, PipelineStats};

#[derive(Default)]
struct Inner {
    sources: Vec<(String, &'static str, Arc<SourceStats>)>,
    outputs: Vec<(
        String,
        &'static str,
        Arc<OutputStats>,
        mpsc::WeakSender<Record>,
    )>,
    pipeline: Option<Arc<PipelineStats>>,
    models: Vec<(String, Arc<ModelStats>)>,
    outbox: Option<Arc<crate::outbox::SledOutbox>>,
    fan_in: Option<mpsc::WeakSender<SampleBatch>>,
    sync: Option<Arc<crate::sync::SyncStats>>,
}

/// Shared handle on every stage's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl PipelineObserver for Metrics {
    fn fan_in(&self, queue: &mpsc::Sender<SampleBatch>) {
        self.set_fan_in(queue);
    }
    fn pipeline(&self, stats: Arc<PipelineStats>) {
        self.set_pipeline(stats);
    }
    fn source(&self, name: &str, kind: &'static str, stats: Arc<SourceStats>) {
        self.add_source(name, kind, stats);
    }
    fn output(
        &self,
        name: &str,
        kind: &'static str,
        stats: Arc<OutputStats>,
        queue: &mpsc::Sender<Record>,
    ) {
        self.add_output(name, kind, stats, queue);
    }
}

impl Metrics {
    /// An empty registry; stages register as the pipeline builds.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while registering; the data is counters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_source(&self, name: &str, kind: &'static str, s: Arc<SourceStats>) {
        self.lock().sources.push((name.to_string(), kind, s));
    }
    /// Metrics hold only weak handles on queues: they must never keep a queue open.
    pub fn add_output(
        &self,
        name: &str,
        kind: &'static str,
        s: Arc<OutputStats>,
        q: &mpsc::Sender<Record>,
    ) {
        self.lock()
            .outputs
            .push((name.to_string(), kind, s, q.downgrade()));
    }
    /// Registers a model's counters (exported with label `model`).
    pub fn add_model(&self, name: &str, s: Arc<ModelStats>) {
        self.lock().models.push((name.to_string(), s));
    }

    /// Registers the outbox, whose depth and size are read at every scrape.
    pub fn set_outbox(&self, o: Arc<crate::outbox::SledOutbox>) {
        self.lock().outbox = Some(o);
    }

    /// Registers the fleet sync's counters (`sync_*`).
    pub fn set_sync(&self, s: Arc<crate::sync::SyncStats>) {
        self.lock().sync = Some(s);
    }

    pub(crate) fn set_pipeline(&self, s: Arc<PipelineStats>) {
        self.lock().pipeline = Some(s);
    }
    pub(crate) fn set_fan_in(&self, q: &mpsc::Sender<SampleBatch>) {
        self.lock().fan_in = Some(q.downgrade());
    }

    /// The whole registry in OpenMetrics text.
    pub fn render(self: &Arc<Self>) -> String {
        let mut out = Text(String::with_capacity(8192));
        Snapshot(self.clone()).encode(&mut out);
        out.0.push_str("# EOF\n");
        out.0
    }

    /// Every source's name, whether it is connected, and its error count.
    pub fn source_connections(&self) -> Vec<(String, bool, u64)> {
        self.lock()
            .sources
            .iter()
            .map(|(n, _, s)| (n.clone(), s.is_connected(), load(&s.errors)))
            .collect()
    }

    /// The hub's heartbeat (absent until the pipeline started).
    pub fn heartbeat(&self) -> Option<u64> {
        self.lock().pipeline.as_ref().map(|p| load(&p.heartbeat))
    }

    /// A quick value lookup for tests and the status line.
    pub fn source_stat(&self, name: &str, f: impl Fn(&SourceStats) -> u64) -> Option<u64> {
        self.lock()
            .sources
            .iter()
            .find(|s| s.0 == name)
            .map(|s| f(&s.2))
    }
}

#[derive(Debug)]
struct Snapshot(Arc<Metrics>);

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
}

/// OpenMetrics text (<https://openmetrics.io>), written by hand: a family is `# HELP` and
/// `# TYPE` lines, then one line per label set (counters get the `_total` suffix); label
/// values escape `\`, `"` and newlines. (The prometheus-client crate's registry and
/// encoder cost tens of kB in a binary measured against a size budget, for a format this
/// small.)
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, help: &str, t: MetricType) {
        let kind = match t {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        };
        self.0.push_str("# HELP ");
        self.0.push_str(name);
        self.0.push(' ');
        self.0.push_str(help);
        self.0.push_str("\n# TYPE ");
        self.0.push_str(name);
        self.0.push(' ');
        self.0.push_str(kind);
        self.0.push('\n');
    }

    fn sample(&mut self, name: &str, t: MetricType, labels: &[(&str, &str)], value: i64) {
        self.0.push_str(name);
        if t == MetricType::Counter {
            self.0.push_str("_total");
        }
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(&value.to_string());
        self.0.push('\n');
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, help: &str, t: MetricType, value: i64) {
        self.family(name, help, t);
        self.sample(name, t, &[], value);
    }
}

/// A sample value: counters and gauges are u64 or i64 here; past i64::MAX (never, for
/// counts) it saturates.
fn v64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// A counter family: name, help, and how to read it from a stage's stats.
type CounterDef<S> = (&'static str, &'static str, fn(&S) -> u64);

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Items waiting in a queue; 0 once the queue is closed.
fn queue_depth<T>(q: &mpsc::WeakSender<T>) -> i64 {
    q.upgrade()
        .map_or(0, |q| (q.max_capacity() - q.capacity()) as i64)
}

impl Snapshot {
    fn encode(&self, enc: &mut Text) {
        let m = self.0.lock();
        let source_counters: [CounterDef<SourceStats>; 5] = [
            (
                "edge_source_samples",
                "Samples handed to the pipeline",
                |s| load(&s.samples),
            ),
            ("edge_source_bad_samples", "Samples with bad quality", |s| {
                load(&s.bad_samples)
            }),
            (
                "edge_source_dropped_samples",
                "Samples dropped (pipeline full or shutdown)",
                |s| load(&s.dropped_samples),
            ),
            (
                "edge_source_errors",
                "Read, decode and connection errors",
                |s| load(&s.errors),
            ),
            (
                "edge_source_reconnects",
                "Reconnections after the first connection",
                |s| load(&s.reconnects),
            ),
        ];
        for (name, help, get) in source_counters {
            let me = name;
            enc.family(me, help, MetricType::Counter);
            for (src, kind, s) in &m.sources {
                let labels = [("source", src.as_str()), ("kind", *kind)];
                enc.sample(me, MetricType::Counter, &labels, v64(get(s)));
            }
        }
        let me = "edge_source_bad_messages";
        enc.family(
            me,
            "Received messages that could not be used, per reason (acknowledged, not retried)",
            MetricType::Counter,
        );
        for (src, kind, s) in &m.sources {
            for why in edge_sources::source::BadMessage::ALL {
                let n = s.bad_messages(why);
                if n > 0 || *kind == "mqtt" {
                    let labels = [
                        ("source", src.as_str()),
                        ("kind", *kind),
                        ("reason", why.name()),
                    ];
                    enc.sample(me, MetricType::Counter, &labels, v64(n));
                }
            }
        }
        let me = "edge_source_connected";
        enc.family(
            me,
            "1 while the source has a working connection",
            MetricType::Gauge,
        );
        for (src, kind, s) in &m.sources {
            let labels = [("source", src.as_str()), ("kind", *kind)];
            enc.sample(
                me,
                MetricType::Gauge,
                &labels,
                v64(i64::from(s.is_connected())),
            );
        }
        if let Some(p) = &m.pipeline {
            for (name, help, v) in [
                (
                    "edge_pipeline_batches",
                    "Batches received from sources",
                    load(&p.batches),
                ),
                (
                    "edge_pipeline_samples",
                    "Samples received from sources",
                    load(&p.samples),
                ),
                (
                    "edge_pipeline_dropped_at_shutdown",
                    "Samples read but dropped at a shutdown deadline",
                    load(&p.dropped_at_shutdown),
                ),
            ] {
                enc.single(name, help, MetricType::Counter, v64(v));
            }
        }
        if let Some(q) = &m.fan_in {
            enc.single(
                "edge_pipeline_queue_batches",
                "Batches waiting between sources and the pipeline",
                MetricType::Gauge,
                v64(queue_depth(q)),
            );
        }
        let output_counters: [CounterDef<OutputStats>; 2] = [
            ("edge_output_written", "Items written by the output", |s| {
                load(&s.written)
            }),
            (
                "edge_output_failed",
                "Items the output could not write",
                |s| load(&s.failed),
            ),
        ];
        for (name, help, get) in output_counters {
            let me = name;
            enc.family(me, help, MetricType::Counter);
            for (o, kind, s, _) in &m.outputs {
                enc.sample(
                    me,
                    MetricType::Counter,
                    &[("output", o.as_str()), ("kind", *kind)],
                    v64(get(s)),
                );
            }
        }
        let me = "edge_output_queue_records";
        enc.family(me, "Records waiting for the output", MetricType::Gauge);
        for (o, kind, _, q) in &m.outputs {
            enc.sample(
                me,
                MetricType::Gauge,
                &[("output", o.as_str()), ("kind", *kind)],
                v64(queue_depth(q)),
            );
        }
        let model_counters: [CounterDef<ModelStats>; 9] = [
            ("edge_model_windows", "Windows completed", |s| {
                load(&s.windows)
            }),
            (
                "edge_model_windows_skipped_busy",
                "Windows dropped because inference was busy",
                |s| load(&s.dropped_busy),
            ),
            (
                "edge_model_late_samples",
                "Samples too late for their window",
                |s| load(&s.late_samples),
            ),
            ("edge_model_predictions", "Predictions made", |s| {
                load(&s.predictions)
            }),
            ("edge_model_inference_errors", "Inference errors", |s| {
                load(&s.inference_errors)
            }),
            (
                "edge_model_out_of_range",
                "Predictions outside the manifest's declared range",
                |s| load(&s.out_of_range),
            ),
            (
                "edge_model_inference_microseconds",
                "Total inference time",
                |s| load(&s.inference_us),
            ),
            ("edge_model_reloads", "Bundle reloads", |s| load(&s.reloads)),
            (
                "edge_model_reload_failures",
                "Bundle reloads refused or failed",
                |s| load(&s.reload_failures),
            ),
        ];
        for (name, help, get) in model_counters {
            let me = name;
            enc.family(me, help, MetricType::Counter);
            for (model, s) in &m.models {
                enc.sample(
                    me,
                    MetricType::Counter,
                    &[("model", model.as_str())],
                    v64(get(s)),
                );
            }
        }
        let me = "edge_model_windows_skipped";
        enc.family(
            me,
            "Windows skipped: too many missing/bad samples, or non-finite features",
            MetricType::Counter,
        );
        for (model, s) in &m.models {
            for (reason, v) in [
                ("missing", load(&s.skipped_missing)),
                ("nonfinite", load(&s.skipped_nonfinite)),
            ] {
                enc.sample(
                    me,
                    MetricType::Counter,
                    &[("model", model.as_str()), ("reason", reason)],
                    v64(v),
                );
            }
        }
        let me = "edge_model_bundle_version";
        enc.family(
            me,
            "Version number of the bundle being served",
            MetricType::Gauge,
        );
        for (model, s) in &m.models {
            enc.sample(
                me,
                MetricType::Gauge,
                &[("model", model.as_str())],
                v64(load(&s.version_number) as i64),
            );
        }
        if let Some(ob) = &m.outbox {
            let stats = ob.stats();
            let gauges: [CounterDef<crate::outbox::StreamStats>; 3] = [
                (
                    "edge_outbox_records",
                    "Records stored, waiting for a destination",
                    |s| s.records,
                ),
                ("edge_outbox_bytes", "Bytes stored per stream", |s| s.bytes),
                (
                    "edge_outbox_head_sequence",
                    "Last sequence number assigned",
                    |s| s.head,
                ),
            ];
            for (name, help, get) in gauges {
                let me = name;
                enc.family(me, help, MetricType::Gauge);
                for s in &stats {
                    enc.sample(
                        me,
                        MetricType::Gauge,
                        &[("stream", s.stream)],
                        v64(get(s) as i64),
                    );
                }
            }
            let me = "edge_outbox_dropped";
            enc.family(
                me,
                "Records dropped by the size/age limit or a failed write",
                MetricType::Counter,
            );
            for s in &stats {
                enc.sample(
                    me,
                    MetricType::Counter,
                    &[("stream", s.stream)],
                    v64(s.dropped),
                );
            }
            let me = "edge_outbox_skipped_sequence";
            enc.family(me, "Sequence numbers skipped at this start after an unclean stop (reserved for live delivery, never committed)", MetricType::Counter);
            for s in &stats {
                enc.sample(
                    me,
                    MetricType::Counter,
                    &[("stream", s.stream)],
                    v64(s.skipped),
                );
            }
            enc.single("edge_outbox_low_space", "1 while the disk is full and only alarms, drift and events are stored (from the reserve)", MetricType::Gauge, v64(i64::from(ob.low_space())));
            enc.single(
                "edge_outbox_disk_bytes",
                "Size of the outbox database on disk",
                MetricType::Gauge,
                v64(ob.size_on_disk() as i64),
            );
        }
        if let Some(s) = &m.sync {
            let counters: [(&str, &str, &AtomicU64); 6] = [
                (
                    "edge_sync_checkins",
                    "Successful check-ins with the fleet server",
                    &s.checkins,
                ),
                (
                    "edge_sync_failures",
                    "Sync cycles that failed (network, refusals)",
                    &s.failures,
                ),
                (
                    "edge_sync_uploaded_records",
                    "Outbox records uploaded to the fleet server",
                    &s.uploaded_records,
                ),
                (
                    "edge_sync_uploaded_bytes",
                    "Record payload bytes uploaded",
                    &s.uploaded_bytes,
                ),
                (
                    "edge_sync_updates_applied",
                    "Model updates installed and healthy",
                    &s.updates_applied,
                ),
                (
                    "edge_sync_updates_failed",
                    "Model updates refused or rolled back",
                    &s.updates_failed,
                ),
            ];
            for (name, help, v) in counters {
                enc.single(name, help, MetricType::Counter, v64(load(v)));
            }
            enc.single(
                "edge_sync_last_checkin_seconds",
                "Unix time of the last successful check-in (0: never)",
                MetricType::Gauge,
                v64((load(&s.last_checkin_ms) / 1000) as i64),
            );
        }
        let me = "edge_agent_info";
        enc.family(me, "Agent build", MetricType::Gauge);
        enc.sample(
            me,
            MetricType::Gauge,
            &[("version", crate::version())],
            v64(1),
        );
    }
}

/// Serves `GET /metrics` until `shutdown` (HTTP/1.1 on plain hyper: one small route does
/// not need a web framework in a binary measured in bytes). Anything else is a 404.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint on http://{addr}/metrics");
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let m = metrics.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let m = m.clone();
                    async move {
                        let found = req.uri().path() == "/metrics"
                            && matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
                        let resp = if found {
                            hyper::Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(m.render())))
                        } else {
                            hyper::Response::builder()
                                .status(hyper::StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found: GET /metrics\n")))
                        };
                        resp.map_err(std::io::Error::other)
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("metrics endpoint: connection ended: {e}");
                    }
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}
