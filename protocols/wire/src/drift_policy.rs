//! When does a column drift, and when does that become an alarm: [`DriftPolicy`] is the
//! `[drift]` table of a bundle's pack spec (stored in the manifest) and of a `[[models]]`
//! entry in the agent config (which overrides the bundle key by key); [`DriftRules`] is the
//! resolved policy with every default filled in; [`Hysteresis`] is the raise/clear state of
//! one alarm (also used for the model's score alarms, per window).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config_check::{Issues, KeyPath};

/// The score that decides whether a column drifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriftMetric {
    /// Population stability index over the reference bins (default threshold 0.25, the
    /// usual "significant" band; 0.1 is "moderate").
    #[default]
    Psi,
    /// Jensen-Shannon distance, base 2, 0..1 (default threshold 0.2).
    Js,
    /// Kolmogorov-Smirnov statistic, 0..1 (default threshold 0.2).
    Ks,
    /// Wasserstein-1 in reference standard deviations (default threshold 0.5).
    W1Std,
}

impl DriftMetric {
    /// The metric's name in configs and records.
    pub fn name(self) -> &'static str {
        match self {
            DriftMetric::Psi => "psi",
            DriftMetric::Js => "js",
            DriftMetric::Ks => "ks",
            DriftMetric::W1Std => "w1_std",
        }
    }

    /// The threshold used when the policy sets none.
    pub fn default_threshold(self) -> f64 {
        match self {
            DriftMetric::Psi => 0.25,
            DriftMetric::Js | DriftMetric::Ks => 0.2,
            DriftMetric::W1Std => 0.5,
        }
    }
}

/// `[drift]` (bundle pack spec, stored in the manifest) and `[models.drift]` (agent config):
/// every key optional; the agent's keys override the bundle's one by one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftPolicy {
    /// Which score decides (`psi`, `js`, `ks`, `w1_std`). Default `psi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<DriftMetric>,
    /// A column drifts when its score is at or above this. Default per metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Per-column thresholds (feature column or model output `name[k]`), over `threshold`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, f64>,
    /// A drift alarm is raised after this many consecutive drifting intervals… (default 3)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raise_after: Option<u32>,
    /// …and cleared after this many consecutive calm ones (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_after: Option<u32>,
    /// The whole input (dataset) drifts when at least this share of the feature columns
    /// drift (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_share: Option<f64>,
    /// Intervals with fewer values than this for a column neither raise nor clear its
    /// alarm (too few to score; default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
    /// Performance alarms from late labels (`[models.labels]`): accuracy below…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<f64>,
    /// …recall below…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_recall: Option<f64>,
    /// …or mean absolute error (regression) above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mae: Option<f64>,
}

impl DriftPolicy {
    /// Whether no key is set (every default applies).
    pub fn is_empty(&self) -> bool {
        *self == DriftPolicy::default()
    }

    /// `over`'s keys replace this policy's; per-column thresholds merge (over wins).
    pub fn overlay(&self, over: &DriftPolicy) -> DriftPolicy {
        let mut thresholds = self.thresholds.clone();
        thresholds.extend(over.thresholds.iter().map(|(k, v)| (k.clone(), *v)));
        DriftPolicy {
            metric: over.metric.or(self.metric),
            threshold: over.threshold.or(self.threshold),
            thresholds,
            raise_after: over.raise_after.or(self.raise_after),
            clear_after: over.clear_after.or(self.clear_after),
            dataset_share: over.dataset_share.or(self.dataset_share),
            min_count: over.min_count.or(self.min_count),
            min_accuracy: over.min_accuracy.or(self.min_accuracy),
            min_recall: over.min_recall.or(self.min_recall),
            max_mae: over.max_mae.or(self.max_mae),
        }
    }

    /// Checks values (not column names: those depend on the bundle).
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if let Some(t) = self.threshold {
            issues.check(positive(t), at.key("threshold"), || {
                format!("threshold must be a positive number, got {t}")
            });
        }
        for (k, t) in &self.thresholds {
            issues.check(positive(*t), at.key("thresholds").key(k), || {
                format!("threshold must be a positive number, got {t}")
            });
        }
        for (key, v) in [
            ("raise_after", self.raise_after),
            ("clear_after", self.clear_after),
        ] {
            if let Some(v) = v {
                issues.check(v >= 1, at.key(key), || format!("{key} must be at least 1"));
            }
        }
        if let Some(s) = self.dataset_share {
            issues.check(s > 0.0 && s <= 1.0, at.key("dataset_share"), || {
                format!("dataset_share must be in (0, 1], got {s}")
            });
        }
        for (key, v) in [
            ("min_accuracy", self.min_accuracy),
            ("min_recall", self.min_recall),
        ] {
            if let Some(v) = v {
                issues.check((0.0..=1.0).contains(&v), at.key(key), || {
                    format!("{key} must be in [0, 1], got {v}")
                });
            }
        }
        if let Some(v) = self.max_mae {
            issues.check(positive(v), at.key("max_mae"), || {
                format!("max_mae must be a positive number, got {v}")
            });
        }
    }

    /// Every default filled in.
    pub fn resolve(&self) -> DriftRules {
        let metric = self.metric.unwrap_or_default();
        DriftRules {
            metric,
            threshold: self.threshold.unwrap_or(metric.default_threshold()),
            thresholds: self.thresholds.clone(),
            raise_after: self.raise_after.unwrap_or(3).max(1),
            clear_after: self.clear_after.unwrap_or(3).max(1),
            dataset_share: self.dataset_share.unwrap_or(0.5),
            min_count: self.min_count.unwrap_or(30),
            min_accuracy: self.min_accuracy,
            min_recall: self.min_recall,
            max_mae: self.max_mae,
        }
    }
}

/// A resolved [`DriftPolicy`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftRules {
    /// Which score decides.
    pub metric: DriftMetric,
    /// A column drifts at or above this score.
    pub threshold: f64,
    /// Per-column thresholds, over `threshold`.
    pub thresholds: BTreeMap<String, f64>,
    /// Consecutive drifting intervals that raise an alarm.
    pub raise_after: u32,
    /// Consecutive calm intervals that clear it.
    pub clear_after: u32,
    /// Share of drifting feature columns that makes the dataset drift.
    pub dataset_share: f64,
    /// Fewest values in an interval for a column's score to count.
    pub min_count: u64,
    /// Accuracy on late labels below which a performance alarm is raised.
    pub min_accuracy: Option<f64>,
    /// Recall below which a performance alarm is raised.
    pub min_recall: Option<f64>,
    /// Mean absolute error above which a performance alarm is raised.
    pub max_mae: Option<f64>,
}

impl Default for DriftRules {
    fn default() -> Self {
        DriftPolicy::default().resolve()
    }
}

impl DriftRules {
    /// The threshold of one column.
    pub fn threshold_for(&self, column: &str) -> f64 {
        self.thresholds
            .get(column)
            .copied()
            .unwrap_or(self.threshold)
    }
}

/// Raise/clear hysteresis: raised after `raise` consecutive observations past the limit,
/// cleared after `clear` consecutive ones within it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    raised: bool,
    streak: u32,
}

impl Hysteresis {
    /// Feeds one observation; returns (state, whether it changed now).
    pub fn update(&mut self, over: bool, raise: u32, clear: u32) -> (bool, bool) {
        if over != self.raised {
            self.streak += 1;
            if self.streak >= if over { raise.max(1) } else { clear.max(1) } {
                self.raised = over;
                self.streak = 0;
                return (self.raised, true);
            }
        } else {
            self.streak = 0;
        }
        (self.raised, false)
    }

    /// Whether the alarm is raised.
    pub fn raised(&self) -> bool {
        self.raised
    }

    /// Consecutive observations against the current state so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// The observations stopped (a gap in the data): what comes next is not consecutive with
    /// what came before. The state stays.
    pub fn break_streak(&mut self) {
        self.streak = 0;
    }

    /// A state as persisted (`raised`, `streak`).
    pub fn restored(raised: bool, streak: u32) -> Hysteresis {
        Hysteresis { raised, streak }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_needs_consecutive_observations_both_ways() {
        let mut a = Hysteresis::default();
        let feed = |a: &mut Hysteresis, seq: &[bool]| {
            seq.iter().map(|o| a.update(*o, 3, 2).0).collect::<Vec<_>>()
        };
        assert_eq!(
            feed(&mut a, &[true, true, false, true, true, true]),
            [false, false, false, false, false, true]
        );
        assert_eq!(
            feed(&mut a, &[false, true, false, false]),
            [true, true, true, false]
        );
    }

    #[test]
    fn config_overrides_the_bundle_key_by_key() {
        let bundle: DriftPolicy = toml::from_str(
            "metric = 'ks'\nthreshold = 0.3\nraise_after = 2\n[thresholds]\na = 0.5\nb = 0.6",
        )
        .unwrap();
        let config: DriftPolicy = toml::from_str("threshold = 0.4\n[thresholds]\nb = 0.9").unwrap();
        let r = bundle.overlay(&config).resolve();
        assert_eq!(r.metric, DriftMetric::Ks);
        assert_eq!(r.threshold, 0.4);
        assert_eq!(r.raise_after, 2);
        assert_eq!(r.clear_after, 3);
        assert_eq!(
            (
                r.threshold_for("a"),
                r.threshold_for("b"),
                r.threshold_for("c")
            ),
            (0.5, 0.9, 0.4)
        );
        let d = DriftPolicy::default().resolve();
        assert_eq!((d.metric, d.threshold), (DriftMetric::Psi, 0.25));
    }

    #[test]
    fn bad_values_name_their_key() {
        let p: DriftPolicy = toml::from_str(
            "threshold = -1\nraise_after = 0\ndataset_share = 1.5\nmin_accuracy = 2\n[thresholds]\nx = nan",
        )
        .unwrap();
        let mut issues = Issues::default();
        p.validate(&KeyPath::root().key("drift"), &mut issues);
        let keys: Vec<String> = issues.0.iter().map(|i| i.path.to_string()).collect();
        assert_eq!(
            keys,
            [
                "drift.threshold",
                "drift.thresholds.x",
                "drift.raise_after",
                "drift.dataset_share",
                "drift.min_accuracy"
            ]
        );
        assert!(toml::from_str::<DriftPolicy>("tresholds = 1").is_err());
    }
}
