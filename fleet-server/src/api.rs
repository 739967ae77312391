//! The device-facing HTTPS API (see `edge_wire::sync` for the messages and paths).
//!
//! Every handler except enrollment starts with the [`AuthDevice`] extractor: the client
//! certificate presented on the TLS connection, looked up by SHA-256, must belong to an
//! enrolled, non-revoked device. Handlers only ever read or write that device's rows, so
//! device A can never reach device B's data, models or status.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edge_wire::sync::{self, path, DesiredBundle};
use serde::Serialize;

use crate::ca::sha256_hex;
use crate::registry::Registry;
use crate::rollout;
use crate::store::DeviceRef;
use crate::store::{Device, FleetStore, UpdateRow};
use crate::types::UpdateOutcome;

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub store: FleetStore,
    /// The model registry (bundles and the artifacts devices download).
    pub registry: Registry,
    /// The fleet CA (replaced in place by a rotation).
    pub ca: crate::ca::CaHandle,
    /// Seconds between device check-ins.
    pub checkin_s: u64,
    /// One status history point per device per this long.
    pub history_every_ms: i64,
    /// The rollout table, re-read at most once a second (every check-in needs it; operator
    /// changes made through the API are seen at once, those made by a CLI process on the
    /// data directory within a second).
    pub rollouts: Arc<crate::rollout::RolloutCache>,
    /// Check-ins and uploads are stored through here, many devices per transaction.
    pub commits: crate::group_commit::GroupCommit,
    /// How long device certificates are valid.
    pub cert_validity: std::time::Duration,
    /// Fleet configuration versions already read (a version never changes once pushed), so
    /// a managed device's check-in does not read its file from the database each time.
    pub configs: ConfigCache,
    /// Agent release files already read by (release number, target): a stored file is
    /// never replaced, so a targeted device's check-in does not read the row each time.
    pub releases: ReleaseCache,
}

/// Agent release rows by (release number, target).
pub type ReleaseCache =
    Arc<std::sync::Mutex<HashMap<(i64, String), Arc<crate::store::ReleaseRow>>>>;

/// Fleet configuration versions by (name, version number).
pub type ConfigCache = Arc<std::sync::Mutex<HashMap<(String, i64), Arc<crate::store::ConfigRow>>>>;

impl AppState {
    /// The device API's state on top of the operator service (one rollout cache for both).
    pub fn new(
        service: &crate::service::FleetService,
        ca: crate::ca::CaHandle,
        group: crate::group_commit::GroupLimits,
    ) -> AppState {
        AppState {
            commits: crate::group_commit::GroupCommit::new(service.store().clone(), group),
            store: service.store().clone(),
            registry: service.registry().clone(),
            ca,
            checkin_s: service.settings().checkin_s,
            history_every_ms: crate::service::ms(service.settings().history_every),
            rollouts: service.rollout_cache().clone(),
            cert_validity: service.settings().device_cert_validity,
            configs: Arc::default(),
            releases: Arc::default(),
        }
    }
}

/// The client certificate of the TLS connection (SHA-256 of its DER), set by the acceptor.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Option<String>);

/// A device API error: the HTTP status and the plain-text message answered (server errors
/// are logged).
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(status = %self.0, "{}", self.1);
        } else {
            tracing::debug!(status = %self.0, "{}", self.1);
        }
        (self.0, self.1).into_response()
    }
}

impl<E: std::fmt::Display> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// An authenticated device.
#[derive(Debug)]
pub struct AuthDevice(pub Device);

impl FromRequestParts<AppState> for AuthDevice {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(PeerCert(Some(cert))) = parts.extensions.get::<PeerCert>().cloned() else {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "a device client certificate is required (enroll first)".into(),
            ));
        };
        match state.store.device_by_cert(&cert).await? {
            Some(d) if d.revoked_at.is_none() => Ok(AuthDevice(d)),
            Some(d) => Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("device {} is revoked", d.id),
            )),
            None => Err(ApiError(
                StatusCode::FORBIDDEN,
                "certificate does not belong to an enrolled device".into(),
            )),
        }
    }
}

/// The device certificate a request came with (checked against the registry where the
/// request's write is stored: [`crate::group_commit`]).
#[derive(Debug)]
pub struct DeviceCert(pub String);

impl FromRequestParts<AppState> for DeviceCert {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<PeerCert>() {
            Some(PeerCert(Some(cert))) => Ok(DeviceCert(cert.clone())),
            _ => Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "a device client certificate is required (enroll first)".into(),
            )),
        }
    }
}

impl DeviceCert {
    /// Why a write with this certificate was refused: the error [`AuthDevice`] gives.
    async fn refusal(&self, store: &FleetStore) -> ApiError {
        match store.device_by_cert(&self.0).await {
            Ok(Some(d)) if d.revoked_at.is_some() => {
                ApiError(StatusCode::FORBIDDEN, format!("device {} is revoked", d.id))
            }
            Ok(Some(d)) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "device {} changed while its request was stored: retry",
                    d.id
                ),
            ),
            Ok(None) => ApiError(
                StatusCode::FORBIDDEN,
                "certificate does not belong to an enrolled device".into(),
            ),
            Err(e) => e.into(),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != sync::CONTENT_TYPE {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be {} (got `{ct}`)", sync::CONTENT_TYPE),
        ));
    }
    sync::decode(body).map_err(|e| match e {
        sync::WireError::TooLarge => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        other => ApiError::bad(other.to_string()),
    })
}

fn reply<T: Serialize>(msg: &T) -> Response {
    (
        [
            (header::CONTENT_TYPE, sync::CONTENT_TYPE),
            (header::CONTENT_ENCODING, sync::CONTENT_ENCODING),
        ],
        sync::encode(msg),
    )
        .into_response()
}

/// The device API's routes (enroll, check-in, upload, update reports, artifact downloads)
/// over `state`, bodies up to `sync::MAX_BODY`. Devices are known by their client
/// certificate, which the TLS acceptor hands over as [`PeerCert`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(path::ENROLL, post(enroll))
        .route(path::CHECKIN, post(checkin))
        .route(path::UPLOAD, post(upload))
        .route(path::REPORT, post(report))
        .route(path::CONFIG_REPORT, post(config_report))
        .route(path::COMMAND_RESULT, post(command_result))
        .route(path::RENEW, post(renew))
        .route(path::RENEW_CONFIRM, post(renew_confirm))
        .route(path::AGENT_REPORT, post(agent_report))
        .route(&format!("{}/{{sha}}", path::ARTIFACTS), get(artifact))
        .layer(axum::extract::DefaultBodyLimit::max(sync::MAX_BODY))
        .with_state(state)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

async fn enroll(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: sync::EnrollRequest = decode(&headers, &body)?;
    if !valid_name(&req.name) {
        return Err(ApiError::bad(
            "device name must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let token_sha = sha256_hex(req.token.as_bytes());
    let device_id = format!("d-{:016x}", fastrand::u64(..));
    let ca = st.ca.current();
    let (cert_pem, cert) = ca
        .sign_device(&req.csr_pem, &device_id, st.cert_validity)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let d = st
        .store
        .enroll(&token_sha, &device_id, &req.name, &cert)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Invalid(m) => ApiError(StatusCode::FORBIDDEN, m),
            other => other.into(),
        })?;
    st.store
        .audit(
            &format!("token:{}", &token_sha[..12]),
            "device.enroll",
            &d.id,
            &format!(
                "name {} labels [{}] agent {}",
                d.name,
                d.labels.join(","),
                req.agent_version
            ),
        )
        .await?;
    tracing::info!(device = %d.id, name = %d.name, "device enrolled");
    Ok(reply(&sync::EnrollReply {
        device_id: d.id,
        cert_pem,
        ca_pem: ca.trust_pem(),
    }))
}

/// The bundles `d` should run, with the artifact to get there from what it reports.
pub async fn desired_for(
    st: &AppState,
    d: &Device,
    running: &[sync::ModelStatus],
) -> Result<Vec<DesiredBundle>, ApiError> {
    let rollouts = st.rollouts.get(&st.store).await?;
    let mut out = Vec::new();
    for (bundle, vn, rid) in rollout::desired(&rollouts, d) {
        let Some(target) = st.store.bundle(&bundle, vn).await? else {
            continue;
        };
        let current = running.iter().find(|m| m.bundle == bundle);
        if current.is_some_and(|m| m.sha256 == target.sha256) {
            continue;
        }
        let Some(artifact) = st
            .registry
            .artifact_for(current.map(|m| m.sha256.as_str()), &target)
            .await?
        else {
            continue; // delta being computed: next check-in
        };
        out.push(DesiredBundle {
            bundle,
            version: target.version,
            version_number: target.version_number as u64,
            sha256: target.sha256,
            size: target.size as u64,
            rollout: Some(rid),
            artifact,
        });
    }
    Ok(out)
}

/// The agent release `d` should run, with the artifact to get there from the release file
/// it reports running (`None`: nothing to change, no release for its target, or a delta
/// still being computed).
pub async fn desired_agent_for(
    st: &AppState,
    d: &Device,
    running: Option<&sync::AgentStatus>,
) -> Result<Option<sync::DesiredRelease>, ApiError> {
    let Some(running) = running else {
        return Ok(None); // an agent that predates agent updates
    };
    let rollouts = st.rollouts.get(&st.store).await?;
    let Some((vn, rid)) = rollout::desired_agent(&rollouts, d) else {
        return Ok(None);
    };
    let key = (vn, running.target.clone());
    let cached = st.releases.lock().ok().and_then(|m| m.get(&key).cloned());
    let target = match cached {
        Some(r) => r,
        None => {
            let Some(r) = st.store.release(vn, &running.target).await? else {
                return Ok(None); // not built for this device's target (yet)
            };
            let r = Arc::new(r);
            if let Ok(mut m) = st.releases.lock() {
                m.insert(key, r.clone());
            }
            r
        }
    };
    let current = running.release.as_ref().map(|(_, sha)| sha.as_str());
    if current == Some(target.sha256.as_str()) {
        return Ok(None);
    }
    let Some(artifact) = st.registry.artifact_for_release(current, &target).await? else {
        return Ok(None); // delta being computed: next check-in
    };
    Ok(Some(sync::DesiredRelease {
        version: target.version.clone(),
        version_number: target.version_number as u64,
        target: target.target.clone(),
        sha256: target.sha256.clone(),
        size: target.size as u64,
        rollout: Some(rid),
        artifact,
    }))
}

/// A device's report on an agent release: stored, audited, counted in its rollout.
async fn agent_report(
    State(st): State<AppState>,
    AuthDevice(d): AuthDevice,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: sync::AgentReport = decode(&headers, &body)?;
    let outcome = UpdateOutcome::from(r.outcome);
    st.store
        .audit(
            &d.id,
            &format!("agent.{outcome}"),
            &format!("edge-agent#{} ({})", r.version_number, r.version),
            &format!("from {} by {}: {}", r.from_version, r.method, r.detail),
        )
        .await?;
    let rollout_id = reported_rollout(
        &st,
        &d,
        r.rollout.as_deref(),
        crate::types::RolloutKind::Agent,
        edge_wire::release::RELEASE_NAME,
    )
    .await?;
    st.store
        .add_agent_report(&crate::store::AgentReportRow {
            device_id: d.id.clone(),
            at: crate::store::now_ms(),
            version: r.version.clone(),
            version_number: i64::try_from(r.version_number).unwrap_or(i64::MAX),
            sha256: r.sha256.clone(),
            from_version: r.from_version.clone(),
            rollout_id: rollout_id.clone(),
            outcome: outcome.to_string(),
            method: r.method.clone(),
            downloaded_bytes: i64::try_from(r.downloaded_bytes).unwrap_or(i64::MAX),
            detail: r.detail.clone(),
        })
        .await?;
    if let Some(rid) = rollout_id {
        rollout::report(&st.store, &rid, &d.id, outcome, &r.detail).await?;
        st.rollouts.invalidate();
    }
    Ok(reply(&sync::Empty {}))
}

fn running_of(d: &Device) -> Vec<sync::ModelStatus> {
    d.status
        .as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| serde_json::from_value(v.get("models")?.clone()).ok())
        .unwrap_or_default()
}

async fn checkin(
    State(st): State<AppState>,
    cert: DeviceCert,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c: sync::CheckIn = decode(&headers, &body)?;
    let w = crate::store::CheckInWrite::new(
        DeviceRef::Cert(cert.0.clone()),
        &c,
        serde_json::to_string(&c)?,
        st.history_every_ms,
    )?;
    let Some(d) = st.commits.check_in(w).await? else {
        return Err(cert.refusal(&st.store).await);
    };
    let desired = desired_for(&st, &d, &c.models).await?;
    let desired_config = match &c.config {
        Some(running) => desired_config_for(&st, &d, running).await?,
        None => None, // an agent without remote configuration
    };
    let commands = st
        .store
        .take_commands(&d.id)
        .await?
        .into_iter()
        .map(|c| sync::DeviceCommand {
            id: c.id,
            action: c.action,
        })
        .collect();
    let renew = d.should_renew(crate::store::now_ms(), &st.ca.current().ca_sha256);
    let desired_agent = desired_agent_for(&st, &d, c.agent.as_ref()).await?;
    Ok(reply(&sync::CheckInReply {
        device_id: d.id,
        desired,
        next_checkin_s: st.checkin_s,
        desired_config,
        commands,
        renew,
        desired_agent,
    }))
}

/// A renewal: the device, still on its current certificate, sends a CSR for a new key; the
/// new certificate becomes its *next* one. The current one stays valid until the device
/// confirms the new one ([`renew_confirm`]).
async fn renew(
    State(st): State<AppState>,
    AuthDevice(d): AuthDevice,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: sync::RenewRequest = decode(&headers, &body)?;
    let ca = st.ca.current();
    let (cert_pem, cert) = ca
        .sign_device(&r.csr_pem, &d.id, st.cert_validity)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    st.store.set_next_cert(&d.id, &cert).await?;
    tracing::info!(device = %d.id, expires_at = cert.expires_at, "device certificate renewed (waiting for the device to confirm it)");
    Ok(reply(&sync::RenewReply {
        cert_pem,
        ca_pem: ca.trust_pem(),
        not_after_ms: cert.expires_at.max(0) as u64,
    }))
}

/// The device presents its renewed certificate: it becomes the one in use, the old one is
/// refused from now on. Idempotent (a repeated confirmation of the one in use is fine).
async fn renew_confirm(
    State(st): State<AppState>,
    cert: DeviceCert,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let _: sync::Empty = decode(&headers, &body)?;
    let Some((d, promoted)) = st.store.confirm_cert(&cert.0).await? else {
        return Err(cert.refusal(&st.store).await);
    };
    if promoted {
        st.store
            .audit(
                &d.id,
                "device.cert_renewed",
                &d.id,
                &format!(
                    "certificate {} in use, expires {}",
                    &cert.0[..16.min(cert.0.len())],
                    d.cert_expires_at.unwrap_or(0)
                ),
            )
            .await?;
    }
    Ok(reply(&sync::Empty {}))
}

/// A device's result for a command: stored with its attachment and audited.
async fn command_result(
    State(st): State<AppState>,
    AuthDevice(d): AuthDevice,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: sync::CommandResult = decode(&headers, &body)?;
    if st.store.command_result(&d.id, &r).await? {
        let outcome = match r.outcome {
            sync::CommandOutcome::Done => "done",
            sync::CommandOutcome::Failed => "failed",
        };
        st.store
            .audit(
                &d.id,
                &format!("command.{outcome}"),
                &r.id,
                &format!("{} ({} bytes attached)", r.detail, r.attachment.len()),
            )
            .await?;
    }
    Ok(reply(&sync::Empty {}))
}

/// The configuration file `d` should run, when it runs (and checks) another one.
pub async fn desired_config_for(
    st: &AppState,
    d: &Device,
    running: &sync::ConfigStatus,
) -> Result<Option<sync::DesiredConfig>, ApiError> {
    let rollouts = st.rollouts.get(&st.store).await?;
    let Some((name, vn, rid)) = rollout::desired_config(&rollouts, d) else {
        return Ok(None);
    };
    let cached = st
        .configs
        .lock()
        .ok()
        .and_then(|m| m.get(&(name.clone(), vn)).cloned());
    let c = match cached {
        Some(c) => c,
        None => {
            let Some(c) = st.store.config(&name, vn).await? else {
                return Ok(None);
            };
            let c = Arc::new(c);
            if let Ok(mut m) = st.configs.lock() {
                if m.len() >= 256 {
                    m.clear(); // bounded: only the versions rollouts hand out stay hot
                }
                m.insert((name.clone(), vn), c.clone());
            }
            c
        }
    };
    if running.sha256 == c.sha256 || running.pending.as_deref() == Some(c.sha256.as_str()) {
        return Ok(None);
    }
    Ok(Some(sync::DesiredConfig {
        name,
        version_number: vn.max(0) as u64,
        sha256: c.sha256.clone(),
        toml: c.toml.clone(),
        rollout: Some(rid),
    }))
}

/// The rollout a device's report may count in: the one it names, when that rollout hands out
/// `name` of this `kind` and targets the device (a report never touches another rollout).
async fn reported_rollout(
    st: &AppState,
    d: &Device,
    named: Option<&str>,
    kind: crate::types::RolloutKind,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let Some(rid) = named else {
        return Ok(None);
    };
    Ok(st
        .store
        .rollout(rid)
        .await?
        .filter(|ro| ro.kind == kind && ro.bundle == name && rollout::targets(ro, d))
        .map(|ro| ro.id))
}

/// A device's report on a configuration: stored, audited, and counted in its rollout (a
/// refusal counts as a failure there, so the rollout halts at its `max_failures`).
async fn config_report(
    State(st): State<AppState>,
    AuthDevice(d): AuthDevice,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: sync::ConfigReport = decode(&headers, &body)?;
    let outcome = match r.outcome {
        sync::ConfigOutcome::Applied => "applied",
        sync::ConfigOutcome::Refused => "refused",
        sync::ConfigOutcome::RolledBack => "rolled_back",
    };
    let mut detail = r.detail.clone();
    for e in &r.errors {
        detail.push('\n');
        detail.push_str(e);
    }
    st.store
        .audit(
            &d.id,
            &format!("config.{outcome}"),
            &format!("{}#{}", r.name, r.version_number),
            &format!("by {}: {detail}", r.applied_by),
        )
        .await?;
    let rollout_id = reported_rollout(
        &st,
        &d,
        r.rollout.as_deref(),
        crate::types::RolloutKind::Config,
        &r.name,
    )
    .await?;
    st.store
        .add_config_report(&crate::store::ConfigReportRow {
            device_id: d.id.clone(),
            at: crate::store::now_ms(),
            name: r.name.clone(),
            version_number: i64::try_from(r.version_number).unwrap_or(i64::MAX),
            sha256: r.sha256.clone(),
            rollout_id: rollout_id.clone(),
            outcome: outcome.into(),
            applied_by: r.applied_by.clone(),
            detail: r.detail.clone(),
            errors: r.errors.clone(),
        })
        .await?;
    if let Some(rid) = rollout_id {
        let as_update = match r.outcome {
            sync::ConfigOutcome::Applied => UpdateOutcome::Applied,
            sync::ConfigOutcome::RolledBack => UpdateOutcome::RolledBack,
            sync::ConfigOutcome::Refused => UpdateOutcome::Failed,
        };
        rollout::report(&st.store, &rid, &d.id, as_update, &detail).await?;
        st.rollouts.invalidate();
    }
    Ok(reply(&sync::Empty {}))
}

fn valid_stream(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

async fn upload(
    State(st): State<AppState>,
    cert: DeviceCert,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: sync::UploadBatch = decode(&headers, &body)?;
    drop(body);
    if !valid_stream(&b.stream) {
        return Err(ApiError::bad(format!("invalid stream name `{}`", b.stream)));
    }
    let first = i64::try_from(b.first_available)
        .map_err(|_| ApiError::bad("first_available out of range"))?;
    let mut records = Vec::with_capacity(b.records.len());
    for r in b.records {
        let seq = i64::try_from(r.seq).map_err(|_| ApiError::bad("sequence out of range"))?;
        if seq < 1 {
            return Err(ApiError::bad("sequence numbers start at 1"));
        }
        records.push((seq, i64::try_from(r.ts_ms).unwrap_or(i64::MAX), r.body));
    }
    let w = crate::store::UploadWrite {
        device: DeviceRef::Cert(cert.0.clone()),
        stream: b.stream,
        first_available: first.max(1),
        records,
    };
    let stream = w.stream.clone();
    let Some((_, res)) = st.commits.upload(w).await? else {
        return Err(cert.refusal(&st.store).await);
    };
    Ok(reply(&sync::UploadAck {
        stream,
        acked_through: res.acked_through as u64,
        duplicates: res.duplicates,
    }))
}

async fn report(
    State(st): State<AppState>,
    AuthDevice(d): AuthDevice,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: sync::UpdateReport = decode(&headers, &body)?;
    let outcome = UpdateOutcome::from(r.outcome);
    st.store
        .audit(
            &d.id,
            &format!("update.{outcome}"),
            &format!("{}#{}", r.bundle, r.to_version_number),
            &format!(
                "model {} from #{} via {} ({} bytes): {}",
                r.model, r.from_version_number, r.method, r.downloaded_bytes, r.detail
            ),
        )
        .await?;
    let sat = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let rollout_id = reported_rollout(
        &st,
        &d,
        r.rollout.as_deref(),
        crate::types::RolloutKind::Bundle,
        &r.bundle,
    )
    .await?;
    st.store
        .record_update(
            &d.id,
            &UpdateRow {
                at: crate::store::now_ms(),
                model: r.model.clone(),
                bundle: r.bundle.clone(),
                from_version_number: sat(r.from_version_number),
                to_version_number: sat(r.to_version_number),
                rollout_id: rollout_id.clone(),
                outcome,
                method: r.method.clone(),
                bytes: sat(r.downloaded_bytes),
                detail: r.detail.clone(),
            },
        )
        .await?;
    if let Some(rid) = rollout_id {
        rollout::report(&st.store, &rid, &d.id, outcome, &r.detail).await?;
        st.rollouts.invalidate();
    }
    Ok(reply(&sync::Empty {}))
}

/// `Range: bytes=a-b` / `bytes=a-` → (start, end inclusive).
fn parse_range(h: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("unsupported or unsatisfiable range (artifact is {len} bytes)"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    let spec = s.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = if b.trim().is_empty() {
        len.saturating_sub(1)
    } else {
        b.trim()
            .parse::<u64>()
            .map_err(|_| bad())?
            .min(len.saturating_sub(1))
    };
    if start >= len || end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// Bytes `a..=b` of a stored artifact, streamed one stored chunk at a time: a download
/// holds at most one chunk in memory, and a range starts at the chunk that holds its first
/// byte. A chunk missing from the database ends the body with an error (the client sees a
/// short transfer and resumes).
fn artifact_body(store: FleetStore, sha: String, a: u64, b: u64) -> Body {
    let chunk = crate::store::CHUNK as u64;
    let chunks = futures_util::StreamExt::then(
        futures_util::stream::iter(a / chunk..=b / chunk),
        move |idx| {
            let store = store.clone();
            let sha = sha.clone();
            async move {
                let data = store
                    .artifact_chunk(&sha, idx)
                    .await
                    .map_err(std::io::Error::other)?
                    .ok_or_else(|| {
                        std::io::Error::other(format!("artifact {sha}: chunk {idx} missing"))
                    })?;
                let first = idx * chunk;
                let from = usize::try_from(a.saturating_sub(first)).unwrap_or(usize::MAX);
                let to =
                    usize::try_from((b + 1 - first).min(data.len() as u64)).unwrap_or(usize::MAX);
                data.get(from..to)
                    .map(Bytes::copy_from_slice)
                    .ok_or_else(|| {
                        std::io::Error::other(format!("artifact {sha}: chunk {idx} too short"))
                    })
            }
        },
    );
    Body::from_stream(chunks)
}

async fn artifact(
    State(st): State<AppState>,
    AuthDevice(d): AuthDevice,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no artifact {sha} for this device"),
        )
    };
    if !crate::registry::is_sha256_hex(&sha) {
        return Err(not_found());
    }
    // Authorized only if it is (a delta to) a bundle or agent release this device should
    // run now.
    let desired = desired_for(&st, &d, &running_of(&d)).await?;
    let agent = match d.checkin().and_then(|c| c.agent) {
        Some(a) => desired_agent_for(&st, &d, Some(&a)).await?,
        None => None,
    };
    if !desired
        .iter()
        .any(|b| b.sha256 == sha || b.artifact.sha256 == sha)
        && !agent
            .as_ref()
            .is_some_and(|a| a.sha256 == sha || a.artifact.sha256 == sha)
    {
        return Err(not_found());
    }
    let store = st.registry.store().clone();
    let len = store.artifact_size(&sha).await?.ok_or_else(not_found)?;
    let range = parse_range(&headers, len)?;
    let mut resp = if len == 0 {
        Body::empty().into_response()
    } else {
        let (a, b) = range.unwrap_or((0, len - 1));
        let mut r = artifact_body(store, sha, a, b).into_response();
        if let Ok(v) = (b + 1 - a).to_string().parse() {
            r.headers_mut().insert(header::CONTENT_LENGTH, v);
        }
        if range.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = format!("bytes {a}-{b}/{len}").parse() {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        r
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_support::store, CHUNK};

    async fn body_bytes(body: Body) -> Result<Vec<u8>, axum::Error> {
        Ok(axum::body::to_bytes(body, usize::MAX).await?.to_vec())
    }

    #[tokio::test]
    async fn artifact_ranges_stream_across_chunk_boundaries() {
        let (s, dir) = store().await;
        let big: Vec<u8> = (0..(2 * CHUNK + 77)).map(|i| (i * 7 % 253) as u8).collect();
        s.put_artifact("big", &big).await.unwrap();
        let last = big.len() as u64 - 1;
        let c = CHUNK as u64;
        for (a, b) in [
            (0, last),
            (0, 0),
            (c - 3, c + 2),
            (c, c),
            (5, 2 * c + 10),
            (last, last),
        ] {
            let got = body_bytes(artifact_body(s.clone(), "big".into(), a, b))
                .await
                .unwrap();
            assert_eq!(got, big[a as usize..=b as usize], "range {a}-{b}");
        }
        // A chunk gone from the database: the body ends with an error, not short data.
        sqlx::query("DELETE FROM artifact_chunks WHERE sha256 = 'big' AND idx = 1")
            .execute(s.pool())
            .await
            .unwrap();
        assert!(body_bytes(artifact_body(s.clone(), "big".into(), 0, last))
            .await
            .is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
