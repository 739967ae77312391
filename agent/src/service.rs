//! Running under systemd (`Type=notify`): `READY=1` once the pipeline runs (bundles loaded,
//! sources started, outputs open), `STATUS=` lines, `STOPPING=1` on shutdown, and a watchdog
//! that pings (`WATCHDOG=1`, every half `WatchdogSec`) only while the pipeline makes
//! progress. Progress is the hub's heartbeat: it beats on every record it routes and on an
//! idle tick, and stops when the hub is stuck (e.g. an output that never drains, with the
//! `block` backpressure policy) — so systemd restarts a stalled agent, but not an idle one.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::pipeline::PipelineStats;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Waits until the pipeline runs, reports ready, then keeps the watchdog fed while the
/// pipeline makes progress, until `shutdown`.
pub async fn supervise(
    started: oneshot::Receiver<Arc<PipelineStats>>,
    status: String,
    shutdown: CancellationToken,
    restart: Option<crate::remote_config::RestartRequest>,
) {
    // A run that ends for an in-process restart tells systemd it reloads, not stops; the
    // next run's READY=1 ends the reload.
    let stopping = || {
        let reloading = restart
            .as_ref()
            .and_then(|r| r.requested())
            .is_some_and(|r| r == crate::remote_config::Restart::InProcess);
        if reloading {
            notify(&[NotifyState::Reloading]);
        } else {
            notify(&[NotifyState::Stopping]);
        }
    };
    let stats = tokio::select! {
        _ = shutdown.cancelled() => {
            stopping();
            return;
        }
        s = started => match s {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    // Startup is over (config, bundles, model loads): let the kernel reclaim the code only it ran.
    let released = tokio::task::spawn_blocking(crate::memory::release_executable_pages)
        .await
        .unwrap_or(0);
    tracing::debug!(executable_bytes_advised = released, "ready");
    let Some(period) = sd_notify::watchdog_enabled() else {
        shutdown.cancelled().await;
        stopping();
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    tracing::info!(watchdog = ?period, "systemd watchdog on: pinging every {every:?} while the pipeline makes progress");
    let mut last = stats.heartbeat.load(Ordering::Relaxed);
    let mut stalled_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = stats.heartbeat.load(Ordering::Relaxed);
        if now != last {
            last = now;
            if let Some(t) = stalled_since.take() {
                tracing::info!(after = ?t.elapsed(), "pipeline moves again; watchdog pings resume");
                notify(&[NotifyState::Status(&status)]);
            }
            notify(&[NotifyState::Watchdog]);
        } else if stalled_since.is_none() {
            stalled_since = Some(tokio::time::Instant::now());
            tracing::error!(watchdog = ?period,
                "pipeline stalled (no progress for {every:?}): withholding watchdog pings, systemd will restart the agent if it stays stuck");
            notify(&[NotifyState::Status("pipeline stalled")]);
        }
    }
    stopping();
}
