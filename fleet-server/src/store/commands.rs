//! Operators' commands to devices (restart, reload bundles, rebirth, resync, logs,
//! diagnostics) and the devices' results, attachments included.

use edge_wire::sync::{CommandAction, CommandResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, FleetStore, Result, StoreError};

/// How long a command waits for its device before it counts as expired (ms).
pub const COMMAND_TTL_MS: i64 = 3_600_000;
/// A command handed out without a result is handed out again after this (ms): the device
/// may have lost the reply; it runs each id at most once.
pub const RESEND_AFTER_MS: i64 = 30_000;

/// One command and, once the device answered, its result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandRow {
    /// `c` + creation time + random hex.
    pub id: String,
    /// The device it is for.
    pub device_id: String,
    /// What it asks.
    pub action: CommandAction,
    /// The operator who sent it.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// When it was last handed to the device.
    pub sent_at: Option<i64>,
    /// When the result arrived.
    pub done_at: Option<i64>,
    /// `done` or `failed` (the device's), absent until then.
    pub outcome: Option<String>,
    /// The device's words on the outcome.
    pub detail: Option<String>,
    /// `text/plain`, `application/json`, or empty.
    pub content_type: Option<String>,
    /// Bytes of the attachment.
    pub attachment_bytes: i64,
}

fn command_of(r: &AnyRow) -> Result<CommandRow> {
    let action: String = r.try_get("action")?;
    Ok(CommandRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        action: serde_json::from_str(&action)
            .map_err(|e| StoreError::Invalid(format!("command action: {e}")))?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
        done_at: r.try_get("done_at")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
        content_type: r.try_get("content_type")?,
        attachment_bytes: r
            .try_get::<Option<i64>, _>("attachment_bytes")?
            .unwrap_or(0),
    })
}

const COLUMNS: &str = "id, device_id, action, created_by, created_at, sent_at, done_at, outcome, detail, content_type, CAST(LENGTH(attachment) AS BIGINT) AS attachment_bytes";

impl FleetStore {
    /// Queues a command for a device.
    pub async fn add_command(&self, c: &CommandRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        let action =
            serde_json::to_string(&c.action).map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query("INSERT INTO commands (id, device_id, action, created_by, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&c.id)
            .bind(&c.device_id)
            .bind(action)
            .bind(&c.created_by)
            .bind(c.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The commands to hand to `device` now (oldest first): without a result, not expired,
    /// never handed out or not for [`RESEND_AFTER_MS`]; marked as handed out.
    pub async fn take_commands(&self, device: &str) -> Result<Vec<CommandRow>> {
        let now = now_ms();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND done_at IS NULL AND created_at > $2 AND (sent_at IS NULL OR sent_at < $3) ORDER BY created_at, id"
        ))
        .bind(device)
        .bind(now - COMMAND_TTL_MS)
        .bind(now - RESEND_AFTER_MS)
        .fetch_all(&self.pool)
        .await?;
        let list: Vec<CommandRow> = rows.iter().map(command_of).collect::<Result<_>>()?;
        if !list.is_empty() {
            let _writer = self.writer.lock().await;
            for c in &list {
                sqlx::query("UPDATE commands SET sent_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&c.id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(list)
    }

    /// Stores a device's result; false when the command is not this device's or already
    /// has one (a repeated result changes nothing).
    pub async fn command_result(&self, device: &str, r: &CommandResult) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let outcome = match r.outcome {
            edge_wire::sync::CommandOutcome::Done => "done",
            edge_wire::sync::CommandOutcome::Failed => "failed",
        };
        let done = sqlx::query("UPDATE commands SET done_at = $1, outcome = $2, detail = $3, content_type = $4, attachment = $5 WHERE id = $6 AND device_id = $7 AND done_at IS NULL")
            .bind(now_ms())
            .bind(outcome)
            .bind(&r.detail)
            .bind(&r.content_type)
            .bind(r.attachment.as_slice())
            .bind(&r.id)
            .bind(device)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A device's commands, newest first.
    pub async fn commands(&self, device: &str, limit: i64) -> Result<Vec<CommandRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(device)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(command_of).collect()
    }

    /// One command and its attachment.
    pub async fn command(&self, id: &str) -> Result<Option<(CommandRow, Vec<u8>)>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, attachment FROM commands WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let c = command_of(&r)?;
                let bytes: Option<Vec<u8>> = r.try_get("attachment")?;
                Ok(Some((c, bytes.unwrap_or_default())))
            }
        }
    }
}
