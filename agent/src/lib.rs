//! The edge agent: reads sensors, runs the pipeline, writes outputs.
//!
//! Entry points: [`run`] (the `run` command: config -> pipeline until SIGTERM) and
//! [`config::AgentConfig::load`] (the `check` command). See ARCHITECTURE.md for the map.

// No unsafe code, with one named exception: `memory` (madvise, malloc_trim: advice to the
// kernel and the allocator after startup and model loads; no safe binding exists).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod commands;
pub mod config;
pub mod delivery;
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
    #[cfg_attr(not(feature = "mqtt"), allow(unused_variables))]
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
    let mut delivery = if cfg.outputs.mqtt.is_empty() && cfg.sync.is_none() {
        None
    } else {
        let d = delivery::Delivery::open(&cfg)?;
        metrics.set_outbox(d.outbox());
        pipeline.add_output("outbox", Box::new(d.writer(cfg.outbox.sample_interval)));
        Some(d)
    };
    if let Some(d) = delivery.as_mut() {
        #[cfg(feature = "mqtt")]
        d.start_mqtt_outputs(&cfg, &model_stats)?;
        if let Some(sc) = &cfg.sync {
            let models = cfg
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
            metrics.set_sync(d.start_fleet_sync(&cfg, sc, models, trusted));
        }
    }
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
