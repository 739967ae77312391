//! [`DriftTracker`]: the on-device drift summaries of one model — per feature column, over
//! the reference bins its bundle ships — closed every `drift_interval` into a
//! [`DriftRecord`] with scores against the reference (PSI, JS, W1, KS). The records go to
//! the outbox stream `drift` and from there to the fleet server.

use std::sync::Arc;

use edge_protocols::bundle::manifest::ColumnStats;
use edge_protocols::drift::{score, DriftSummary, PsiBand};

use crate::pipeline::record::{BundleRef, ColumnDrift, DriftRecord};

#[derive(Debug)]
pub struct DriftTracker {
    source: Arc<BundleRef>,
    interval_ns: i64,
    /// (column index in the feature row, reference, summary)
    columns: Vec<(usize, ColumnStats, DriftSummary)>,
    start_ns: Option<i64>,
    end_ns: i64,
    windows: u64,
    /// Share of drifting columns that makes the whole window set drift.
    dataset_share: f64,
}

impl DriftTracker {
    /// Columns of `names` that have reference statistics with a histogram.
    pub fn new(
        source: Arc<BundleRef>,
        names: &[String],
        reference: &[ColumnStats],
        interval: std::time::Duration,
    ) -> DriftTracker {
        let columns = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let r = reference.iter().find(|r| &r.name == n)?;
                (r.bin_edges.len() >= 2 && r.bin_freqs.len() + 1 == r.bin_edges.len())
                    .then(|| (i, r.clone(), DriftSummary::new(n, &r.bin_edges, 0)))
            })
            .collect();
        DriftTracker {
            source,
            interval_ns: interval.as_nanos().min(i64::MAX as u128) as i64,
            columns,
            start_ns: None,
            end_ns: 0,
            windows: 0,
            dataset_share: 0.5,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Adds one window's feature values; returns a record when the interval is complete.
    pub fn add(&mut self, start_ns: i64, end_ns: i64, values: &[f64]) -> Option<DriftRecord> {
        let out = match self.start_ns {
            Some(s) if end_ns - s > self.interval_ns => self.close(),
            _ => None,
        };
        let s = *self.start_ns.get_or_insert(start_ns);
        for (i, _, sum) in &mut self.columns {
            if sum.moments.count == 0 && sum.missing == 0 {
                sum.start_ms = s / 1_000_000;
            }
            match values.get(*i) {
                Some(v) => sum.add(*v),
                None => sum.add_missing(1),
            }
        }
        self.end_ns = self.end_ns.max(end_ns);
        self.windows += 1;
        out
    }

    /// Closes the current interval (if it has windows) into a record and starts a new one.
    pub fn close(&mut self) -> Option<DriftRecord> {
        let start_ns = self.start_ns.take()?;
        if self.windows == 0 {
            return None;
        }
        let mut columns = Vec::with_capacity(self.columns.len());
        for (_, reference, sum) in &mut self.columns {
            sum.end_ms = self.end_ns / 1_000_000;
            sum.seal();
            let fresh = DriftSummary::new(&sum.name, &reference.bin_edges, 0);
            let done = std::mem::replace(sum, fresh);
            let scores = score(&done, reference).ok();
            columns.push(ColumnDrift {
                summary: done,
                scores,
            });
        }
        let drifting: Vec<String> = columns
            .iter()
            .filter(|c| c.scores.is_some_and(|s| s.band == PsiBand::Significant))
            .map(|c| c.summary.name.clone())
            .collect();
        let dataset_drift = !columns.is_empty()
            && drifting.len() as f64 >= self.dataset_share * columns.len() as f64;
        let rec = DriftRecord {
            source: self.source.clone(),
            start_ns,
            end_ns: self.end_ns,
            windows: self.windows,
            columns,
            drifting,
            dataset_drift,
        };
        self.windows = 0;
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn source() -> Arc<BundleRef> {
        Arc::new(BundleRef {
            model: "m".into(),
            bundle: "b".into(),
            version: "1".into(),
            version_number: 1,
            sha256: "x".into(),
        })
    }

    #[test]
    fn closes_intervals_scores_and_flags_drift() {
        let names = vec!["a".to_string(), "b".to_string(), "no_reference".to_string()];
        let mut t = DriftTracker::new(
            source(),
            &names,
            &[reference("a"), reference("b")],
            std::time::Duration::from_secs(10),
        );
        let hop = 10_000_000i64; // 10 ms windows, back to back
        let mut r = fastrand::Rng::with_seed(1);
        let mut records = Vec::new();
        // 10 s of windows (1 per 10 ms) like the reference, then 10 s with `b` shifted up.
        for k in 0..2000 {
            let t0 = k as i64 * hop;
            let shift = if k >= 1000 { 4.0 } else { 0.0 };
            let row = [r.f64() * 10.0, (r.f64() * 10.0 + shift).min(9.999), 0.0];
            records.extend(t.add(t0, t0 + hop, &row));
        }
        records.extend(t.close());
        assert_eq!(records.len(), 2, "{records:?}");
        let (calm, shifted) = (&records[0], &records[1]);
        assert_eq!(calm.columns.len(), 2);
        assert!(calm.drifting.is_empty(), "{:?}", calm.columns);
        assert_eq!(shifted.drifting, vec!["b".to_string()]);
        assert!(shifted.dataset_drift, "1 of 2 columns is half");
        assert_eq!((calm.windows, shifted.windows), (1000, 1000));
        // A record's summaries survive the outbox encoding with their sketch.
        let bytes = crate::outbox::records::encode_drift(shifted);
        let back = crate::outbox::records::decode_drift(&bytes).unwrap();
        assert_eq!(back.columns[1].summary, shifted.columns[1].summary);
        let mut b = back.columns[1].summary.clone();
        assert!(b.quantile(0.5).unwrap().unwrap() > 7.0);
        // Compact: well under 2 KB per column after zstd.
        let z = zstd::bulk::compress(&bytes, 3).unwrap();
        assert!(z.len() < 2 * 2048, "{} bytes for 2 columns", z.len());
    }
}
