//! The edge agent: reads sensors, runs the pipeline, writes outputs.
//!
//! Entry points: [`run`] (the `run` command: config -> pipeline until SIGTERM) and
//! [`config::AgentConfig::load`] (the `check` command). See ARCHITECTURE.md for the map.

// No unsafe code, with one named exception: `memory` (madvise, malloc_trim: advice to the
// kernel and the allocator after startup and model loads; no safe binding exists).
#![deny(unsafe_code)]

pub mod commands;
pub mod config;
pub mod features;
pub mod inference;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod outbox;
pub mod outputs;
pub mod pipeline;
pub mod publish;
pub mod recording;
pub mod service;
pub mod sources;
pub mod sync;
pub mod task;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use config::AgentConfig;
use metrics::Metrics;
use pipeline::{Pipeline, RunReport};

/// Crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit the binary was built from (`unknown` outside a git checkout).
pub const GIT_HASH: &str = env!("EDGE_GIT_HASH");

/// Builds the pipeline from a validated config and runs it until `shutdown` fires.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<RunReport> {
    let metrics = Arc::new(Metrics::new());
    let mut pipeline = Pipeline::new(cfg.pipeline.clone());
    for (name, src) in sources::build(&cfg.sources, &cfg.agent.id, cfg.opcua_pki_dir())? {
        pipeline.add_source(&name, src);
    }
    for w in check_warnings(&cfg) {
        tracing::warn!("{w}");
    }
    let stages = build_models(&cfg)?;
    let model_stats: Vec<(String, Arc<models::ModelStats>)> =
        stages.iter().map(|(n, s)| (n.clone(), s.stats())).collect();
    let model_controls: Vec<(String, models::ModelControl)> = stages
        .iter()
        .map(|(n, s)| (n.clone(), s.control()))
        .collect();
    for stage in stages {
        metrics.add_model(&stage.0, stage.1.stats());
        pipeline.add_stage(&stage.0, Box::new(stage.1));
    }
    for c in &cfg.outputs.file {
        pipeline.add_output(&c.name, Box::new(outputs::file::FileOutput::new(c.clone())));
    }
    let metrics_task = match cfg.metrics.listen {
        Some(addr) => {
            let m = metrics.clone();
            let stop = shutdown.clone();
            // Bind before starting sources so a taken port is reported at once.
            let listener_check = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: {e}"))?;
            drop(listener_check);
            Some(tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, m, stop).await {
                    tracing::error!("metrics endpoint failed: {e}");
                }
            }))
        }
        None => None,
    };
    #[cfg_attr(not(feature = "mqtt"), allow(unused_mut))]
    let mut delivery = if cfg.outputs.mqtt.is_empty() && cfg.sync.is_none() {
        None
    } else {
        let d = open_outbox(&cfg)?;
        metrics.set_outbox(d.outbox.clone());
        pipeline.add_output(
            "outbox",
            Box::new(outbox::OutboxWriter::new(
                d.outbox.clone(),
                cfg.outbox.sample_interval,
            )),
        );
        Some(d)
    };
    #[cfg(feature = "mqtt")]
    if let Some(d) = delivery.as_mut() {
        publish_setup(&cfg, d, &model_stats)?;
    }
    let sync_stop = CancellationToken::new();
    let sync_task = match &cfg.sync {
        Some(sc) => {
            let handles = cfg
                .models
                .iter()
                .filter_map(|m| {
                    let control = model_controls.iter().find(|(n, _)| *n == m.name)?.1.clone();
                    Some(sync::update::ModelHandle {
                        name: m.name.clone(),
                        bundle_path: m.bundle.clone(),
                        control,
                    })
                })
                .collect();
            let trusted = if cfg.models.is_empty() {
                Vec::new()
            } else {
                trusted_keys(&cfg)?
            };
            let task = sync::SyncTask::new(
                sc.clone(),
                cfg.agent.id.clone(),
                cfg.agent.data_dir.clone(),
                delivery.as_ref().map(|d| d.outbox.clone()),
                handles,
                trusted,
                models::floor::FloorStore::new(&cfg.bundle_dir()),
            );
            metrics.set_sync(task.stats.clone());
            Some(tokio::spawn(task.run(sync_stop.clone())))
        }
        None => None,
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    pipeline.on_started(started_tx);
    let status = format!(
        "running: {} source(s), {} model(s), {} MQTT output(s)",
        cfg.source_count(),
        cfg.models.len(),
        cfg.outputs.mqtt.len()
    );
    let service = tokio::spawn(service::supervise(started_rx, status, shutdown.clone()));
    tracing::info!(agent = %cfg.agent.id, version = VERSION, git = GIT_HASH, "edge-agent running");
    let report = pipeline.run(shutdown, metrics).await;
    task::joined("service", service.await);
    sync_stop.cancel();
    if let Some(t) = sync_task {
        task::join_within("fleet sync", t, std::time::Duration::from_secs(5)).await;
    }
    if let Some(d) = delivery {
        d.finish().await;
    }
    if let Some(t) = metrics_task {
        task::joined("metrics endpoint", t.await);
    }
    Ok(report)
}

/// The trusted bundle keys of the config.
pub fn trusted_keys(cfg: &AgentConfig) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    cfg.bundles
        .trusted_keys
        .iter()
        .map(|p| {
            edge_wire::bundle::file::read_public_key(p)
                .map_err(|e| anyhow::anyhow!("bundles.trusted_keys: {e}"))
        })
        .collect()
}

/// Loads every configured model. A model whose bundle fails a check is left out with a loud
/// error — the sources and outputs still run — and `edge-agent check` reports the same error.
pub(crate) fn build_models(cfg: &AgentConfig) -> anyhow::Result<Vec<(String, models::ModelStage)>> {
    if cfg.models.is_empty() {
        return Ok(Vec::new());
    }
    let trusted = trusted_keys(cfg)?;
    let mut out = Vec::new();
    for m in &cfg.models {
        let floors = models::floor::FloorStore::new(&cfg.bundle_dir());
        match models::ModelStage::load(
            m.clone(),
            trusted.clone(),
            floors,
            Box::new(cfg.tag_catalog()),
        ) {
            Ok(stage) => out.push((m.name.clone(), stage)),
            Err(e) => tracing::error!(model = %m.name, "model not started: {e}"),
        }
    }
    Ok(out)
}

/// What `edge-agent check` (and `run`, in the log) points out without refusing the config:
/// a `drift_interval` shorter than the model's window, whose intervals hold one or two windows
/// each (drift scores on so few windows are noise, and policies never see enough).
pub fn check_warnings(cfg: &AgentConfig) -> Vec<String> {
    cfg.models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let bytes = std::fs::read(&m.bundle).ok()?;
            let spec = edge_wire::bundle::file::parse(&bytes)
                .ok()?
                .manifest
                .features;
            let secs = |points: usize| points as f64 / spec.rate_hz;
            let (window, hop) = (secs(spec.window_len()), secs(spec.hop_len().max(1)));
            let interval = m.drift_interval.as_secs_f64();
            (interval < window).then(|| {
                let most = (interval / hop).floor() as u64 + 1;
                format!(
                    "models[{i}].drift_interval: {} is shorter than the model's {}s window (hop {}s): \
                     an interval holds at most {most} window(s), too few to score drift; use at least {}s",
                    humantime::format_duration(m.drift_interval),
                    window,
                    hop,
                    (window * 10.0).ceil()
                )
            })
        })
        .collect()
}

/// What `edge-agent check` verifies beyond the config file: trusted keys and bundles load.
pub fn check_models(cfg: &AgentConfig) -> Vec<String> {
    if cfg.models.is_empty() {
        return Vec::new();
    }
    let trusted = match trusted_keys(cfg) {
        Ok(t) => t,
        Err(e) => return vec![e.to_string()],
    };
    cfg.models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let floors = models::floor::FloorStore::new(&cfg.bundle_dir());
            let bytes = match std::fs::read(&m.bundle) {
                Ok(b) => b,
                Err(e) => {
                    return Some(format!(
                        "models[{i}].bundle: cannot read {}: {e}",
                        m.bundle.display()
                    ))
                }
            };
            let floor = edge_wire::bundle::file::parse(&bytes)
                .ok()
                .and_then(|u| floors.floor(&u.manifest.name).ok())
                .unwrap_or(0);
            let tags = cfg.tag_catalog();
            match models::LoadedBundle::load(&m.name, &m.bundle, &bytes, &trusted, floor, &tags) {
                Err(e) => Some(format!("models[{i}].bundle: {e}")),
                Ok(b) => models::labels::check(m.labels.as_ref(), &b, &tags)
                    .err()
                    .map(|e| format!("models[{i}].{e}")),
            }
        })
        .collect()
}

/// The outbox, its committer, and the destinations that drain it (MQTT outputs, fleet sync).
struct Delivery {
    outbox: Arc<outbox::SledOutbox>,
    committer: tokio::task::JoinHandle<()>,
    commit_stop: CancellationToken,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    forward_stop: CancellationToken,
}

impl Delivery {
    /// After the pipeline stopped: commit what it wrote, then stop the outputs.
    async fn finish(self) {
        self.commit_stop.cancel();
        // The committer commits once more on its way out.
        task::joined("outbox committer", self.committer.await);
        self.forward_stop.cancel();
        for f in self.forwarders {
            task::join_within("MQTT forwarder", f, std::time::Duration::from_secs(3)).await;
        }
        let s = self.outbox.stats();
        let backlog: u64 = s.values().map(|x| x.records).sum();
        tracing::info!(
            backlog,
            "outbox committed; undelivered records wait for the next start"
        );
    }
}

/// Opens the outbox with one destination per MQTT output and one for the fleet server, and
/// starts its committer.
fn open_outbox(cfg: &AgentConfig) -> anyhow::Result<Delivery> {
    let path = cfg
        .outbox
        .path
        .clone()
        .unwrap_or_else(|| cfg.agent.data_dir.join("outbox"));
    let mut consumers: Vec<(String, Vec<outbox::Stream>)> = cfg
        .outputs
        .mqtt
        .iter()
        .map(|o| (o.name.clone(), o.streams.clone()))
        .collect();
    if let Some(s) = &cfg.sync {
        consumers.push((sync::OUTBOX_DEST.to_string(), s.streams.clone()));
    }
    let (ob, report) = outbox::SledOutbox::open(&path, &cfg.outbox, &consumers)
        .map_err(|e| anyhow::anyhow!("outbox {}: {e}", path.display()))?;
    match report {
        outbox::OpenReport::Opened => {}
        outbox::OpenReport::MovedAside {
            path: aside,
            reason,
        } => {
            tracing::error!(outbox = %path.display(), moved_to = %aside.display(),
                "the outbox is corrupt ({reason}); it was moved aside and a fresh one started — \
                 its undelivered records are still on disk there but will not be sent; inspect or delete {}", aside.display());
        }
        outbox::OpenReport::Unavailable { reason } => {
            tracing::error!(outbox = %path.display(),
                "the outbox cannot be opened ({reason}); running without it (records are dropped and counted) \
                 and retrying — check free disk space and permissions");
        }
    }
    let ob = Arc::new(ob);
    let commit_stop = CancellationToken::new();
    let committer = tokio::spawn(ob.clone().run_committer(commit_stop.clone()));
    Ok(Delivery {
        outbox: ob,
        committer,
        commit_stop,
        forwarders: Vec::new(),
        forward_stop: CancellationToken::new(),
    })
}

/// Starts one forwarder per `[[outputs.mqtt]]` on the outbox.
#[cfg(feature = "mqtt")]
fn publish_setup(
    cfg: &AgentConfig,
    d: &mut Delivery,
    model_stats: &[(String, Arc<models::ModelStats>)],
) -> anyhow::Result<()> {
    let ob = d.outbox.clone();
    let forward_stop = d.forward_stop.clone();
    let forwarders = &mut d.forwarders;
    for o in &cfg.outputs.mqtt {
        let client_id = o
            .broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", cfg.agent.id, o.name));
        let opts = edge_sources::mqtt::client::mqtt_options(&o.broker, &client_id)
            .map_err(|e| anyhow::anyhow!("outputs.mqtt {}: {e}", o.name))?;
        let qos = if o.qos == 0 {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        let (format, will, subs): (
            Box<dyn publish::forwarder::Format>,
            publish::link::WillFn,
            Vec<(String, rumqttc::QoS)>,
        ) = match o.format {
            publish::MqttFormat::Json => {
                let (prefix, device) = (o.topic_prefix.clone(), cfg.agent.id.clone());
                let will = publish::json::JsonFormat::will(&prefix, &device);
                (
                    Box::new(publish::json::JsonFormat {
                        prefix,
                        device,
                        qos,
                        outbox: ob.clone(),
                        models: model_stats.to_vec(),
                    }),
                    Arc::new(move || Some(will.clone())),
                    Vec::new(),
                )
            }
            publish::MqttFormat::Sparkplug => {
                let sp = o.sparkplug.clone().ok_or_else(|| {
                    anyhow::anyhow!("outputs.mqtt {}: no [sparkplug] table", o.name)
                })?;
                let node = sp
                    .edge_node_id
                    .clone()
                    .unwrap_or_else(|| cfg.agent.id.clone());
                let bdseq = Arc::new(publish::sparkplug::BdSeq::open(
                    cfg.agent
                        .data_dir
                        .join("sparkplug")
                        .join(format!("{}.bdseq", o.name)),
                ));
                let owners = cfg.tag_owners();
                let subs = publish::sparkplug::SparkplugFormat::subscriptions(
                    &sp.group_id,
                    &node,
                    sp.primary_host_id.as_deref(),
                );
                let (g, n, b) = (sp.group_id.clone(), node.clone(), bdseq.clone());
                let will: publish::link::WillFn =
                    Arc::new(move || Some(publish::sparkplug::SparkplugFormat::will(&g, &n, &b)));
                let format = publish::sparkplug::SparkplugFormat::new(
                    sp.group_id.clone(),
                    node,
                    sp.primary_host_id.clone(),
                    qos,
                    bdseq,
                    Box::new(move |t: &str| owners.owner(t).map(String::from)),
                    ob.clone(),
                    o.streams.clone(),
                    model_stats.to_vec(),
                )
                .ddata_datatype(sp.ddata_datatype);
                (Box::new(format), will, subs)
            }
        };
        let link_stop = CancellationToken::new();
        let link =
            publish::link::Link::start(&o.name, opts, &o.broker, subs, will, link_stop.clone());
        let f = publish::forwarder::Forwarder {
            name: o.name.clone(),
            outbox: ob.clone(),
            streams: o.streams.clone(),
            qos,
            batch: o.batch,
            backlog_share: o.backlog_share,
            format,
            link,
            link_stop,
            periodic_every: std::time::Duration::from_secs(30),
            ack_timeout: std::time::Duration::from_secs(30),
            window: Default::default(),
        };
        forwarders.push(tokio::spawn(f.run(forward_stop.clone())));
    }
    Ok(())
}
