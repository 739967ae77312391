//! Device commands: an operator sends one (restart, reload bundles, rebirth, resync, logs,
//! diagnostics) — audited under their name; the device receives it at its next check-in,
//! runs it once and answers with the outcome (and the logs or diagnostic bundle), audited
//! under the device. Viewers see commands and outcomes; attachments (logs can carry
//! addresses and names) need the operator role, like sending.

use edge_wire::sync::CommandAction;
use serde::{Deserialize, Serialize};

use super::{random_hex, Acting, Result, ServiceError};
use crate::store::{now_ms, CommandRow, COMMAND_TTL_MS};
use crate::types::Role;

/// Largest attachment a command may ask for.
pub const MAX_ATTACHMENT: u64 = 4 << 20;

/// `POST /v1/operator/devices/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// What to do (`{"kind": "restart"}`, `{"kind": "logs", "since_ms": …, "level": "warn",
    /// "max_bytes": …}`, …).
    pub action: CommandAction,
}

/// A command as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOut {
    /// The command and its result columns.
    #[serde(flatten)]
    pub command: CommandRow,
    /// `queued` (not handed out yet), `sent` (handed out, no result), `done`, `failed`,
    /// `expired` (no result within an hour).
    pub state: String,
    /// The logs or diagnostic bundle as text (only in `GET .../commands/{id}`, for
    /// operators and admins).
    pub attachment: Option<String>,
}

fn state_of(c: &CommandRow, now: i64) -> &'static str {
    match (c.outcome.as_deref(), c.sent_at) {
        (Some("done"), _) => "done",
        (Some(_), _) => "failed",
        (None, _) if c.created_at <= now - COMMAND_TTL_MS => "expired",
        (None, Some(_)) => "sent",
        (None, None) => "queued",
    }
}

fn out(c: CommandRow, attachment: Option<String>) -> CommandOut {
    let state = state_of(&c, now_ms()).to_string();
    CommandOut {
        command: c,
        state,
        attachment,
    }
}

fn kind(a: &CommandAction) -> &'static str {
    match a {
        CommandAction::Restart => "restart",
        CommandAction::ReloadBundles => "reload_bundles",
        CommandAction::Rebirth => "rebirth",
        CommandAction::Resync => "resync",
        CommandAction::Logs { .. } => "logs",
        CommandAction::Diagnostics { .. } => "diagnostics",
    }
}

impl Acting {
    /// Queues a command for a device (operators and admins), audited.
    pub async fn send_command(&self, device: &str, r: &CommandRequest) -> Result<CommandOut> {
        self.require(Role::Operator, "sending commands to devices")?;
        let d = self
            .store()
            .device(device)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device `{device}`")))?;
        if d.revoked_at.is_some() {
            return Err(ServiceError::Conflict(format!(
                "device {device} is revoked: it can no longer receive commands"
            )));
        }
        match &r.action {
            CommandAction::Logs {
                level, max_bytes, ..
            } => {
                if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
                    return Err(ServiceError::Invalid(format!(
                        "level `{level}`: use error, warn, info, debug or trace"
                    )));
                }
                if *max_bytes > MAX_ATTACHMENT {
                    return Err(ServiceError::Invalid(format!(
                        "max_bytes: at most {MAX_ATTACHMENT}"
                    )));
                }
            }
            CommandAction::Diagnostics { max_bytes } if *max_bytes > MAX_ATTACHMENT => {
                return Err(ServiceError::Invalid(format!(
                    "max_bytes: at most {MAX_ATTACHMENT}"
                )));
            }
            _ => {}
        }
        let c = CommandRow {
            id: format!("c{:x}{}", now_ms(), random_hex(4)?),
            device_id: d.id.clone(),
            action: r.action.clone(),
            created_by: self.who.name.clone(),
            created_at: now_ms(),
            sent_at: None,
            done_at: None,
            outcome: None,
            detail: None,
            content_type: None,
            attachment_bytes: 0,
        };
        self.store().add_command(&c).await?;
        self.audit(
            &format!("command.{}", kind(&c.action)),
            &d.id,
            &format!(
                "{} {}",
                c.id,
                serde_json::to_string(&c.action).unwrap_or_default()
            ),
        )
        .await?;
        Ok(out(c, None))
    }

    /// A device's commands, newest first (at most 50).
    pub async fn device_commands(&self, device: &str) -> Result<Vec<CommandOut>> {
        self.require(Role::Viewer, "device commands")?;
        Ok(self
            .store()
            .commands(device, 50)
            .await?
            .into_iter()
            .map(|c| out(c, None))
            .collect())
    }

    /// One command; its attachment for operators and admins.
    pub async fn command(&self, id: &str) -> Result<CommandOut> {
        self.require(Role::Viewer, "device commands")?;
        let (c, bytes) = self
            .store()
            .command(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no command `{id}`")))?;
        let attachment = (self.who.role >= Role::Operator && !bytes.is_empty())
            .then(|| String::from_utf8_lossy(&bytes).into_owned());
        Ok(out(c, attachment))
    }
}
