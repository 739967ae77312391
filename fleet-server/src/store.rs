//! [`FleetStore`]: every table and every SQL statement of the fleet server.
//!
//! One set of SQL runs on both backends through sqlx's `Any` driver: SQLite in the data
//! directory by default (one file, WAL mode, safe for the CLI and the server at once), and
//! PostgreSQL later for fleets past one box (statements use `$n` placeholders and
//! `ON CONFLICT`, which both accept; only the DDL's blob type differs). Integers that are
//! `u64` on the wire are stored as `BIGINT` (version numbers and sequences stay below 2^63).
//!
//! Architecture invariant: no other module writes SQL.

use std::path::Path;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Records per INSERT statement (5 parameters each; SQLite allows 32766).
const INSERT_CHUNK: usize = 500;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, labels TEXT NOT NULL,
        cert_sha256 TEXT NOT NULL, enrolled_at BIGINT NOT NULL, revoked_at BIGINT,
        last_seen BIGINT, status TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS devices_cert ON devices (cert_sha256)",
    "CREATE TABLE IF NOT EXISTS enroll_tokens (
        token_sha256 TEXT PRIMARY KEY, labels TEXT NOT NULL, created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT, device_id TEXT)",
    "CREATE TABLE IF NOT EXISTS trusted_keys (
        key_id TEXT PRIMARY KEY, public_pem TEXT NOT NULL, added_by TEXT NOT NULL,
        added_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bundles (
        name TEXT NOT NULL, version_number BIGINT NOT NULL, version TEXT NOT NULL,
        sha256 TEXT NOT NULL, size BIGINT NOT NULL, signer TEXT NOT NULL,
        pushed_by TEXT NOT NULL, pushed_at BIGINT NOT NULL,
        PRIMARY KEY (name, version_number))",
    "CREATE TABLE IF NOT EXISTS deltas (
        base_sha256 TEXT NOT NULL, target_sha256 TEXT NOT NULL, method TEXT NOT NULL,
        artifact_sha256 TEXT NOT NULL, size BIGINT NOT NULL, sizes TEXT NOT NULL,
        PRIMARY KEY (base_sha256, target_sha256))",
    "CREATE TABLE IF NOT EXISTS rollouts (
        id TEXT PRIMARY KEY, bundle TEXT NOT NULL, version_number BIGINT NOT NULL,
        selector TEXT NOT NULL, canary_percent BIGINT, canary_label TEXT,
        phase TEXT NOT NULL, state TEXT NOT NULL, max_failures BIGINT NOT NULL,
        created_by TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollout_reports (
        rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, outcome TEXT NOT NULL,
        detail TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (rollout_id, device_id))",
    "CREATE TABLE IF NOT EXISTS stream_marks (
        device_id TEXT NOT NULL, stream TEXT NOT NULL, acked_through BIGINT NOT NULL,
        lost_on_device BIGINT NOT NULL, records BIGINT NOT NULL, duplicates BIGINT NOT NULL,
        PRIMARY KEY (device_id, stream))",
    "CREATE TABLE IF NOT EXISTS audit (
        at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL,
        detail TEXT NOT NULL)",
    // Retrain triggers (`drift policy set`): `rule` and `hook` are JSON (see
    // `drift::PolicyRule`, `drift::Hook`); `state` is the evaluator's JSON cursor, replaced
    // compare-and-set so two evaluators never record the same event twice.
    "CREATE TABLE IF NOT EXISTS drift_policies (
        name TEXT PRIMARY KEY, bundle TEXT NOT NULL, selector TEXT NOT NULL,
        every_ms BIGINT NOT NULL, intervals BIGINT NOT NULL, rule TEXT NOT NULL,
        hook TEXT NOT NULL, state TEXT NOT NULL, created_by TEXT NOT NULL,
        updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS drift_events (
        id TEXT PRIMARY KEY, policy TEXT NOT NULL, bundle TEXT NOT NULL,
        version_number BIGINT NOT NULL, from_ns BIGINT NOT NULL, to_ns BIGINT NOT NULL,
        devices TEXT NOT NULL, columns TEXT NOT NULL, body TEXT NOT NULL,
        created_at BIGINT NOT NULL, hook_status TEXT NOT NULL, hook_detail TEXT NOT NULL)",
];

/// The records table differs only in its blob type.
const RECORDS_SQLITE: &str = "CREATE TABLE IF NOT EXISTS records (
    device_id TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (device_id, stream, seq))";
const RECORDS_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS records (
    device_id TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
    body BYTEA NOT NULL, PRIMARY KEY (device_id, stream, seq))";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub id: String,
    pub name: String,
    /// `key=value` labels (groups).
    pub labels: Vec<String>,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    /// The last check-in, as JSON.
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BundleRow {
    pub name: String,
    pub version_number: i64,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub signer: String,
    pub pushed_by: String,
    pub pushed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rollout {
    pub id: String,
    pub bundle: String,
    pub version_number: i64,
    /// `key=value` labels a device must all carry (empty: every device).
    pub selector: Vec<String>,
    pub canary_percent: Option<i64>,
    pub canary_label: Option<String>,
    /// `canary` or `full`.
    pub phase: String,
    /// `active`, `halted` or `rolled_back`.
    pub state: String,
    pub max_failures: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeltaRow {
    pub method: String,
    pub artifact_sha256: String,
    pub size: i64,
    /// Every method's size, JSON.
    pub sizes: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamMark {
    pub stream: String,
    pub acked_through: i64,
    pub lost_on_device: i64,
    pub records: i64,
    pub duplicates: i64,
}

/// A retrain trigger (`fleet-server drift policy set`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriftPolicyRow {
    pub name: String,
    pub bundle: String,
    /// `key=value` labels a device must all carry (empty: every device).
    pub selector: Vec<String>,
    pub every_ms: i64,
    /// Consecutive drifting buckets that make an event.
    pub intervals: i64,
    /// When a bucket drifts, JSON.
    pub rule: String,
    /// What runs on an event, JSON.
    pub hook: String,
    /// The evaluator's cursor, JSON.
    pub state: String,
    pub created_by: String,
    pub updated_at: i64,
}

/// A recorded retrain event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriftEventRow {
    pub id: String,
    pub policy: String,
    pub bundle: String,
    pub version_number: i64,
    pub from_ns: i64,
    pub to_ns: i64,
    /// Device ids, JSON array.
    pub devices: String,
    /// Drifting column names, JSON array.
    pub columns: String,
    /// The event JSON the hook got.
    pub body: String,
    pub created_at: i64,
    /// `pending`, `ok`, `failed: …`, `timeout` (see `drift::run_hook`).
    pub hook_status: String,
    /// Exit status / HTTP status and the tail of stderr / the response.
    pub hook_detail: String,
}

fn policy_of(r: &AnyRow) -> Result<DriftPolicyRow> {
    Ok(DriftPolicyRow {
        name: r.try_get("name")?,
        bundle: r.try_get("bundle")?,
        selector: labels_of(&r.try_get::<String, _>("selector")?),
        every_ms: r.try_get("every_ms")?,
        intervals: r.try_get("intervals")?,
        rule: r.try_get("rule")?,
        hook: r.try_get("hook")?,
        state: r.try_get("state")?,
        created_by: r.try_get("created_by")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn event_of(r: &AnyRow) -> Result<DriftEventRow> {
    Ok(DriftEventRow {
        id: r.try_get("id")?,
        policy: r.try_get("policy")?,
        bundle: r.try_get("bundle")?,
        version_number: r.try_get("version_number")?,
        from_ns: r.try_get("from_ns")?,
        to_ns: r.try_get("to_ns")?,
        devices: r.try_get("devices")?,
        columns: r.try_get("columns")?,
        body: r.try_get("body")?,
        created_at: r.try_get("created_at")?,
        hook_status: r.try_get("hook_status")?,
        hook_detail: r.try_get("hook_detail")?,
    })
}

/// Result of storing one upload batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestResult {
    pub acked_through: i64,
    pub inserted: u64,
    pub duplicates: u64,
}

fn labels_of(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn device_of(r: &AnyRow) -> Result<Device> {
    Ok(Device {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        labels: labels_of(&r.try_get::<String, _>("labels")?),
        enrolled_at: r.try_get("enrolled_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen: r.try_get("last_seen")?,
        status: r.try_get("status")?,
    })
}

fn bundle_of(r: &AnyRow) -> Result<BundleRow> {
    Ok(BundleRow {
        name: r.try_get("name")?,
        version_number: r.try_get("version_number")?,
        version: r.try_get("version")?,
        sha256: r.try_get("sha256")?,
        size: r.try_get("size")?,
        signer: r.try_get("signer")?,
        pushed_by: r.try_get("pushed_by")?,
        pushed_at: r.try_get("pushed_at")?,
    })
}

fn rollout_of(r: &AnyRow) -> Result<Rollout> {
    Ok(Rollout {
        id: r.try_get("id")?,
        bundle: r.try_get("bundle")?,
        version_number: r.try_get("version_number")?,
        selector: labels_of(&r.try_get::<String, _>("selector")?),
        canary_percent: r.try_get("canary_percent")?,
        canary_label: r.try_get("canary_label")?,
        phase: r.try_get("phase")?,
        state: r.try_get("state")?,
        max_failures: r.try_get("max_failures")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The fleet's database.
#[derive(Debug, Clone)]
pub struct FleetStore {
    pool: AnyPool,
    sqlite: bool,
    /// SQLite has one writer at a time; writers of this process queue here (async, FIFO)
    /// instead of in SQLite's busy handler, which sleeps in growing steps.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl FleetStore {
    /// Opens (creating) the embedded SQLite database in `data_dir`.
    pub async fn open_dir(data_dir: &Path) -> Result<FleetStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let url = format!("sqlite://{}?mode=rwc", data_dir.join("fleet.db").display());
        Self::open_url(&url).await
    }

    /// Opens a database by URL: `sqlite://PATH?mode=rwc` or `postgres://…` (when built with
    /// PostgreSQL support).
    pub async fn open_url(url: &str) -> Result<FleetStore> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never block the writer; busy_timeout: the CLI and the
                        // server may write at the same moment.
                        sqlx::query("PRAGMA journal_mode=WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout=10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous=NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        // Page reads through a memory map, not a pread + copy each (the
                        // load generator showed page reads among the top costs).
                        sqlx::query("PRAGMA mmap_size=268435456")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA cache_size=-16384")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        for ddl in SCHEMA {
            sqlx::query(ddl).execute(&pool).await?;
        }
        sqlx::query(if sqlite {
            RECORDS_SQLITE
        } else {
            RECORDS_POSTGRES
        })
        .execute(&pool)
        .await?;
        Ok(FleetStore {
            pool,
            sqlite,
            writer: Default::default(),
        })
    }

    /// A transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so it waits for another writer (busy timeout) instead of failing
    /// with "database is locked" when its read snapshot is upgraded.
    async fn begin_write(
        &self,
    ) -> Result<(
        tokio::sync::OwnedMutexGuard<()>,
        sqlx::Transaction<'static, sqlx::Any>,
    )> {
        let guard = self.writer.clone().lock_owned().await;
        let tx = if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.pool.begin().await?
        };
        Ok((guard, tx))
    }

    // ---- audit ----

    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(subject)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, actor, action, subject, detail FROM audit ORDER BY at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    // ---- enrollment and devices ----

    pub async fn add_token(
        &self,
        token_sha256: &str,
        labels: &[String],
        by: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO enroll_tokens (token_sha256, labels, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_sha256)
            .bind(labels.join(","))
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
        cert_sha256: &str,
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
        sqlx::query("INSERT INTO devices (id, name, labels, cert_sha256, enrolled_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(device_id)
            .bind(name)
            .bind(&labels)
            .bind(cert_sha256)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Device {
            id: device_id.into(),
            name: name.into(),
            labels: labels_of(&labels),
            enrolled_at: now,
            revoked_at: None,
            last_seen: None,
            status: None,
        })
    }

    pub async fn device_by_cert(&self, cert_sha256: &str) -> Result<Option<Device>> {
        let r = sqlx::query("SELECT * FROM devices WHERE cert_sha256 = $1")
            .bind(cert_sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(device_of).transpose()
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>> {
        let r = sqlx::query("SELECT * FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(device_of).transpose()
    }

    pub async fn devices(&self) -> Result<Vec<Device>> {
        let rows = sqlx::query("SELECT * FROM devices ORDER BY name, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_of).collect()
    }

    pub async fn revoke(&self, id: &str) -> Result<bool> {
        let r =
            sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_labels(&self, id: &str, labels: &[String]) -> Result<bool> {
        let r = sqlx::query("UPDATE devices SET labels = $1 WHERE id = $2")
            .bind(labels.join(","))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn check_in(&self, id: &str, status_json: &str) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("UPDATE devices SET last_seen = $1, status = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(status_json)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- model registry ----

    pub async fn trust_key(&self, key_id: &str, pem: &str, by: &str) -> Result<()> {
        sqlx::query("INSERT INTO trusted_keys (key_id, public_pem, added_by, added_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING")
            .bind(key_id)
            .bind(pem)
            .bind(by)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn trusted_keys(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT public_pem FROM trusted_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("public_pem")?)).collect()
    }

    pub async fn latest_bundle(&self, name: &str) -> Result<Option<BundleRow>> {
        let r = sqlx::query(
            "SELECT * FROM bundles WHERE name = $1 ORDER BY version_number DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(bundle_of).transpose()
    }

    pub async fn bundle(&self, name: &str, version_number: i64) -> Result<Option<BundleRow>> {
        let r = sqlx::query("SELECT * FROM bundles WHERE name = $1 AND version_number = $2")
            .bind(name)
            .bind(version_number)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(bundle_of).transpose()
    }

    pub async fn bundle_by_sha(&self, sha256: &str) -> Result<Option<BundleRow>> {
        let r = sqlx::query("SELECT * FROM bundles WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(bundle_of).transpose()
    }

    pub async fn bundles(&self) -> Result<Vec<BundleRow>> {
        let rows = sqlx::query("SELECT * FROM bundles ORDER BY name, version_number")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(bundle_of).collect()
    }

    pub async fn add_bundle(&self, b: &BundleRow) -> Result<()> {
        sqlx::query("INSERT INTO bundles (name, version_number, version, sha256, size, signer, pushed_by, pushed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&b.name)
            .bind(b.version_number)
            .bind(&b.version)
            .bind(&b.sha256)
            .bind(b.size)
            .bind(&b.signer)
            .bind(&b.pushed_by)
            .bind(b.pushed_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delta(&self, base: &str, target: &str) -> Result<Option<DeltaRow>> {
        let r = sqlx::query("SELECT method, artifact_sha256, size, sizes FROM deltas WHERE base_sha256 = $1 AND target_sha256 = $2")
            .bind(base)
            .bind(target)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(DeltaRow {
                method: r.try_get("method")?,
                artifact_sha256: r.try_get("artifact_sha256")?,
                size: r.try_get("size")?,
                sizes: r.try_get("sizes")?,
            })
        })
        .transpose()
    }

    pub async fn add_delta(&self, base: &str, target: &str, d: &DeltaRow) -> Result<()> {
        sqlx::query("INSERT INTO deltas (base_sha256, target_sha256, method, artifact_sha256, size, sizes) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (base_sha256, target_sha256) DO NOTHING")
            .bind(base)
            .bind(target)
            .bind(&d.method)
            .bind(&d.artifact_sha256)
            .bind(d.size)
            .bind(&d.sizes)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Targets of cached deltas stored under this artifact hash.
    pub async fn delta_targets_of_artifact(&self, artifact: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT target_sha256 FROM deltas WHERE artifact_sha256 = $1")
            .bind(artifact)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get("target_sha256")?))
            .collect()
    }

    // ---- rollouts ----

    pub async fn add_rollout(&self, r: &Rollout) -> Result<()> {
        sqlx::query("INSERT INTO rollouts (id, bundle, version_number, selector, canary_percent, canary_label, phase, state, max_failures, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
            .bind(&r.id)
            .bind(&r.bundle)
            .bind(r.version_number)
            .bind(r.selector.join(","))
            .bind(r.canary_percent)
            .bind(&r.canary_label)
            .bind(&r.phase)
            .bind(&r.state)
            .bind(r.max_failures)
            .bind(&r.created_by)
            .bind(r.created_at)
            .bind(r.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn rollouts(&self) -> Result<Vec<Rollout>> {
        let rows = sqlx::query("SELECT * FROM rollouts ORDER BY created_at DESC, id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rollout_of).collect()
    }

    pub async fn rollout(&self, id: &str) -> Result<Option<Rollout>> {
        let r = sqlx::query("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(rollout_of).transpose()
    }

    /// Moves a rollout from one of `from_states` to `state`/`phase`; false if it was not in
    /// one of them.
    pub async fn set_rollout(
        &self,
        id: &str,
        from_states: &[&str],
        state: &str,
        phase: Option<&str>,
    ) -> Result<bool> {
        let Some(cur) = self.rollout(id).await? else {
            return Ok(false);
        };
        if !from_states.contains(&cur.state.as_str()) {
            return Ok(false);
        }
        let r = sqlx::query(
            "UPDATE rollouts SET state = $1, phase = $2, updated_at = $3 WHERE id = $4 AND state = $5",
        )
        .bind(state)
        .bind(phase.unwrap_or(&cur.phase))
        .bind(now_ms())
        .bind(id)
        .bind(&cur.state)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a device's update outcome for a rollout; returns how many devices reported a
    /// failure for it.
    pub async fn rollout_report(
        &self,
        rollout: &str,
        device: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<i64> {
        sqlx::query("INSERT INTO rollout_reports (rollout_id, device_id, outcome, detail, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rollout_id, device_id) DO UPDATE SET outcome = excluded.outcome, detail = excluded.detail, at = excluded.at")
            .bind(rollout)
            .bind(device)
            .bind(outcome)
            .bind(detail)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let r = sqlx::query("SELECT COUNT(*) AS n FROM rollout_reports WHERE rollout_id = $1 AND outcome <> 'applied'")
            .bind(rollout)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("n")?)
    }

    pub async fn rollout_outcomes(&self, rollout: &str) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT device_id, outcome, detail FROM rollout_reports WHERE rollout_id = $1 ORDER BY device_id")
            .bind(rollout)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device_id")?,
                    r.try_get("outcome")?,
                    r.try_get("detail")?,
                ))
            })
            .collect()
    }

    // ---- ingest ----

    /// Stores a batch idempotently and returns the highest contiguous sequence stored.
    /// `first_available`: the device no longer has records below it, so the mark may skip
    /// them (counted as lost on the device).
    pub async fn ingest(
        &self,
        device: &str,
        stream: &str,
        first_available: i64,
        records: &[(i64, i64, &[u8])],
    ) -> Result<IngestResult> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query("INSERT INTO stream_marks (device_id, stream, acked_through, lost_on_device, records, duplicates) VALUES ($1, $2, 0, 0, 0, 0) ON CONFLICT (device_id, stream) DO NOTHING")
            .bind(device)
            .bind(stream)
            .execute(&mut *tx)
            .await?;
        let mark = sqlx::query("SELECT acked_through, lost_on_device FROM stream_marks WHERE device_id = $1 AND stream = $2")
            .bind(device)
            .bind(stream)
            .fetch_one(&mut *tx)
            .await?;
        let mut through: i64 = mark.try_get("acked_through")?;
        let mut lost: i64 = mark.try_get("lost_on_device")?;
        // One multi-row statement per chunk (not one round trip per record).
        let mut inserted = 0u64;
        for chunk in records.chunks(INSERT_CHUNK) {
            let mut sql =
                String::from("INSERT INTO records (device_id, stream, seq, ts_ms, body) VALUES ");
            for i in 0..chunk.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5
                ));
            }
            sql.push_str(" ON CONFLICT (device_id, stream, seq) DO NOTHING");
            let mut q = sqlx::query(&sql);
            for (seq, ts, body) in chunk {
                q = q
                    .bind(device)
                    .bind(stream)
                    .bind(*seq)
                    .bind(*ts)
                    .bind(body.to_vec());
            }
            inserted += q.execute(&mut *tx).await?.rows_affected();
        }
        let duplicates = records.len() as u64 - inserted;
        if first_available - 1 > through {
            // Records the device dropped under its limits will never come.
            let held = sqlx::query("SELECT COUNT(*) AS n FROM records WHERE device_id = $1 AND stream = $2 AND seq > $3 AND seq < $4")
                .bind(device)
                .bind(stream)
                .bind(through)
                .bind(first_available)
                .fetch_one(&mut *tx)
                .await?
                .try_get::<i64, _>("n")?;
            lost += first_available - 1 - through - held;
            through = first_available - 1;
        }
        let next = sqlx::query("SELECT seq FROM records WHERE device_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT 100000")
            .bind(device)
            .bind(stream)
            .bind(through)
            .fetch_all(&mut *tx)
            .await?;
        for r in next {
            let s: i64 = r.try_get("seq")?;
            if s != through + 1 {
                break;
            }
            through = s;
        }
        sqlx::query("UPDATE stream_marks SET acked_through = $1, lost_on_device = $2, records = records + $3, duplicates = duplicates + $4 WHERE device_id = $5 AND stream = $6")
            .bind(through)
            .bind(lost)
            .bind(inserted as i64)
            .bind(duplicates as i64)
            .bind(device)
            .bind(stream)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(IngestResult {
            acked_through: through,
            inserted,
            duplicates,
        })
    }

    pub async fn stream_marks(&self, device: &str) -> Result<Vec<StreamMark>> {
        let rows = sqlx::query("SELECT stream, acked_through, lost_on_device, records, duplicates FROM stream_marks WHERE device_id = $1 ORDER BY stream")
            .bind(device)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StreamMark {
                    stream: r.try_get("stream")?,
                    acked_through: r.try_get("acked_through")?,
                    lost_on_device: r.try_get("lost_on_device")?,
                    records: r.try_get("records")?,
                    duplicates: r.try_get("duplicates")?,
                })
            })
            .collect()
    }

    /// Stored records of a device's stream in sequence order: (seq, ts_ms, body).
    pub async fn records(
        &self,
        device: &str,
        stream: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT seq, ts_ms, body FROM records WHERE device_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT $4")
            .bind(device)
            .bind(stream)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("ts_ms")?, r.try_get("body")?)))
            .collect()
    }

    // ---- drift retrain policies and events ----

    /// Creates or replaces a policy (its evaluator state starts over).
    pub async fn set_drift_policy(&self, p: &DriftPolicyRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO drift_policies (name, bundle, selector, every_ms, intervals, rule, hook, state, created_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO UPDATE SET bundle = excluded.bundle, selector = excluded.selector, every_ms = excluded.every_ms, intervals = excluded.intervals, rule = excluded.rule, hook = excluded.hook, state = excluded.state, created_by = excluded.created_by, updated_at = excluded.updated_at")
            .bind(&p.name)
            .bind(&p.bundle)
            .bind(p.selector.join(","))
            .bind(p.every_ms)
            .bind(p.intervals)
            .bind(&p.rule)
            .bind(&p.hook)
            .bind(&p.state)
            .bind(&p.created_by)
            .bind(p.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn drift_policies(&self) -> Result<Vec<DriftPolicyRow>> {
        let rows = sqlx::query("SELECT * FROM drift_policies ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(policy_of).collect()
    }

    pub async fn remove_drift_policy(&self, name: &str) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query("DELETE FROM drift_policies WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Moves a policy's evaluator state from `old` to `new` and, in the same transaction,
    /// records `events`. False (and nothing written) when the state is no longer
    /// `old`: another evaluator (the server or a CLI run) got there first.
    pub async fn advance_drift_policy(
        &self,
        name: &str,
        old: &str,
        new: &str,
        events: &[DriftEventRow],
    ) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        let r = sqlx::query("UPDATE drift_policies SET state = $1 WHERE name = $2 AND state = $3")
            .bind(new)
            .bind(name)
            .bind(old)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        for e in events {
            sqlx::query("INSERT INTO drift_events (id, policy, bundle, version_number, from_ns, to_ns, devices, columns, body, created_at, hook_status, hook_detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
                .bind(&e.id)
                .bind(&e.policy)
                .bind(&e.bundle)
                .bind(e.version_number)
                .bind(e.from_ns)
                .bind(e.to_ns)
                .bind(&e.devices)
                .bind(&e.columns)
                .bind(&e.body)
                .bind(e.created_at)
                .bind(&e.hook_status)
                .bind(&e.hook_detail)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records how an event's hook went.
    pub async fn set_drift_event_hook(&self, id: &str, status: &str, detail: &str) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("UPDATE drift_events SET hook_status = $1, hook_detail = $2 WHERE id = $3")
            .bind(status)
            .bind(detail)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Events, newest first; only `policy`'s when given.
    pub async fn drift_events(
        &self,
        policy: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DriftEventRow>> {
        let rows = match policy {
            Some(p) => {
                sqlx::query("SELECT * FROM drift_events WHERE policy = $1 ORDER BY created_at DESC, id DESC LIMIT $2")
                    .bind(p)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM drift_events ORDER BY created_at DESC, id DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(event_of).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (FleetStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fleet-store-{}", fastrand::u64(..)));
        (FleetStore::open_dir(&dir).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn ingest_is_idempotent_and_acks_contiguous() {
        let (s, dir) = store().await;
        let b = b"x".as_slice();
        let r = s
            .ingest("d1", "samples", 1, &[(1, 0, b), (2, 0, b), (4, 0, b)])
            .await
            .unwrap();
        assert_eq!((r.acked_through, r.inserted, r.duplicates), (2, 3, 0));
        // Replay plus the missing record: nothing stored twice, the mark jumps over 4.
        let r = s
            .ingest("d1", "samples", 1, &[(2, 0, b), (3, 0, b), (4, 0, b)])
            .await
            .unwrap();
        assert_eq!((r.acked_through, r.inserted, r.duplicates), (4, 1, 2));
        // Another device's stream is separate.
        let r = s.ingest("d2", "samples", 1, &[(1, 0, b)]).await.unwrap();
        assert_eq!(r.acked_through, 1);
        // The device dropped 5..=9 under its limits: the mark skips them, counted.
        let r = s.ingest("d1", "samples", 10, &[(10, 0, b)]).await.unwrap();
        assert_eq!(r.acked_through, 10);
        let m = s.stream_marks("d1").await.unwrap();
        assert_eq!(m[0].lost_on_device, 5);
        assert_eq!(m[0].records, 5);
        assert_eq!(m[0].duplicates, 2);
        assert_eq!(s.records("d1", "samples", 0, 100).await.unwrap().len(), 5);
        std::fs::remove_dir_all(dir).ok();
    }

    /// Many writers at once (the server's pool and a CLI process): no "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_instead_of_failing() {
        let (s, dir) = store().await;
        let other = FleetStore::open_dir(&dir).await.unwrap(); // a second process's pool
        for i in 0..64 {
            s.add_token(&format!("t{i}"), &[], "op", now_ms() + 60_000)
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..64 {
            let st = if i % 2 == 0 { s.clone() } else { other.clone() };
            tasks.push(tokio::spawn(async move {
                st.enroll(&format!("t{i}"), &format!("d{i}"), "gw", &format!("c{i}"))
                    .await?;
                let b = b"x".as_slice();
                st.ingest(&format!("d{i}"), "samples", 1, &[(1, 0, b), (2, 0, b)])
                    .await?;
                st.check_in(&format!("d{i}"), "{}").await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.devices().await.unwrap().len(), 64);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn tokens_are_one_time_and_expire() {
        let (s, dir) = store().await;
        s.add_token("t1", &["site=a".into()], "op", now_ms() + 60_000)
            .await
            .unwrap();
        s.add_token("t2", &[], "op", now_ms() - 1).await.unwrap();
        let d = s.enroll("t1", "dev-1", "gw1", "cert1").await.unwrap();
        assert_eq!(d.labels, vec!["site=a".to_string()]);
        let e = s.enroll("t1", "dev-2", "gw2", "cert2").await.unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
        let e = s.enroll("t2", "dev-3", "gw3", "cert3").await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = s.enroll("nope", "dev-4", "gw4", "cert4").await.unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");
        assert_eq!(s.devices().await.unwrap().len(), 1);
        assert!(s.revoke("dev-1").await.unwrap());
        assert!(s
            .device_by_cert("cert1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        std::fs::remove_dir_all(dir).ok();
    }
}
