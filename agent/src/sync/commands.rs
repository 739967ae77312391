//! Operators' commands that arrive with a check-in reply: restart, reload bundles, Sparkplug
//! rebirth, resync, recent logs, a diagnostic bundle. Each command id runs at most once on
//! this device (ids and outcomes are kept in `<data_dir>/sync/commands.json`, the newest
//! [`REMEMBERED`]); a command seen again (its result was lost on the way) is answered from
//! there without running it twice.

use std::path::PathBuf;
use std::sync::Arc;

use edge_wire::sync::{CommandAction, CommandOutcome, CommandResult, DeviceCommand};
use serde::{Deserialize, Serialize};

use super::update::ModelHandle;
use crate::remote_config::{Restart, RestartRequest};

/// Command ids remembered as done.
pub const REMEMBERED: usize = 200;

/// Most bytes an attachment (logs, diagnostics) may have, whatever the command asks.
pub const MAX_ATTACHMENT: u64 = 4 << 20;

/// Builds the diagnostic bundle (JSON) of the running agent.
pub type DiagnosticsFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Where the diagnostic bundle's builder is put once everything it reads has started.
pub type DiagnosticsSlot = Arc<std::sync::OnceLock<DiagnosticsFn>>;

/// What commands act on; built by `lib::run` from the running parts.
#[derive(Clone, Default)]
pub struct DeviceOps {
    /// Ends the run for a restart.
    pub restart: Option<RestartRequest>,
    /// Each Sparkplug output's name and its rebirth trigger.
    pub rebirth: Vec<(String, Arc<tokio::sync::Notify>)>,
    /// The diagnostic bundle.
    pub diagnostics: DiagnosticsSlot,
}

impl std::fmt::Debug for DeviceOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceOps")
            .field("rebirth", &self.rebirth.len())
            .finish()
    }
}

/// A command run earlier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Done {
    id: String,
    outcome: CommandOutcome,
    detail: String,
}

/// The file of commands run here.
#[derive(Debug)]
pub struct CommandLog {
    path: PathBuf,
}

impl CommandLog {
    /// The log in `<data_dir>/sync/commands.json`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        CommandLog {
            path: data_dir.join("sync").join("commands.json"),
        }
    }

    fn read(&self) -> Vec<Done> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn find(&self, id: &str) -> Option<Done> {
        self.read().into_iter().find(|d| d.id == id)
    }

    fn remember(&self, r: &CommandResult) {
        let mut all = self.read();
        all.push(Done {
            id: r.id.clone(),
            outcome: r.outcome,
            detail: r.detail.clone(),
        });
        let excess = all.len().saturating_sub(REMEMBERED);
        all.drain(..excess);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let written = serde_json::to_vec(&all)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                crate::remote_config::write_atomic(&self.path, &b).map_err(std::io::Error::other)
            });
        if let Err(e) = written {
            tracing::warn!(file = %self.path.display(), "cannot record command {}: {e}", r.id);
        }
    }
}

fn result(id: &str, outcome: CommandOutcome, detail: String) -> CommandResult {
    CommandResult {
        id: id.to_string(),
        outcome,
        detail,
        content_type: String::new(),
        attachment: Vec::new(),
    }
}

/// What running a command left to do after its result was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Nothing.
    Nothing,
    /// Restart the agent (the result says so first).
    Restart,
    /// Forget what was given up and sync again at once.
    Resync,
}

fn level_of(s: &str) -> Option<tracing::Level> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Some(tracing::Level::ERROR),
        "warn" | "warning" => Some(tracing::Level::WARN),
        "info" => Some(tracing::Level::INFO),
        "debug" => Some(tracing::Level::DEBUG),
        "trace" => Some(tracing::Level::TRACE),
        _ => None,
    }
}

/// Runs one command (unless it ran before) and says what is left to do once its result
/// was delivered.
pub async fn run(
    log: &CommandLog,
    ops: &DeviceOps,
    models: &[ModelHandle],
    cmd: &DeviceCommand,
) -> (CommandResult, After) {
    if let Some(d) = log.find(&cmd.id) {
        return (
            result(
                &cmd.id,
                d.outcome,
                format!("already run here: {}", d.detail),
            ),
            After::Nothing,
        );
    }
    let (r, after) = execute(ops, models, cmd).await;
    tracing::info!(command = %cmd.id, action = ?cmd.action, outcome = ?r.outcome, "fleet command: {}", r.detail);
    log.remember(&r);
    (r, after)
}

async fn execute(
    ops: &DeviceOps,
    models: &[ModelHandle],
    cmd: &DeviceCommand,
) -> (CommandResult, After) {
    let id = cmd.id.as_str();
    match &cmd.action {
        CommandAction::Restart => match &ops.restart {
            Some(_) => (
                result(
                    id,
                    CommandOutcome::Done,
                    "restarting: the agent exits for systemd to start it again".into(),
                ),
                After::Restart,
            ),
            None => (
                result(
                    id,
                    CommandOutcome::Failed,
                    "this agent was started without a configuration file; it cannot restart itself"
                        .into(),
                ),
                After::Nothing,
            ),
        },
        CommandAction::ReloadBundles => {
            if models.is_empty() {
                return (
                    result(id, CommandOutcome::Done, "no models configured".into()),
                    After::Nothing,
                );
            }
            let mut lines = Vec::new();
            let mut failed = false;
            for m in models {
                match m.control.reload().await {
                    Ok(b) => lines.push(format!(
                        "{}: serves {} {} (#{})",
                        m.name, b.bundle, b.version, b.version_number
                    )),
                    Err(e) => {
                        failed = true;
                        lines.push(format!("{}: {e}", m.name));
                    }
                }
            }
            let outcome = if failed {
                CommandOutcome::Failed
            } else {
                CommandOutcome::Done
            };
            (result(id, outcome, lines.join("; ")), After::Nothing)
        }
        CommandAction::Rebirth => {
            if ops.rebirth.is_empty() {
                return (
                    result(id, CommandOutcome::Failed, "no Sparkplug output".into()),
                    After::Nothing,
                );
            }
            for (_, n) in &ops.rebirth {
                n.notify_one();
            }
            let names: Vec<&str> = ops.rebirth.iter().map(|r| r.0.as_str()).collect();
            (
                result(
                    id,
                    CommandOutcome::Done,
                    format!(
                        "rebirth asked of {} (births go out when the primary host is online)",
                        names.join(", ")
                    ),
                ),
                After::Nothing,
            )
        }
        CommandAction::Resync => (
            result(
                id,
                CommandOutcome::Done,
                "given-up updates and configurations forgotten; syncing again now".into(),
            ),
            After::Resync,
        ),
        CommandAction::Logs {
            since_ms,
            until_ms,
            level,
            max_bytes,
        } => {
            let Some(level) = level_of(level) else {
                return (
                    result(
                        id,
                        CommandOutcome::Failed,
                        format!("level `{level}`: use error, warn, info, debug or trace"),
                    ),
                    After::Nothing,
                );
            };
            let cap = (*max_bytes).clamp(1024, MAX_ATTACHMENT) as usize;
            let (text, left_out) =
                crate::logging::ring().select(*since_ms, until_ms.unwrap_or(u64::MAX), level, cap);
            let mut r = result(
                id,
                CommandOutcome::Done,
                format!(
                    "{} line(s), {} bytes{}",
                    text.lines().count(),
                    text.len(),
                    if left_out > 0 {
                        format!("; {left_out} older line(s) left out for the size cap")
                    } else {
                        String::new()
                    }
                ),
            );
            r.content_type = "text/plain".into();
            r.attachment = text.into_bytes();
            (r, After::Nothing)
        }
        CommandAction::Diagnostics { max_bytes } => {
            let Some(f) = ops.diagnostics.get() else {
                return (
                    result(id, CommandOutcome::Failed, "no diagnostics here".into()),
                    After::Nothing,
                );
            };
            let cap = (*max_bytes).clamp(1024, MAX_ATTACHMENT) as usize;
            let mut v = f();
            let mut bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
            let mut detail = format!("{} bytes", bytes.len());
            if bytes.len() > cap {
                // The metrics text is the bulk: drop it first, then say what is missing.
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "metrics".into(),
                        serde_json::Value::String(format!(
                            "left out: the bundle was over the {cap}-byte cap"
                        )),
                    );
                }
                bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
                detail = format!("{} bytes (metrics left out for the size cap)", bytes.len());
            }
            if bytes.len() > cap {
                return (
                    result(
                        id,
                        CommandOutcome::Failed,
                        format!(
                            "the diagnostic bundle is {} bytes even without metrics, over the {cap}-byte cap",
                            bytes.len()
                        ),
                    ),
                    After::Nothing,
                );
            }
            let mut r = result(id, CommandOutcome::Done, detail);
            r.content_type = "application/json".into();
            r.attachment = bytes;
            (r, After::Nothing)
        }
    }
}

/// What `After::Restart` asks of the run.
pub fn restart(ops: &DeviceOps) {
    if let Some(r) = &ops.restart {
        r.request(Restart::Process);
    }
}
