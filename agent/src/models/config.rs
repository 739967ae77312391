//! `[bundles]` and `[[models]]`: which signed bundles the agent runs and whom it trusts.

use std::path::PathBuf;
use std::time::Duration;

use edge_wire::config_check::{Issues, KeyPath};
use serde::Deserialize;

/// `[bundles]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesConfig {
    /// ed25519 public keys (PEM) whose signatures are accepted. A bundle signed by any other
    /// key, or unsigned, is refused.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
}

/// `[[models]]`: one model instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Instance name (records, metrics, topics).
    pub name: String,
    /// The bundle file. Replacing the file hot-reloads the model (checked every
    /// `reload_check`); a new bundle that fails any check is refused and the running one stays.
    pub bundle: PathBuf,
    /// Windows that may wait for inference; what happens to more is `when_busy`.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// What a window does when `queue` windows already wait (default: `drop`).
    #[serde(default)]
    pub when_busy: WhenBusy,
    /// Emit a features record per window (for outputs and drift).
    #[serde(default = "yes")]
    pub features: bool,
    /// How often the bundle file is checked for a replacement (at least 100 ms; default 5 s).
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_check: Duration,
    /// Drift summaries of the features against the bundle's reference are closed (and sent
    /// to the outbox stream `drift`) every this long.
    #[serde(default = "default_drift_interval", with = "humantime_serde")]
    pub drift_interval: Duration,
    /// Drift policy over the bundle's `[drift]`, key by key (metric, thresholds, hysteresis,
    /// performance limits).
    #[serde(default)]
    pub drift: edge_wire::drift::DriftPolicy,
    /// Late ground truth for performance monitoring (concept drift).
    #[serde(default)]
    pub labels: Option<super::labels::LabelsConfig>,
    /// A challenger bundle (same feature spec) run in shadow on every window: compared with
    /// this one per `drift_interval` (the drift record's `shadow`), never published and never
    /// alarming. Read at start.
    #[serde(default)]
    pub shadow: Option<PathBuf>,
}

/// What a window does when `queue` windows already wait for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenBusy {
    /// The window gets no prediction and is counted
    /// (`edge_model_windows_skipped_busy_total`); it still counts for drift. Sources never
    /// slow down; predictions have gaps while the model is overloaded. For live data.
    #[default]
    Drop,
    /// The window waits for the inference thread: every window gets its prediction, and a
    /// model slower than the data slows the stage and then the sources (with
    /// `pipeline.backpressure = "block"`). For replayed recordings (`edge-agent replay` sets it).
    Wait,
}

fn default_drift_interval() -> Duration {
    Duration::from_secs(600)
}

fn default_queue() -> usize {
    16
}
fn yes() -> bool {
    true
}
fn default_reload() -> Duration {
    Duration::from_secs(5)
}

impl ModelConfig {
    /// Checks the entry (name, queue, intervals, drift overrides, labels), adding problems
    /// under `at`. The bundle itself is checked when it loads.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(
            !self.name.is_empty() && !self.name.contains(['/', '+', '#']),
            at.key("name"),
            || {
                format!(
                    "model name `{}` must be non-empty without `/`, `+`, `#`",
                    self.name
                )
            },
        );
        issues.check(self.queue >= 1, at.key("queue"), || {
            "queue must be at least 1".into()
        });
        issues.check(
            self.drift_interval >= Duration::from_secs(1),
            at.key("drift_interval"),
            || "drift_interval must be at least 1s".into(),
        );
        self.drift.validate(&at.key("drift"), issues);
        if let Some(l) = &self.labels {
            issues.check(!l.tag.is_empty(), at.key("labels").key("tag"), || {
                "labels.tag must name the tag that carries the ground truth".into()
            });
            issues.check(
                l.horizon >= Duration::from_secs(1),
                at.key("labels").key("horizon"),
                || "labels.horizon must be at least 1s".into(),
            );
        }
        issues.check(
            self.reload_check >= Duration::from_millis(100),
            at.key("reload_check"),
            || "reload_check must be at least 100ms".into(),
        );
    }
}
