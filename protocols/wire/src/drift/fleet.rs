//! [`MergedDrift`]: many [`DriftRecord`]s of one bundle version (one device over a time
//! range, a device group, the whole fleet) merged into one summary per column, then scored
//! against the bundle's reference. Merging gives the histogram and moments of the union of
//! the underlying values and quantiles within the sketch's accuracy (the summaries'
//! guarantees); records of another bundle version (another reference) are refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::policy::DriftRules;
use super::record::{drifts, DriftRecord, Performance};
use super::summary::{score, CheckedSketch, DriftError, DriftScores, DriftSummary};
use crate::bundle::manifest::Reference;

/// Merged drift of one bundle version.
#[derive(Debug, Clone, Default)]
pub struct MergedDrift {
    /// The bundle name.
    pub bundle: String,
    /// The version number (one reference per merge).
    pub version_number: u64,
    /// Covered time, Unix ns.
    pub from_ns: i64,
    /// End of the covered time, Unix ns.
    pub to_ns: i64,
    /// Records merged.
    pub records: u64,
    /// Windows they summarized.
    pub windows: u64,
    /// Records that had dataset drift.
    pub dataset_drift_records: u64,
    /// The devices the records came from.
    pub devices: BTreeSet<String>,
    /// Merged summary per feature column.
    pub columns: BTreeMap<String, DriftSummary>,
    /// Merged summary per model output.
    pub outputs: BTreeMap<String, DriftSummary>,
    /// Merged late-label performance.
    pub performance: Performance,
}

/// One merged column scored against the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnView {
    /// The column.
    pub name: String,
    /// Values summarized.
    pub count: u64,
    /// Values missing (non-finite, bad quality, skipped windows).
    pub missing: u64,
    /// Mean of the values.
    pub mean: f64,
    /// Their standard deviation.
    pub std: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// Median from the merged sketch.
    pub p50: Option<f64>,
    /// 99th percentile from the merged sketch.
    pub p99: Option<f64>,
    /// Scores against the reference (none without a usable reference).
    pub scores: Option<DriftScores>,
    /// Whether the policy says it drifts.
    pub drifting: bool,
}

/// Why a record could not be merged (nothing of it was).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MergeError {
    /// The record is of another bundle version (bundle, number; the merge's bundle, number).
    #[error("record of {0} #{1} cannot merge into {2} #{3} (another reference)")]
    OtherBundle(String, u64, String, u64),
    /// A column appears twice in the record.
    #[error("column `{0}` appears twice in one record")]
    DuplicateColumn(String),
    /// A column's summary does not merge.
    #[error(transparent)]
    Drift(#[from] DriftError),
}

impl MergedDrift {
    /// Adds one device's record. The first record fixes the bundle version.
    pub fn add(&mut self, device: &str, rec: &DriftRecord) -> Result<(), MergeError> {
        if self.records == 0 {
            self.bundle = rec.source.bundle.to_string();
            self.version_number = rec.source.version_number;
            self.from_ns = rec.start_ns;
            self.to_ns = rec.end_ns;
        } else if *rec.source.bundle != *self.bundle
            || rec.source.version_number != self.version_number
        {
            return Err(MergeError::OtherBundle(
                rec.source.bundle.to_string(),
                rec.source.version_number,
                self.bundle.clone(),
                self.version_number,
            ));
        }
        // Check (and decode) every column first: a record that cannot merge changes nothing.
        let mut seen = BTreeSet::new();
        let mut plan = Vec::with_capacity(rec.columns.len() + rec.outputs.len());
        for (output, c) in rec
            .columns
            .iter()
            .map(|c| (false, c))
            .chain(rec.outputs.iter().map(|c| (true, c)))
        {
            let s = &c.summary;
            if !seen.insert((output, s.name.as_str())) {
                return Err(MergeError::DuplicateColumn(s.name.clone()));
            }
            let map = if output { &self.outputs } else { &self.columns };
            let checked = match map.get(&s.name) {
                Some(m) => m.check_merge(s)?,
                None => CheckedSketch::of(s)?,
            };
            plan.push((output, s, checked));
        }
        for (output, s, checked) in plan {
            let map = if output {
                &mut self.outputs
            } else {
                &mut self.columns
            };
            match map.get_mut(&s.name) {
                Some(m) => m.merge_checked(s, &checked)?,
                None => {
                    map.insert(s.name.clone(), DriftSummary::from_checked(s, checked));
                }
            }
        }
        if let Some(p) = &rec.performance {
            self.performance.merge(p);
        }
        self.from_ns = self.from_ns.min(rec.start_ns);
        self.to_ns = self.to_ns.max(rec.end_ns);
        self.records += 1;
        self.windows += rec.windows;
        self.dataset_drift_records += u64::from(rec.dataset_drift);
        self.devices.insert(device.to_string());
        Ok(())
    }

    fn view(
        s: &DriftSummary,
        reference: Option<&crate::bundle::manifest::ColumnStats>,
        rules: &DriftRules,
    ) -> ColumnView {
        let mut s = s.clone();
        let scores = reference.and_then(|r| score(&s, r).ok());
        let drifting = scores.is_some_and(|sc| drifts(rules, &s.name, &sc));
        let m = s.moments;
        ColumnView {
            name: s.name.clone(),
            count: m.count,
            missing: s.missing,
            mean: m.mean,
            std: m.variance().sqrt(),
            min: m.min,
            max: m.max,
            p50: s.quantile(0.5).ok().flatten(),
            p99: s.quantile(0.99).ok().flatten(),
            scores,
            drifting,
        }
    }

    /// Every merged feature column, then every output, scored against `reference`.
    pub fn scored(
        &self,
        reference: &Reference,
        rules: &DriftRules,
    ) -> (Vec<ColumnView>, Vec<ColumnView>) {
        let cols = self
            .columns
            .values()
            .map(|s| {
                Self::view(
                    s,
                    reference.features.iter().find(|r| r.name == s.name),
                    rules,
                )
            })
            .collect();
        let outs = self
            .outputs
            .values()
            .map(|s| {
                Self::view(
                    s,
                    reference.outputs.iter().find(|r| r.name == s.name),
                    rules,
                )
            })
            .collect();
        (cols, outs)
    }
}

/// Dataset drift of a scored merged view, by the rule a device applies to one interval
/// (`DriftRecord::evaluate`): at least `dataset_share` of the decisive feature columns (those
/// with scores over at least `min_count` values) drift.
pub fn dataset_drift(columns: &[ColumnView], rules: &DriftRules) -> bool {
    let decisive = columns
        .iter()
        .filter(|c| c.scores.is_some_and(|s| s.count >= rules.min_count))
        .count();
    let drifting = columns.iter().filter(|c| c.drifting).count();
    decisive > 0 && drifting as f64 >= rules.dataset_share * decisive as f64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bundle::manifest::ColumnStats;
    use crate::bundle::BundleRef;
    use crate::drift::record::ColumnDrift;

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

    fn record(version: u64, values: &[f64], t: i64) -> DriftRecord {
        let r = reference();
        let mut s = DriftSummary::new("x", &r.bin_edges, t / 1_000_000);
        values.iter().for_each(|v| s.add(*v));
        let rules = DriftRules::default();
        let mut rec = DriftRecord {
            source: Arc::new(BundleRef {
                model: "m".into(),
                bundle: "pump".into(),
                version: version.to_string().into(),
                version_number: version,
                sha256: "s".into(),
            }),
            start_ns: t,
            end_ns: t + 10,
            windows: values.len() as u64,
            columns: vec![ColumnDrift::scored(s, &r, &rules)],
            outputs: vec![],
            drifting: vec![],
            dataset_drift: false,
            metric: Default::default(),
            performance: None,
            shadow: None,
        };
        rec.evaluate(&rules);
        rec
    }

    #[test]
    fn merging_devices_and_intervals_equals_the_union() {
        let mut r = fastrand::Rng::with_seed(7);
        let parts: Vec<Vec<f64>> = (0..20)
            .map(|k| (0..200).map(|_| r.f64() * 10.0 + (k % 3) as f64).collect())
            .collect();
        let mut merged = MergedDrift::default();
        for (k, p) in parts.iter().enumerate() {
            merged
                .add(&format!("dev-{}", k % 4), &record(1, p, k as i64 * 100))
                .unwrap();
        }
        let all: Vec<f64> = parts.concat();
        let union = record(1, &all, 0);
        let m = &merged.columns["x"];
        let u = &union.columns[0].summary;
        assert_eq!(m.bins, u.bins);
        assert_eq!(m.moments.count, u.moments.count);
        assert!((m.moments.mean - u.moments.mean).abs() < 1e-9);
        assert!((m.moments.m2 - u.moments.m2).abs() < 1e-6 * u.moments.m2);
        assert_eq!(
            (merged.records, merged.windows, merged.devices.len()),
            (20, 4000, 4)
        );
        assert_eq!((merged.from_ns, merged.to_ns), (0, 1910));
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        let (cols, _) = merged.scored(
            &Reference {
                windows: 1000,
                features: vec![reference()],
                outputs: vec![],
            },
            &DriftRules::default(),
        );
        let p50 = cols[0].p50.unwrap();
        let exact = sorted[sorted.len() / 2];
        assert!((p50 - exact).abs() <= 0.02 * exact, "{p50} vs {exact}");
        assert!(cols[0].scores.is_some());
        // Another version has another reference: refused, and nothing changed.
        let before = merged.columns["x"].clone();
        assert!(matches!(
            merged.add("dev-9", &record(2, &all, 0)),
            Err(MergeError::OtherBundle(..))
        ));
        assert_eq!(merged.columns["x"], before);
        assert_eq!(merged.records, 20);
    }
}
