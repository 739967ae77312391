//! [`DriftTracker`]: the on-device drift monitoring of one model and bundle. Per interval
//! (`drift_interval`) it keeps a mergeable summary of every feature column and model output
//! that has reference statistics in the bundle, closes them into a scored [`DriftRecord`]
//! (outbox stream `drift`, then the fleet server), and runs the drift alarms: one per
//! column, one for the whole input (dataset drift) and one per performance limit (from late
//! labels, [`LabelJoiner`]), each raised after `raise_after` consecutive drifting intervals
//! and cleared after `clear_after` calm ones ([`DriftRules`]). Alarm changes are
//! [`AlarmEvent`]s with a [`DriftAlarm`] (outbox stream `alarms`, MQTT).
//!
//! The tracker runs on the model's inference thread, so a window's features and its
//! outputs land in the same interval.

use std::collections::BTreeMap;
use std::sync::Arc;

use edge_protocols::bundle::manifest::ColumnStats;
use edge_protocols::drift::record::metric_value;
use edge_protocols::drift::{ColumnDrift, DriftRules, DriftSummary, Hysteresis};

use super::labels::{LabelJoiner, LabelsConfig};
use super::loaded::LoadedBundle;
use crate::pipeline::record::{AlarmEvent, BundleRef, DriftAlarm, DriftAlarmKind, DriftRecord};

#[derive(Debug)]
struct Column {
    /// Index in the feature row, or the flat index in the named output.
    index: usize,
    output: Option<String>,
    reference: ColumnStats,
    summary: DriftSummary,
}

impl Column {
    fn fresh(&self) -> DriftSummary {
        DriftSummary::new(&self.summary.name, &self.reference.bin_edges, 0)
    }
}

/// One alarm's observation at an interval close.
struct Check<'a> {
    subject: &'a str,
    kind: DriftAlarmKind,
    metric: &'a str,
    value: f64,
    threshold: f64,
    /// Past the threshold in this interval.
    over: bool,
}

/// What closing an interval produced.
#[derive(Debug, Default)]
pub struct Closed {
    pub record: Option<DriftRecord>,
    pub alarms: Vec<AlarmEvent>,
}

#[derive(Debug)]
pub struct DriftTracker {
    source: Arc<BundleRef>,
    rules: DriftRules,
    interval_ns: i64,
    columns: Vec<Column>,
    outputs: Vec<Column>,
    start_ns: Option<i64>,
    /// End of the interval's first window: the interval holds the windows that end within
    /// `interval` of it.
    first_end_ns: i64,
    end_ns: i64,
    windows: u64,
    /// Alarm states by subject (column name, `dataset`, performance metric).
    alarms: BTreeMap<String, (DriftAlarmKind, Hysteresis)>,
    labels: Option<LabelJoiner>,
}

fn usable(r: &ColumnStats) -> bool {
    r.bin_edges.len() >= 2 && r.bin_freqs.len() + 1 == r.bin_edges.len()
}

impl DriftTracker {
    /// Tracks the columns of `bundle` that have reference statistics with a histogram;
    /// `overrides` (the agent's `[models.drift]`) apply over the bundle's `[drift]` policy.
    pub fn new(
        bundle: &LoadedBundle,
        interval: std::time::Duration,
        overrides: &edge_protocols::drift::DriftPolicy,
        labels: Option<&LabelsConfig>,
    ) -> DriftTracker {
        let reference = &bundle.manifest.reference;
        let spec = &bundle.manifest.features;
        let raw = spec.layout != edge_protocols::bundle::InputLayout::Vector;
        let columns = spec
            .drift_features()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let n = f.name();
                let find = |name: &str| reference.features.iter().find(|r| r.name == name);
                // Raw-layout bundles packed before drift moved to window statistics keep
                // their channel means under the bare tag name; those still apply.
                let legacy = || {
                    (raw && f.kind == edge_protocols::bundle::FeatureKind::Mean)
                        .then(|| find(&f.tag))
                        .flatten()
                };
                let r = find(&n).or_else(legacy)?;
                usable(r).then(|| Column {
                    index: i,
                    output: None,
                    reference: r.clone(),
                    summary: DriftSummary::new(&n, &r.bin_edges, 0),
                })
            })
            .collect();
        // Output reference columns are named `output[k]` (bundle pack).
        let outputs = reference
            .outputs
            .iter()
            .filter(|r| usable(r))
            .filter_map(|r| {
                let (name, k) = r.name.strip_suffix(']')?.rsplit_once('[')?;
                Some(Column {
                    index: k.parse().ok()?,
                    output: Some(name.to_string()),
                    reference: r.clone(),
                    summary: DriftSummary::new(&r.name, &r.bin_edges, 0),
                })
            })
            .collect();
        DriftTracker {
            source: bundle.source.clone(),
            rules: bundle.manifest.drift.overlay(overrides).resolve(),
            interval_ns: interval.as_nanos().min(i64::MAX as u128) as i64,
            columns,
            outputs,
            start_ns: None,
            first_end_ns: 0,
            end_ns: 0,
            windows: 0,
            alarms: BTreeMap::new(),
            labels: labels.map(LabelJoiner::new),
        }
    }

    pub fn source(&self) -> &Arc<BundleRef> {
        &self.source
    }

    pub fn rules(&self) -> &DriftRules {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.outputs.is_empty() && self.labels.is_none()
    }

    /// Adds one window's feature values. If the window starts a new interval, the finished
    /// one is closed first and returned.
    pub fn add_window(&mut self, start_ns: i64, end_ns: i64, values: &[f64]) -> Closed {
        let out = match self.start_ns {
            Some(_) if end_ns - self.first_end_ns >= self.interval_ns => self.close(),
            _ => Closed::default(),
        };
        if self.start_ns.is_none() {
            self.start_ns = Some(start_ns);
            self.first_end_ns = end_ns;
        }
        for c in &mut self.columns {
            match values.get(c.index) {
                Some(v) => c.summary.add(*v),
                None => c.summary.add_missing(1),
            }
        }
        self.end_ns = self.end_ns.max(end_ns);
        self.windows += 1;
        out
    }

    /// Windows that produced no usable features (too much missing data, non-finite values):
    /// every column counts them as missing in the current interval.
    pub fn add_missing_windows(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        for c in self.columns.iter_mut().chain(self.outputs.iter_mut()) {
            c.summary.add_missing(n);
        }
    }

    /// Adds the model outputs of the window last added, and its prediction for the labels.
    pub fn add_prediction(
        &mut self,
        start_ns: i64,
        end_ns: i64,
        outputs: &[(String, Vec<f64>)],
        score: Option<f64>,
        over: Option<bool>,
    ) {
        for c in &mut self.outputs {
            let v = outputs
                .iter()
                .find(|(n, _)| Some(n) == c.output.as_ref())
                .and_then(|(_, v)| v.get(c.index));
            match v {
                Some(v) => c.summary.add(*v),
                None => c.summary.add_missing(1),
            }
        }
        if let Some(j) = &mut self.labels {
            j.prediction(start_ns, end_ns, score, over);
        }
    }

    /// Inference failed for the window last added: its outputs are missing.
    pub fn add_failed_prediction(&mut self) {
        for c in &mut self.outputs {
            c.summary.add_missing(1);
        }
    }

    /// A ground-truth sample (`[models.labels] tag`).
    pub fn add_label(&mut self, ts_ns: i64, value: f64) {
        if let Some(j) = &mut self.labels {
            j.label(ts_ns, value);
        }
    }

    fn alarm(&mut self, c: Check<'_>, out: &mut Vec<AlarmEvent>) {
        let Check {
            subject,
            kind,
            metric,
            value,
            threshold,
            over,
        } = c;
        let (raise, clear) = (self.rules.raise_after, self.rules.clear_after);
        let (_, state) = self
            .alarms
            .entry(subject.to_string())
            .or_insert((kind, Hysteresis::default()));
        let (active, changed) = state.update(over, raise, clear);
        if changed {
            out.push(AlarmEvent {
                source: self.source.clone(),
                ts_ns: self.end_ns,
                active,
                score: value,
                threshold: Some(threshold),
                drift: Some(DriftAlarm {
                    subject: subject.to_string(),
                    kind,
                    metric: metric.to_string(),
                    intervals: if active { raise } else { clear },
                }),
            });
        }
    }

    /// Closes the current interval (if it has windows) into a record and runs the alarms.
    pub fn close(&mut self) -> Closed {
        let mut closed = Closed::default();
        let Some(start_ns) = self.start_ns.take() else {
            return closed;
        };
        if self.windows == 0 {
            return closed;
        }
        let rules = self.rules.clone();
        let scored = |cols: &mut Vec<Column>, start_ms: i64, end_ms: i64| -> Vec<ColumnDrift> {
            cols.iter_mut()
                .map(|c| {
                    let fresh = c.fresh();
                    let mut done = std::mem::replace(&mut c.summary, fresh);
                    done.start_ms = start_ms;
                    done.end_ms = end_ms;
                    ColumnDrift::scored(done, &c.reference, &rules)
                })
                .collect()
        };
        let (s_ms, e_ms) = (start_ns / 1_000_000, self.end_ns / 1_000_000);
        let columns = scored(&mut self.columns, s_ms, e_ms);
        let outputs = scored(&mut self.outputs, s_ms, e_ms);
        if let Some(j) = &mut self.labels {
            // Predictions older than the horizon resolve as unlabelled even without traffic.
            j.advance(self.end_ns);
        }
        let performance = self.labels.as_mut().and_then(LabelJoiner::take);
        let mut rec = DriftRecord {
            source: self.source.clone(),
            start_ns,
            end_ns: self.end_ns,
            windows: self.windows,
            columns,
            outputs,
            drifting: Vec::new(),
            dataset_drift: false,
            metric: rules.metric,
            performance,
        };
        rec.evaluate(&rules);
        let mut alarms = Vec::new();
        let metric = rules.metric.name();
        for (kind, cols) in [
            (DriftAlarmKind::Column, &rec.columns),
            (DriftAlarmKind::Output, &rec.outputs),
        ] {
            for c in cols.iter().filter(|c| c.decisive(&rules)) {
                let value = c
                    .scores
                    .map(|s| metric_value(rules.metric, &s))
                    .unwrap_or(0.0);
                let t = rules.threshold_for(&c.summary.name);
                let check = Check {
                    subject: &c.summary.name,
                    kind,
                    metric,
                    value,
                    threshold: t,
                    over: c.drifting,
                };
                self.alarm(check, &mut alarms);
            }
        }
        if rec.columns.iter().any(|c| c.decisive(&rules)) {
            let share = rec.drifting_share(&rules);
            let check = Check {
                subject: "dataset",
                kind: DriftAlarmKind::Dataset,
                metric: "drifting_share",
                value: share,
                threshold: rules.dataset_share,
                over: rec.dataset_drift,
            };
            self.alarm(check, &mut alarms);
        }
        if let Some(p) = &rec.performance {
            for (m, value, limit, breach) in p.checks(&rules) {
                let check = Check {
                    subject: m,
                    kind: DriftAlarmKind::Performance,
                    metric: m,
                    value,
                    threshold: limit,
                    over: breach,
                };
                self.alarm(check, &mut alarms);
            }
        }
        self.windows = 0;
        closed.record = Some(rec);
        closed.alarms = alarms;
        closed
    }

    /// The bundle is being replaced: its raised drift alarms clear (the new bundle has its
    /// own reference and starts calm).
    pub fn retire(&mut self, ts_ns: i64) -> Vec<AlarmEvent> {
        let source = self.source.clone();
        self.alarms
            .iter()
            .filter(|(_, (_, h))| h.raised())
            .map(|(subject, (kind, _))| AlarmEvent {
                source: source.clone(),
                ts_ns,
                active: false,
                score: f64::NAN,
                threshold: None,
                drift: Some(DriftAlarm {
                    subject: subject.clone(),
                    kind: *kind,
                    metric: "bundle_replaced".into(),
                    intervals: 0,
                }),
            })
            .collect()
    }

    /// Raised drift alarms, by subject.
    pub fn raised(&self) -> Vec<String> {
        self.alarms
            .iter()
            .filter(|(_, (_, h))| h.raised())
            .map(|(s, _)| s.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_protocols::drift::DriftPolicy;

    fn reference(name: &str) -> ColumnStats {
        // Uniform 0..10 in 10 bins.
        ColumnStats {
            name: name.into(),
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

    fn tracker(policy: DriftPolicy, labels: Option<&LabelsConfig>) -> DriftTracker {
        let names: Vec<String> = ["a", "b", "no_reference"].map(String::from).to_vec();
        let source = Arc::new(BundleRef {
            model: "m".into(),
            bundle: "b".into(),
            version: "1".into(),
            version_number: 1,
            sha256: "x".into(),
        });
        let rules_bundle = DriftPolicy {
            raise_after: Some(2),
            clear_after: Some(2),
            ..Default::default()
        };
        DriftTracker {
            source,
            rules: rules_bundle.overlay(&policy).resolve(),
            interval_ns: 10_000_000_000,
            columns: names[..2]
                .iter()
                .enumerate()
                .map(|(i, n)| Column {
                    index: i,
                    output: None,
                    reference: reference(n),
                    summary: DriftSummary::new(n, &reference(n).bin_edges, 0),
                })
                .collect(),
            outputs: vec![Column {
                index: 0,
                output: Some("score".into()),
                reference: reference("score[0]"),
                summary: DriftSummary::new("score[0]", &reference("score[0]").bin_edges, 0),
            }],
            start_ns: None,
            first_end_ns: 0,
            end_ns: 0,
            windows: 0,
            alarms: BTreeMap::new(),
            labels: labels.map(LabelJoiner::new),
        }
    }

    /// Feeds `secs` seconds of 10 ms windows; `shift(k)` moves column b; the output copies b.
    fn feed(t: &mut DriftTracker, from_s: i64, secs: i64, shift: f64, out: &mut Vec<Closed>) {
        let hop = 10_000_000i64;
        let mut r = fastrand::Rng::with_seed(from_s as u64);
        for k in 0..secs * 100 {
            let t0 = from_s * 1_000_000_000 + k * hop;
            let b = (r.f64() * 10.0 + shift).min(9.999);
            let row = [r.f64() * 10.0, b, 0.0];
            out.push(t.add_window(t0, t0 + hop, &row));
            t.add_prediction(
                t0,
                t0 + hop,
                &[("score".into(), vec![b])],
                Some(b),
                Some(b > 8.0),
            );
        }
    }

    #[test]
    fn intervals_score_features_and_outputs_and_alarms_need_consecutive_intervals() {
        let mut t = tracker(DriftPolicy::default(), None);
        let mut out = Vec::new();
        feed(&mut t, 0, 10, 0.0, &mut out); // calm
        feed(&mut t, 10, 10, 4.0, &mut out); // b drifts (1st interval)
        feed(&mut t, 20, 10, 4.0, &mut out); // 2nd: alarm raised
        feed(&mut t, 30, 10, 0.0, &mut out); // calm 1
        feed(&mut t, 40, 10, 0.0, &mut out); // calm 2: cleared
        out.push(t.close());
        let recs: Vec<&DriftRecord> = out.iter().filter_map(|c| c.record.as_ref()).collect();
        assert_eq!(recs.len(), 5, "{recs:?}");
        assert!(recs[0].drifting.is_empty(), "{:?}", recs[0].columns);
        assert_eq!(recs[1].drifting, ["b", "score[0]"]);
        assert!(recs[1].dataset_drift, "1 of 2 feature columns is half");
        assert_eq!(
            recs.iter().map(|r| r.windows).collect::<Vec<_>>(),
            [1000; 5]
        );
        assert_eq!(recs[1].outputs.len(), 1);
        let alarms: Vec<(String, bool, usize)> = out
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.alarms
                    .iter()
                    .map(move |a| (a.drift.as_ref().unwrap().subject.clone(), a.active, i))
            })
            .collect();
        let subjects = |active: bool| {
            let mut v: Vec<&str> = alarms
                .iter()
                .filter(|a| a.1 == active)
                .map(|a| a.0.as_str())
                .collect();
            v.sort();
            v
        };
        assert_eq!(subjects(true), ["b", "dataset", "score[0]"]);
        assert_eq!(subjects(false), ["b", "dataset", "score[0]"]);
        // Raised when the 3rd interval closes (2 drifting in a row; at the window that starts
        // the 4th), cleared at the close of the 5th.
        assert!(
            alarms
                .iter()
                .all(|a| a.2 == if a.1 { 3000 } else { out.len() - 1 }),
            "{alarms:?}"
        );
        assert!(t.raised().is_empty());
        // A record's summaries survive the outbox encoding with their sketch.
        let bytes = edge_protocols::records::encode_drift(recs[1]);
        let back = edge_protocols::records::decode_drift(&bytes).unwrap();
        assert_eq!(back, *recs[1]);
        let mut b = back.columns[1].summary.clone();
        assert!(b.quantile(0.5).unwrap().unwrap() > 7.0);
        // Compact: well under 2 KB per column after zstd.
        let z = zstd::bulk::compress(&bytes, 3).unwrap();
        assert!(z.len() < 3 * 2048, "{} bytes for 3 columns", z.len());
    }

    #[test]
    fn per_column_thresholds_and_replacement_clears() {
        let policy: DriftPolicy = toml::from_str("[thresholds]\nb = 5.0").unwrap();
        let mut t = tracker(policy, None);
        let mut out = Vec::new();
        for k in 0..3 {
            feed(&mut t, k * 10, 10, 4.0, &mut out);
        }
        out.push(t.close());
        let recs: Vec<&DriftRecord> = out.iter().filter_map(|c| c.record.as_ref()).collect();
        assert!(
            recs.iter().all(|r| r.drifting == ["score[0]"]),
            "b's own threshold is 5"
        );
        assert_eq!(t.raised(), ["score[0]"]);
        t.add_missing_windows(7);
        t.add_window(40_000_000_000, 40_010_000_000, &[1.0, 2.0, 0.0]);
        let last = t.close().record.unwrap();
        assert!(last
            .columns
            .iter()
            .chain(&last.outputs)
            .all(|c| c.summary.missing == 7));
        let cleared = t.retire(99);
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].active);
        assert_eq!(cleared[0].drift.as_ref().unwrap().metric, "bundle_replaced");
    }

    #[test]
    fn late_labels_give_performance_and_its_alarm() {
        let policy = DriftPolicy {
            min_accuracy: Some(0.9),
            ..Default::default()
        };
        let labels = LabelsConfig {
            tag: "truth".into(),
            horizon: std::time::Duration::from_secs(5),
            kind: super::super::labels::LabelKind::Classification,
        };
        let mut t = tracker(policy, Some(&labels));
        let mut out = Vec::new();
        // Truth for each window: positive when b > 8 (the prediction) in the first 20 s,
        // the opposite afterwards (concept drift). Labels arrive 1 s late.
        let hop = 10_000_000i64;
        let mut r = fastrand::Rng::with_seed(3);
        let mut late: std::collections::VecDeque<(i64, f64)> = Default::default();
        for k in 0..6000i64 {
            let t0 = k * hop;
            let b = r.f64() * 10.0;
            out.push(t.add_window(t0, t0 + hop, &[r.f64() * 10.0, b]));
            t.add_prediction(
                t0,
                t0 + hop,
                &[("score".into(), vec![b])],
                Some(b),
                Some(b > 8.0),
            );
            let truth = (b > 8.0) != (t0 >= 20_000_000_000);
            late.push_back((t0 + hop / 2, if truth { 1.0 } else { 0.0 }));
            while late
                .front()
                .is_some_and(|(ts, _)| *ts + 1_000_000_000 <= t0)
            {
                let (ts, v) = late.pop_front().unwrap();
                t.add_label(ts, v);
            }
        }
        out.push(t.close());
        let recs: Vec<&DriftRecord> = out.iter().filter_map(|c| c.record.as_ref()).collect();
        let acc: Vec<f64> = recs
            .iter()
            .map(|r| r.performance.unwrap().accuracy().unwrap())
            .collect();
        assert_eq!(acc.len(), 6);
        assert_eq!(acc[0], 1.0);
        assert!(acc[3] == 0.0 && acc[4] == 0.0, "{acc:?}");
        let p0 = recs[0].performance.unwrap();
        assert!(
            p0.labelled >= 850 && p0.labelled < 1000,
            "the last second waits: {p0:?}"
        );
        let raised: Vec<(String, bool)> = out
            .iter()
            .flat_map(|c| &c.alarms)
            .filter(|a| a.drift.as_ref().unwrap().kind == DriftAlarmKind::Performance)
            .map(|a| (a.drift.as_ref().unwrap().subject.clone(), a.active))
            .collect();
        assert_eq!(raised, [("accuracy".to_string(), true)]);
    }
}
