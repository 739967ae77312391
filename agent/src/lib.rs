//! The edge agent: reads sensors, runs the pipeline, writes outputs.
//!
//! Entry points: [`run`] (the `run` command: config -> pipeline until SIGTERM) and
//! [`config::AgentConfig::load`] (the `check` command). See ARCHITECTURE.md for the map.

#![forbid(unsafe_code)]

pub mod config;
pub mod logging;
pub mod metrics;
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
