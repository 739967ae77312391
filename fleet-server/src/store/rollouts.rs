//! Rollouts and the devices' reports on them.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{list_of, now_ms, parse_enum, FleetStore, Result};
use crate::types::{RolloutAction, RolloutKind, RolloutPhase, RolloutState, UpdateOutcome};

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// Rollout id.
    pub id: String,
    /// What it hands out: a bundle, or a fleet configuration (named in `bundle`).
    pub kind: RolloutKind,
    /// The bundle name, or the fleet configuration's name (see `kind`).
    pub bundle: String,
    /// The version number it rolls out.
    pub version_number: i64,
    /// `key=value` labels a device must all carry (empty: every device).
    pub selector: Vec<String>,
    /// Canaries: this stable percentage of the targeted devices (by a hash of rollout and device
    /// id).
    pub canary_percent: Option<i64>,
    /// Canaries: the targeted devices carrying this label.
    pub canary_label: Option<String>,
    /// Canaries only, or every targeted device.
    pub phase: RolloutPhase,
    /// Active, halted or rolled back.
    pub state: RolloutState,
    /// Halt automatically once this many devices report a failed or rolled-back update.
    pub max_failures: i64,
    /// Who started it.
    pub created_by: String,
    /// When it was started (Unix ms).
    pub created_at: i64,
    /// When its state or phase last changed (Unix ms).
    pub updated_at: i64,
    /// When it left its canary phase (`None`: started in phase full, or still canary).
    pub promoted_at: Option<i64>,
}

impl Rollout {
    /// When the devices that are not canaries joined: at promotion, or at the start.
    pub fn full_since(&self) -> i64 {
        self.promoted_at.unwrap_or(self.created_at)
    }
}

/// A device's latest report on a rollout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutReport {
    /// The device.
    pub device_id: String,
    /// What it reported.
    pub outcome: UpdateOutcome,
    /// The device's words (error, health verdict).
    pub detail: String,
    /// When the server stored the report (Unix ms).
    pub at: i64,
}

fn rollout_of(r: &AnyRow) -> Result<Rollout> {
    Ok(Rollout {
        id: r.try_get("id")?,
        kind: parse_enum(&r.try_get::<String, _>("kind")?)?,
        bundle: r.try_get("bundle")?,
        version_number: r.try_get("version_number")?,
        selector: list_of(&r.try_get::<String, _>("selector")?),
        canary_percent: r.try_get("canary_percent")?,
        canary_label: r.try_get("canary_label")?,
        phase: parse_enum(&r.try_get::<String, _>("phase")?)?,
        state: parse_enum(&r.try_get::<String, _>("state")?)?,
        max_failures: r.try_get("max_failures")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        promoted_at: r.try_get("promoted_at")?,
    })
}

impl FleetStore {
    /// Stores a new rollout.
    pub async fn add_rollout(&self, r: &Rollout) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO rollouts (id, bundle, version_number, selector, canary_percent, canary_label, phase, state, max_failures, created_by, created_at, updated_at, promoted_at, kind) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
            .bind(&r.id)
            .bind(&r.bundle)
            .bind(r.version_number)
            .bind(r.selector.join(","))
            .bind(r.canary_percent)
            .bind(&r.canary_label)
            .bind(r.phase.as_str())
            .bind(r.state.as_str())
            .bind(r.max_failures)
            .bind(&r.created_by)
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(r.promoted_at)
            .bind(r.kind.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every rollout, newest first.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>> {
        let rows = sqlx::query("SELECT * FROM rollouts ORDER BY created_at DESC, id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rollout_of).collect()
    }

    /// The rollout `id`, if any.
    pub async fn rollout(&self, id: &str) -> Result<Option<Rollout>> {
        let r = sqlx::query("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(rollout_of).transpose()
    }

    /// Applies `action` if the rollout is in one of the states it applies to (compare and
    /// set: two operators acting at once cannot both succeed from the same state). Returns
    /// the rollout after the change, or `Err(current)` when the action does not apply.
    pub async fn act_on_rollout(
        &self,
        id: &str,
        action: RolloutAction,
    ) -> Result<Option<std::result::Result<Rollout, Rollout>>> {
        let (from, to, phase) = action.transition();
        let (_writer, mut tx) = self.begin_write().await?;
        let Some(cur) = sqlx::query("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(rollout_of)
            .transpose()?
        else {
            return Ok(None);
        };
        let promote_applies = action != RolloutAction::Promote || cur.phase == RolloutPhase::Canary;
        if !from.contains(&cur.state) || !promote_applies {
            return Ok(Some(Err(cur)));
        }
        let now = now_ms();
        let promoted_at = if phase == Some(RolloutPhase::Full) && cur.phase == RolloutPhase::Canary
        {
            Some(now)
        } else {
            cur.promoted_at
        };
        let r = sqlx::query("UPDATE rollouts SET state = $1, phase = $2, updated_at = $3, promoted_at = $4 WHERE id = $5 AND state = $6 AND phase = $7")
            .bind(to.as_str())
            .bind(phase.unwrap_or(cur.phase).as_str())
            .bind(now)
            .bind(promoted_at)
            .bind(id)
            .bind(cur.state.as_str())
            .bind(cur.phase.as_str())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(Some(Err(cur)));
        }
        tx.commit().await?;
        Ok(Some(Ok(Rollout {
            state: to,
            phase: phase.unwrap_or(cur.phase),
            updated_at: now,
            promoted_at,
            ..cur
        })))
    }

    /// Records a device's latest report on a rollout and, in the same transaction, halts
    /// the rollout when its failed reports reach `max_failures` while it is active. The
    /// rollout's row is locked first (PostgreSQL `FOR UPDATE`; SQLite's write transaction
    /// holds the whole database), so reports landing on different replicas at once are
    /// counted one after the other and exactly one of them halts it. Returns the number of
    /// failed reports and the rollout as halted by this report, if it was.
    pub async fn rollout_report(
        &self,
        rollout: &str,
        device: &str,
        outcome: UpdateOutcome,
        detail: &str,
    ) -> Result<(i64, Option<Rollout>)> {
        let (_writer, mut tx) = self.begin_write().await?;
        let lock = self.row_lock();
        let cur = sqlx::query(&format!("SELECT * FROM rollouts WHERE id = $1{lock}"))
            .bind(rollout)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(rollout_of)
            .transpose()?;
        sqlx::query("INSERT INTO rollout_reports (rollout_id, device_id, outcome, detail, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rollout_id, device_id) DO UPDATE SET outcome = excluded.outcome, detail = excluded.detail, at = excluded.at")
            .bind(rollout)
            .bind(device)
            .bind(outcome.as_str())
            .bind(detail)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM rollout_reports WHERE rollout_id = $1 AND outcome <> 'applied'")
            .bind(rollout)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let mut halted = None;
        if let Some(cur) = cur {
            if outcome != UpdateOutcome::Applied
                && n >= cur.max_failures
                && cur.state == RolloutState::Active
            {
                let now = now_ms();
                sqlx::query("UPDATE rollouts SET state = $1, updated_at = $2 WHERE id = $3")
                    .bind(RolloutState::Halted.as_str())
                    .bind(now)
                    .bind(rollout)
                    .execute(&mut *tx)
                    .await?;
                super::audit::audit_in(
                    &mut tx,
                    "fleet-server",
                    "rollout.auto_halt",
                    rollout,
                    &format!("{n} device(s) failed; last: {device}: {detail}"),
                )
                .await?;
                halted = Some(Rollout {
                    state: RolloutState::Halted,
                    updated_at: now,
                    ..cur
                });
            }
        }
        tx.commit().await?;
        Ok((n, halted))
    }

    /// The latest report of each device on a rollout, by device id.
    pub async fn rollout_reports(&self, rollout: &str) -> Result<Vec<RolloutReport>> {
        let rows = sqlx::query("SELECT device_id, outcome, detail, at FROM rollout_reports WHERE rollout_id = $1 ORDER BY device_id")
            .bind(rollout)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutReport {
                    device_id: r.try_get("device_id")?,
                    outcome: parse_enum(&r.try_get::<String, _>("outcome")?)?,
                    detail: r.try_get("detail")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::store;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_on_two_replicas_at_once_halt_the_rollout_exactly_once() {
        let (s, dir) = store().await;
        let other = s.another_pool().await.unwrap(); // a second replica's pool
        let r = Rollout {
            id: "r1".into(),
            kind: RolloutKind::Bundle,
            bundle: "pump".into(),
            version_number: 2,
            selector: vec![],
            canary_percent: None,
            canary_label: None,
            phase: RolloutPhase::Full,
            state: RolloutState::Active,
            max_failures: 2,
            created_by: "test".into(),
            created_at: 0,
            updated_at: 0,
            promoted_at: None,
        };
        s.add_rollout(&r).await.unwrap();
        // Eight devices fail at the same moment, half through each replica.
        let reports = (0..8).map(|i| {
            let st = if i % 2 == 0 { s.clone() } else { other.clone() };
            tokio::spawn(async move {
                st.rollout_report("r1", &format!("d{i}"), UpdateOutcome::Failed, "boom")
                    .await
                    .unwrap()
            })
        });
        let mut halts = 0;
        let mut counts = Vec::new();
        for h in reports.collect::<Vec<_>>() {
            let (n, halted) = h.await.unwrap();
            counts.push(n);
            if let Some(h) = halted {
                assert_eq!(h.state, RolloutState::Halted);
                halts += 1;
            }
        }
        // Each report saw every report before it: the counts are 1..=8 in some order.
        counts.sort();
        assert_eq!(counts, (1..=8).collect::<Vec<i64>>());
        assert_eq!(halts, 1, "exactly one report halts it");
        assert_eq!(
            s.rollout("r1").await.unwrap().unwrap().state,
            RolloutState::Halted
        );
        let audit = s.audit_log(100).await.unwrap();
        let auto: Vec<_> = audit
            .iter()
            .filter(|a| a.action == "rollout.auto_halt")
            .collect();
        assert_eq!(auto.len(), 1, "{audit:?}");
        assert!(
            auto[0].detail.starts_with("2 device(s) failed"),
            "{}",
            auto[0].detail
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
