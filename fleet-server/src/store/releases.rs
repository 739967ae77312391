//! Agent software releases (one signed file per release number and target; the bytes are an
//! artifact), the keys they must be signed with, and the devices' reports on installing them.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{FleetStore, Result};

/// One stored release file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseRow {
    /// The monotonic release number (one per release, shared by its targets).
    pub version_number: i64,
    /// The Rust target triple of the binary.
    pub target: String,
    /// The version string the binary reports.
    pub version: String,
    /// SHA-256 of the release file (its artifact).
    pub sha256: String,
    /// Size of the release file.
    pub size: i64,
    /// SHA-256 of the binary inside.
    pub binary_sha256: String,
    /// Id of the key that signed it.
    pub signer: String,
    /// The release's notes.
    pub notes: String,
    /// Who pushed it.
    pub pushed_by: String,
    /// When (Unix ms).
    pub pushed_at: i64,
}

/// One agent release report of a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentReportRow {
    /// The reporting device.
    pub device_id: String,
    /// When the server received it (ms).
    pub at: i64,
    /// The release's version string.
    pub version: String,
    /// Its release number.
    pub version_number: i64,
    /// SHA-256 of the release file.
    pub sha256: String,
    /// The version the device ran before.
    pub from_version: String,
    /// The rollout the report counted in, if any.
    pub rollout_id: Option<String>,
    /// `applied`, `rolled_back` or `failed`.
    pub outcome: String,
    /// `full`, a delta method, `local` or `none`.
    pub method: String,
    /// Bytes the device downloaded.
    pub downloaded_bytes: i64,
    /// Why, in words.
    pub detail: String,
}

fn release_of(r: &AnyRow) -> Result<ReleaseRow> {
    Ok(ReleaseRow {
        version_number: r.try_get("version_number")?,
        target: r.try_get("target")?,
        version: r.try_get("version")?,
        sha256: r.try_get("sha256")?,
        size: r.try_get("size")?,
        binary_sha256: r.try_get("binary_sha256")?,
        signer: r.try_get("signer")?,
        notes: r.try_get("notes")?,
        pushed_by: r.try_get("pushed_by")?,
        pushed_at: r.try_get("pushed_at")?,
    })
}

fn report_of(r: &AnyRow) -> Result<AgentReportRow> {
    Ok(AgentReportRow {
        device_id: r.try_get("device_id")?,
        at: r.try_get("at")?,
        version: r.try_get("version")?,
        version_number: r.try_get("version_number")?,
        sha256: r.try_get("sha256")?,
        from_version: r.try_get("from_version")?,
        rollout_id: r.try_get("rollout_id")?,
        outcome: r.try_get("outcome")?,
        method: r.try_get("method")?,
        downloaded_bytes: r.try_get("downloaded_bytes")?,
        detail: r.try_get("detail")?,
    })
}

impl FleetStore {
    /// Stores a release row (its artifact must be stored first).
    pub async fn add_release(&self, r: &ReleaseRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO agent_releases (version_number, target, version, sha256, size, binary_sha256, signer, notes, pushed_by, pushed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(r.version_number)
            .bind(&r.target)
            .bind(&r.version)
            .bind(&r.sha256)
            .bind(r.size)
            .bind(&r.binary_sha256)
            .bind(&r.signer)
            .bind(&r.notes)
            .bind(&r.pushed_by)
            .bind(r.pushed_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Release `version_number` for `target`, if stored.
    pub async fn release(&self, version_number: i64, target: &str) -> Result<Option<ReleaseRow>> {
        let r =
            sqlx::query("SELECT * FROM agent_releases WHERE version_number = $1 AND target = $2")
                .bind(version_number)
                .bind(target)
                .fetch_optional(&self.pool)
                .await?;
        r.as_ref().map(release_of).transpose()
    }

    /// Every target's file of release `version_number`.
    pub async fn release_targets(&self, version_number: i64) -> Result<Vec<ReleaseRow>> {
        let rows =
            sqlx::query("SELECT * FROM agent_releases WHERE version_number = $1 ORDER BY target")
                .bind(version_number)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(release_of).collect()
    }

    /// The stored release file with this SHA-256, if any.
    pub async fn release_by_sha(&self, sha256: &str) -> Result<Option<ReleaseRow>> {
        let r = sqlx::query("SELECT * FROM agent_releases WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(release_of).transpose()
    }

    /// Every stored release file, newest release first.
    pub async fn releases(&self) -> Result<Vec<ReleaseRow>> {
        let rows = sqlx::query("SELECT * FROM agent_releases ORDER BY version_number DESC, target")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(release_of).collect()
    }

    /// Records a device's release report.
    pub async fn add_agent_report(&self, r: &AgentReportRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO agent_reports (device_id, at, version, version_number, sha256, from_version, rollout_id, outcome, method, downloaded_bytes, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(&r.device_id)
            .bind(r.at)
            .bind(&r.version)
            .bind(r.version_number)
            .bind(&r.sha256)
            .bind(&r.from_version)
            .bind(&r.rollout_id)
            .bind(&r.outcome)
            .bind(&r.method)
            .bind(r.downloaded_bytes)
            .bind(&r.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A device's newest release reports, newest first.
    pub async fn agent_reports(&self, device: &str, limit: i64) -> Result<Vec<AgentReportRow>> {
        let rows = sqlx::query(
            "SELECT * FROM agent_reports WHERE device_id = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(device)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(report_of).collect()
    }
}
