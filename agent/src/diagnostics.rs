//! The diagnostic bundle an operator fetches through the fleet (the `diagnostics` command):
//! one JSON document with what a support engineer asks first — versions (and the agent
//! releases on the device), the configuration
//! file's hash and remote-configuration state, every source's connection, the outbox per
//! stream, the fleet sync's counters, and the whole metrics text. Secrets are not in it
//! (the configuration is summarised, not copied).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::outbox::SledOutbox;
use crate::sync::SyncStats;

/// What the bundle is made from; cloned into the closure the sync task calls.
#[derive(Debug, Clone)]
pub struct DiagnosticsInputs {
    /// The run's counters.
    pub metrics: Arc<Metrics>,
    /// The outbox (absent without MQTT outputs and sync).
    pub outbox: Option<Arc<SledOutbox>>,
    /// The fleet sync's counters.
    pub sync: Option<Arc<SyncStats>>,
    /// The configuration file (path, text, remote state).
    pub file: Option<crate::ConfigFile>,
    /// The configuration's one-line summary (`edge-agent check`'s).
    pub summary: String,
    /// `[agent] id`.
    pub agent_id: String,
    /// The agent releases on the device.
    pub releases: Arc<crate::agent_update::ReleaseStore>,
}

/// The bundle now.
pub fn bundle(i: &DiagnosticsInputs) -> Value {
    let sources: Vec<Value> = i
        .metrics
        .source_connections()
        .into_iter()
        .map(|(name, connected, errors)| json!({"name": name, "connected": connected, "errors": errors}))
        .collect();
    let outbox: Vec<Value> = match &i.outbox {
        Some(ob) => ob
            .stats()
            .values()
            .map(|s| {
                json!({"stream": s.stream, "head": s.head, "durable": s.durable, "records": s.records,
                       "bytes": s.bytes, "dropped": s.dropped, "skipped": s.skipped})
            })
            .collect(),
        None => Vec::new(),
    };
    let sync = i.sync.as_ref().map(|s| {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        json!({"checkins": l(&s.checkins), "failures": l(&s.failures),
               "uploaded_records": l(&s.uploaded_records), "uploaded_bytes": l(&s.uploaded_bytes),
               "updates_applied": l(&s.updates_applied), "updates_failed": l(&s.updates_failed),
               "last_checkin_ms": l(&s.last_checkin_ms)})
    });
    let config = i.file.as_ref().map(|f| {
        json!({"path": f.remote.path().display().to_string(),
               "sha256": edge_wire::bundle::file::sha256_hex(f.text.as_bytes()),
               "bytes": f.text.len(),
               "remote": f.remote.state().ok()})
    });
    json!({
        "generated_ms": chrono::Utc::now().timestamp_millis(),
        "agent": {"id": i.agent_id, "version": crate::version(), "git": crate::GIT_HASH,
                  "pid": std::process::id(), "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
                  "target": crate::agent_update::TARGET,
                  "release": i.releases.status()},
        "config": config,
        "summary": i.summary,
        "sources": sources,
        "outbox": outbox,
        "sync": sync,
        "metrics": i.metrics.render(),
    })
}
