//! The validation gate: before a bundle version may be rolled out, the fleet server runs it
//! over a holdout recording with the devices' own code (`edge-agent replay`, the live
//! pipeline: windows, features, inference, postprocess, alarms, late labels) and compares
//! the metrics with the bundle name's gate. A version that fails (or was never validated)
//! is refused for rollout unless the operator forces it (audited).
//!
//! The validator is the `edge-agent` binary: `serve --validator PATH` / `FLEET_VALIDATOR`,
//! else the `edge-agent` beside the `fleet-server` executable, else `edge-agent` on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The limits a bundle version must meet on the holdout recording (each is optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateRules {
    /// Ground truth in the recording: this tag's samples are the labels (`[models.labels]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_tag: Option<String>,
    /// `classification` (default) or `regression`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_kind: Option<String>,
    /// How long after a window its label may arrive (default 1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_horizon: Option<String>,
    /// Smallest accuracy on the holdout's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<f64>,
    /// Smallest recall on the holdout's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_recall: Option<f64>,
    /// Largest mean absolute error on the holdout's labels (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mae: Option<f64>,
    /// Largest share of holdout windows past the score threshold (false alarms on a
    /// healthy holdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_alarm_rate: Option<f64>,
    /// Fewest predictions the run must make (a bundle that cannot read the holdout's tags
    /// makes none).
    #[serde(default = "one")]
    pub min_predictions: u64,
}

fn one() -> u64 {
    1
}

/// Why gate limits were refused ([`GateRules::validate`]); each names the option.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateRulesError {
    /// A share (`min_accuracy`, `min_recall`, `max_alarm_rate`) outside [0, 1].
    #[error("{option} must be in [0, 1], got {value}")]
    NotAShare {
        /// The option.
        option: &'static str,
        /// The value given.
        value: f64,
    },
    /// `max_mae` negative or not finite (the value given).
    #[error("max_mae must be a number >= 0, got {0}")]
    BadMaxMae(f64),
    /// `label_kind` other than `classification` or `regression` (the value given).
    #[error("label_kind must be classification or regression, got `{0}`")]
    BadLabelKind(String),
    /// `label_horizon` is not a duration.
    #[error("label_horizon `{text}`: {reason}")]
    BadLabelHorizon {
        /// The value given.
        text: String,
        /// Why it does not parse.
        reason: humantime::DurationError,
    },
    /// A label metric limit without `label_tag`.
    #[error("min_accuracy, min_recall and max_mae need label_tag (the recording's ground truth)")]
    NeedsLabelTag,
}

/// Why a validation run itself failed (the run's `error` status and its detail).
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("creating {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    BadJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "cannot run the validator {} ({source}): install edge-agent beside fleet-server or give serve --validator",
        validator.display()
    )]
    Spawn {
        validator: PathBuf,
        source: std::io::Error,
    },
    #[error("the validation run took longer than {}s and was stopped", TIMEOUT.as_secs())]
    Timeout,
    #[error("waiting for the validator: {0}")]
    Wait(std::io::Error),
    #[error("the bundle did not run on {holdout}: {last}")]
    Failed { holdout: String, last: String },
}

impl GateRules {
    /// Checks the values; errors name the option.
    pub fn validate(&self) -> Result<(), GateRulesError> {
        for (k, v) in [
            ("min_accuracy", self.min_accuracy),
            ("min_recall", self.min_recall),
            ("max_alarm_rate", self.max_alarm_rate),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return Err(GateRulesError::NotAShare {
                        option: k,
                        value: v,
                    });
                }
            }
        }
        if let Some(m) = self.max_mae {
            if !(m.is_finite() && m >= 0.0) {
                return Err(GateRulesError::BadMaxMae(m));
            }
        }
        if let Some(k) = &self.label_kind {
            if k != "classification" && k != "regression" {
                return Err(GateRulesError::BadLabelKind(k.clone()));
            }
        }
        if let Some(h) = &self.label_horizon {
            humantime::parse_duration(h).map_err(|reason| GateRulesError::BadLabelHorizon {
                text: h.clone(),
                reason,
            })?;
        }
        let needs_labels =
            self.min_accuracy.is_some() || self.min_recall.is_some() || self.max_mae.is_some();
        if needs_labels && self.label_tag.is_none() {
            return Err(GateRulesError::NeedsLabelTag);
        }
        Ok(())
    }
}

/// What a validation run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationMetrics {
    /// Samples the recording held.
    pub samples: u64,
    /// Windows completed.
    pub windows: u64,
    /// Predictions made.
    pub predictions: u64,
    /// Share of predictions past the score threshold (`None` without a threshold).
    pub alarm_rate: Option<f64>,
    /// Alarms raised (with the bundle's hysteresis).
    pub alarms_raised: u64,
    /// Predictions resolved against a label.
    pub labelled: u64,
    /// Accuracy on the labels (classification).
    pub accuracy: Option<f64>,
    /// Precision on the labels (classification).
    pub precision: Option<f64>,
    /// Recall on the labels (classification).
    pub recall: Option<f64>,
    /// Mean absolute error on the labels (regression).
    pub mae: Option<f64>,
}

/// `passed`, `failed` (a limit not met: `detail` says which) or `error` (the run itself
/// failed: `detail` says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationStatus {
    /// Every limit met.
    Passed,
    /// A limit not met.
    Failed,
    /// The run itself failed.
    Error,
}

impl ValidationStatus {
    /// The stored spelling: `passed`, `failed` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationStatus::Passed => "passed",
            ValidationStatus::Failed => "failed",
            ValidationStatus::Error => "error",
        }
    }

    /// Reads a stored spelling; anything unknown is [`ValidationStatus::Error`].
    pub fn parse(s: &str) -> ValidationStatus {
        match s {
            "passed" => ValidationStatus::Passed,
            "failed" => ValidationStatus::Failed,
            _ => ValidationStatus::Error,
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Passed, failed or error.
    pub status: ValidationStatus,
    /// What the run measured.
    pub metrics: ValidationMetrics,
    /// Which limit failed, or why the run did (empty when it passed).
    pub detail: String,
}

/// The validator binary to run.
pub fn validator(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("FLEET_VALIDATOR") {
        return PathBuf::from(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("edge-agent")))
        .filter(|p| p.exists());
    beside.unwrap_or_else(|| PathBuf::from("edge-agent"))
}

/// Longest a validation run may take.
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `bundle` over the holdout recording and judges the metrics by `rules`. Blocking
/// (run it on a blocking thread). `trusted`: the fleet's trusted keys (PEM), which signed
/// the bundle.
pub fn run(
    validator: &Path,
    bundle: &[u8],
    holdout: &[u8],
    holdout_name: &str,
    trusted: &[String],
    rules: &GateRules,
) -> Validation {
    match run_inner(validator, bundle, holdout, holdout_name, trusted, rules) {
        Ok((metrics, failures)) if failures.is_empty() => Validation {
            status: ValidationStatus::Passed,
            detail: format!("every limit met on {holdout_name}"),
            metrics,
        },
        Ok((metrics, failures)) => Validation {
            status: ValidationStatus::Failed,
            detail: format!("on {holdout_name}: {}", failures.join("; ")),
            metrics,
        },
        Err(e) => Validation {
            status: ValidationStatus::Error,
            metrics: ValidationMetrics::default(),
            detail: e.to_string(),
        },
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_inner(
    validator: &Path,
    bundle: &[u8],
    holdout: &[u8],
    holdout_name: &str,
    trusted: &[String],
    rules: &GateRules,
) -> Result<(ValidationMetrics, Vec<String>), RunError> {
    let dir = std::env::temp_dir().join(format!(
        "fleet-validation-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Create {
        path: dir.clone(),
        source,
    })?;
    let dir = Scratch(dir);
    let d = &dir.0;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, RunError> {
        let p = d.join(name);
        std::fs::write(&p, bytes).map_err(|source| RunError::Write {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    };
    let bundle_path = write("model.bundle", bundle)?;
    let holdout_path = write("holdout.csv", holdout)?;
    let mut keys = Vec::new();
    for (i, pem) in trusted.iter().enumerate() {
        keys.push(write(&format!("key{i}.pub.pem"), pem.as_bytes())?);
    }
    let quote = |p: &Path| format!("{:?}", p.display().to_string());
    let mut cfg = format!(
        "[agent]\nid = \"fleet-validation\"\ndata_dir = {}\n\n[[sources.replay]]\nname = \"holdout\"\npath = {}\n\n[bundles]\ntrusted_keys = [{}]\n\n[[models]]\nname = \"validation\"\nbundle = {}\n# One drift record for the whole holdout: its performance is the run's.\ndrift_interval = \"36500d\"\n",
        quote(d),
        quote(&holdout_path),
        keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
        quote(&bundle_path),
    );
    if let Some(tag) = &rules.label_tag {
        cfg.push_str(&format!(
            "\n[models.labels]\ntag = {tag:?}\nkind = {:?}\nhorizon = {:?}\n",
            rules.label_kind.as_deref().unwrap_or("classification"),
            rules.label_horizon.as_deref().unwrap_or("1h"),
        ));
    }
    let cfg_path = write("agent.toml", cfg.as_bytes())?;
    let out = d.join("out");
    // Its log goes to a file: a pipe read only after exit could fill and stall it.
    let log_path = d.join("validator.log");
    let log = std::fs::File::create(&log_path).map_err(|source| RunError::Create {
        path: log_path.clone(),
        source,
    })?;
    let mut child = Command::new(validator)
        .arg("replay")
        .arg("--config")
        .arg(&cfg_path)
        .arg("--input")
        .arg(&holdout_path)
        .arg("--output")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| RunError::Spawn {
            validator: validator.to_path_buf(),
            source,
        })?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(RunError::Wait(e)),
        }
    };
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| l.contains("error"))
            .unwrap_or(stderr.trim());
        return Err(RunError::Failed {
            holdout: holdout_name.to_string(),
            last: last.to_string(),
        });
    }
    let metrics = read_metrics(&out, &stderr)?;
    Ok((metrics.clone(), judge(&metrics, rules)))
}

fn jsonl(path: &Path) -> Result<Vec<serde_json::Value>, RunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|source| RunError::BadJson {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(RunError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_metrics(out: &Path, stderr: &str) -> Result<ValidationMetrics, RunError> {
    let preds = jsonl(&out.join("predictions.jsonl"))?;
    let alarms = jsonl(&out.join("alarms.jsonl"))?;
    let drift = jsonl(&out.join("drift.jsonl"))?;
    let mut m = ValidationMetrics {
        predictions: preds.len() as u64,
        ..Default::default()
    };
    // "replay: model validation: W windows, …" and "replay: N samples in …" (stderr).
    let first_number = |rest: &str| rest.split_whitespace().next()?.parse().ok();
    for l in stderr.lines() {
        if let Some(rest) = l.strip_prefix("replay: model validation: ") {
            m.windows = first_number(rest).unwrap_or(0);
        } else if let Some(rest) = l
            .strip_prefix("replay: ")
            .filter(|r| r.contains(" samples in "))
        {
            m.samples = first_number(rest).unwrap_or(0);
        }
    }
    let decided: Vec<bool> = preds
        .iter()
        .filter_map(|p| p["over_threshold"].as_bool())
        .collect();
    m.alarm_rate = (!decided.is_empty())
        .then(|| decided.iter().filter(|x| **x).count() as f64 / decided.len() as f64);
    m.alarms_raised = alarms
        .iter()
        .filter(|a| a["state"] == "raised" && a.get("kind").is_none())
        .count() as u64;
    // One drift record covers the holdout (drift_interval 100 years); sum in case of more.
    let mut labelled = 0u64;
    let (mut acc, mut prec, mut rec, mut mae) = (None, None, None, None);
    for d in &drift {
        let p = &d["performance"];
        let n = p["labelled"].as_u64().unwrap_or(0);
        if n > 0 {
            labelled += n;
            acc = p["accuracy"].as_f64().or(acc);
            prec = p["precision"].as_f64().or(prec);
            rec = p["recall"].as_f64().or(rec);
            mae = p["mae"].as_f64().or(mae);
        }
    }
    m.labelled = labelled;
    (m.accuracy, m.precision, m.recall, m.mae) = (acc, prec, rec, mae);
    Ok(m)
}

/// The limits not met, each as `metric value vs limit`.
pub fn judge(m: &ValidationMetrics, r: &GateRules) -> Vec<String> {
    let mut out = Vec::new();
    if m.predictions < r.min_predictions {
        out.push(format!(
            "{} predictions, fewer than {} (do the holdout's tags match the feature spec?)",
            m.predictions, r.min_predictions
        ));
    }
    let mut low = |name: &str, v: Option<f64>, limit: Option<f64>| {
        if let Some(l) = limit {
            match v {
                Some(v) if v >= l => {}
                Some(v) => out.push(format!("{name} {v:.4} < min {l}")),
                None => out.push(format!("{name} unknown (no labelled prediction)")),
            }
        }
    };
    low("accuracy", m.accuracy, r.min_accuracy);
    low("recall", m.recall, r.min_recall);
    if let Some(l) = r.max_mae {
        match m.mae {
            Some(v) if v <= l => {}
            Some(v) => out.push(format!("mae {v:.4} > max {l}")),
            None => out.push("mae unknown (no labelled prediction)".into()),
        }
    }
    if let Some(l) = r.max_alarm_rate {
        match m.alarm_rate {
            Some(v) if v <= l => {}
            Some(v) => out.push(format!("alarm_rate {v:.4} > max {l}")),
            None => out.push("alarm_rate unknown (the bundle has no score threshold)".into()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_names_every_limit_missed() {
        let m = ValidationMetrics {
            predictions: 100,
            alarm_rate: Some(0.2),
            accuracy: Some(0.7),
            labelled: 100,
            ..Default::default()
        };
        let r = GateRules {
            label_tag: Some("truth".into()),
            min_accuracy: Some(0.8),
            max_alarm_rate: Some(0.05),
            min_recall: Some(0.5),
            min_predictions: 1,
            ..Default::default()
        };
        assert_eq!(
            judge(&m, &r),
            [
                "accuracy 0.7000 < min 0.8",
                "recall unknown (no labelled prediction)",
                "alarm_rate 0.2000 > max 0.05"
            ]
        );
        let ok = GateRules {
            max_alarm_rate: Some(0.25),
            ..Default::default()
        };
        assert!(judge(&m, &ok).is_empty());
        assert!(GateRules {
            min_accuracy: Some(0.9),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string()
        .contains("need label_tag"));
    }
}
