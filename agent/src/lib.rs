//! The edge agent: reads sensors, runs the pipeline, writes outputs.
//!
//! Entry points: [`run`] (the `run` command: config -> pipeline until SIGTERM) and
//! [`config::AgentConfig::load`] (the `check` command). See ARCHITECTURE.md for the map.

#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod features;
pub mod inference;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod outputs;
pub mod pipeline;
pub mod recording;
pub mod sources;

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
    for (name, src) in sources::build(&cfg)? {
        pipeline.add_source(&name, src);
    }
    for stage in build_models(&cfg)? {
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
    tracing::info!(agent = %cfg.agent.id, version = VERSION, git = GIT_HASH, "edge-agent running");
    let report = pipeline.run(shutdown, metrics).await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    Ok(report)
}

/// The trusted bundle keys of the config.
pub fn trusted_keys(cfg: &AgentConfig) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    cfg.bundles
        .trusted_keys
        .iter()
        .map(|p| {
            edge_protocols::bundle::file::read_public_key(p)
                .map_err(|e| anyhow::anyhow!("bundles.trusted_keys: {e}"))
        })
        .collect()
}

/// Loads every configured model. A model whose bundle fails a check is left out with a loud
/// error — the sources and outputs still run — and `edge-agent check` reports the same error.
fn build_models(cfg: &AgentConfig) -> anyhow::Result<Vec<(String, models::ModelStage)>> {
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
            let floor = edge_protocols::bundle::file::parse(&bytes)
                .ok()
                .and_then(|u| floors.floor(&u.manifest.name).ok())
                .unwrap_or(0);
            models::LoadedBundle::load(
                &m.name,
                &m.bundle,
                &bytes,
                &trusted,
                floor,
                &cfg.tag_catalog(),
            )
            .err()
            .map(|e| format!("models[{i}].bundle: {e}"))
        })
        .collect()
}
