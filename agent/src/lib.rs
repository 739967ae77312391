//! The edge agent: reads sensors, runs the pipeline, writes outputs.
//!
//! Entry points: [`run`] (the `run` command: config -> pipeline until SIGTERM) and
//! [`config::AgentConfig::load`] (the `check` command). See ARCHITECTURE.md for the map.

// No unsafe code, with one named exception: `memory` (madvise, malloc_trim: advice to the
// kernel and the allocator after startup and model loads; no safe binding exists).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent_update;
pub mod commands;
pub mod config;
pub mod config_health;
pub mod delivery;
pub mod diagnostics;
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
pub mod remote_config;
pub mod service;
pub mod sources;
pub mod sync;
pub mod task;

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use config::AgentConfig;
use metrics::Metrics;
use pipeline::{Pipeline, RunReport};

/// Crate version (what `Cargo.toml` says; the binary may set another with [`set_version`]).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

static VERSION_OVERRIDE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Sets the version this process reports everywhere (check-ins, status payloads, logs,
/// metrics): the binary's own, which a build may override (`EDGE_AGENT_VERSION`, see
/// agent/src/main.rs). Only the first call counts.
pub fn set_version(v: &'static str) {
    let _ = VERSION_OVERRIDE.set(v);
}

/// The version this process reports: [`set_version`]'s, else [`VERSION`].
pub fn version() -> &'static str {
    VERSION_OVERRIDE.get().copied().unwrap_or(VERSION)
}
/// Git commit the binary was built from (`unknown` outside a git checkout).
pub const GIT_HASH: &str = env!("EDGE_GIT_HASH");

/// How a run relates to its configuration file (remote configuration); the default runs
/// without one (no remote configuration, nothing to restart).
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// The configuration file, its text as loaded, and the apply pending on it.
    pub file: Option<ConfigFile>,
    /// Ends the run for a restart (remote configuration asks through it).
    pub restart: Option<remote_config::RestartRequest>,
}

/// The configuration file a run loaded.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Remote configuration of the file.
    pub remote: Arc<remote_config::RemoteConfig>,
    /// Its text as loaded.
    pub text: String,
    /// The fleet configuration this run must health-check ([`remote_config::RemoteConfig::before_start`]).
    pub pending: Option<remote_config::Pending>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunEnd {
    /// The pipeline's report.
    pub report: RunReport,
    /// A restart was asked for (a new configuration file, or a rollback).
    pub restart: Option<remote_config::Restart>,
}

/// The checks of `edge-agent check` on configuration text: parse and validate (`path` names
/// the file in messages), then the trusted keys and the bundles it names. Every problem,
/// one entry each, with its key and line where known.
pub fn check_config_text(text: &str, path: &Path) -> Result<AgentConfig, Vec<String>> {
    let cfg = AgentConfig::from_toml(text, path).map_err(|e| e.problems())?;
    let problems = check_models(&cfg);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

/// How a fleet configuration is checked on this device: [`check_config_text`] against the
/// file's path, and a new process when its `[log]` differs from the running one's.
fn fleet_config_check(f: &ConfigFile, running: &AgentConfig) -> Arc<remote_config::Check> {
    let path = f.remote.path().to_path_buf();
    let log = running.log.clone();
    Arc::new(move |text: &str| {
        let new = check_config_text(text, &path)?;
        Ok(if new.log == log {
            remote_config::Restart::InProcess
        } else {
            remote_config::Restart::Process
        })
    })
}

/// The configuration file at `path`, read and checked as `run` needs it. Counts the start
/// of a pending fleet configuration first (which may restore the last good file), and
/// rolls a pending one back at once when it does not load.
pub fn load_for_run(path: &Path) -> anyhow::Result<(AgentConfig, ConfigFile)> {
    let remote = Arc::new(remote_config::RemoteConfig::new(path));
    let pending = remote.before_start()?;
    let read = |p: &Path| -> anyhow::Result<(String, AgentConfig)> {
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", p.display()))?;
        let cfg = AgentConfig::from_toml(&text, p)?;
        Ok((text, cfg))
    };
    let (text, cfg, pending) = match read(path) {
        Ok((t, c)) => (t, c, pending),
        Err(e) if pending.is_some() => {
            remote.roll_back(&format!("it does not load: {e:#}"))?;
            let (t, c) = read(path)?;
            (t, c, None)
        }
        Err(e) => return Err(e),
    };
    Ok((
        cfg,
        ConfigFile {
            remote,
            text,
            pending,
        },
    ))
}

/// Builds the pipeline from a validated config and runs it until `shutdown` fires (or a
/// restart is asked for through `control`).
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
    control: RunControl,
) -> anyhow::Result<RunEnd> {
    let started_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
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
    let mut sync_stats: Option<Arc<sync::SyncStats>> = None;
    let releases = Arc::new(agent_update::ReleaseStore::new(&cfg.agent.data_dir));
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
            let remote = match (&control.file, &control.restart) {
                (Some(f), Some(r)) => Some(sync::RemoteControl {
                    config: f.remote.clone(),
                    check: fleet_config_check(f, &cfg),
                    running: f.text.clone(),
                    running_sha256: edge_wire::bundle::file::sha256_hex(f.text.as_bytes()),
                    restart: r.clone(),
                }),
                _ => None,
            };
            let diag = sync::commands::DiagnosticsSlot::default();
            let ops = sync::commands::DeviceOps {
                restart: control.restart.clone(),
                rebirth: d.rebirth_triggers(),
                diagnostics: diag.clone(),
            };
            sync_stats = Some(d.start_fleet_sync(
                &cfg,
                sc,
                delivery::FleetSyncParts {
                    models,
                    trusted,
                    remote,
                    ops,
                    releases: releases.clone(),
                },
            ));
            // The bundle reads the sync's own counters, so it is made after the sync started.
            let inputs = diagnostics::DiagnosticsInputs {
                metrics: metrics.clone(),
                outbox: Some(d.outbox()),
                sync: sync_stats.clone(),
                file: control.file.clone(),
                summary: cfg.summary(),
                agent_id: cfg.agent.id.clone(),
                releases: releases.clone(),
            };
            let _ = diag.set(Arc::new(move || diagnostics::bundle(&inputs)));
            if let Some(s) = &sync_stats {
                metrics.set_sync(s.clone());
            }
        }
    }
    let health_inputs = Arc::new(config_health::HealthInputs {
        metrics: metrics.clone(),
        mqtt: delivery
            .as_ref()
            .map(|d| d.mqtt_links())
            .unwrap_or_default(),
        sync: sync_stats.clone(),
        started_ms,
    });
    let health = match (&control.file, &control.restart) {
        (Some(f), Some(r)) => f.pending.clone().map(|p| {
            let timeout = cfg
                .sync
                .as_ref()
                .map(|s| s.config_health_timeout)
                .unwrap_or(std::time::Duration::from_secs(60));
            // Restoring a file whose [log] differs needs a new process.
            let on_rollback = match std::fs::read_to_string(f.remote.last_good_path())
                .ok()
                .and_then(|t| AgentConfig::from_toml(&t, f.remote.path()).ok())
            {
                Some(good) if good.log == cfg.log => remote_config::Restart::InProcess,
                _ => remote_config::Restart::Process,
            };
            tokio::spawn(config_health::watch(
                f.remote.clone(),
                p,
                health_inputs.clone(),
                timeout,
                r.clone(),
                on_rollback,
                shutdown.clone(),
            ))
        }),
        _ => None,
    };
    // A fleet release of the agent that is this process, started for its health check.
    let release_health = match (releases.state(), &control.restart) {
        (Ok(state), Some(r)) => releases
            .running(&state)
            .and_then(|me| state.pending.filter(|p| p.release.sha256 == me.sha256))
            .map(|p| {
                tracing::info!(version = %p.release.version, start = p.starts,
                    "agent release started; checking its health");
                let timeout = cfg
                    .sync
                    .as_ref()
                    .map(|s| s.agent_update.health_timeout)
                    .unwrap_or(std::time::Duration::from_secs(120));
                tokio::spawn(config_health::watch_release(
                    releases.clone(),
                    p.release.sha256,
                    health_inputs.clone(),
                    timeout,
                    r.clone(),
                    shutdown.clone(),
                ))
            }),
        (Err(e), _) => {
            tracing::error!("agent releases: {e}");
            None
        }
        _ => None,
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    pipeline.on_started(started_tx);
    let status = format!(
        "running: {} source(s), {} model(s), {} MQTT output(s)",
        cfg.source_count(),
        cfg.models.len(),
        cfg.outputs.mqtt.len()
    );
    let service = tokio::spawn(service::supervise(
        started_rx,
        status,
        shutdown.clone(),
        control.restart.clone(),
    ));
    tracing::info!(agent = %cfg.agent.id, version = version(), git = GIT_HASH, target = agent_update::TARGET, "edge-agent running");
    let report = pipeline.run(shutdown, metrics).await;
    task::joined("service", service.await);
    if let Some(h) = health {
        task::joined("configuration health check", h.await);
    }
    if let Some(h) = release_health {
        task::joined("agent release health check", h.await);
    }
    if let Some(d) = delivery {
        d.finish().await;
    }
    if let Some(t) = metrics_task {
        task::joined("metrics endpoint", t.await);
    }
    Ok(RunEnd {
        report,
        restart: control.restart.and_then(|r| r.requested()),
    })
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
