//! The health check of a freshly applied fleet configuration ([`crate::remote_config`]) or
//! agent release ([`crate::agent_update`]): what "the new file / binary works" means, decided
//! on the running agent's own counters.
//!
//! Healthy = all of these at the same check, within the timeout (`[sync]
//! config_health_timeout`, 60 s by default, for a configuration; `[sync.agent_update]
//! health_timeout`, 120 s, for a release):
//! - every source connected to its device (`edge_source_connected`);
//! - the pipeline moving (the hub's heartbeat advanced since the last check);
//! - every MQTT output connected to its broker;
//! - a fleet check-in succeeded since this run started (a file that cuts the device off from
//!   the fleet server — wrong address, CA, or no `[sync]` — never passes).
//!
//! Checked every [`CHECK_EVERY`]. Passing commits the file as the last good one; the
//! timeout rolls it back with the criteria that were not met as the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::remote_config::{Pending, RemoteConfig, Restart, RestartRequest};
use crate::sync::SyncStats;

/// How often the criteria are evaluated.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What the health check reads.
#[derive(Debug)]
pub struct HealthInputs {
    /// The run's counters (sources, pipeline heartbeat).
    pub metrics: Arc<Metrics>,
    /// Each MQTT output's name and whether its broker connection is up.
    pub mqtt: Vec<(String, Arc<AtomicBool>)>,
    /// The fleet sync's counters (absent: the file has no `[sync]`).
    pub sync: Option<Arc<SyncStats>>,
    /// Unix ms when this run started: a check-in must be newer.
    pub started_ms: u64,
}

impl HealthInputs {
    /// The criteria not met now (empty: healthy). `last_beat` is the heartbeat seen at the
    /// previous check (updated here).
    pub fn unmet(&self, last_beat: &mut Option<u64>) -> Vec<String> {
        let mut out = Vec::new();
        for (name, connected, errors) in self.metrics.source_connections() {
            if !connected {
                out.push(format!(
                    "source {name} not connected ({errors} connection/read errors, see the agent log)"
                ));
            }
        }
        let beat = self.metrics.heartbeat();
        match (beat, *last_beat) {
            (None, _) => out.push("the pipeline has not started".into()),
            (Some(b), Some(prev)) if b == prev => out.push("the pipeline is not moving".into()),
            (Some(_), None) => out.push("the pipeline has not been seen moving yet".into()),
            _ => {}
        }
        *last_beat = beat;
        for (name, up) in &self.mqtt {
            if !up.load(Ordering::Relaxed) {
                out.push(format!("MQTT output {name} not connected to its broker"));
            }
        }
        match &self.sync {
            None => out.push("no [sync]: the device would be cut off from the fleet server".into()),
            Some(s) => {
                let last = s.last_checkin_ms.load(Ordering::Relaxed);
                if last < self.started_ms {
                    out.push("no successful fleet check-in with this configuration".into());
                }
            }
        }
        out
    }
}

/// The verdict of a health watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every criterion met at one check (the detail says what was seen).
    Healthy(String),
    /// The timeout passed first (the criteria not met at the last check).
    Unhealthy(String),
}

/// Evaluates the criteria every [`CHECK_EVERY`] until they all hold (`Healthy`) or
/// `timeout` passed (`Unhealthy`); `None` when `stop` fired first (the next start decides
/// again).
pub async fn judge(
    inputs: &HealthInputs,
    timeout: Duration,
    stop: &CancellationToken,
) -> Option<Verdict> {
    let started = tokio::time::Instant::now();
    let mut last_beat = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tick.tick() => {}
        }
        let unmet = inputs.unmet(&mut last_beat);
        if unmet.is_empty() {
            return Some(Verdict::Healthy(format!(
                "healthy after {:.1} s: {} source(s) connected, pipeline moving, {} MQTT output(s) connected, fleet check-in ok",
                started.elapsed().as_secs_f64(),
                inputs.metrics.source_connections().len(),
                inputs.mqtt.len()
            )));
        }
        if started.elapsed() >= timeout {
            return Some(Verdict::Unhealthy(format!(
                "not healthy within {}: {}",
                humantime::format_duration(timeout),
                unmet.join("; ")
            )));
        }
    }
}

/// Watches `pending` until it is healthy (commit) or `timeout` passed (roll back and ask
/// for a restart `on_rollback`), or the run stops first (the next start decides again).
pub async fn watch(
    remote: Arc<RemoteConfig>,
    pending: Pending,
    inputs: Arc<HealthInputs>,
    timeout: Duration,
    restart: RestartRequest,
    on_rollback: Restart,
    stop: CancellationToken,
) {
    match judge(&inputs, timeout, &stop).await {
        None => {}
        Some(Verdict::Healthy(detail)) => {
            let detail = format!("{detail} (start {})", pending.starts);
            if let Err(e) = remote.commit(&pending, &detail) {
                tracing::error!("remote configuration: cannot record the healthy file: {e}");
            }
        }
        Some(Verdict::Unhealthy(why)) => match remote.roll_back(&why) {
            Ok(true) => restart.request(on_rollback),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(
                    "remote configuration: cannot roll back: {e}; the agent keeps the new file"
                )
            }
        },
    }
}

/// Watches a freshly started agent release (see [`crate::agent_update`]): healthy →
/// committed; not healthy within `timeout` → rolled back, and the process exits for
/// systemd to start the previous binary.
pub async fn watch_release(
    store: Arc<crate::agent_update::ReleaseStore>,
    sha256: String,
    inputs: Arc<HealthInputs>,
    timeout: Duration,
    restart: RestartRequest,
    stop: CancellationToken,
) {
    match judge(&inputs, timeout, &stop).await {
        None => {}
        Some(Verdict::Healthy(detail)) => {
            if let Err(e) = store.commit(&sha256, &detail) {
                tracing::error!("agent release: cannot record the healthy release: {e}");
            }
        }
        Some(Verdict::Unhealthy(why)) => {
            tracing::error!(release = %sha256, "agent release rolled back: {why}");
            match store.roll_back(&why) {
                Ok(true) => restart.request(Restart::Process),
                Ok(false) => {}
                Err(e) => tracing::error!("agent release: cannot roll back: {e}"),
            }
        }
    }
}
