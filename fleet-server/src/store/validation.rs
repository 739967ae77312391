//! Validation gates (per bundle name: a holdout recording and the limits a version must
//! meet on it) and the result of each version's validation run.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{FleetStore, Result};

/// `fleet-server model gate set`: the holdout is an artifact (by SHA-256), the limits JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateRow {
    /// The bundle name the gate applies to.
    pub bundle: String,
    /// SHA-256 of the holdout recording (stored as an artifact).
    pub holdout_sha256: String,
    /// The holdout's name, for people.
    pub holdout_name: String,
    /// The holdout's size (bytes).
    pub holdout_size: i64,
    /// `validation::GateRules`, JSON.
    pub rules: String,
    /// Who set the gate.
    pub created_by: String,
    /// When it was set (Unix ms).
    pub created_at: i64,
}

/// One version's validation run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ValidationRow {
    /// Bundle name.
    pub bundle: String,
    /// The version number that ran.
    pub version_number: i64,
    /// SHA-256 of the holdout it ran on.
    pub holdout_sha256: String,
    /// `passed`, `failed`, `error`.
    pub status: String,
    /// `validation::ValidationMetrics`, JSON.
    pub metrics: String,
    /// Which limit failed, or why the run did (empty when it passed).
    pub detail: String,
    /// When it ran (Unix ms).
    pub at: i64,
}

fn gate_of(r: &AnyRow) -> Result<GateRow> {
    Ok(GateRow {
        bundle: r.try_get("bundle")?,
        holdout_sha256: r.try_get("holdout_sha256")?,
        holdout_name: r.try_get("holdout_name")?,
        holdout_size: r.try_get("holdout_size")?,
        rules: r.try_get("rules")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

fn validation_of(r: &AnyRow) -> Result<ValidationRow> {
    Ok(ValidationRow {
        bundle: r.try_get("bundle")?,
        version_number: r.try_get("version_number")?,
        holdout_sha256: r.try_get("holdout_sha256")?,
        status: r.try_get("status")?,
        metrics: r.try_get("metrics")?,
        detail: r.try_get("detail")?,
        at: r.try_get("at")?,
    })
}

impl FleetStore {
    /// Sets (or replaces) the gate of a bundle name. The holdout artifact must be stored.
    pub async fn set_gate(&self, g: &GateRow) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query("DELETE FROM validation_gates WHERE bundle = $1")
            .bind(&g.bundle)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO validation_gates (bundle, holdout_sha256, holdout_name, holdout_size, rules, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&g.bundle)
            .bind(&g.holdout_sha256)
            .bind(&g.holdout_name)
            .bind(g.holdout_size)
            .bind(&g.rules)
            .bind(&g.created_by)
            .bind(g.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The gate of bundle name `bundle`, if any.
    pub async fn gate(&self, bundle: &str) -> Result<Option<GateRow>> {
        let row = sqlx::query("SELECT * FROM validation_gates WHERE bundle = $1")
            .bind(bundle)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(gate_of).transpose()
    }

    /// Every gate, by bundle name.
    pub async fn gates(&self) -> Result<Vec<GateRow>> {
        let rows = sqlx::query("SELECT * FROM validation_gates ORDER BY bundle")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(gate_of).collect()
    }

    /// Whether a gate was removed.
    pub async fn remove_gate(&self, bundle: &str) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        let r = sqlx::query("DELETE FROM validation_gates WHERE bundle = $1")
            .bind(bundle)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records a version's validation run (replacing an earlier one).
    pub async fn put_validation(&self, v: &ValidationRow) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query("DELETE FROM bundle_validations WHERE bundle = $1 AND version_number = $2")
            .bind(&v.bundle)
            .bind(v.version_number)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO bundle_validations (bundle, version_number, holdout_sha256, status, metrics, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&v.bundle)
            .bind(v.version_number)
            .bind(&v.holdout_sha256)
            .bind(&v.status)
            .bind(&v.metrics)
            .bind(&v.detail)
            .bind(v.at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest validation run of `bundle` #`version_number`, if any.
    pub async fn validation(
        &self,
        bundle: &str,
        version_number: i64,
    ) -> Result<Option<ValidationRow>> {
        let row = sqlx::query(
            "SELECT * FROM bundle_validations WHERE bundle = $1 AND version_number = $2",
        )
        .bind(bundle)
        .bind(version_number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(validation_of).transpose()
    }
}
