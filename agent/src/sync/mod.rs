//! The fleet sync client: enrollment, check-in with status, outbox upload, model updates.
//!
//! One task ([`SyncTask::run`]) repeats a cycle every check-in interval while the server is
//! reachable:
//!
//! 1. enroll once (key + CSR made here, one-time token) — `identity.rs`;
//! 2. check in with the agent's status (models, backlog per stream, last error) and learn
//!    which bundles the server wants here;
//! 3. send pending update reports;
//! 4. upload the outbox in bounded batches, streams in the configured priority order
//!    (alarms and drift before raw samples), within the bandwidth cap; the outbox cursor
//!    `fleet` moves only to what the server acked (highest contiguous sequence stored), so a
//!    cut mid-upload re-sends and the server de-duplicates;
//! 5. apply model updates (`update.rs`);
//! 6. take a desired configuration file ([`crate::remote_config`]): send the reports owed
//!    about earlier ones, validate and stage a new one, and ask the run to restart with it;
//! 7. take a desired agent release ([`crate::agent_update`]): send the reports owed, install
//!    a new one beside the running binary, and ask for a process restart into it.
//!
//! Failures are logged once per change and retried with backoff; an operator-fixable refusal
//! (revoked device, bad token) is retried slowly.

pub mod agent_release;
pub mod client;
pub mod commands;
pub mod config;
pub mod identity;
pub mod update;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_wire::sync::{
    self as wire, CheckIn, CheckInReply, ModelStatus, StreamStatus, UploadAck, UploadBatch,
    UploadRecord,
};
use tokio_util::sync::CancellationToken;

pub use config::SyncConfig;

use crate::outbox::SledOutbox;
use client::{ClientError, FleetClient, ServerUrl};
use identity::IdentityFiles;
use update::{ModelHandle, Updater};

/// The outbox destination name of the fleet server.
pub const OUTBOX_DEST: &str = "fleet";

/// Counters of the sync client, exposed as metrics and in the log.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Check-ins the server answered.
    pub checkins: std::sync::atomic::AtomicU64,
    /// Sync cycles that failed (each is retried with backoff).
    pub failures: std::sync::atomic::AtomicU64,
    /// Outbox records the server acknowledged.
    pub uploaded_records: std::sync::atomic::AtomicU64,
    /// Payload bytes of those records (before compression).
    pub uploaded_bytes: std::sync::atomic::AtomicU64,
    /// Model updates installed and healthy (outcome `applied`).
    pub updates_applied: std::sync::atomic::AtomicU64,
    /// Model updates rolled back or never installed.
    pub updates_failed: std::sync::atomic::AtomicU64,
    /// Unix ms of the last successful check-in (0: never).
    pub last_checkin_ms: std::sync::atomic::AtomicU64,
}

/// What the sync task needs for remote configuration.
#[derive(Clone)]
pub struct RemoteControl {
    /// The configuration file and its companions.
    pub config: Arc<crate::remote_config::RemoteConfig>,
    /// The checks of `edge-agent check` for a new file.
    pub check: Arc<crate::remote_config::Check>,
    /// The text of the file this run loaded.
    pub running: String,
    /// Its SHA-256 (what the device reports).
    pub running_sha256: String,
    /// Ends the run for a restart with a new file.
    pub restart: crate::remote_config::RestartRequest,
}

impl std::fmt::Debug for RemoteControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteControl")
            .field("config", &self.config.path())
            .field("running_sha256", &self.running_sha256)
            .finish()
    }
}

/// The fleet sync client of one agent (module doc). Built once at start; [`SyncTask::run`]
/// consumes it.
pub struct SyncTask {
    /// `[sync]`.
    pub cfg: SyncConfig,
    /// This agent's id (the enrollment's name).
    pub agent_id: String,
    /// `agent.data_dir`: the identity lives in `sync/` under it, downloads in `sync/downloads/`.
    pub data_dir: std::path::PathBuf,
    /// The outbox to upload from (cursor [`OUTBOX_DEST`]); `None`: check-ins only.
    pub outbox: Option<Arc<SledOutbox>>,
    /// Applies the model updates the server asks for.
    pub updater: Updater,
    /// Counters, shared with the metrics registry.
    pub stats: Arc<SyncStats>,
    /// Remote configuration (absent: the agent runs without a configuration file).
    pub remote: Option<RemoteControl>,
    /// What operators' commands act on.
    pub ops: commands::DeviceOps,
    /// Installs the agent releases the server asks for.
    pub agent: agent_release::AgentUpdater,
    command_log: commands::CommandLog,
    started: Instant,
    /// Bundle identities by file stamp: a check-in hashes a bundle only when it changed.
    identities: std::sync::Mutex<IdentityCache>,
}

type IdentityCache = std::collections::HashMap<
    std::path::PathBuf,
    ((std::time::SystemTime, u64), update::BundleIdentity),
>;

impl std::fmt::Debug for SyncTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTask")
            .field("server", &self.cfg.server)
            .finish()
    }
}

/// Which client identity a connection presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presenting {
    /// None (enrollment).
    Nothing,
    /// The certificate in use.
    Current,
    /// The renewed certificate, to confirm it.
    Next,
}

/// Why the sync's TLS client config could not be made (the operator must fix a file).
#[derive(Debug, thiserror::Error)]
enum TlsSetupError {
    /// `[sync] server_ca` unreadable.
    #[error("sync.server_ca: {path}: {source}")]
    ServerCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The combined trust file could not be written.
    #[error("sync trust bundle: {0}")]
    Trust(crate::remote_config::RemoteConfigError),
    /// The certificates or the key do not make a TLS config.
    #[error("sync.server_ca: {0}")]
    Tls(edge_wire::tls::TlsError),
}

/// The TLS client config: the server is trusted through `[sync] server_ca` and the fleet CA
/// certificates the server handed out (at enrollment and renewals: the new CA of a
/// rotation), combined into `sync/trust.pem`.
fn tls_config(
    cfg: &SyncConfig,
    ids: &IdentityFiles,
    presenting: Presenting,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let auth = match presenting {
        Presenting::Nothing => None,
        Presenting::Current => Some((ids.cert(), ids.key())),
        Presenting::Next => Some((ids.next_cert(), ids.next_key())),
    };
    let trust = match std::fs::read_to_string(ids.fleet_ca()) {
        Ok(extra) if !extra.trim().is_empty() => {
            let base = std::fs::read_to_string(&cfg.server_ca).map_err(|source| {
                TlsSetupError::ServerCa {
                    path: cfg.server_ca.clone(),
                    source,
                }
            })?;
            let combined = ids.dir.join("trust.pem");
            let text = format!("{}\n{}", base.trim_end(), extra);
            if std::fs::read_to_string(&combined).ok().as_deref() != Some(text.as_str()) {
                crate::remote_config::write_atomic(&combined, text.as_bytes())
                    .map_err(TlsSetupError::Trust)?;
            }
            combined
        }
        _ => cfg.server_ca.clone(),
    };
    edge_wire::tls::client_config(
        Some(&trust),
        auth.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map_err(TlsSetupError::Tls)
}

impl SyncTask {
    /// A sync task for `cfg`: `models` are the `[[models]]` it may update, `trusted` the bundle
    /// keys updates must be signed with, `floors` this device's version floors. Nothing runs
    /// until [`SyncTask::run`].
    pub fn new(
        cfg: SyncConfig,
        agent_id: String,
        data_dir: std::path::PathBuf,
        outbox: Option<Arc<SledOutbox>>,
        models: Vec<ModelHandle>,
        trusted: Vec<ed25519_dalek::VerifyingKey>,
        floors: crate::models::floor::FloorStore,
    ) -> SyncTask {
        let updater = Updater {
            trusted,
            floors,
            models,
            downloads: data_dir.join("sync").join("downloads"),
            health: cfg.health.clone(),
            max_bytes_per_s: cfg.max_bytes_per_s,
            given_up: Default::default(),
            downloaded: Default::default(),
        };
        let command_log = commands::CommandLog::new(&data_dir);
        let release_keys = cfg.agent_update.keys().unwrap_or_else(|e| {
            tracing::error!("sync.agent_update.trusted_keys: {e}; agent releases are refused");
            Vec::new()
        });
        let agent = agent_release::AgentUpdater {
            store: Arc::new(crate::agent_update::ReleaseStore::new(&data_dir)),
            trusted: release_keys,
            downloads: data_dir.join("sync").join("downloads"),
            max_bytes_per_s: cfg.max_bytes_per_s,
            downloaded: Default::default(),
        };
        SyncTask {
            agent,
            command_log,
            cfg,
            agent_id,
            data_dir,
            outbox,
            updater,
            stats: Arc::default(),
            remote: None,
            ops: Default::default(),
            started: Instant::now(),
            identities: Default::default(),
        }
    }

    /// Runs until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let ids = IdentityFiles::new(&self.data_dir);
        let url = match ServerUrl::parse(&self.cfg.server) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("sync.server: {e}; fleet sync disabled");
                return;
            }
        };
        let mut backoff = self.cfg.retry.backoff();
        let mut last_error: Option<String> = None;
        let mut pending_reports = Vec::new();
        let mut client: Option<FleetClient> = None;
        loop {
            let started = Instant::now();
            let r = self
                .cycle(
                    &ids,
                    &url,
                    &mut client,
                    &mut pending_reports,
                    last_error.clone(),
                )
                .await;
            let wait = match r {
                Ok(next) => {
                    if last_error.take().is_some() {
                        tracing::info!(server = %self.cfg.server, "fleet sync working again");
                    }
                    backoff.reset();
                    next
                }
                Err(e) => {
                    self.stats
                        .failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let refusal = e.1;
                    let msg = e.0;
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(server = %self.cfg.server, "fleet sync: {msg}");
                    }
                    last_error = Some(msg);
                    if let Some(c) = client.as_mut() {
                        c.disconnect();
                    }
                    if refusal {
                        backoff.fatal_delay()
                    } else {
                        backoff.next_delay()
                    }
                }
            };
            let wait = wait.saturating_sub(started.elapsed().min(wait / 2));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One cycle. Err((message, operator must act)).
    async fn cycle(
        &mut self,
        ids: &IdentityFiles,
        url: &ServerUrl,
        client: &mut Option<FleetClient>,
        pending_reports: &mut Vec<wire::UpdateReport>,
        last_error: Option<String>,
    ) -> Result<Duration, (String, bool)> {
        let fail = |e: ClientError| {
            let refusal = e.is_refusal();
            (e.to_string(), refusal)
        };
        let identity = ids.load().map_err(|e| (e.to_string(), true))?;
        let identity = match identity {
            Some(i) => i,
            None => {
                let token = match &self.cfg.enroll_token {
                    Some(t) => t
                        .resolve()
                        .map_err(|e| (format!("sync.enroll_token: {e}"), true))?,
                    None => return Err((identity::IdentityError::NoToken.to_string(), true)),
                };
                let tls = tls_config(&self.cfg, ids, Presenting::Nothing)
                    .map_err(|e| (e.to_string(), true))?;
                let mut c = FleetClient::new(url.clone(), tls, self.cfg.request_timeout);
                let id = ids
                    .enroll(&mut c, &self.cfg.server, &self.agent_id, &token)
                    .await
                    .map_err(|e| {
                        let refusal =
                            matches!(&e, identity::IdentityError::Enroll(c) if c.is_refusal());
                        (e.to_string(), refusal)
                    })?;
                tracing::info!(device = %id.device_id, server = %self.cfg.server, "enrolled with the fleet server");
                *client = None;
                id
            }
        };
        // A renewal waiting for its confirmation (or cut short in a crash) is finished first.
        if ids.has_next() && self.confirm_renewal(ids, url).await {
            *client = None;
        }
        if client.is_none() {
            let tls = tls_config(&self.cfg, ids, Presenting::Current)
                .map_err(|e| (e.to_string(), true))?;
            *client = Some(FleetClient::new(url.clone(), tls, self.cfg.request_timeout));
        }
        let Some(c) = client.as_mut() else {
            return Err(("no client".into(), false));
        };
        // 1. Check in.
        let reply: CheckInReply = c
            .call(wire::path::CHECKIN, &self.status(last_error))
            .await
            .map_err(fail)?;
        self.stats
            .checkins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.last_checkin_ms.store(
            chrono::Utc::now().timestamp_millis().max(0) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if reply.device_id != identity.device_id {
            tracing::warn!(ours = %identity.device_id, server = %reply.device_id, "server knows this device under another id");
        }
        let next = if reply.next_checkin_s > 0 {
            Duration::from_secs(reply.next_checkin_s.clamp(1, 3600))
        } else {
            self.cfg.interval
        };
        // The certificate: renewed when the server says so (two thirds of its life, or a CA
        // rotation); the one in use stays valid until the server confirmed the new one.
        if reply.renew && !ids.has_next() {
            match ids.renew(c, &self.agent_id).await {
                Ok(r) => {
                    tracing::info!(not_after_ms = r.not_after_ms, "device certificate renewed; confirming it");
                    if self.confirm_renewal(ids, url).await {
                        *client = None;
                        return Ok(Duration::from_millis(100)); // continue on the new one
                    }
                }
                Err(e) => tracing::warn!("device certificate renewal failed (the current one stays in use; retried at the next check-in): {e}"),
            }
        }
        // 2. Reports owed from earlier cycles.
        self.send_reports(c, pending_reports).await.map_err(fail)?;
        self.send_config_reports(c).await.map_err(fail)?;
        self.send_agent_reports(c).await.map_err(fail)?;
        if let Some(d) = &reply.desired_config {
            if self.take_config(d) {
                self.send_config_reports(c).await.map_err(fail)?;
                // The run ends for the restart; uploads continue after it.
                return Ok(next);
            }
            self.send_config_reports(c).await.map_err(fail)?;
        }
        // Operators' commands: each result is sent before anything it leaves to do.
        let mut next = next;
        for cmd in &reply.commands {
            let (r, after) =
                commands::run(&self.command_log, &self.ops, &self.updater.models, cmd).await;
            let _: wire::Empty = c.call(wire::path::COMMAND_RESULT, &r).await.map_err(fail)?;
            match after {
                commands::After::Nothing => {}
                commands::After::Restart => {
                    commands::restart(&self.ops);
                    return Ok(next);
                }
                commands::After::Resync => {
                    self.updater.given_up.clear();
                    if let Err(e) = self.agent.store.update(|s| s.given_up.clear()) {
                        tracing::warn!("agent releases: {e}");
                    }
                    if let Some(r) = &self.remote {
                        if let Err(e) = r.config.update(|s| s.given_up.clear()) {
                            tracing::warn!("remote configuration: {e}");
                        }
                    }
                    next = Duration::from_millis(100);
                }
            }
        }
        // 3. Upload, highest priority first, for at most a few intervals.
        self.upload(c, next * 3).await.map_err(fail)?;
        // 4. Updates.
        if !reply.desired.is_empty() {
            let reports = self.updater.apply_all(c, &reply.desired).await;
            for r in &reports {
                let counter = match r.outcome {
                    wire::UpdateOutcome::Applied => &self.stats.updates_applied,
                    _ => &self.stats.updates_failed,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            pending_reports.extend(reports);
            self.send_reports(c, pending_reports).await.map_err(fail)?;
        }
        // 5. The agent binary itself: installed beside the running one; the process then
        // exits for systemd (and the launcher) to start the new one.
        if let Some(d) = &reply.desired_agent {
            match agent_release::install(&mut self.agent, c, d).await {
                Ok(true) => {
                    commands::restart(&self.ops);
                    return Ok(next);
                }
                Ok(false) => self.send_agent_reports(c).await.map_err(fail)?,
                Err(update::Retry(e)) => {
                    tracing::warn!(version = %d.version, "agent release: {e} (tried again at the next check-in)")
                }
            }
        }
        Ok(next)
    }

    /// Sends the agent release reports owed, oldest first.
    async fn send_agent_reports(&self, c: &mut FleetClient) -> Result<(), ClientError> {
        for report in self.agent.store.owed() {
            let _: wire::Empty = c.call(wire::path::AGENT_REPORT, &report).await?;
            if let Err(e) = self.agent.store.acknowledged(&report) {
                tracing::warn!("agent releases: {e}");
            }
        }
        Ok(())
    }

    async fn send_reports(
        &self,
        c: &mut FleetClient,
        pending: &mut Vec<wire::UpdateReport>,
    ) -> Result<(), ClientError> {
        while let Some(r) = pending.first() {
            let _: wire::Empty = c.call(wire::path::REPORT, r).await?;
            pending.remove(0);
        }
        Ok(())
    }

    /// Presents the renewed certificate to the server; once it accepted it, the renewed
    /// identity becomes the one in use. A certificate the server does not know (a later
    /// renewal replaced it) is forgotten; a network failure leaves it for the next cycle.
    async fn confirm_renewal(&self, ids: &IdentityFiles, url: &ServerUrl) -> bool {
        if !ids.next_key().exists() {
            // A promotion cut short after the key moved: finish it.
            return match ids.promote_next() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!("device certificate: {e}");
                    false
                }
            };
        }
        let tls = match tls_config(&self.cfg, ids, Presenting::Next) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("renewed device certificate unusable ({e}); forgetting it");
                ids.drop_next();
                return false;
            }
        };
        let mut c = FleetClient::new(url.clone(), tls, self.cfg.request_timeout);
        let r: Result<wire::Empty, ClientError> =
            c.call(wire::path::RENEW_CONFIRM, &wire::Empty {}).await;
        c.disconnect();
        match r {
            Ok(_) => match ids.promote_next() {
                Ok(()) => {
                    tracing::info!("device certificate renewed: the new one is in use");
                    true
                }
                Err(e) => {
                    tracing::error!("device certificate: {e}");
                    false
                }
            },
            Err(e) if e.is_refusal() => {
                tracing::warn!(
                    "the server does not know the renewed certificate ({e}); forgetting it"
                );
                ids.drop_next();
                false
            }
            Err(e) => {
                tracing::warn!("cannot confirm the renewed certificate yet: {e}");
                false
            }
        }
    }

    /// Sends the configuration reports owed, oldest first; each is forgotten once the
    /// server took it.
    async fn send_config_reports(&self, c: &mut FleetClient) -> Result<(), ClientError> {
        let Some(r) = &self.remote else {
            return Ok(());
        };
        for report in r.config.owed() {
            let _: wire::Empty = c.call(wire::path::CONFIG_REPORT, &report).await?;
            if let Err(e) = r.config.acknowledged(&report) {
                tracing::warn!("remote configuration: {e}");
            }
        }
        Ok(())
    }

    /// Validates and stages a desired configuration; true when the run must restart.
    fn take_config(&self, d: &wire::DesiredConfig) -> bool {
        let Some(r) = &self.remote else {
            return false;
        };
        match r.config.stage(d, &r.running, &*r.check) {
            Ok(crate::remote_config::Staged::Restart(how)) => {
                r.restart.request(how);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(name = %d.name, version_number = d.version_number,
                    "remote configuration: cannot stage the fleet's configuration: {e}");
                false
            }
        }
    }

    fn identify_cached(&self, path: &std::path::Path) -> Option<update::BundleIdentity> {
        let meta = std::fs::metadata(path).ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        let mut cache = self.identities.lock().ok()?;
        if let Some((s, i)) = cache.get(path) {
            if *s == stamp {
                return Some(i.clone());
            }
        }
        let (i, _) = update::identify(path)?;
        cache.insert(path.to_path_buf(), (stamp, i.clone()));
        Some(i)
    }

    fn status(&self, last_error: Option<String>) -> CheckIn {
        let models = self
            .updater
            .models
            .iter()
            .filter_map(|m| {
                self.identify_cached(&m.bundle_path).map(|i| ModelStatus {
                    model: m.name.clone(),
                    bundle: i.name,
                    version: i.version,
                    version_number: i.version_number,
                    sha256: i.sha256,
                })
            })
            .collect();
        let streams = match &self.outbox {
            Some(ob) => {
                let stats = ob.stats();
                self.cfg
                    .streams
                    .iter()
                    .map(|s| &stats[*s])
                    .map(|x| StreamStatus {
                        stream: x.stream.to_string(),
                        backlog: x.records,
                        bytes: x.bytes,
                        dropped: x.dropped,
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        CheckIn {
            agent_version: format!("{} ({})", crate::version(), crate::GIT_HASH),
            models,
            streams,
            last_error,
            uptime_s: self.started.elapsed().as_secs(),
            config: self
                .remote
                .as_ref()
                .map(|r| r.config.status(&r.running_sha256)),
            agent: Some(self.agent.store.status()),
        }
    }

    async fn upload(&self, c: &mut FleetClient, budget: Duration) -> Result<(), ClientError> {
        let Some(ob) = self.outbox.clone() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut sent_bytes = 0u64;
        for &stream in &self.cfg.streams {
            loop {
                if started.elapsed() > budget {
                    return Ok(()); // next cycle starts again from the highest priority
                }
                let recs = {
                    let ob = ob.clone();
                    let max = self.cfg.batch_records;
                    tokio::task::spawn_blocking(move || ob.read(stream, OUTBOX_DEST, max))
                        .await
                        .map_err(|e| ClientError::Http("outbox".into(), e.to_string()))?
                };
                let recs = match recs {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(stream = stream.name(), "outbox read failed: {e}");
                        break;
                    }
                };
                let Some(first) = recs.first().map(|r| r.0) else {
                    break;
                };
                let full = recs.len() >= self.cfg.batch_records;
                let mut bytes = 0usize;
                let records: Vec<UploadRecord> = recs
                    .into_iter()
                    .take_while(|r| {
                        bytes += r.2.len();
                        bytes <= self.cfg.batch_bytes || bytes == r.2.len()
                    })
                    .map(|(seq, ts_ms, body)| UploadRecord { seq, ts_ms, body })
                    .collect();
                let last = records.last().map(|r| r.seq).unwrap_or(first);
                let n = records.len() as u64;
                let payload: u64 = records.iter().map(|r| r.body.len() as u64).sum();
                let batch = UploadBatch {
                    stream: stream.name().to_string(),
                    first_available: first,
                    records,
                };
                let ack: UploadAck = c.call(wire::path::UPLOAD, &batch).await?;
                if ack.acked_through > 0 {
                    if let Err(e) = ob.confirm(stream, OUTBOX_DEST, ack.acked_through.min(last)) {
                        tracing::warn!(stream = stream.name(), "outbox confirm failed: {e}");
                    }
                }
                self.stats
                    .uploaded_records
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                self.stats
                    .uploaded_bytes
                    .fetch_add(payload, std::sync::atomic::Ordering::Relaxed);
                sent_bytes += payload;
                if self.cfg.max_bytes_per_s > 0 {
                    let due = Duration::from_secs_f64(
                        sent_bytes as f64 / self.cfg.max_bytes_per_s as f64,
                    );
                    if let Some(w) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(w).await;
                    }
                }
                if ack.acked_through < last {
                    tracing::warn!(
                        stream = stream.name(),
                        acked = ack.acked_through,
                        sent_to = last,
                        "server stored less than sent; re-sending next cycle"
                    );
                    break;
                }
                let more = full || bytes > self.cfg.batch_bytes;
                if !more {
                    break;
                }
            }
        }
        Ok(())
    }
}
