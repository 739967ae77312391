//! The typed service layer: every operator operation, once, for every way in. The HTTP
//! operator API (`operator/`), the console (`console/`) and the local CLI call
//! [`Acting`] (the service acting for one [`Principal`]); the remote CLI reaches the same
//! code through the API ([`crate::remote`]). [`FleetOps`] is the list of operations both
//! implement.
//!
//! Authorization lives here: each operation checks the caller's [`Role`] before it reads
//! or writes anything, and every state change is written to the audit log under the
//! caller's name.
//!
//! Submodules by concern: [`devices`], [`models`], [`rollouts`], [`drift`], [`alarms`]
//! (alarms and audit), [`accounts`] (users, sessions, API tokens, login throttling).

mod accounts;
mod alarms;
pub mod commands;
pub mod configs;
mod devices;
mod drift;
mod models;
mod ops;
pub mod releases;
mod rollouts;
mod validation;
pub mod views;

pub use validation::MAX_HOLDOUT_BYTES;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use accounts::{
    check_password, generate_password, printable, AuthError, PasswordHasher, Session, MIN_PASSWORD,
    SESSION_COOKIE,
};
pub use drift::drift_evaluation_task;
pub use ops::FleetOps;

use crate::registry::{Registry, RegistryError};
use crate::rollout::RolloutCache;
use crate::rollout::RolloutError;
use crate::store::{FleetStore, StateThresholds, StoreError};
use crate::types::Role;

/// What kind of failure an operation had; decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A bad parameter or body (400).
    Invalid,
    /// Not signed in, or the credentials are wrong or expired (401).
    Unauthorized,
    /// Signed in, but the role does not allow it (403).
    Forbidden,
    /// No such thing (404).
    NotFound,
    /// The thing is not in a state that allows it (409).
    Conflict,
    /// A bundle or key the registry refuses (422).
    Refused,
    /// Too many failed logins (429, with Retry-After).
    Throttled,
    /// The server's fault (500).
    Internal,
}

/// Why an operation failed: a [`ServiceError::kind`] and the message shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// A bad parameter or body (400).
    #[error("{0}")]
    Invalid(String),
    /// Not signed in, or the credentials are wrong or expired (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Signed in, but the role does not allow it (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The thing is not in a state that allows it (409).
    #[error("{0}")]
    Conflict(String),
    /// A bundle or key the registry refuses (422).
    #[error("{0}")]
    Refused(String),
    /// Too many attempts (sign-ins) or the password hashers are busy (429, with Retry-After).
    #[error("{message}")]
    Throttled {
        /// What is throttled, and for how long.
        message: String,
        /// Seconds to wait before trying again (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// The server's fault (500); the message says what failed.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The kind, which decides the HTTP status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Invalid(_) => ErrorKind::Invalid,
            ServiceError::Unauthorized(_) => ErrorKind::Unauthorized,
            ServiceError::Forbidden(_) => ErrorKind::Forbidden,
            ServiceError::NotFound(_) => ErrorKind::NotFound,
            ServiceError::Conflict(_) => ErrorKind::Conflict,
            ServiceError::Refused(_) => ErrorKind::Refused,
            ServiceError::Throttled { .. } => ErrorKind::Throttled,
            ServiceError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Rebuilds an error from its kind and message (the remote client).
    pub fn of_kind(kind: ErrorKind, message: String, retry_after_s: u64) -> ServiceError {
        match kind {
            ErrorKind::Invalid => ServiceError::Invalid(message),
            ErrorKind::Unauthorized => ServiceError::Unauthorized(message),
            ErrorKind::Forbidden => ServiceError::Forbidden(message),
            ErrorKind::NotFound => ServiceError::NotFound(message),
            ErrorKind::Conflict => ServiceError::Conflict(message),
            ErrorKind::Refused => ServiceError::Refused(message),
            ErrorKind::Throttled => ServiceError::Throttled {
                message,
                retry_after_s,
            },
            ErrorKind::Internal => ServiceError::Internal(message),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => ServiceError::Invalid(m),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<RegistryError> for ServiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Refused(m) => ServiceError::Refused(m),
            RegistryError::Store(s) => s.into(),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<RolloutError> for ServiceError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid(m) => ServiceError::Invalid(m),
            RolloutError::NotFound(m) => ServiceError::NotFound(m),
            RolloutError::Conflict(m) => ServiceError::Conflict(m),
            RolloutError::Store(s) => s.into(),
        }
    }
}

impl From<crate::drift::DriftError> for ServiceError {
    fn from(e: crate::drift::DriftError) -> Self {
        match e {
            crate::drift::DriftError::Invalid(m) => ServiceError::Invalid(m),
            crate::drift::DriftError::Store(s) => s.into(),
            crate::drift::DriftError::Registry(r) => r.into(),
        }
    }
}

/// The service layer's result.
pub type Result<T> = std::result::Result<T, ServiceError>;

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The CLI on the data directory (the server box's service account): an admin.
    Local,
    /// A console session (cookie).
    Session,
    /// An API token (`Authorization: Bearer`).
    Token {
        /// The token's id (`tok-…`), never its secret.
        id: String,
    },
}

impl Via {
    /// The word for the audit log and `whoami`: `local`, `session` or `token`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Via::Local => "local",
            Via::Session => "session",
            Via::Token { .. } => "token",
        }
    }
}

/// Who is asking, and with which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name (audited as the actor).
    pub name: String,
    /// The role in force: for a token, the lower of the token's and the user's.
    pub role: Role,
    /// How they signed in.
    pub via: Via,
}

impl Principal {
    /// The CLI on the data directory, auditing under `name`.
    pub fn local(name: &str) -> Principal {
        Principal {
            name: name.to_string(),
            role: Role::Admin,
            via: Via::Local,
        }
    }
}

/// Server settings the operations depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Seconds between device check-ins.
    pub checkin_s: u64,
    /// Seen within this: online (default three check-in intervals).
    pub online_within: Duration,
    /// Seen within this: stale; otherwise offline (default 10 minutes).
    pub offline_after: Duration,
    /// One status history point per device per this (default 1 minute).
    pub history_every: Duration,
    /// History points are kept this long (default 3 days).
    pub history_keep: Duration,
    /// A console session ends this long after login (default 12 hours)…
    pub session_ttl: Duration,
    /// …or after this long without a request (default 1 hour).
    pub session_idle: Duration,
    /// How long device certificates are valid (default 365 days).
    pub device_cert_validity: Duration,
}

impl Settings {
    /// Settings for a check-in interval of `checkin_s` seconds, with the default thresholds
    /// and lifetimes.
    pub fn with_checkin(checkin_s: u64) -> Settings {
        Settings {
            checkin_s,
            online_within: Duration::from_secs(3 * checkin_s.max(1) + 2),
            offline_after: Duration::from_secs((30 * checkin_s).max(600)),
            history_every: Duration::from_secs(60),
            history_keep: Duration::from_secs(3 * 24 * 3600),
            session_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(3600),
            device_cert_validity: Duration::from_secs(365 * 24 * 3600),
        }
    }

    /// The online/offline boundaries as of `now_ms` (Unix ms).
    pub fn thresholds(&self, now_ms: i64) -> StateThresholds {
        StateThresholds {
            now_ms,
            online_ms: ms(self.online_within),
            offline_ms: ms(self.offline_after),
        }
    }

    /// Written by `serve` so CLI commands on the same database judge states alike.
    pub async fn publish(&self, store: &FleetStore) -> Result<()> {
        store
            .set_setting("checkin_s", &self.checkin_s.to_string())
            .await?;
        store
            .set_setting("online_within_ms", &ms(self.online_within).to_string())
            .await?;
        store
            .set_setting("offline_after_ms", &ms(self.offline_after).to_string())
            .await?;
        Ok(())
    }

    /// What `serve` published (defaults for a 10 s check-in otherwise).
    pub async fn published(store: &FleetStore) -> Result<Settings> {
        let get = |k: &'static str| async move {
            Ok::<_, ServiceError>(store.setting(k).await?.and_then(|v| v.parse::<u64>().ok()))
        };
        let mut s = Settings::with_checkin(get("checkin_s").await?.unwrap_or(10));
        if let Some(v) = get("online_within_ms").await? {
            s.online_within = Duration::from_millis(v);
        }
        if let Some(v) = get("offline_after_ms").await? {
            s.offline_after = Duration::from_millis(v);
        }
        Ok(s)
    }
}

/// Milliseconds of a duration (saturating).
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// At most this many labels on a device or an enrollment token.
pub const MAX_LABELS: usize = 32;

/// Checks labels (`key=value` groups like `site=plant1`, or plain tags like `canary`): at most
/// [`MAX_LABELS`], each 1-64 characters without commas or control characters.
pub fn check_labels(labels: &[String]) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(ServiceError::Invalid(format!(
            "at most {MAX_LABELS} labels (got {})",
            labels.len()
        )));
    }
    for l in labels {
        if l.is_empty() || l.len() > 64 || l.contains(',') || l.chars().any(char::is_control) {
            return Err(ServiceError::Invalid(format!(
                "label `{l}` must be 1-64 characters without commas (e.g. site=plant1 or canary)"
            )));
        }
    }
    Ok(())
}

/// A duration parameter (`24h`, `90d`) within `[min, max]`.
pub(crate) fn parse_ttl(s: &str, what: &str, min: Duration, max: Duration) -> Result<Duration> {
    let d = humantime::parse_duration(s)
        .map_err(|e| ServiceError::Invalid(format!("{what} `{s}`: {e} (e.g. 24h, 90d)")))?;
    if d < min || d > max {
        return Err(ServiceError::Invalid(format!(
            "{what} must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

/// Random bytes as hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ServiceError::Internal(format!("no OS randomness: {e}")))?;
    Ok(edge_wire::bundle::file::hex(&raw))
}

struct Inner {
    store: FleetStore,
    registry: Registry,
    data_dir: PathBuf,
    settings: Settings,
    started: Instant,
    rollouts: Arc<RolloutCache>,
    hasher: PasswordHasher,
    /// When `serve`'s drift evaluator last finished (ms; 0 = not yet).
    drift_evaluated_at: AtomicI64,
    /// Label-group heatmaps (a merge of every device's newest record), kept briefly.
    heatmaps: drift::HeatmapCache,
}

/// The fleet's operations over one store and registry. Cheap to clone.
#[derive(Clone)]
pub struct FleetService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FleetService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetService")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

impl FleetService {
    /// The service over an open store and registry.
    pub fn new(
        store: FleetStore,
        registry: Registry,
        data_dir: &Path,
        settings: Settings,
    ) -> FleetService {
        FleetService {
            inner: Arc::new(Inner {
                store,
                registry,
                data_dir: data_dir.to_path_buf(),
                settings,
                started: Instant::now(),
                rollouts: Arc::default(),
                hasher: PasswordHasher::new(),
                drift_evaluated_at: AtomicI64::new(0),
                heatmaps: Default::default(),
            }),
        }
    }

    /// Opens the data directory's store and registry with the settings `serve` published
    /// (the local CLI).
    pub async fn open_dir(data_dir: &Path) -> Result<FleetService> {
        Self::open(data_dir, None).await
    }

    /// The service on the data directory and the database at `database_url` (SQLite in the
    /// data directory when `None`).
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<FleetService> {
        let store = FleetStore::open(data_dir, database_url).await?;
        let registry = Registry::new(store.clone(), data_dir)?;
        registry.import_files().await?;
        let settings = Settings::published(&store).await?;
        Ok(FleetService::new(store, registry, data_dir, settings))
    }

    /// The database.
    pub fn store(&self) -> &FleetStore {
        &self.inner.store
    }

    /// The model registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The data directory the service was opened on.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The rollout table cache the device API reads on every check-in.
    pub fn rollout_cache(&self) -> &Arc<RolloutCache> {
        &self.inner.rollouts
    }

    /// The password hasher, shared by every operation.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.inner.hasher
    }

    /// Records when `serve`'s drift evaluator last finished (Unix ms; the health view shows it).
    pub fn mark_drift_evaluated(&self, at_ms: i64) {
        self.inner
            .drift_evaluated_at
            .store(at_ms, Ordering::Relaxed);
    }

    pub(crate) fn thresholds(&self) -> StateThresholds {
        self.inner.settings.thresholds(crate::store::now_ms())
    }

    /// The operations as `who`.
    pub fn acting(&self, who: Principal) -> Acting {
        Acting {
            svc: self.clone(),
            who,
        }
    }
}

/// The service acting for one principal: every operation checks the principal's role and
/// audits under its name.
#[derive(Debug, Clone)]
pub struct Acting {
    svc: FleetService,
    who: Principal,
}

impl Acting {
    /// Who the operations run as.
    pub fn who(&self) -> &Principal {
        &self.who
    }

    /// The service underneath.
    pub fn service(&self) -> &FleetService {
        &self.svc
    }

    fn store(&self) -> &FleetStore {
        self.svc.store()
    }

    /// Refuses callers below `role`.
    fn require(&self, role: Role, what: &str) -> Result<()> {
        if self.who.role >= role {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "{what} needs the {role} role; {} has {}",
                self.who.name, self.who.role
            )))
        }
    }

    async fn audit(&self, action: &str, subject: &str, detail: &str) -> Result<()> {
        let detail = match &self.who.via {
            Via::Token { id } if detail.is_empty() => format!("via token {id}"),
            Via::Token { id } => format!("{detail} (via token {id})"),
            _ => detail.to_string(),
        };
        self.store()
            .audit(&self.who.name, action, subject, &detail)
            .await?;
        Ok(())
    }

    /// Who the caller is (any role).
    pub async fn whoami(&self) -> Result<views::WhoAmI> {
        Ok(views::WhoAmI {
            user: self.who.name.clone(),
            role: self.who.role,
            via: self.who.via.as_str().into(),
        })
    }

    /// Server health: version, uptime, database, counts and background work (viewer role).
    /// The counts are zero while the database does not answer.
    pub async fn health(&self) -> Result<views::Health> {
        self.require(Role::Viewer, "server health")?;
        let st = self.store();
        let t0 = Instant::now();
        let ping = st.ping().await;
        let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
        let database = views::DatabaseHealth {
            backend: st.backend().name().into(),
            ok: ping.is_ok(),
            latency_ms,
            schema_version: crate::store::migrations::latest(),
            error: ping.err().map(|e| e.to_string()),
        };
        let (devices, bundles, rollouts, alarms) = if database.ok {
            let alarms = st
                .alarms(&crate::store::AlarmQuery {
                    active_only: true,
                    limit: 0,
                    ..Default::default()
                })
                .await?
                .1;
            (
                st.state_counts(&self.svc.thresholds()).await?,
                st.bundles().await?.len(),
                st.rollouts()
                    .await?
                    .iter()
                    .filter(|r| r.state == crate::types::RolloutState::Active)
                    .count(),
                alarms,
            )
        } else {
            Default::default()
        };
        let evaluated = self.svc.inner.drift_evaluated_at.load(Ordering::Relaxed);
        Ok(views::Health {
            version: crate::VERSION.into(),
            uptime_s: self.svc.inner.started.elapsed().as_secs(),
            database,
            devices,
            bundles,
            active_rollouts: rollouts,
            active_alarms: alarms,
            deltas_in_flight: self.svc.registry().deltas_in_flight(),
            drift_evaluated_at: (evaluated > 0).then_some(evaluated),
            checkin_s: self.svc.settings().checkin_s,
        })
    }

    /// The CA certificates devices must trust (`[sync] server_ca`): the fleet CA, and during
    /// a rotation the previous one too.
    pub async fn ca_pem(&self) -> Result<String> {
        self.require(Role::Viewer, "the fleet CA certificate")?;
        let cur = self.svc.store().fleet_ca().await?.ok_or_else(|| {
            ServiceError::Internal(
                "no fleet CA yet: it is created when `fleet-server serve` first starts".into(),
            )
        })?;
        Ok(match self.svc.store().fleet_ca_previous().await? {
            Some(prev) => format!("{}\n{}", cur.cert_pem.trim_end(), prev.cert_pem),
            None => cur.cert_pem,
        })
    }

    /// Where a CA rotation stands.
    pub async fn ca_status(&self) -> Result<views::CaStatus> {
        self.require(Role::Viewer, "the fleet CA")?;
        let store = self.svc.store();
        let cur = store
            .fleet_ca()
            .await?
            .ok_or_else(|| ServiceError::Internal("no fleet CA yet".into()))?;
        let sha = crate::ca::sha256_hex(cur.cert_pem.as_bytes());
        let prev = store
            .fleet_ca_previous()
            .await?
            .map(|p| crate::ca::sha256_hex(p.cert_pem.as_bytes()));
        Ok(views::CaStatus {
            ca_sha256: sha.clone(),
            previous_sha256: prev,
            devices_on_other_ca: store.devices_not_on_ca(&sha).await?,
        })
    }

    /// Starts a CA rotation (admins): a new CA signs device certificates from now on; the
    /// current one becomes the previous one, still trusted and still the issuer of the
    /// servers' certificates, while devices renew onto the new one at their next check-in.
    pub async fn rotate_ca(&self) -> Result<views::CaStatus> {
        self.require(Role::Admin, "rotating the fleet CA")?;
        let new = crate::ca::new_ca().map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.svc
            .store()
            .rotate_fleet_ca(&new)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Invalid(m) => ServiceError::Conflict(m),
                other => other.into(),
            })?;
        let st = self.ca_status().await?;
        self.audit(
            "ca.rotate",
            &st.ca_sha256,
            &format!(
                "new fleet CA; previous {}; {} device(s) to renew",
                st.previous_sha256.as_deref().unwrap_or("-"),
                st.devices_on_other_ca.len()
            ),
        )
        .await?;
        Ok(st)
    }

    /// Finishes a CA rotation (admins): the previous CA is no longer trusted and the servers'
    /// certificates come from the new one. Refused while devices still hold certificates of
    /// another CA (they could not connect any more), unless `force`.
    pub async fn finish_ca_rotation(&self, force: bool) -> Result<views::CaStatus> {
        self.require(Role::Admin, "rotating the fleet CA")?;
        let st = self.ca_status().await?;
        if st.previous_sha256.is_none() {
            return Err(ServiceError::Conflict(
                "no CA rotation is in progress (`fleet-server ca rotate` starts one)".into(),
            ));
        }
        if !st.devices_on_other_ca.is_empty() && !force {
            return Err(ServiceError::Conflict(format!(
                "{} device(s) still hold certificates of the previous CA and could not connect after this: {} (wait for them to check in and renew, or finish with --force and enroll them again)",
                st.devices_on_other_ca.len(),
                st.devices_on_other_ca.join(", ")
            )));
        }
        self.svc.store().finish_ca_rotation().await?;
        self.audit(
            "ca.finish",
            &st.ca_sha256,
            &format!(
                "previous CA {} retired{}",
                st.previous_sha256.as_deref().unwrap_or("-"),
                if st.devices_on_other_ca.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; FORCED with {} device(s) still on it: {}",
                        st.devices_on_other_ca.len(),
                        st.devices_on_other_ca.join(", ")
                    )
                }
            ),
        )
        .await?;
        self.ca_status().await
    }
}
