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

use edge_wire::bundle::manifest::ColumnStats;
use edge_wire::drift::record::metric_value;
use edge_wire::drift::{ColumnDrift, DriftRules, DriftSummary, Hysteresis, ShadowSummary};

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

/// What closing intervals produced (usually one record; two when a cut interval still
/// waiting for outcomes and the current one close together).
#[derive(Debug, Default)]
pub struct Closed {
    /// Scored drift records, oldest interval first (outbox stream `drift`).
    pub records: Vec<DriftRecord>,
    /// Alarm raises and clears (outbox stream `alarms`).
    pub alarms: Vec<AlarmEvent>,
}

impl Closed {
    /// Both results, `self`'s first.
    pub fn and(mut self, other: Closed) -> Closed {
        self.records.extend(other.records);
        self.alarms.extend(other.alarms);
        self
    }
}

/// An interval cut at its boundary whose windows' inference outcomes are still on their
/// way: its feature summaries are final, its output summaries fill until `awaiting` is 0.
/// So a window's outputs count in the interval of its features, however far inference lags
/// (a replay at full speed has hundreds of windows in flight).
#[derive(Debug)]
struct Cut {
    start_ns: i64,
    end_ns: i64,
    windows: u64,
    columns: Vec<DriftSummary>,
    outputs: Vec<DriftSummary>,
    shadow: Option<ShadowSummary>,
    awaiting: u64,
}

/// The drift monitoring of one model and bundle (module doc): per-interval summaries, scores
/// and alarms. Owned by the model's inference thread; a new bundle gets a new tracker.
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
    /// End of the last closed interval: an interval starting more than one interval later
    /// follows a gap in the data, and the alarms' streaks start over.
    last_end_ns: Option<i64>,
    /// Where the alarm states are kept across restarts (`None`: in memory only).
    state_path: Option<std::path::PathBuf>,
    /// Windows of the current interval handed to inference whose outcome has not come back.
    sent: u64,
    /// The interval before the current one, while its outcomes are still coming back.
    cut: Option<Cut>,
    /// Outcomes of windows ending at or before this belong to an interval already closed.
    closed_through_ns: i64,
    /// The shadow challenger's comparison of the current interval (`with_shadow`).
    shadow: Option<ShadowSummary>,
}

/// The persisted alarm states of one model: valid for the bundle version they were made on.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedAlarms {
    bundle: String,
    version_number: u64,
    last_end_ns: Option<i64>,
    /// subject -> (kind, raised, streak)
    alarms: BTreeMap<String, (DriftAlarmKind, bool, u32)>,
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
        overrides: &edge_wire::drift::DriftPolicy,
        labels: Option<&LabelsConfig>,
    ) -> DriftTracker {
        let reference = &bundle.manifest.reference;
        let spec = &bundle.manifest.features;
        let raw = spec.layout != edge_wire::bundle::InputLayout::Vector;
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
                    (raw && f.kind == edge_wire::bundle::FeatureKind::Mean)
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
            last_end_ns: None,
            state_path: None,
            sent: 0,
            cut: None,
            closed_through_ns: i64::MIN,
            shadow: None,
        }
    }

    /// Keeps the alarm states in `path` (written at every interval close that changed them,
    /// atomically), and takes the states saved there for this bundle version: after a
    /// restart a raised drift alarm is still raised (it clears with calm intervals instead of
    /// staying raised on SCADA forever, and is not raised twice). States of another bundle
    /// or version are ignored (`retire` cleared them).
    pub fn with_state(mut self, path: std::path::PathBuf) -> Self {
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SavedAlarms>(&bytes) {
                Ok(saved)
                    if saved.bundle == *self.source.bundle
                        && saved.version_number == self.source.version_number =>
                {
                    self.last_end_ns = saved.last_end_ns;
                    self.alarms = saved
                        .alarms
                        .into_iter()
                        .map(|(s, (k, raised, streak))| {
                            (s, (k, Hysteresis::restored(raised, streak)))
                        })
                        .collect();
                    let raised = self.raised();
                    if !raised.is_empty() {
                        tracing::info!(model = %self.source.model, raised = ?raised,
                            "drift alarms still raised from before the restart");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %path.display(),
                    "drift alarm state unreadable ({e}); starting with no alarm raised"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(),
                "drift alarm state unreadable ({e}); starting with no alarm raised"),
        }
        self.state_path = Some(path);
        self
    }

    fn save_state(&self) {
        let Some(path) = &self.state_path else {
            return;
        };
        let saved = SavedAlarms {
            bundle: self.source.bundle.to_string(),
            version_number: self.source.version_number,
            last_end_ns: self.last_end_ns,
            alarms: self
                .alarms
                .iter()
                .map(|(s, (k, h))| (s.clone(), (*k, h.raised(), h.streak())))
                .collect(),
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&saved).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), "cannot save the drift alarm state: {e}");
        }
    }

    /// Compares a shadow challenger with the serving bundle per interval (`add_shadow`).
    pub fn with_shadow(mut self, challenger: Option<&LoadedBundle>) -> Self {
        self.shadow = challenger.map(|b| ShadowSummary {
            bundle: b.source.bundle.to_string(),
            version: b.source.version.to_string(),
            version_number: b.source.version_number,
            ..Default::default()
        });
        self
    }

    /// The decisions of the serving bundle and the challenger (`None`: its inference failed)
    /// on a window sent to inference, into that window's interval. Call before
    /// `add_prediction` of the same window.
    #[allow(clippy::type_complexity)]
    pub fn add_shadow(
        &mut self,
        end_ns: i64,
        champion: (Option<f64>, Option<&str>, Option<bool>),
        challenger: Option<(Option<f64>, Option<&str>, Option<bool>)>,
    ) {
        if end_ns <= self.closed_through_ns {
            return;
        }
        let target = match self.cut.as_mut().filter(|c| end_ns <= c.end_ns) {
            Some(cut) => cut.shadow.as_mut(),
            None => self.shadow.as_mut(),
        };
        if let Some(s) = target {
            s.add(champion, challenger);
        }
    }

    /// The bundle this tracker measures against (a prediction of another bundle is not counted).
    pub fn source(&self) -> &Arc<BundleRef> {
        &self.source
    }

    /// The thresholds and hysteresis in force: the bundle's `[drift]` policy with the agent's
    /// overrides.
    pub fn rules(&self) -> &DriftRules {
        &self.rules
    }

    /// Whether there is nothing to track: no column or output with reference statistics and no
    /// labels.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.outputs.is_empty() && self.labels.is_none()
    }

    /// Adds one window's feature values. If the window starts a new interval, the finished
    /// one is cut: closed and returned at once when no outcome of its windows is pending,
    /// else when the last one comes back ([`DriftTracker::add_prediction`]).
    pub fn add_window(&mut self, start_ns: i64, end_ns: i64, values: &[f64]) -> Closed {
        let out = match self.start_ns {
            Some(_) if end_ns - self.first_end_ns >= self.interval_ns => self.cut_current(),
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

    /// A window of the current interval was handed to inference: its outcome will come
    /// back through `add_prediction` or `add_failed_prediction`.
    pub fn window_sent(&mut self) {
        self.sent += 1;
    }

    /// Adds the model outputs of a window sent to inference (to the interval of its
    /// features), and its prediction for the labels. Returns the cut interval once its last
    /// outcome is in.
    pub fn add_prediction(
        &mut self,
        start_ns: i64,
        end_ns: i64,
        outputs: &[(String, Vec<f64>)],
        score: Option<f64>,
        over: Option<bool>,
    ) -> Closed {
        if let Some(j) = &mut self.labels {
            j.prediction(start_ns, end_ns, score, over);
        }
        self.outcome(end_ns, Some(outputs))
    }

    /// Inference failed for a window sent to it: its outputs are missing.
    pub fn add_failed_prediction(&mut self, end_ns: i64) -> Closed {
        self.outcome(end_ns, None)
    }

    fn outcome(&mut self, end_ns: i64, outputs: Option<&[(String, Vec<f64>)]>) -> Closed {
        if end_ns <= self.closed_through_ns {
            return Closed::default(); // its interval was closed without it (shutdown)
        }
        let pick = |c: &Column| {
            outputs.and_then(|o| {
                o.iter()
                    .find(|(n, _)| Some(n) == c.output.as_ref())
                    .and_then(|(_, v)| v.get(c.index).copied())
            })
        };
        let add = |summary: &mut DriftSummary, v: Option<f64>| match v {
            Some(v) => summary.add(v),
            None => summary.add_missing(1),
        };
        if let Some(cut) = self.cut.as_mut().filter(|c| end_ns <= c.end_ns) {
            for (c, summary) in self.outputs.iter().zip(cut.outputs.iter_mut()) {
                add(summary, pick(c));
            }
            cut.awaiting = cut.awaiting.saturating_sub(1);
            if cut.awaiting == 0 {
                return self.finish_cut();
            }
            return Closed::default();
        }
        for c in &mut self.outputs {
            let v = pick(c);
            add(&mut c.summary, v);
        }
        self.sent = self.sent.saturating_sub(1);
        Closed::default()
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
                // The end of the interval being closed (finish_cut sets it first).
                ts_ns: self.last_end_ns.unwrap_or(self.end_ns),
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

    /// Cuts the current interval at its boundary: closed at once if none of its windows'
    /// outcomes is pending, else kept as the cut until they are in. A cut still waiting from
    /// before is closed first (its missing outcomes count as missing outputs).
    fn cut_current(&mut self) -> Closed {
        let earlier = match self.cut.is_some() {
            true => self.finish_cut(),
            false => Closed::default(),
        };
        let Some(start_ns) = self.start_ns.take() else {
            return earlier;
        };
        let take = |cols: &mut Vec<Column>| -> Vec<DriftSummary> {
            cols.iter_mut()
                .map(|c| {
                    let fresh = c.fresh();
                    std::mem::replace(&mut c.summary, fresh)
                })
                .collect()
        };
        let shadow = self.shadow.as_mut().map(|s| {
            let fresh = ShadowSummary {
                bundle: s.bundle.clone(),
                version: s.version.clone(),
                version_number: s.version_number,
                ..Default::default()
            };
            std::mem::replace(s, fresh)
        });
        let cut = Cut {
            start_ns,
            end_ns: self.end_ns,
            windows: std::mem::take(&mut self.windows),
            columns: take(&mut self.columns),
            outputs: take(&mut self.outputs),
            shadow,
            awaiting: std::mem::take(&mut self.sent),
        };
        let waiting = cut.awaiting > 0;
        self.cut = Some(cut);
        if waiting {
            earlier
        } else {
            earlier.and(self.finish_cut())
        }
    }

    /// Closes every interval (the cut one, then the current one): at shutdown and when the
    /// bundle is replaced. Outcomes still pending count as missing outputs.
    pub fn close(&mut self) -> Closed {
        let earlier = match self.cut.is_some() {
            true => self.finish_cut(),
            false => Closed::default(),
        };
        let current = self.cut_current();
        let last = match self.cut.is_some() {
            true => self.finish_cut(),
            false => Closed::default(),
        };
        earlier.and(current).and(last)
    }

    /// Scores the cut interval into a record and runs the alarms.
    fn finish_cut(&mut self) -> Closed {
        let mut closed = Closed::default();
        let Some(mut cut) = self.cut.take() else {
            return closed;
        };
        self.closed_through_ns = self.closed_through_ns.max(cut.end_ns);
        if cut.windows == 0 {
            return closed;
        }
        for s in &mut cut.outputs {
            s.add_missing(cut.awaiting);
        }
        let start_ns = cut.start_ns;
        let rules = self.rules.clone();
        let scored = |cols: &[Column], done: Vec<DriftSummary>, start_ms: i64, end_ms: i64| {
            cols.iter()
                .zip(done)
                .map(|(c, mut done)| {
                    done.start_ms = start_ms;
                    done.end_ms = end_ms;
                    ColumnDrift::scored(done, &c.reference, &rules)
                })
                .collect::<Vec<ColumnDrift>>()
        };
        // A gap in the data longer than an interval: the streaks of the alarms start over
        // (two drifting intervals three months apart are not consecutive).
        if self
            .last_end_ns
            .is_some_and(|last| start_ns.saturating_sub(last) > self.interval_ns)
        {
            for (_, h) in self.alarms.values_mut() {
                h.break_streak();
            }
        }
        self.last_end_ns = Some(cut.end_ns);
        let (s_ms, e_ms) = (start_ns / 1_000_000, cut.end_ns / 1_000_000);
        let columns = scored(&self.columns, cut.columns, s_ms, e_ms);
        let outputs = scored(&self.outputs, cut.outputs, s_ms, e_ms);
        if let Some(j) = &mut self.labels {
            // Predictions older than the horizon resolve as unlabelled even without traffic.
            j.advance(cut.end_ns);
        }
        let performance = self.labels.as_mut().and_then(LabelJoiner::take);
        let mut rec = DriftRecord {
            source: self.source.clone(),
            start_ns,
            end_ns: cut.end_ns,
            windows: cut.windows,
            columns,
            outputs,
            drifting: Vec::new(),
            dataset_drift: false,
            metric: rules.metric,
            performance,
            shadow: cut.shadow.take(),
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
        self.save_state();
        closed.records.push(rec);
        closed.alarms = alarms;
        closed
    }

    /// The bundle is being replaced: its raised drift alarms clear (the new bundle has its
    /// own reference and starts calm).
    pub fn retire(&mut self, ts_ns: i64) -> Vec<AlarmEvent> {
        let source = self.source.clone();
        let cleared = std::mem::take(&mut self.alarms);
        self.save_state();
        cleared
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
    use edge_wire::drift::DriftPolicy;

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
            last_end_ns: None,
            state_path: None,
            sent: 0,
            cut: None,
            closed_through_ns: i64::MIN,
            shadow: None,
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
        let recs: Vec<&DriftRecord> = out.iter().flat_map(|c| c.records.iter()).collect();
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
        let bytes = edge_wire::records::encode_drift(recs[1]);
        let back = edge_wire::records::decode_drift(&bytes).unwrap();
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
        let recs: Vec<&DriftRecord> = out.iter().flat_map(|c| c.records.iter()).collect();
        assert!(
            recs.iter().all(|r| r.drifting == ["score[0]"]),
            "b's own threshold is 5"
        );
        assert_eq!(t.raised(), ["score[0]"]);
        t.add_missing_windows(7);
        t.add_window(40_000_000_000, 40_010_000_000, &[1.0, 2.0, 0.0]);
        let last = t.close().records.pop().unwrap();
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

    /// Outputs count in the interval of their window's features, however late inference
    /// returns them; the interval closes when its last outcome is in.
    #[test]
    fn late_outcomes_land_in_their_own_interval() {
        let mut t = tracker(DriftPolicy::default(), None);
        let hop = 10_000_000i64;
        let mut closed = Vec::new();
        let mut in_flight: std::collections::VecDeque<(i64, i64)> = Default::default();
        // 25 s of windows, inference 150 windows (1.5 s) behind.
        for k in 0..2500i64 {
            let t0 = k * hop;
            closed.push(t.add_window(t0, t0 + hop, &[5.0, 5.0, 0.0]));
            t.window_sent();
            in_flight.push_back((t0, t0 + hop));
            if in_flight.len() > 150 {
                let (s0, e0) = in_flight.pop_front().unwrap();
                closed.push(t.add_prediction(s0, e0, &[("score".into(), vec![5.0])], None, None));
            }
        }
        while let Some((s0, e0)) = in_flight.pop_front() {
            closed.push(t.add_prediction(s0, e0, &[("score".into(), vec![5.0])], None, None));
        }
        closed.push(t.close());
        let recs: Vec<&DriftRecord> = closed.iter().flat_map(|c| c.records.iter()).collect();
        assert_eq!(recs.len(), 3, "10 s, 10 s and the last 5 s");
        for r in &recs {
            let out = &r.outputs[0].summary;
            assert_eq!(
                out.moments.count, r.windows,
                "every window's output in its own interval"
            );
            assert_eq!(out.missing, 0);
        }
        assert_eq!(recs.iter().map(|r| r.windows).sum::<u64>(), 2500);
    }

    /// Two drifting intervals on either side of a gap are not consecutive.
    #[test]
    fn a_gap_in_the_data_starts_the_streaks_over() {
        let mut t = tracker(DriftPolicy::default(), None);
        let mut out = Vec::new();
        feed(&mut t, 0, 10, 4.0, &mut out);
        feed(&mut t, 90 * 24 * 3600, 10, 4.0, &mut out); // 3 months later
        feed(&mut t, 90 * 24 * 3600 + 10, 10, 4.0, &mut out);
        assert!(
            t.raised().is_empty(),
            "one drifting interval before the gap and one after must not raise (raise_after 2)"
        );
        out.push(t.close());
        assert!(t.raised().contains(&"b".to_string()), "{:?}", t.raised());
    }

    /// Raised alarms are still raised after a restart (and clear with calm intervals);
    /// another bundle version starts calm.
    #[test]
    fn raised_drift_alarms_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("drift-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("drift-alarms-m.json");
        let mut t = tracker(DriftPolicy::default(), None).with_state(path.clone());
        let mut out = Vec::new();
        for k in 0..3 {
            feed(&mut t, k * 10, 10, 4.0, &mut out);
        }
        out.push(t.close());
        let raised = t.raised();
        assert!(raised.contains(&"b".to_string()), "{raised:?}");
        drop(t);

        let mut t = tracker(DriftPolicy::default(), None).with_state(path.clone());
        assert_eq!(t.raised(), raised, "restored from {}", path.display());
        let mut out = Vec::new();
        for k in 3..6 {
            feed(&mut t, k * 10, 10, 0.0, &mut out);
        }
        out.push(t.close());
        let cleared: Vec<&str> = out
            .iter()
            .flat_map(|c| &c.alarms)
            .filter(|a| !a.active)
            .filter_map(|a| a.drift.as_ref().map(|d| d.subject.as_str()))
            .collect();
        assert!(cleared.contains(&"b"), "{cleared:?}");
        assert!(
            out.iter().flat_map(|c| &c.alarms).all(|a| !a.active),
            "no second raise"
        );

        // Raised again, then a tracker for another bundle version ignores the file.
        let mut out = Vec::new();
        for k in 6..9 {
            feed(&mut t, k * 10, 10, 4.0, &mut out);
        }
        out.push(t.close());
        assert!(!t.raised().is_empty());
        let mut other = tracker(DriftPolicy::default(), None);
        other.source = Arc::new(BundleRef {
            version_number: 2,
            ..(*other.source).clone()
        });
        assert!(other.with_state(path).raised().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
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
        let recs: Vec<&DriftRecord> = out.iter().flat_map(|c| c.records.iter()).collect();
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
