//! [`DriftRecord`]: what a device sends per model and interval (outbox stream `drift`, then
//! the fleet server): one scored [`DriftSummary`] per feature column and per model output,
//! which columns drift under the model's [`DriftRules`], and the model's [`Performance`]
//! on the predictions whose late labels were resolved in the interval.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::policy::{DriftMetric, DriftRules};
use super::summary::{score, DriftScores, DriftSummary};
use crate::bundle::manifest::ColumnStats;
use crate::bundle::BundleRef;

/// The value of `metric` in a set of scores.
pub fn metric_value(metric: DriftMetric, s: &DriftScores) -> f64 {
    match metric {
        DriftMetric::Psi => s.psi,
        DriftMetric::Js => s.js,
        DriftMetric::Ks => s.ks,
        DriftMetric::W1Std => s.w1_std,
    }
}

/// Whether a column with these scores drifts under `rules`: scored on at least `min_count`
/// values and the rules' metric at or past the column's threshold.
pub fn drifts(rules: &DriftRules, column: &str, s: &DriftScores) -> bool {
    s.count >= rules.min_count && metric_value(rules.metric, s) >= rules.threshold_for(column)
}

/// One column's drift over an interval: its mergeable summary and its scores against the
/// bundle's reference (absent if the reference has no usable histogram).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    /// The mergeable summary.
    pub summary: DriftSummary,
    /// Its scores against the reference.
    pub scores: Option<DriftScores>,
    /// Scored on at least `min_count` values and the rules' metric at or past the column's
    /// threshold.
    #[serde(default)]
    pub drifting: bool,
}

impl ColumnDrift {
    /// Seals `summary` and scores it against `reference` under `rules`.
    pub fn scored(mut summary: DriftSummary, reference: &ColumnStats, rules: &DriftRules) -> Self {
        summary.seal();
        let scores = score(&summary, reference).ok();
        let drifting = scores.is_some_and(|s| drifts(rules, &summary.name, &s));
        ColumnDrift {
            summary,
            scores,
            drifting,
        }
    }

    /// Whether the interval had enough values to count for or against an alarm.
    pub fn decisive(&self, rules: &DriftRules) -> bool {
        self.scores.is_some_and(|s| s.count >= rules.min_count)
    }
}

/// A model's drift summaries for one interval (`[[models]] drift_interval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// The model and bundle summarized.
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    /// Interval start (measurement time), UTC ns.
    pub start_ns: i64,
    /// Interval end, UTC ns.
    pub end_ns: i64,
    /// Windows summarized.
    pub windows: u64,
    /// Feature columns.
    pub columns: Vec<ColumnDrift>,
    /// Model outputs (`name[k]`), when the bundle has output reference statistics.
    #[serde(default)]
    pub outputs: Vec<ColumnDrift>,
    /// Names of the drifting columns (features, then outputs).
    pub drifting: Vec<String>,
    /// At least `dataset_share` of the (decisive) feature columns drift.
    pub dataset_drift: bool,
    /// The metric the drifting flags were decided on.
    #[serde(default)]
    pub metric: DriftMetric,
    /// Predictions resolved against late labels in this interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<Performance>,
    /// A challenger bundle run in shadow beside this one (`[[models]] shadow`), compared on
    /// the interval's windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSummary>,
}

/// How a shadow (challenger) bundle compared with the serving one over an interval. The
/// challenger's predictions are never published and raise no alarm; this is all that is
/// kept of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ShadowSummary {
    /// The challenger: bundle name, version, version number.
    pub bundle: String,
    /// The challenger's semantic version.
    pub version: String,
    /// The challenger's version number.
    pub version_number: u64,
    /// Windows both models ran on.
    pub windows: u64,
    /// Windows where the challenger's inference failed.
    pub errors: u64,
    /// Of the windows where both decide (both have a threshold, or both a label): how many
    /// decisions agree (threshold side, else label).
    pub decided: u64,
    /// Decisions that agree.
    pub agreed: u64,
    /// Windows past the threshold, per model.
    pub champion_over: u64,
    /// Windows past the challenger's threshold.
    pub challenger_over: u64,
    /// Score differences (challenger - champion) over the windows where both have a score.
    pub scored: u64,
    /// Mean difference.
    pub mean_score_diff: f64,
    /// Mean absolute difference.
    pub mean_abs_score_diff: f64,
    /// Largest absolute difference.
    pub max_abs_score_diff: f64,
}

impl ShadowSummary {
    /// Share of agreeing decisions (`None` when there was none to compare).
    pub fn agreement(&self) -> Option<f64> {
        (self.decided > 0).then(|| self.agreed as f64 / self.decided as f64)
    }

    /// Adds one window: the champion's and the challenger's (score, label, over threshold);
    /// `None` for the challenger when its inference failed.
    #[allow(clippy::type_complexity)]
    pub fn add(
        &mut self,
        champion: (Option<f64>, Option<&str>, Option<bool>),
        challenger: Option<(Option<f64>, Option<&str>, Option<bool>)>,
    ) {
        self.windows += 1;
        let Some(ch) = challenger else {
            self.errors += 1;
            return;
        };
        self.champion_over += u64::from(champion.2 == Some(true));
        self.challenger_over += u64::from(ch.2 == Some(true));
        let agree = match (champion.2, ch.2, champion.1, ch.1) {
            (Some(a), Some(b), _, _) => Some(a == b),
            (_, _, Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        if let Some(a) = agree {
            self.decided += 1;
            self.agreed += u64::from(a);
        }
        if let (Some(a), Some(b)) = (champion.0, ch.0) {
            let d = b - a;
            if d.is_finite() {
                let n = self.scored as f64;
                self.mean_score_diff = (self.mean_score_diff * n + d) / (n + 1.0);
                self.mean_abs_score_diff = (self.mean_abs_score_diff * n + d.abs()) / (n + 1.0);
                self.max_abs_score_diff = self.max_abs_score_diff.max(d.abs());
                self.scored += 1;
            }
        }
    }
}

impl DriftRecord {
    /// Sets `drifting` and `dataset_drift` from the columns' flags.
    pub fn evaluate(&mut self, rules: &DriftRules) {
        self.metric = rules.metric;
        self.drifting = self
            .columns
            .iter()
            .chain(&self.outputs)
            .filter(|c| c.drifting)
            .map(|c| c.summary.name.clone())
            .collect();
        let decisive = self.columns.iter().filter(|c| c.decisive(rules)).count();
        let drifting = self.columns.iter().filter(|c| c.drifting).count();
        self.dataset_drift =
            decisive > 0 && drifting as f64 >= rules.dataset_share * decisive as f64;
    }

    /// Share of the decisive feature columns that drift (0 when none is decisive).
    pub fn drifting_share(&self, rules: &DriftRules) -> f64 {
        let decisive = self.columns.iter().filter(|c| c.decisive(rules)).count();
        if decisive == 0 {
            return 0.0;
        }
        self.columns.iter().filter(|c| c.drifting).count() as f64 / decisive as f64
    }
}

/// Model performance on predictions joined to late ground truth. Mergeable (sums).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Performance {
    /// Predictions resolved with a label…
    pub labelled: u64,
    /// …and predictions that waited the whole horizon without one.
    pub unlabelled: u64,
    /// Classification: predicted positive (score past the threshold) vs labelled positive.
    pub tp: u64,
    /// Predicted positive, labelled negative.
    pub fp: u64,
    /// Predicted negative, labelled negative.
    pub tn: u64,
    /// Predicted negative, labelled positive.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// Regression: Σ|score - label| and Σ(score - label)² over the labelled predictions.
    pub abs_err: f64,
    /// Σ(score - label)².
    pub sq_err: f64,
    /// Window ends of the resolved predictions, Unix ns (0 = none yet).
    pub from_ns: i64,
    /// Last window end resolved.
    pub to_ns: i64,
}

impl Performance {
    fn span(&mut self, end_ns: i64) {
        if self.labelled + self.unlabelled == 1 {
            self.from_ns = end_ns;
            self.to_ns = end_ns;
        } else {
            self.from_ns = self.from_ns.min(end_ns);
            self.to_ns = self.to_ns.max(end_ns);
        }
    }

    /// One prediction resolved by a classification label.
    pub fn add_classification(&mut self, predicted: bool, actual: bool, end_ns: i64) {
        self.labelled += 1;
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
        self.span(end_ns);
    }

    /// One prediction resolved by a numeric label.
    pub fn add_regression(&mut self, predicted: f64, actual: f64, end_ns: i64) {
        self.labelled += 1;
        let e = predicted - actual;
        self.abs_err += e.abs();
        self.sq_err += e * e;
        self.span(end_ns);
    }

    /// One prediction that waited the whole horizon without a label.
    pub fn add_unlabelled(&mut self, end_ns: i64) {
        self.unlabelled += 1;
        self.span(end_ns);
    }

    /// Adds another interval's (or device's) counts.
    pub fn merge(&mut self, o: &Performance) {
        if o.labelled + o.unlabelled == 0 {
            return;
        }
        let empty = self.labelled + self.unlabelled == 0;
        self.from_ns = if empty {
            o.from_ns
        } else {
            self.from_ns.min(o.from_ns)
        };
        self.to_ns = self.to_ns.max(o.to_ns);
        self.labelled += o.labelled;
        self.unlabelled += o.unlabelled;
        self.tp += o.tp;
        self.fp += o.fp;
        self.tn += o.tn;
        self.fn_ += o.fn_;
        self.abs_err += o.abs_err;
        self.sq_err += o.sq_err;
    }

    fn classified(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    fn ratio(a: u64, b: u64) -> Option<f64> {
        (b > 0).then(|| a as f64 / b as f64)
    }

    /// (tp + tn) / classified (`None` without labels).
    pub fn accuracy(&self) -> Option<f64> {
        Self::ratio(self.tp + self.tn, self.classified())
    }

    /// tp / (tp + fp).
    pub fn precision(&self) -> Option<f64> {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    /// tp / (tp + fn).
    pub fn recall(&self) -> Option<f64> {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    /// Mean absolute error (regression labels).
    pub fn mae(&self) -> Option<f64> {
        let n = self.labelled - self.classified().min(self.labelled);
        (n > 0).then(|| self.abs_err / n as f64)
    }

    /// Root mean squared error (regression labels).
    pub fn rmse(&self) -> Option<f64> {
        let n = self.labelled - self.classified().min(self.labelled);
        (n > 0).then(|| (self.sq_err / n as f64).sqrt())
    }

    /// The performance alarms of `rules` that this interval breaches: (metric, value, limit).
    /// Metrics without labels in the interval are absent (neither raise nor clear).
    pub fn checks(&self, rules: &DriftRules) -> Vec<(&'static str, f64, f64, bool)> {
        let mut out = Vec::new();
        if let (Some(min), Some(v)) = (rules.min_accuracy, self.accuracy()) {
            out.push(("accuracy", v, min, v < min));
        }
        if let (Some(min), Some(v)) = (rules.min_recall, self.recall()) {
            out.push(("recall", v, min, v < min));
        }
        if let (Some(max), Some(v)) = (rules.max_mae, self.mae()) {
            out.push(("mae", v, max, v > max));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::DriftPolicy;

    fn reference() -> ColumnStats {
        ColumnStats {
            name: "x".into(),
            count: 1000,
            mean: 5.0,
            std: 2.89,
            min: 0.0,
            max: 10.0,
            quantiles: vec![0.1, 0.5, 2.5, 5.0, 7.5, 9.5, 9.9],
            bin_edges: (0..=10).map(f64::from).collect(),
            bin_freqs: vec![0.1; 10],
        }
    }

    fn column(name: &str, values: impl Iterator<Item = f64>, rules: &DriftRules) -> ColumnDrift {
        let r = reference();
        let mut s = DriftSummary::new(name, &r.bin_edges, 0);
        values.for_each(|v| s.add(v));
        ColumnDrift::scored(s, &r, rules)
    }

    #[test]
    fn drifting_flags_follow_metric_thresholds_and_min_count() {
        let policy: DriftPolicy = toml::from_str("metric = 'ks'\n[thresholds]\nb = 0.9").unwrap();
        let rules = policy.resolve();
        let calm = || (0..1000).map(|i| (i % 100) as f64 / 10.0);
        let shifted = || (0..1000).map(|i| 5.0 + (i % 50) as f64 / 10.0);
        let a = column("a", shifted(), &rules);
        let b = column("b", shifted(), &rules);
        let c = column("c", calm(), &rules);
        let few = column("d", (0..10).map(|_| 9.5), &rules);
        assert!(a.drifting, "KS {:?}", a.scores);
        assert!(!b.drifting, "b has its own threshold 0.9: {:?}", b.scores);
        assert!(!c.drifting);
        assert!(
            !few.drifting && !few.decisive(&rules),
            "10 values < min_count 30"
        );
        let mut rec = DriftRecord {
            source: Arc::new(BundleRef {
                model: "m".into(),
                bundle: "b".into(),
                version: "1".into(),
                version_number: 1,
                sha256: "s".into(),
            }),
            start_ns: 0,
            end_ns: 1,
            windows: 1000,
            columns: vec![a, b, c, few],
            outputs: vec![],
            drifting: vec![],
            dataset_drift: false,
            metric: DriftMetric::Psi,
            performance: None,
            shadow: None,
        };
        rec.evaluate(&rules);
        assert_eq!(rec.drifting, ["a"]);
        assert_eq!(rec.metric, DriftMetric::Ks);
        assert!((rec.drifting_share(&rules) - 1.0 / 3.0).abs() < 1e-12);
        assert!(!rec.dataset_drift, "1 of 3 decisive columns < 0.5");
        let rules = DriftPolicy {
            dataset_share: Some(0.3),
            ..policy
        }
        .resolve();
        rec.evaluate(&rules);
        assert!(rec.dataset_drift);
    }

    #[test]
    fn performance_metrics_and_merge() {
        let mut p = Performance::default();
        // 6 TP, 2 FP, 10 TN, 2 FN
        for i in 0..20i64 {
            let (pred, act) = match i {
                0..=5 => (true, true),
                6..=7 => (true, false),
                8..=17 => (false, false),
                _ => (false, true),
            };
            p.add_classification(pred, act, 100 + i);
        }
        p.add_unlabelled(50);
        assert_eq!(p.accuracy(), Some(0.8));
        assert_eq!(p.precision(), Some(0.75));
        assert_eq!(p.recall(), Some(0.75));
        assert_eq!(
            (p.from_ns, p.to_ns, p.labelled, p.unlabelled),
            (50, 119, 20, 1)
        );
        assert_eq!(p.mae(), None);
        let mut q = Performance::default();
        q.add_classification(true, true, 10);
        let mut m = p;
        m.merge(&q);
        assert_eq!((m.tp, m.labelled, m.from_ns, m.to_ns), (7, 21, 10, 119));
        let rules = DriftPolicy {
            min_accuracy: Some(0.9),
            min_recall: Some(0.5),
            ..Default::default()
        }
        .resolve();
        assert_eq!(
            p.checks(&rules),
            vec![("accuracy", 0.8, 0.9, true), ("recall", 0.75, 0.5, false)]
        );
        let mut r = Performance::default();
        r.add_regression(2.0, 1.0, 1);
        r.add_regression(1.0, 4.0, 2);
        assert_eq!(r.mae(), Some(2.0));
        assert_eq!(r.rmse(), Some(5.0f64.sqrt()));
        assert_eq!(r.accuracy(), None);
    }
}
