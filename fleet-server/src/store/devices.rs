//! Devices: enrollment tokens and enrollment, the registry row, labels (`device_labels` for
//! queries, the `labels` column for display), check-ins with the columns the device list
//! filters on, the status history, and the device list query itself.

use sqlx::any::AnyRow;
use sqlx::Row;

use edge_wire::sync::CheckIn;

use super::{like_pattern, list_of, now_ms, Arg, FleetStore, Result, Sql, StoreError};
use crate::types::{DeviceSortKey, DeviceState, Problem};

/// How long a drop keeps a device on the problem list.
pub const DROPS_WINDOW_MS: i64 = 3_600_000;
/// Consecutive large backlog rises that make the `backlog_growing` problem.
pub const BACKLOG_RISES: i64 = 3;

/// An enrolled device as stored (its registry row).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    /// Device id, assigned at enrollment.
    pub id: String,
    /// The name it enrolled with (its agent id).
    pub name: String,
    /// `key=value` labels (groups).
    pub labels: Vec<String>,
    /// Enrollment time (Unix ms).
    pub enrolled_at: i64,
    /// When it was revoked (Unix ms); a revoked device's certificate is refused.
    pub revoked_at: Option<i64>,
    /// Last check-in (Unix ms); `None` before the first.
    pub last_seen: Option<i64>,
    /// The last check-in, as JSON.
    pub status: Option<String>,
    /// Agent version at the last check-in.
    pub agent_version: Option<String>,
    /// `bundle#version_number` of each running model.
    pub models: Vec<String>,
    /// Outbox records waiting for the fleet server, all streams, at the last check-in.
    pub backlog: i64,
    /// Consecutive check-ins at which the backlog rose by more than 10 % and 100 records.
    pub backlog_rises: i64,
    /// Records the device dropped under its limits (its counter since it started).
    pub dropped: i64,
    /// When `dropped` last rose.
    pub drops_at: Option<i64>,
    /// The error reported at the last check-in, if any.
    pub last_error: Option<String>,
    /// Set by a failed or rolled-back update report, cleared by an applied one.
    pub update_failed_at: Option<i64>,
    /// Raised drift and performance alarms.
    pub drift_alarms: i64,
    /// The last status history point.
    pub history_at: Option<i64>,
    /// When its certificate in use was issued (Unix ms).
    pub cert_issued_at: Option<i64>,
    /// When its certificate in use expires (Unix ms).
    pub cert_expires_at: Option<i64>,
    /// SHA-256 of the CA certificate (PEM) that signed it.
    pub cert_ca_sha256: Option<String>,
}

impl Device {
    /// Its last check-in as it sent it (`None`: none yet, a list row without the status, or
    /// a stored status this version cannot read).
    pub fn checkin(&self) -> Option<edge_wire::sync::CheckIn> {
        serde_json::from_str(self.status.as_deref()?).ok()
    }

    /// Whether the device should renew its certificate now: two thirds of its lifetime
    /// passed, or a CA other than `signing_ca` (a rotation) signed it.
    pub fn should_renew(&self, now_ms: i64, signing_ca: &str) -> bool {
        if self
            .cert_ca_sha256
            .as_deref()
            .is_some_and(|c| c != signing_ca)
        {
            return true;
        }
        match (self.cert_issued_at, self.cert_expires_at) {
            (Some(from), Some(to)) => now_ms >= from + (to - from) * 2 / 3,
            _ => false,
        }
    }
}

/// A certificate the fleet CA issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedCert {
    /// SHA-256 of its DER: what the TLS layer reports per connection.
    pub sha256: String,
    /// Unix ms.
    pub issued_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// SHA-256 of the signing CA certificate's PEM.
    pub ca_sha256: String,
}

impl IssuedCert {
    /// A certificate record for tests that enroll without a CA: issued now, valid a year,
    /// CA `ca`.
    #[doc(hidden)]
    pub fn test(sha256: impl Into<String>) -> IssuedCert {
        let now = now_ms();
        IssuedCert {
            sha256: sha256.into(),
            issued_at: now,
            expires_at: now + 365 * 86_400_000,
            ca_sha256: "ca".into(),
        }
    }
}

/// When a last-seen time counts as online, stale or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateThresholds {
    /// The moment judged (Unix ms).
    pub now_ms: i64,
    /// Seen within this: online.
    pub online_ms: i64,
    /// Seen within this (but not online): stale; otherwise offline.
    pub offline_ms: i64,
}

impl StateThresholds {
    fn online_since(&self) -> i64 {
        self.now_ms - self.online_ms
    }
    fn offline_before(&self) -> i64 {
        self.now_ms - self.offline_ms
    }
    fn drops_since(&self) -> i64 {
        self.now_ms - DROPS_WINDOW_MS
    }
}

impl Device {
    /// Online, stale, offline or revoked as of `t`.
    pub fn state(&self, t: &StateThresholds) -> DeviceState {
        match (self.revoked_at, self.last_seen) {
            (Some(_), _) => DeviceState::Revoked,
            (None, Some(s)) if s >= t.online_since() => DeviceState::Online,
            (None, Some(s)) if s >= t.offline_before() => DeviceState::Stale,
            _ => DeviceState::Offline,
        }
    }

    /// The device's problems, in [`Problem`] order (none for a revoked device).
    pub fn problems(&self, t: &StateThresholds) -> Vec<Problem> {
        if self.revoked_at.is_some() {
            return Vec::new();
        }
        Problem::ALL
            .iter()
            .copied()
            .filter(|p| match p {
                Problem::Error => self.last_error.is_some(),
                Problem::BacklogGrowing => self.backlog_rises >= BACKLOG_RISES,
                Problem::Drops => self.drops_at.is_some_and(|d| d >= t.drops_since()),
                Problem::UpdateFailed => self.update_failed_at.is_some(),
                Problem::DriftAlarm => self.drift_alarms > 0,
            })
            .collect()
    }
}

/// SQL condition for one problem (the same rules as [`Device::problems`]).
fn problem_sql(q: &mut Sql, p: Problem, t: &StateThresholds) {
    match p {
        Problem::Error => q.push("last_error IS NOT NULL"),
        Problem::BacklogGrowing => q.push(&format!("backlog_rises >= {BACKLOG_RISES}")),
        Problem::Drops => q.push("drops_at >= ").arg(Arg::I(t.drops_since())),
        Problem::UpdateFailed => q.push("update_failed_at IS NOT NULL"),
        Problem::DriftAlarm => q.push("drift_alarms > 0"),
    };
}

/// SQL condition: the device has any problem.
fn any_problem_sql(q: &mut Sql, t: &StateThresholds) {
    q.push("(revoked_at IS NULL AND (");
    for (i, p) in Problem::ALL.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        problem_sql(q, *p, t);
    }
    q.push("))");
}

fn state_sql(q: &mut Sql, s: DeviceState, t: &StateThresholds) {
    match s {
        DeviceState::Revoked => q.push("revoked_at IS NOT NULL"),
        DeviceState::Online => q
            .push("(revoked_at IS NULL AND last_seen >= ")
            .arg(Arg::I(t.online_since()))
            .push(")"),
        DeviceState::Stale => q
            .push("(revoked_at IS NULL AND last_seen < ")
            .arg(Arg::I(t.online_since()))
            .push(" AND last_seen >= ")
            .arg(Arg::I(t.offline_before()))
            .push(")"),
        DeviceState::Offline => q
            .push("(revoked_at IS NULL AND (last_seen IS NULL OR last_seen < ")
            .arg(Arg::I(t.offline_before()))
            .push("))"),
    };
}

/// Which problems a list asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemFilter {
    /// Devices with at least one problem.
    Any,
    /// Devices with this problem.
    Only(Problem),
}

/// The device list's filters (all must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// `key=value` labels the device must all carry.
    pub labels: Vec<String>,
    /// Only devices in this state.
    pub state: Option<DeviceState>,
    /// Only devices with problems, or with this one.
    pub problem: Option<ProblemFilter>,
    /// Runs this bundle (`name`) or this version of it (`name#version_number`).
    pub bundle: Option<String>,
    /// Only devices whose agent reports exactly this version.
    pub agent_version: Option<String>,
    /// Substring of the id or the name (case-insensitive).
    pub text: Option<String>,
}

/// The device list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSort {
    /// What to sort by.
    pub key: DeviceSortKey,
    /// Descending instead of ascending.
    pub descending: bool,
}

impl Default for DeviceSort {
    fn default() -> Self {
        DeviceSort {
            key: DeviceSortKey::Problems,
            descending: false,
        }
    }
}

/// Device counts per state (and with problems).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateCounts {
    /// Every device, revoked ones included.
    pub total: i64,
    /// Online devices.
    pub online: i64,
    /// Stale devices.
    pub stale: i64,
    /// Offline devices.
    pub offline: i64,
    /// Revoked devices.
    pub revoked: i64,
    /// Non-revoked devices with at least one problem.
    pub with_problems: i64,
}

/// The counts of the devices carrying one label.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelGroup {
    /// The label (`key=value` or a plain tag).
    pub label: String,
    /// Counts of the devices carrying it.
    #[serde(flatten)]
    pub counts: StateCounts,
}

/// One status history point of a device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryPoint {
    /// When the point was taken (Unix ms).
    pub at: i64,
    /// Outbox backlog then, all streams.
    pub backlog: i64,
    /// Records dropped on the device then (its counter since it started).
    pub dropped: i64,
    /// Per stream, as the device reported it (`[{stream, backlog, bytes, dropped}]`).
    pub streams: Vec<edge_wire::sync::StreamStatus>,
}

/// The columns a check-in sets, derived from the device's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInUpdate {
    /// The agent version reported.
    pub agent_version: String,
    /// Running models as `,bundle#version_number,…,` (empty without models).
    pub models: String,
    /// Outbox records waiting for the server, all streams.
    pub backlog: i64,
    /// Records the device dropped under its limits (its counter since it started).
    pub dropped: i64,
    /// The reported error (an empty one counts as none).
    pub last_error: Option<String>,
}

/// One check-in for [`FleetStore::commit_group`]: who, and what it sets.
#[derive(Debug, Clone)]
pub struct CheckInWrite {
    /// The device checking in.
    pub device: super::DeviceRef,
    /// The columns it sets.
    pub update: CheckInUpdate,
    /// The report as JSON (the `status` column).
    pub status_json: String,
    /// The per-stream part, for a status history point.
    pub streams_json: String,
    /// A history point when the last one is at least this old.
    pub history_every_ms: i64,
}

impl CheckInWrite {
    /// A check-in of `device` with `report`; fails only if the report's streams do not
    /// serialize.
    pub fn new(
        device: super::DeviceRef,
        report: &CheckIn,
        status_json: String,
        history_every_ms: i64,
    ) -> Result<CheckInWrite> {
        Ok(CheckInWrite {
            device,
            update: CheckInUpdate::first(report),
            status_json,
            streams_json: serde_json::to_string(&report.streams)
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
            history_every_ms,
        })
    }
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl CheckInUpdate {
    /// The columns from a report alone (no previous check-in to compare with).
    pub fn first(c: &CheckIn) -> CheckInUpdate {
        let models: String = c
            .models
            .iter()
            .map(|m| format!(",{}#{}", m.bundle, m.version_number))
            .collect();
        CheckInUpdate {
            agent_version: c.agent_version.clone(),
            models: if models.is_empty() {
                String::new()
            } else {
                format!("{models},")
            },
            backlog: c
                .streams
                .iter()
                .fold(0i64, |a, s| a.saturating_add(sat(s.backlog))),
            dropped: c
                .streams
                .iter()
                .fold(0i64, |a, s| a.saturating_add(sat(s.dropped))),
            last_error: c.last_error.clone().filter(|e| !e.is_empty()),
        }
    }
}

fn device_of(r: &AnyRow) -> Result<Device> {
    Ok(Device {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        labels: list_of(&r.try_get::<String, _>("labels")?),
        enrolled_at: r.try_get("enrolled_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen: r.try_get("last_seen")?,
        status: r.try_get("status")?,
        agent_version: r.try_get("agent_version")?,
        models: list_of(&r.try_get::<String, _>("models")?),
        backlog: r.try_get("backlog")?,
        backlog_rises: r.try_get("backlog_rises")?,
        dropped: r.try_get("dropped")?,
        drops_at: r.try_get("drops_at")?,
        last_error: r.try_get("last_error")?,
        update_failed_at: r.try_get("update_failed_at")?,
        drift_alarms: r.try_get("drift_alarms")?,
        history_at: r.try_get("history_at")?,
        cert_issued_at: r.try_get("cert_issued_at")?,
        cert_expires_at: r.try_get("cert_expires_at")?,
        cert_ca_sha256: r.try_get("cert_ca_sha256")?,
    })
}

const DEVICE_COLUMNS: &str = "id, name, labels, enrolled_at, revoked_at, last_seen, status, \
    agent_version, models, backlog, backlog_rises, dropped, drops_at, last_error, \
    update_failed_at, drift_alarms, history_at, cert_issued_at, cert_expires_at, cert_ca_sha256";

/// [`DEVICE_COLUMNS`] without the status JSON (lists: `status` is `None`).
const DEVICE_COLUMNS_LIGHT: &str = "id, name, labels, enrolled_at, revoked_at, last_seen, \
    CAST(NULL AS TEXT) AS status, agent_version, models, backlog, backlog_rises, dropped, \
    drops_at, last_error, update_failed_at, drift_alarms, history_at, cert_issued_at, \
    cert_expires_at, cert_ca_sha256";

/// Labels as one comma-separated column.
fn joined(labels: &[String]) -> String {
    labels.join(",")
}

impl FleetStore {
    // ---- enrollment ----

    /// Stores a one-time enrollment token by its SHA-256: the device enrolled with it gets
    /// `labels`; `by` created it; it is refused after `expires_at` (Unix ms).
    pub async fn add_token(
        &self,
        token_sha256: &str,
        labels: &[String],
        by: &str,
        expires_at: i64,
    ) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO enroll_tokens (token_sha256, labels, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_sha256)
            .bind(joined(labels))
            .bind(by)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Consumes a one-time token and registers the device in one transaction. Errors name
    /// the reason (unknown, used, expired) without saying more than needed.
    pub async fn enroll(
        &self,
        token_sha256: &str,
        device_id: &str,
        name: &str,
        cert: &IssuedCert,
    ) -> Result<Device> {
        let (_writer, mut tx) = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT labels, expires_at, used_at FROM enroll_tokens WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Invalid("unknown enrollment token".into()))?;
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Err(StoreError::Invalid(
                "enrollment token was already used".into(),
            ));
        }
        if row.try_get::<i64, _>("expires_at")? < now_ms() {
            return Err(StoreError::Invalid("enrollment token has expired".into()));
        }
        let labels: String = row.try_get("labels")?;
        let now = now_ms();
        let used = sqlx::query(
            "UPDATE enroll_tokens SET used_at = $1, device_id = $2 WHERE token_sha256 = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(device_id)
        .bind(token_sha256)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Err(StoreError::Invalid(
                "enrollment token was already used".into(),
            ));
        }
        sqlx::query("INSERT INTO devices (id, name, labels, cert_sha256, enrolled_at, cert_issued_at, cert_expires_at, cert_ca_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(device_id)
            .bind(name)
            .bind(&labels)
            .bind(&cert.sha256)
            .bind(now)
            .bind(cert.issued_at)
            .bind(cert.expires_at)
            .bind(&cert.ca_sha256)
            .execute(&mut *tx)
            .await?;
        for l in list_of(&labels) {
            sqlx::query("INSERT INTO device_labels (device_id, label) VALUES ($1, $2)")
                .bind(device_id)
                .bind(l)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.device(device_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("enrolled device {device_id} vanished")))
    }

    /// Records a renewed certificate for `device` as its next one: the one in use stays
    /// valid until the device confirms the new one ([`FleetStore::confirm_cert`]).
    pub async fn set_next_cert(&self, device: &str, cert: &IssuedCert) -> Result<()> {
        let _writer = self.writer.lock().await;
        let meta = serde_json::to_string(cert).map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query("UPDATE devices SET next_cert_sha256 = $1, next_cert = $2 WHERE id = $3")
            .bind(&cert.sha256)
            .bind(meta)
            .bind(device)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A device presents certificate `sha256`: when it is its renewed (next) certificate, it
    /// becomes the one in use and the old one is no longer accepted; when it already is the
    /// one in use, nothing changes. `None`: not a certificate of a non-revoked device.
    pub async fn confirm_cert(&self, sha256: &str) -> Result<Option<(Device, bool)>> {
        let (_writer, mut tx) = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT id, next_cert FROM devices WHERE next_cert_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let promoted = match row {
            Some(r) => {
                let id: String = r.try_get("id")?;
                let meta: Option<String> = r.try_get("next_cert")?;
                let c: IssuedCert = meta
                    .as_deref()
                    .and_then(|m| serde_json::from_str(m).ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("device {id}: next_cert")))?;
                sqlx::query("UPDATE devices SET cert_sha256 = $1, cert_issued_at = $2, cert_expires_at = $3, cert_ca_sha256 = $4, next_cert_sha256 = NULL, next_cert = NULL WHERE id = $5")
                    .bind(&c.sha256)
                    .bind(c.issued_at)
                    .bind(c.expires_at)
                    .bind(&c.ca_sha256)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                true
            }
            None => false,
        };
        tx.commit().await?;
        Ok(self
            .device_by_cert(sha256)
            .await?
            .filter(|d| d.revoked_at.is_none())
            .map(|d| (d, promoted)))
    }

    /// Marks the certificates of devices enrolled before CA tracking as signed by `ca`
    /// (the only CA there was).
    pub async fn adopt_ca(&self, ca_sha256: &str) -> Result<u64> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query("UPDATE devices SET cert_ca_sha256 = $1 WHERE cert_ca_sha256 IS NULL")
            .bind(ca_sha256)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    // ---- the registry ----

    /// The device whose client certificate has this SHA-256 (hex, of the DER), if any.
    pub async fn device_by_cert(&self, cert_sha256: &str) -> Result<Option<Device>> {
        let r = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE cert_sha256 = $1"
        ))
        .bind(cert_sha256)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(device_of).transpose()
    }

    /// The device `id`, if any.
    pub async fn device(&self, id: &str) -> Result<Option<Device>> {
        let r = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(device_of).transpose()
    }

    /// Every device, by name.
    pub async fn devices(&self) -> Result<Vec<Device>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_of).collect()
    }

    /// Every device carrying all `labels` (every device when empty), by name, with only
    /// what selecting them needs: id, name, labels, revocation, last check-in, models (the
    /// other fields are empty). Rollout progress reads the whole fleet through here, so it
    /// reads six columns, not seventeen.
    pub async fn devices_with_labels(&self, labels: &[String]) -> Result<Vec<Device>> {
        let mut q = Sql::new(
            "SELECT id, name, labels, revoked_at, last_seen, models FROM devices WHERE 1 = 1",
        );
        labels_sql(&mut q, labels);
        q.push(" ORDER BY name, id");
        let rows = q.query().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(Device {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    labels: list_of(&r.try_get::<String, _>("labels")?),
                    revoked_at: r.try_get("revoked_at")?,
                    last_seen: r.try_get("last_seen")?,
                    models: list_of(&r.try_get::<String, _>("models")?),
                    enrolled_at: 0,
                    status: None,
                    agent_version: None,
                    backlog: 0,
                    backlog_rises: 0,
                    dropped: 0,
                    drops_at: None,
                    last_error: None,
                    update_failed_at: None,
                    drift_alarms: 0,
                    history_at: None,
                    cert_issued_at: None,
                    cert_expires_at: None,
                    cert_ca_sha256: None,
                })
            })
            .collect()
    }

    /// Revokes device `id` now; false if there is no such device or it is revoked already.
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r =
            sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Replaces a device's labels; false when there is no such device.
    pub async fn set_labels(&self, id: &str, labels: &[String]) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        let r = sqlx::query("UPDATE devices SET labels = $1 WHERE id = $2")
            .bind(joined(labels))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM device_labels WHERE device_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut unique: Vec<&String> = labels.iter().collect();
        unique.sort();
        unique.dedup();
        for l in unique {
            sqlx::query("INSERT INTO device_labels (device_id, label) VALUES ($1, $2)")
                .bind(id)
                .bind(l)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    // ---- check-ins ----

    /// Records a check-in of device `prev.id` (the device API records many per
    /// transaction: [`FleetStore::commit_group`]).
    pub async fn check_in(
        &self,
        prev: &Device,
        report: &CheckIn,
        status_json: &str,
        history_every_ms: i64,
    ) -> Result<()> {
        let w = CheckInWrite::new(
            super::DeviceRef::Id(prev.id.clone()),
            report,
            status_json.to_string(),
            history_every_ms,
        )?;
        let (_writer, mut tx) = self.begin_write().await?;
        self.check_in_in(&mut tx, &[&w]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `writes` (distinct devices) in `tx`, three statements for all of them: the
    /// errors that changed, the status history points that are due, and the device rows
    /// (backlog rises, drops and history times computed from each row's previous values by
    /// the statement itself, so nothing is read first). Returns, per write, the device as
    /// it is now (list columns, no status JSON), or `None` for a reference that names no
    /// device or a revoked one.
    pub(super) async fn check_in_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        writes: &[&CheckInWrite],
    ) -> Result<Vec<Option<Device>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut out: Vec<Option<Device>> = vec![None; writes.len()];
        /// The column a write names its device by, and the value.
        fn key(w: &CheckInWrite) -> (&'static str, &str) {
            match &w.device {
                super::DeviceRef::Cert(c) => ("cert_sha256", c.as_str()),
                super::DeviceRef::Id(i) => ("id", i.as_str()),
            }
        }
        // One statement per key column (certificates from the device API, ids elsewhere).
        for column in ["cert_sha256", "id"] {
            let ws: Vec<&CheckInWrite> = writes
                .iter()
                .copied()
                .filter(|w| key(w).0 == column)
                .collect();
            if ws.is_empty() {
                continue;
            }
            // Errors that differ from the previous check-in's.
            let errs: Vec<&CheckInWrite> = ws
                .iter()
                .copied()
                .filter(|w| w.update.last_error.is_some())
                .collect();
            if !errs.is_empty() {
                let mut q = Sql::many(self.backend, "WITH v (k_key, k_err) AS (VALUES ");
                for (n, w) in errs.iter().enumerate() {
                    q.row(
                        n,
                        [
                            Arg::T(key(w).1),
                            Arg::N(
                                w.update
                                    .last_error
                                    .as_ref()
                                    .map(|e| e.chars().take(2000).collect()),
                            ),
                        ],
                    );
                }
                q.push(&format!(") INSERT INTO device_errors (device_id, at, error) SELECT d.id, {now}, v.k_err FROM v JOIN devices d ON d.{column} = v.k_key WHERE d.revoked_at IS NULL AND (d.last_error IS NULL OR d.last_error <> v.k_err)"));
                q.query().execute(&mut **tx).await?;
            }
            // Status history points that are due.
            let mut q = Sql::many(
                self.backend,
                "WITH v (k_key, k_backlog, k_dropped, k_streams, k_every) AS (VALUES ",
            );
            for (n, w) in ws.iter().enumerate() {
                q.row(
                    n,
                    [
                        Arg::T(key(w).1),
                        Arg::I(w.update.backlog),
                        Arg::I(w.update.dropped),
                        Arg::T(&w.streams_json),
                        Arg::I(w.history_every_ms),
                    ],
                );
            }
            q.push(&format!(") INSERT INTO device_history (device_id, at, backlog, dropped, streams) SELECT d.id, {now}, v.k_backlog, v.k_dropped, v.k_streams FROM v JOIN devices d ON d.{column} = v.k_key WHERE d.revoked_at IS NULL AND (d.history_at IS NULL OR {now} - d.history_at >= v.k_every) ON CONFLICT (device_id, at) DO NOTHING"));
            q.query().execute(&mut **tx).await?;
            // The rows.
            let greatest = match self.backend {
                super::Backend::Postgres => "GREATEST",
                super::Backend::Sqlite => "MAX",
            };
            let mut q = Sql::many(self.backend, "WITH v (k_key, k_status, k_agent, k_models, k_backlog, k_dropped, k_err, k_every) AS (VALUES ");
            for (n, w) in ws.iter().enumerate() {
                q.row(
                    n,
                    [
                        Arg::T(key(w).1),
                        Arg::T(&w.status_json),
                        Arg::T(&w.update.agent_version),
                        Arg::T(&w.update.models),
                        Arg::I(w.update.backlog),
                        Arg::I(w.update.dropped),
                        Arg::N(w.update.last_error.clone()),
                        Arg::I(w.history_every_ms),
                    ],
                );
            }
            q.push(&format!(") UPDATE devices SET last_seen = {now}, status = v.k_status, agent_version = v.k_agent, models = v.k_models, backlog = v.k_backlog, \
                backlog_rises = CASE WHEN v.k_backlog > devices.backlog + {greatest}(devices.backlog / 10, 100) THEN devices.backlog_rises + 1 ELSE 0 END, \
                dropped = v.k_dropped, drops_at = CASE WHEN v.k_dropped > devices.dropped THEN {now} ELSE devices.drops_at END, \
                last_error = v.k_err, \
                history_at = CASE WHEN devices.history_at IS NULL OR {now} - devices.history_at >= v.k_every THEN {now} ELSE devices.history_at END \
                FROM v WHERE devices.{column} = v.k_key AND devices.revoked_at IS NULL \
                RETURNING cert_sha256 AS k_cert, {DEVICE_COLUMNS_LIGHT}"));
            let mut by_key: std::collections::HashMap<String, Device> = Default::default();
            for r in q.query().fetch_all(&mut **tx).await? {
                let d = device_of(&r)?;
                let k = if column == "id" {
                    d.id.clone()
                } else {
                    r.try_get("k_cert")?
                };
                by_key.insert(k, d);
            }
            for (i, w) in writes.iter().enumerate() {
                let (c, k) = key(w);
                if c == column {
                    out[i] = by_key.get(k).cloned();
                }
            }
        }
        Ok(out)
    }

    /// A device's status history at or after `since_ms`, oldest first (at most `limit`).
    pub async fn history(&self, id: &str, since_ms: i64, limit: i64) -> Result<Vec<HistoryPoint>> {
        let rows = sqlx::query("SELECT at, backlog, dropped, streams FROM device_history WHERE device_id = $1 AND at >= $2 ORDER BY at LIMIT $3")
            .bind(id)
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let streams: String = r.try_get("streams")?;
                Ok(HistoryPoint {
                    at: r.try_get("at")?,
                    backlog: r.try_get("backlog")?,
                    dropped: r.try_get("dropped")?,
                    streams: serde_json::from_str(&streams).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// A device's reported errors (each when it first appeared), newest first.
    pub async fn device_errors(&self, id: &str, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT at, error FROM device_errors WHERE device_id = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("at")?, r.try_get("error")?)))
            .collect()
    }

    /// Deletes history points and errors older than `before_ms`; returns how many.
    pub async fn prune_history(&self, before_ms: i64) -> Result<u64> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query("DELETE FROM device_history WHERE at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        let e = sqlx::query("DELETE FROM device_errors WHERE at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() + e.rows_affected())
    }

    // ---- the device list and the overview ----

    /// One page of the device list and the number of devices matching the filter; `t`
    /// decides states, recent drops and so the problems-first order.
    pub async fn device_page(
        &self,
        f: &DeviceFilter,
        sort: &DeviceSort,
        offset: i64,
        limit: i64,
        t: &StateThresholds,
    ) -> Result<(Vec<Device>, i64)> {
        let mut cond = Sql::new(" WHERE 1 = 1");
        labels_sql(&mut cond, &f.labels);
        if let Some(s) = f.state {
            cond.push(" AND ");
            state_sql(&mut cond, s, t);
        }
        match f.problem {
            Some(ProblemFilter::Any) => {
                cond.push(" AND ");
                any_problem_sql(&mut cond, t);
            }
            Some(ProblemFilter::Only(p)) => {
                cond.push(" AND revoked_at IS NULL AND ");
                problem_sql(&mut cond, p, t);
            }
            None => {}
        }
        if let Some(b) = &f.bundle {
            let want = if b.contains('#') {
                format!(",{b},")
            } else {
                format!(",{b}#")
            };
            cond.push(" AND models LIKE ")
                .arg(Arg::S(like_pattern(&want)))
                .push(" ESCAPE '\\'");
        }
        if let Some(v) = &f.agent_version {
            cond.push(" AND agent_version = ").arg(Arg::S(v.clone()));
        }
        if let Some(text) = f.text.as_deref().filter(|s| !s.is_empty()) {
            let p = like_pattern(&text.to_lowercase());
            cond.push(" AND (LOWER(name) LIKE ")
                .arg(Arg::S(p.clone()))
                .push(" ESCAPE '\\' OR LOWER(id) LIKE ")
                .arg(Arg::S(p))
                .push(" ESCAPE '\\')");
        }
        let mut count = Sql::new("SELECT COUNT(*) AS n FROM devices");
        count.push(&cond.text);
        count.args = cond.args.clone();
        let total: i64 = count.query().fetch_one(&self.pool).await?.try_get("n")?;

        let mut q = Sql::new(&format!("SELECT {DEVICE_COLUMNS_LIGHT} FROM devices"));
        q.push(&cond.text);
        q.args = cond.args;
        let dir = if sort.descending { "DESC" } else { "ASC" };
        q.push(" ORDER BY ");
        match sort.key {
            DeviceSortKey::Problems => {
                q.push("CASE WHEN ");
                any_problem_sql(&mut q, t);
                q.push(&format!(" THEN 0 ELSE 1 END {dir}, name, id"));
            }
            DeviceSortKey::Name => {
                q.push(&format!("name {dir}, id {dir}"));
            }
            DeviceSortKey::Id => {
                q.push(&format!("id {dir}"));
            }
            // Never-seen devices sort as the oldest.
            DeviceSortKey::LastSeen => {
                q.push(&format!("COALESCE(last_seen, 0) {dir}, id"));
            }
            DeviceSortKey::EnrolledAt => {
                q.push(&format!("enrolled_at {dir}, id"));
            }
            DeviceSortKey::Backlog => {
                q.push(&format!("backlog {dir}, id"));
            }
        }
        q.push(" LIMIT ")
            .arg(Arg::I(limit.max(0)))
            .push(" OFFSET ")
            .arg(Arg::I(offset.max(0)));
        let rows = q.query().fetch_all(&self.pool).await?;
        let devices = rows.iter().map(device_of).collect::<Result<Vec<_>>>()?;
        Ok((devices, total))
    }

    /// Devices per state, fleet-wide.
    pub async fn state_counts(&self, t: &StateThresholds) -> Result<StateCounts> {
        let mut q = Sql::new("SELECT COUNT(*) AS total");
        for s in DeviceState::ALL {
            q.push(", SUM(CASE WHEN ");
            state_sql(&mut q, *s, t);
            q.push(&format!(" THEN 1 ELSE 0 END) AS {}", s.as_str()));
        }
        q.push(", SUM(CASE WHEN ");
        any_problem_sql(&mut q, t);
        q.push(" THEN 1 ELSE 0 END) AS problems FROM devices");
        let r = q.query().fetch_one(&self.pool).await?;
        counts_of(&r, "total")
    }

    /// Devices per state for each label any device carries, by label.
    pub async fn label_groups(&self, t: &StateThresholds) -> Result<Vec<LabelGroup>> {
        let mut q = Sql::new("SELECT l.label AS label, COUNT(*) AS total");
        for s in DeviceState::ALL {
            q.push(", SUM(CASE WHEN ");
            state_sql(&mut q, *s, t);
            q.push(&format!(" THEN 1 ELSE 0 END) AS {}", s.as_str()));
        }
        q.push(", SUM(CASE WHEN ");
        any_problem_sql(&mut q, t);
        q.push(" THEN 1 ELSE 0 END) AS problems FROM device_labels l JOIN devices ON devices.id = l.device_id GROUP BY l.label ORDER BY l.label");
        let rows = q.query().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(LabelGroup {
                    label: r.try_get("label")?,
                    counts: counts_of(r, "total")?,
                })
            })
            .collect()
    }
}

/// `SUM` is NULL over no rows and may come back as a wider type: read it as `i64` or 0.
fn sum(r: &AnyRow, col: &str) -> Result<i64> {
    Ok(r.try_get::<Option<i64>, _>(col)?.unwrap_or(0))
}

fn counts_of(r: &AnyRow, total: &str) -> Result<StateCounts> {
    Ok(StateCounts {
        total: sum(r, total)?,
        online: sum(r, "online")?,
        stale: sum(r, "stale")?,
        offline: sum(r, "offline")?,
        revoked: sum(r, "revoked")?,
        with_problems: sum(r, "problems")?,
    })
}

fn labels_sql(q: &mut Sql, labels: &[String]) {
    for l in labels {
        q.push(" AND EXISTS (SELECT 1 FROM device_labels dl WHERE dl.device_id = devices.id AND dl.label = ")
            .arg(Arg::S(l.clone()))
            .push(")");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;
    use edge_wire::sync::{ModelStatus, StreamStatus};

    fn report(backlog: u64, dropped: u64, error: Option<&str>) -> CheckIn {
        CheckIn {
            agent_version: "0.1.0".into(),
            models: vec![ModelStatus {
                model: "pump".into(),
                bundle: "pump-anomaly".into(),
                version: "1.3.0".into(),
                version_number: 3,
                sha256: "ab".into(),
            }],
            streams: vec![StreamStatus {
                stream: "samples".into(),
                backlog,
                bytes: 10,
                dropped,
            }],
            last_error: error.map(str::to_string),
            uptime_s: 1,
            config: None,
            agent: None,
        }
    }

    async fn enrolled(s: &FleetStore, id: &str, labels: &[&str]) -> Device {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        s.add_token(&format!("t-{id}"), &labels, "op", now_ms() + 60_000)
            .await
            .unwrap();
        s.enroll(
            &format!("t-{id}"),
            id,
            &format!("gw-{id}"),
            &crate::store::IssuedCert::test(format!("c-{id}")),
        )
        .await
        .unwrap()
    }

    async fn check(s: &FleetStore, id: &str, r: &CheckIn) {
        let prev = s.device(id).await.unwrap().unwrap();
        s.check_in(&prev, r, "{}", 3_600_000).await.unwrap();
    }

    #[tokio::test]
    async fn problems_follow_check_ins() {
        let (s, dir) = store().await;
        let t = || StateThresholds {
            now_ms: now_ms(),
            online_ms: 30_000,
            offline_ms: 600_000,
        };
        enrolled(&s, "d1", &["site=a"]).await;
        check(&s, "d1", &report(100, 0, None)).await;
        let d = s.device("d1").await.unwrap().unwrap();
        assert_eq!(d.state(&t()), DeviceState::Online);
        assert!(d.problems(&t()).is_empty());
        assert_eq!(d.models, vec!["pump-anomaly#3".to_string()]);
        // Three large rises in a row: growing. A small one resets the count.
        for b in [300, 600, 900] {
            check(&s, "d1", &report(b, 0, None)).await;
        }
        let d = s.device("d1").await.unwrap().unwrap();
        assert_eq!(d.problems(&t()), vec![Problem::BacklogGrowing]);
        check(&s, "d1", &report(950, 0, None)).await;
        let d = s.device("d1").await.unwrap().unwrap();
        assert!(d.problems(&t()).is_empty(), "{d:?}");
        // Drops and an error (logged once, however often it is reported).
        check(&s, "d1", &report(950, 5, Some("upload refused"))).await;
        check(&s, "d1", &report(950, 5, Some("upload refused"))).await;
        let d = s.device("d1").await.unwrap().unwrap();
        assert_eq!(d.problems(&t()), vec![Problem::Error, Problem::Drops]);
        // The agent restarted: its counter is lower; the drop stays on the list for an hour.
        check(&s, "d1", &report(10, 0, None)).await;
        let d = s.device("d1").await.unwrap().unwrap();
        assert_eq!(d.problems(&t()), vec![Problem::Drops]);
        let later = StateThresholds {
            now_ms: now_ms() + DROPS_WINDOW_MS + 1,
            ..t()
        };
        assert!(d.problems(&later).is_empty());
        assert_eq!(d.state(&later), DeviceState::Offline);
        // The same rules in SQL.
        let (page, n) = s
            .device_page(
                &DeviceFilter {
                    problem: Some(ProblemFilter::Only(Problem::Drops)),
                    ..Default::default()
                },
                &DeviceSort::default(),
                0,
                10,
                &t(),
            )
            .await
            .unwrap();
        assert_eq!((page.len(), n), (1, 1));
        let (_, n) = s
            .device_page(
                &DeviceFilter {
                    problem: Some(ProblemFilter::Any),
                    ..Default::default()
                },
                &DeviceSort::default(),
                0,
                10,
                &later,
            )
            .await
            .unwrap();
        assert_eq!(n, 0);
        let errors = s.device_errors("d1", 10).await.unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1, "upload refused");
        // Eight check-ins within the hour: one history point, from the first.
        let h = s.history("d1", 0, 100).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].backlog, h[0].streams.len()), (100, 1));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn the_device_list_filters_sorts_and_pages_in_sql() {
        let (s, dir) = store().await;
        for i in 0..30 {
            let site = if i % 3 == 0 { "site=a" } else { "site=b" };
            enrolled(&s, &format!("d{i:02}"), &[site, "fleet=x"]).await;
        }
        // d05 reports (online, runs pump-anomaly#3); d06 reports an error; d07 is revoked.
        check(&s, "d05", &report(1, 0, None)).await;
        check(&s, "d06", &report(1, 0, Some("broken"))).await;
        s.revoke("d07").await.unwrap();
        let t = StateThresholds {
            now_ms: now_ms(),
            online_ms: 30_000,
            offline_ms: 600_000,
        };
        let page = |f: DeviceFilter, sort: DeviceSort, off: i64, lim: i64| {
            let s = s.clone();
            async move { s.device_page(&f, &sort, off, lim, &t).await.unwrap() }
        };
        let (d, n) = page(
            DeviceFilter {
                labels: vec!["site=a".into(), "fleet=x".into()],
                ..Default::default()
            },
            DeviceSort {
                key: DeviceSortKey::Name,
                descending: true,
            },
            2,
            3,
        )
        .await;
        assert_eq!(n, 10);
        let ids: Vec<_> = d.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d21", "d18", "d15"]);
        // Problems first, then by name.
        let (d, n) = page(DeviceFilter::default(), DeviceSort::default(), 0, 2).await;
        assert_eq!(n, 30);
        assert_eq!(d[0].id, "d06");
        assert_eq!(d[1].id, "d00");
        for (state, want) in [
            (DeviceState::Online, 2),
            (DeviceState::Revoked, 1),
            (DeviceState::Offline, 27),
            (DeviceState::Stale, 0),
        ] {
            let (_, n) = page(
                DeviceFilter {
                    state: Some(state),
                    ..Default::default()
                },
                DeviceSort::default(),
                0,
                100,
            )
            .await;
            assert_eq!(n, want, "{state}");
        }
        let (d, n) = page(
            DeviceFilter {
                bundle: Some("pump-anomaly#3".into()),
                ..Default::default()
            },
            DeviceSort::default(),
            0,
            100,
        )
        .await;
        assert_eq!(n, 2);
        assert!(d.iter().all(|d| d.models == ["pump-anomaly#3"]));
        let (_, n) = page(
            DeviceFilter {
                bundle: Some("pump_anomaly".into()),
                ..Default::default()
            },
            DeviceSort::default(),
            0,
            100,
        )
        .await;
        assert_eq!(n, 0, "`_` is no wildcard");
        let (d, _) = page(
            DeviceFilter {
                text: Some("GW-D1".into()),
                ..Default::default()
            },
            DeviceSort {
                key: DeviceSortKey::Id,
                descending: false,
            },
            0,
            100,
        )
        .await;
        assert_eq!(d.len(), 10, "d10..d19 by name, case-insensitive");
        let c = s.state_counts(&t).await.unwrap();
        assert_eq!(
            (
                c.total,
                c.online,
                c.stale,
                c.offline,
                c.revoked,
                c.with_problems
            ),
            (30, 2, 0, 27, 1, 1)
        );
        let g = s.label_groups(&t).await.unwrap();
        let labels: Vec<_> = g
            .iter()
            .map(|g| (g.label.as_str(), g.counts.total))
            .collect();
        assert_eq!(labels, [("fleet=x", 30), ("site=a", 10), ("site=b", 20)]);
        // Relabelling moves a device between groups.
        assert!(s.set_labels("d00", &["site=c".into()]).await.unwrap());
        let g = s.label_groups(&t).await.unwrap();
        assert!(g.iter().any(|g| g.label == "site=c" && g.counts.total == 1));
        assert!(!s.set_labels("nope", &[]).await.unwrap());
        std::fs::remove_dir_all(dir).ok();
    }
}
