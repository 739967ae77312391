//! Drift retrain policies and the events they recorded.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{list_of, FleetStore, Result};

/// A retrain trigger (`fleet-server drift policy set`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriftPolicyRow {
    /// Policy name.
    pub name: String,
    /// The bundle name it watches.
    pub bundle: String,
    /// `key=value` labels a device must all carry (empty: every device).
    pub selector: Vec<String>,
    /// Bucket length (ms).
    pub every_ms: i64,
    /// Consecutive drifting buckets that make an event.
    pub intervals: i64,
    /// When a bucket drifts, JSON.
    pub rule: String,
    /// What runs on an event, JSON.
    pub hook: String,
    /// The evaluator's cursor, JSON.
    pub state: String,
    /// Who set it last.
    pub created_by: String,
    /// When it was set last (Unix ms).
    pub updated_at: i64,
}

/// A recorded retrain event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriftEventRow {
    /// Event id.
    pub id: String,
    /// The policy that made it.
    pub policy: String,
    /// Bundle name.
    pub bundle: String,
    /// The version number that drifted.
    pub version_number: i64,
    /// Start of the drifting buckets (Unix ns).
    pub from_ns: i64,
    /// End of the drifting buckets (Unix ns).
    pub to_ns: i64,
    /// Device ids, JSON array.
    pub devices: String,
    /// Drifting column names, JSON array.
    pub columns: String,
    /// The event JSON the hook got.
    pub body: String,
    /// When the event was recorded (Unix ms).
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
        selector: list_of(&r.try_get::<String, _>("selector")?),
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

impl FleetStore {
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

    /// Every drift policy, by name.
    pub async fn drift_policies(&self) -> Result<Vec<DriftPolicyRow>> {
        let rows = sqlx::query("SELECT * FROM drift_policies ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(policy_of).collect()
    }

    /// Deletes policy `name`; false if there is none.
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
    /// Drift records of `bundle` ingested after `after_ms` (wall time, ms): the earliest and
    /// latest end (data time, ns) among them and the latest ingest time; `None` if none.
    pub async fn drift_ingested_since(
        &self,
        bundle: &str,
        after_ms: i64,
    ) -> Result<Option<(i64, i64, i64)>> {
        let row = sqlx::query("SELECT MIN(end_ns) AS lo, MAX(end_ns) AS hi, MAX(ingested_ms) AS at FROM drift_index WHERE bundle = $1 AND ingested_ms > $2")
            .bind(bundle)
            .bind(after_ms)
            .fetch_one(&self.pool)
            .await?;
        let lo: Option<i64> = row.try_get("lo")?;
        let hi: Option<i64> = row.try_get("hi")?;
        let at: Option<i64> = row.try_get("at")?;
        Ok(match (lo, hi, at) {
            (Some(lo), Some(hi), Some(at)) => Some((lo, hi, at)),
            _ => None,
        })
    }

    /// Whether `policy` has an event on `version_number` overlapping `[from_ns, to_ns)`.
    pub async fn drift_event_overlaps(
        &self,
        policy: &str,
        version_number: i64,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM drift_events WHERE policy = $1 AND version_number = $2 AND from_ns < $3 AND to_ns > $4")
            .bind(policy)
            .bind(version_number)
            .bind(to_ns)
            .bind(from_ns)
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(n > 0)
    }

    /// The newest `limit` events, of one policy or all, newest first.
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
