//! Alarm and audit operations.

use super::views::{AlarmListQuery, AlarmPage, AuditListQuery};
use super::{Acting, Result, ServiceError};
use crate::store::{AlarmQuery, AlarmRow, AuditEntry, AuditQuery};
use crate::types::Role;

impl Acting {
    /// Alarms from ingest, most recently changed first.
    pub async fn alarms(&self, q: &AlarmListQuery) -> Result<AlarmPage> {
        self.require(Role::Viewer, "alarms")?;
        let limit = q.limit.clamp(1, super::views::MAX_PAGE);
        let (alarms, total) = self
            .store()
            .alarms(&AlarmQuery {
                device: q.device.clone(),
                active_only: q.active_only,
                unacked_only: q.unacked_only,
                kind: q.kind,
                offset: q.offset.max(0),
                limit,
            })
            .await?;
        Ok(AlarmPage {
            total,
            offset: q.offset.max(0),
            limit,
            alarms,
        })
    }

    /// Acknowledges an alarm under the caller's name (operator role); [`ServiceError::Conflict`]
    /// if it was acknowledged already.
    pub async fn ack_alarm(&self, id: &str) -> Result<AlarmRow> {
        self.require(Role::Operator, "acknowledging alarms")?;
        let a = self
            .store()
            .alarm(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no alarm `{id}`")))?;
        if !self.store().ack_alarm(id, &self.who.name).await? {
            return Err(ServiceError::Conflict(format!(
                "alarm `{id}` was acknowledged already by {}",
                a.acked_by.as_deref().unwrap_or("someone")
            )));
        }
        self.audit(
            "alarm.ack",
            id,
            &format!("{} {} {} of {}", a.device_id, a.model, a.kind, a.subject),
        )
        .await?;
        self.store()
            .alarm(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no alarm `{id}`")))
    }

    /// The audit log, newest first.
    pub async fn audit_log(&self, q: &AuditListQuery) -> Result<Vec<AuditEntry>> {
        self.require(Role::Viewer, "the audit log")?;
        Ok(self
            .store()
            .audit_query(&AuditQuery {
                actor: q.actor.clone(),
                action: q.action.clone(),
                before: q.before,
                limit: q.limit.clamp(1, super::views::MAX_PAGE),
            })
            .await?)
    }
}
