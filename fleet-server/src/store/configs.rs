//! Fleet configurations (agent configuration files, versioned per name, with the fragments
//! they were merged from) and the devices' reports on applying them.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, FleetStore, Result};

/// One version of a fleet configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigRow {
    /// The configuration's name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// 1 for the first push of the name, one more for each push with other content.
    pub version_number: i64,
    /// SHA-256 of `toml`: what a device reports when it runs this file.
    pub sha256: String,
    /// The agent configuration file devices receive (fragments merged).
    pub toml: String,
    /// The fragments it was merged from, in merge order: (name, text).
    pub fragments: Vec<(String, String)>,
    /// The operator who pushed it.
    pub pushed_by: String,
    /// Unix ms.
    pub pushed_at: i64,
}

/// One configuration report of a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigReportRow {
    /// The reporting device.
    pub device_id: String,
    /// When the server received it (ms).
    pub at: i64,
    /// The fleet configuration's name.
    pub name: String,
    /// Its version number.
    pub version_number: i64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The rollout the report counted in (one that targets the device), if any.
    pub rollout_id: Option<String>,
    /// `applied`, `refused` or `rolled_back` (the wire's `ConfigOutcome`).
    pub outcome: String,
    /// `in_process`, `restart` or `none`.
    pub applied_by: String,
    /// The health check's verdict, or the refusal, in words.
    pub detail: String,
    /// Validation errors, each naming the key and line.
    pub errors: Vec<String>,
}

fn config_of(r: &AnyRow) -> Result<ConfigRow> {
    let fragments: String = r.try_get("fragments")?;
    Ok(ConfigRow {
        name: r.try_get("name")?,
        version_number: r.try_get("version_number")?,
        sha256: r.try_get("sha256")?,
        toml: r.try_get("toml")?,
        fragments: serde_json::from_str(&fragments).unwrap_or_default(),
        pushed_by: r.try_get("pushed_by")?,
        pushed_at: r.try_get("pushed_at")?,
    })
}

impl FleetStore {
    /// Stores a new version of `name` unless its newest version has the same content
    /// (then that one is returned, `false`). Version numbers are allocated in the write
    /// transaction, so two pushes at once get two numbers.
    pub async fn add_config(
        &self,
        name: &str,
        fragments: &[(String, String)],
        toml: &str,
        sha256: &str,
        actor: &str,
    ) -> Result<(ConfigRow, bool)> {
        let (_writer, mut tx) = self.begin_write().await?;
        let newest = sqlx::query(
            "SELECT * FROM configs WHERE name = $1 ORDER BY version_number DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(config_of)
        .transpose()?;
        if let Some(n) = newest.as_ref().filter(|n| n.sha256 == sha256) {
            return Ok((n.clone(), false));
        }
        let row = ConfigRow {
            name: name.to_string(),
            version_number: newest.map_or(1, |n| n.version_number + 1),
            sha256: sha256.to_string(),
            toml: toml.to_string(),
            fragments: fragments.to_vec(),
            pushed_by: actor.to_string(),
            pushed_at: now_ms(),
        };
        let fragments = serde_json::to_string(&row.fragments)
            .map_err(|e| super::StoreError::Invalid(e.to_string()))?;
        sqlx::query("INSERT INTO configs (name, version_number, sha256, toml, fragments, pushed_by, pushed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&row.name)
            .bind(row.version_number)
            .bind(&row.sha256)
            .bind(&row.toml)
            .bind(fragments)
            .bind(&row.pushed_by)
            .bind(row.pushed_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((row, true))
    }

    /// One version of a fleet configuration.
    pub async fn config(&self, name: &str, version_number: i64) -> Result<Option<ConfigRow>> {
        sqlx::query("SELECT * FROM configs WHERE name = $1 AND version_number = $2")
            .bind(name)
            .bind(version_number)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(config_of)
            .transpose()
    }

    /// Every version of every fleet configuration, by name, newest version first.
    pub async fn configs(&self) -> Result<Vec<ConfigRow>> {
        let rows = sqlx::query("SELECT * FROM configs ORDER BY name, version_number DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(config_of).collect()
    }

    /// Stores a device's configuration report.
    pub async fn add_config_report(&self, r: &ConfigReportRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        let errors = serde_json::to_string(&r.errors)
            .map_err(|e| super::StoreError::Invalid(e.to_string()))?;
        sqlx::query("INSERT INTO config_reports (device_id, at, name, version_number, sha256, rollout_id, outcome, applied_by, detail, errors) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&r.device_id)
            .bind(r.at)
            .bind(&r.name)
            .bind(r.version_number)
            .bind(&r.sha256)
            .bind(&r.rollout_id)
            .bind(&r.outcome)
            .bind(&r.applied_by)
            .bind(&r.detail)
            .bind(errors)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A device's configuration reports, newest first.
    pub async fn config_reports(&self, device: &str, limit: i64) -> Result<Vec<ConfigReportRow>> {
        let rows = sqlx::query(
            "SELECT * FROM config_reports WHERE device_id = $1 ORDER BY at DESC LIMIT $2",
        )
        .bind(device)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let errors: String = r.try_get("errors")?;
                Ok(ConfigReportRow {
                    device_id: r.try_get("device_id")?,
                    at: r.try_get("at")?,
                    name: r.try_get("name")?,
                    version_number: r.try_get("version_number")?,
                    sha256: r.try_get("sha256")?,
                    rollout_id: r.try_get("rollout_id")?,
                    outcome: r.try_get("outcome")?,
                    applied_by: r.try_get("applied_by")?,
                    detail: r.try_get("detail")?,
                    errors: serde_json::from_str(&errors).unwrap_or_default(),
                })
            })
            .collect()
    }
}
