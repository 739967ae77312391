//! The audit log: who did what, when. Written by every state change an operator (or a
//! device, or the server itself) makes.

use sqlx::Row;

use super::{like_pattern, now_ms, Arg, FleetStore, Result, Sql};

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// When it happened (Unix ms).
    pub at: i64,
    /// Operator name, device id (`d-…`), `token:…` (enrollment) or `fleet-server`.
    pub actor: String,
    /// `device.revoke`, `rollout.halt`, `user.add`, …
    pub action: String,
    /// What it was done to (device id, rollout id, user name, …).
    pub subject: String,
    /// Free text: what changed.
    pub detail: String,
}

/// Which audit entries to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries by this actor.
    pub actor: Option<String>,
    /// Actions starting with this (`rollout.` for every rollout action).
    pub action: Option<String>,
    /// Entries before this time (ms), for paging back.
    pub before: Option<i64>,
    /// Entries to return at most.
    pub limit: i64,
}

/// Control characters (newlines, terminal escapes) in an audit field are replaced, so an
/// entry reads as one line wherever it is shown (console, CLI, logs).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Appends an entry inside `tx` (for a state change and its entry in one transaction).
pub(super) async fn audit_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now_ms())
    .bind(one_line(actor))
    .bind(one_line(action))
    .bind(one_line(subject))
    .bind(one_line(detail))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl FleetStore {
    /// Appends an entry; control characters in any field are replaced (see [`one_line`]).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        audit_in(&mut tx, actor, action, subject, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        self.audit_query(&AuditQuery {
            limit,
            ..Default::default()
        })
        .await
    }

    /// Audit entries matching `q`, newest first.
    pub async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut s = Sql::new("SELECT at, actor, action, subject, detail FROM audit WHERE 1 = 1");
        if let Some(a) = &q.actor {
            s.push(" AND actor = ").arg(Arg::S(a.clone()));
        }
        if let Some(a) = &q.action {
            // A prefix: the pattern's trailing `%` only.
            let mut p = like_pattern(a);
            p.remove(0);
            s.push(" AND action LIKE ")
                .arg(Arg::S(p))
                .push(" ESCAPE '\\'");
        }
        if let Some(b) = q.before {
            s.push(" AND at < ").arg(Arg::I(b));
        }
        s.push(" ORDER BY at DESC LIMIT ")
            .arg(Arg::I(q.limit.max(0)));
        let rows = s.query().fetch_all(&self.pool).await?;
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
}
