//! [`DriftSummary`] and its scores against a reference column.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

use crate::bundle::manifest::ColumnStats;

/// Relative accuracy of the quantile sketch (1 %).
pub const SKETCH_ALPHA: f64 = 0.01;
/// Sketch bins per sign; past this the lowest bins collapse (accuracy kept for upper
/// quantiles). The value the DDSketch encoding assumes when it decodes (with the minimum
/// value 1e-9), so decoded and live sketches merge.
pub const SKETCH_MAX_BINS: u32 = 2048;

fn sketch() -> DDSketch {
    DDSketch::new(Config::new(SKETCH_ALPHA, SKETCH_MAX_BINS, 1e-9))
}

/// Count, min, max, mean and M2 of a stream of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Values added.
    pub count: u64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// Their mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
        }
    }
}

impl Moments {
    /// Adds one value (Welford).
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        let d = x - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Chan et al.'s parallel combination.
    pub fn merge(&mut self, o: &Moments) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *o;
            return;
        }
        // Counts come from devices: a crafted one must not overflow.
        let n = self.count.saturating_add(o.count) as f64;
        let d = o.mean - self.mean;
        self.mean += d * o.count as f64 / n;
        self.m2 += o.m2 + d * d * self.count as f64 * o.count as f64 / n;
        self.count = self.count.saturating_add(o.count);
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Sample variance (n - 1).
    pub fn variance(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            self.m2 / (self.count - 1) as f64
        }
    }
}

/// Why summaries cannot be merged or scored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DriftError {
    /// The summaries count over different bins (another reference).
    #[error("summaries of `{0}` use different histogram bins and cannot be merged")]
    BinsDiffer(String),
    /// The summaries are of different columns.
    #[error("summaries of different columns (`{0}` and `{1}`)")]
    NamesDiffer(String, String),
    /// A sketch is malformed or of another accuracy.
    #[error("quantile sketch: {0}")]
    Sketch(String),
    /// The reference cannot score this column.
    #[error("reference for `{0}` has no histogram")]
    NoReference(String),
}

/// One column's summary over one interval (or a merge of many).
#[derive(Clone, Serialize, Deserialize)]
pub struct DriftSummary {
    /// Feature column (`pump1.vibration.rms`) or model output name.
    pub name: String,
    /// Interval covered, Unix ms (merges widen it).
    pub start_ms: i64,
    /// End of the interval covered, Unix ms.
    pub end_ms: i64,
    /// Values that were missing, non-finite or of bad quality (not in the statistics).
    pub missing: u64,
    /// Count, min, max, mean and M2 of the values.
    pub moments: Moments,
    /// Counts per reference bin (`bin_edges.len() - 1` bins; the outer bins are open).
    pub bins: Vec<u64>,
    /// The reference's inner bin edges the counts refer to.
    pub edges: Vec<f64>,
    /// DDSketch in the DataDog binary encoding.
    #[serde(with = "serde_bytes")]
    sketch: Vec<u8>,
    #[serde(skip)]
    live: Option<DDSketch>,
}

impl std::fmt::Debug for DriftSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftSummary")
            .field("name", &self.name)
            .field("start_ms", &self.start_ms)
            .field("end_ms", &self.end_ms)
            .field("missing", &self.missing)
            .field("moments", &self.moments)
            .field("bins", &self.bins)
            .finish()
    }
}

impl PartialEq for DriftSummary {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.start_ms == o.start_ms
            && self.end_ms == o.end_ms
            && self.missing == o.missing
            && self.moments == o.moments
            && self.bins == o.bins
            && self.edges == o.edges
    }
}

/// Which bin of `edges` (bins + 1 values, outer ones treated as ±inf) holds `x`.
fn bin_of(edges: &[f64], x: f64) -> usize {
    let bins = edges.len().saturating_sub(1).max(1);
    // Inner edges are edges[1..bins]; the first index whose edge is > x.
    let inner = &edges[1.min(edges.len())..bins.min(edges.len())];
    inner.partition_point(|e| *e <= x)
}

impl DriftSummary {
    /// An empty summary over the reference's bins.
    pub fn new(name: &str, reference_edges: &[f64], start_ms: i64) -> DriftSummary {
        let bins = reference_edges.len().saturating_sub(1).max(1);
        DriftSummary {
            name: name.to_string(),
            start_ms,
            end_ms: start_ms,
            missing: 0,
            moments: Moments::default(),
            bins: vec![0; bins],
            edges: reference_edges.to_vec(),
            sketch: Vec::new(),
            live: Some(sketch()),
        }
    }

    /// Adds one value; non-finite values count as missing.
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            self.missing += 1;
            return;
        }
        self.moments.add(x);
        let b = bin_of(&self.edges, x);
        if let Some(c) = self.bins.get_mut(b) {
            *c += 1;
        }
        self.live.get_or_insert_with(sketch).add(x);
    }

    /// Counts `n` missing values.
    pub fn add_missing(&mut self, n: u64) {
        self.missing += n;
    }

    fn sketch_ref(&mut self) -> Result<&mut DDSketch, DriftError> {
        if self.live.is_none() {
            let s = if self.sketch.is_empty() {
                sketch()
            } else {
                decode_sketch(&self.sketch, self.moments.count)?
            };
            self.live = Some(s);
        }
        self.live
            .as_mut()
            .ok_or_else(|| DriftError::Sketch("no sketch".into()))
    }

    /// Freezes the sketch into its encoding (call before serializing).
    pub fn seal(&mut self) {
        if let Some(s) = &self.live {
            self.sketch = s.to_java_bytes();
        }
    }

    /// Quantile `q` (0..1) from the sketch.
    pub fn quantile(&mut self, q: f64) -> Result<Option<f64>, DriftError> {
        self.sketch_ref()?
            .quantile(q)
            .map_err(|e| DriftError::Sketch(format!("{e:?}")))
    }

    /// A copy of the sketch (decoded when it only exists as bytes).
    fn sketch_copy(&self) -> Result<DDSketch, DriftError> {
        match (&self.live, self.sketch.is_empty()) {
            (Some(s), _) => Ok(s.clone()),
            (None, true) => Ok(sketch()),
            (None, false) => decode_sketch(&self.sketch, self.moments.count),
        }
    }

    /// Checks that `o` can merge into `self` (same column, same bins, a sketch of the same
    /// accuracy) and decodes its sketch for [`DriftSummary::merge_checked`]. Changes nothing.
    pub fn check_merge(&self, o: &DriftSummary) -> Result<CheckedSketch, DriftError> {
        if self.name != o.name {
            return Err(DriftError::NamesDiffer(self.name.clone(), o.name.clone()));
        }
        if self.edges != o.edges || self.bins.len() != o.bins.len() {
            return Err(DriftError::BinsDiffer(self.name.clone()));
        }
        CheckedSketch::of(o)
    }

    /// Merges `o`, whose sketch [`DriftSummary::check_merge`] (or [`CheckedSketch::of`])
    /// returned.
    pub fn merge_checked(
        &mut self,
        o: &DriftSummary,
        theirs: &CheckedSketch,
    ) -> Result<(), DriftError> {
        self.sketch_ref()?
            .merge(&theirs.0)
            .map_err(|e| DriftError::Sketch(format!("{e:?}")))?;
        self.moments.merge(&o.moments);
        for (a, b) in self.bins.iter_mut().zip(&o.bins) {
            *a = a.saturating_add(*b);
        }
        self.missing = self.missing.saturating_add(o.missing);
        self.start_ms = self.start_ms.min(o.start_ms);
        self.end_ms = self.end_ms.max(o.end_ms);
        Ok(())
    }

    /// Merges `o` into `self` (same column, same bins).
    pub fn merge(&mut self, o: &DriftSummary) -> Result<(), DriftError> {
        let theirs = self.check_merge(o)?;
        self.merge_checked(o, &theirs)
    }

    /// `o` with its sketch decoded (the start of a merge).
    pub fn from_checked(o: &DriftSummary, sketch: CheckedSketch) -> DriftSummary {
        let mut s = o.clone();
        s.live = Some(sketch.0);
        s
    }
}

/// Decodes a sketch that came over the wire: an encoding whose counts or bin indexes would
/// overflow in sketches-ddsketch is refused before it decodes ([`super::sketch_check`]), and
/// the sketch must hold as many values as the summary (`moments.count`; every value goes into
/// both).
fn decode_sketch(bytes: &[u8], expected_count: u64) -> Result<DDSketch, DriftError> {
    super::sketch_check::check(bytes).map_err(|e| DriftError::Sketch(e.to_string()))?;
    let decoded =
        DDSketch::from_java_bytes(bytes).map_err(|e| DriftError::Sketch(format!("{e:?}")))?;
    if decoded.count() as u64 != expected_count {
        return Err(DriftError::Sketch(format!(
            "sketch holds {} values, the summary {expected_count}: corrupt",
            decoded.count()
        )));
    }
    Ok(decoded)
}

/// A summary's sketch, decoded and checked to merge with ours (same relative accuracy and
/// bin limit).
pub struct CheckedSketch(DDSketch);

impl std::fmt::Debug for CheckedSketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckedSketch({} values)", self.0.count())
    }
}

impl CheckedSketch {
    /// The summary's sketch, checked to be mergeable with this build's accuracy.
    pub fn of(s: &DriftSummary) -> Result<CheckedSketch, DriftError> {
        let mut theirs = s.sketch_copy()?;
        // Another accuracy cannot merge: find out now. Merging an empty sketch checks the
        // parameters and changes nothing.
        static EMPTY: std::sync::OnceLock<DDSketch> = std::sync::OnceLock::new();
        theirs
            .merge(EMPTY.get_or_init(sketch))
            .map_err(|e| DriftError::Sketch(format!("{e:?}")))?;
        Ok(CheckedSketch(theirs))
    }
}

/// PSI bands (the industry convention): below 0.1 stable, 0.1–0.25 moderate, above significant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiBand {
    /// PSI below 0.1.
    Stable,
    /// PSI 0.1 to 0.25.
    Moderate,
    /// PSI above 0.25.
    Significant,
}

/// A column's scores against its reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftScores {
    /// Population stability index over the reference bins.
    pub psi: f64,
    /// Its band.
    pub band: PsiBand,
    /// Jensen-Shannon distance, base 2: 0 (same) … 1 (disjoint).
    pub js: f64,
    /// Wasserstein-1 between the quantile functions, in the column's units…
    pub w1: f64,
    /// …and divided by the reference standard deviation.
    pub w1_std: f64,
    /// Kolmogorov-Smirnov statistic at the bin edges.
    pub ks: f64,
    /// Values scored.
    pub count: u64,
}

/// Smoothing for empty bins (PSI and JS are undefined on zero probabilities).
const EPS: f64 = 1e-4;

/// The sketch's CDF at `v` (bisection on its quantiles), `None` when empty.
fn sketch_cdf(s: &mut DriftSummary, v: f64) -> Result<Option<f64>, DriftError> {
    if s.moments.count == 0 {
        return Ok(None);
    }
    let (mut a, mut b) = (0.0f64, 1.0f64);
    for _ in 0..30 {
        let m = 0.5 * (a + b);
        match s.quantile(m)? {
            Some(x) if x < v => a = m,
            Some(_) => b = m,
            None => return Ok(None),
        }
    }
    Ok(Some(0.5 * (a + b)))
}

/// Scores a summary against the reference column it was binned on.
pub fn score(s: &DriftSummary, reference: &ColumnStats) -> Result<DriftScores, DriftError> {
    if reference.bin_freqs.len() != s.bins.len() || reference.bin_edges != s.edges {
        return Err(DriftError::BinsDiffer(s.name.clone()));
    }
    if reference.bin_freqs.is_empty() {
        return Err(DriftError::NoReference(s.name.clone()));
    }
    let n: u64 = s.bins.iter().sum();
    let total = n.max(1) as f64;
    let rsum: f64 = reference
        .bin_freqs
        .iter()
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let p: Vec<f64> = s.bins.iter().map(|c| *c as f64 / total).collect();
    let q: Vec<f64> = reference.bin_freqs.iter().map(|f| f / rsum).collect();
    let (mut psi, mut js) = (0.0, 0.0);
    for (pi, qi) in p.iter().zip(&q) {
        let (a, b) = (pi.max(EPS), qi.max(EPS));
        psi += (a - b) * (a / b).ln();
        let m = 0.5 * (a + b);
        js += 0.5 * (a * (a / m).log2() + b * (b / m).log2());
    }
    // KS: exact CDFs at the inner edges (the histogram), plus the sketch's CDF at the
    // reference quantiles.
    let (mut fp, mut fq, mut ks) = (0.0, 0.0, 0.0f64);
    let inner = &reference.bin_edges[1..reference.bin_edges.len().saturating_sub(1).max(1)];
    for i in 0..inner.len() {
        fp += p[i];
        fq += q[i];
        ks = ks.max((fp - fq).abs());
    }
    let mut sk = s.clone();
    for (v, u_ref) in reference
        .quantiles
        .iter()
        .zip(crate::bundle::manifest::REFERENCE_QUANTILES)
    {
        if let Some(u) = sketch_cdf(&mut sk, *v)? {
            ks = ks.max((u - u_ref).abs());
        }
    }
    // W1 = ∫|Q_cur(u) - Q_ref(u)| du: the device's quantile function from its sketch, the
    // reference's interpolated through its known points (min, bin edges at their cumulative
    // frequencies, stored quantiles, max).
    let mut pts: Vec<(f64, f64)> = vec![(0.0, reference.min), (1.0, reference.max)];
    let mut cum = 0.0;
    for (i, e) in inner.iter().enumerate() {
        cum += q[i];
        pts.push((cum, *e));
    }
    for (v, u) in reference
        .quantiles
        .iter()
        .zip(crate::bundle::manifest::REFERENCE_QUANTILES)
    {
        pts.push((u, *v));
    }
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let q_ref = |u: f64| {
        let k = pts.partition_point(|p| p.0 < u).clamp(1, pts.len() - 1);
        let ((u0, v0), (u1, v1)) = (pts[k - 1], pts[k]);
        if u1 > u0 {
            v0 + (v1 - v0) * (u - u0) / (u1 - u0)
        } else {
            v1
        }
    };
    let steps = 200;
    let mut w1 = 0.0;
    if n > 0 {
        for k in 0..steps {
            let u = (k as f64 + 0.5) / steps as f64;
            if let Some(x) = sk.quantile(u)? {
                w1 += (x - q_ref(u)).abs();
            }
        }
        w1 /= steps as f64;
    }
    Ok(DriftScores {
        psi,
        band: if psi < 0.1 {
            PsiBand::Stable
        } else if psi < 0.25 {
            PsiBand::Moderate
        } else {
            PsiBand::Significant
        },
        js: js.max(0.0).sqrt(),
        w1,
        w1_std: if reference.std > 0.0 {
            w1 / reference.std
        } else {
            0.0
        },
        ks,
        count: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(r: &mut fastrand::Rng) -> f64 {
        let (u, v) = (r.f64().max(1e-12), r.f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// A reference column from N(0, 1): 10 equal-probability bins.
    fn reference() -> ColumnStats {
        let mut r = fastrand::Rng::with_seed(1);
        let mut v: Vec<f64> = (0..100_000).map(|_| gauss(&mut r)).collect();
        v.sort_by(f64::total_cmp);
        let mut edges = vec![v[0]];
        for i in 1..10 {
            edges.push(v[i * v.len() / 10]);
        }
        edges.push(v[v.len() - 1]);
        ColumnStats {
            name: "x".into(),
            count: v.len() as u64,
            mean: 0.0,
            std: 1.0,
            min: v[0],
            max: v[v.len() - 1],
            quantiles: crate::bundle::manifest::REFERENCE_QUANTILES
                .iter()
                .map(|q| v[(q * (v.len() - 1) as f64) as usize])
                .collect(),
            bin_edges: edges,
            bin_freqs: vec![0.1; 10],
        }
    }

    fn summary(f: impl Fn(&mut fastrand::Rng) -> f64, n: usize, seed: u64) -> DriftSummary {
        let r0 = reference();
        let mut s = DriftSummary::new("x", &r0.bin_edges, 0);
        let mut r = fastrand::Rng::with_seed(seed);
        for _ in 0..n {
            s.add(f(&mut r));
        }
        s
    }

    #[test]
    fn known_distributions_score_as_expected() {
        let r = reference();
        let same = score(&summary(gauss, 20_000, 2), &r).unwrap();
        assert!(same.psi < 0.01 && same.band == PsiBand::Stable, "{same:?}");
        assert!(same.ks < 0.02 && same.js < 0.05, "{same:?}");
        // Mean shifted by 0.5 sd: PSI ≈ 0.25 in theory (δ² for fine bins), a bit less binned.
        let shifted = score(&summary(|r| gauss(r) + 0.5, 20_000, 3), &r).unwrap();
        assert!((0.17..0.30).contains(&shifted.psi), "{shifted:?}");
        assert!(
            (0.17..0.23).contains(&shifted.ks),
            "KS of a 0.5 sd shift ≈ 0.197: {shifted:?}"
        );
        assert!(
            (0.4..0.6).contains(&shifted.w1_std),
            "W1 ≈ 0.5 sd: {shifted:?}"
        );
        // Variance doubled (sd × 1.41): significant.
        let wide = score(&summary(|r| gauss(r) * 2f64.sqrt(), 20_000, 4), &r).unwrap();
        assert!(wide.psi > 0.1, "{wide:?}");
        // A new mode far away: significant and JS large.
        let mode = score(
            &summary(
                |r| {
                    if r.bool() {
                        gauss(r)
                    } else {
                        gauss(r) * 0.1 + 4.0
                    }
                },
                20_000,
                5,
            ),
            &r,
        )
        .unwrap();
        assert!(
            mode.band == PsiBand::Significant && mode.js > 0.4,
            "{mode:?}"
        );
    }

    #[test]
    fn merge_equals_union() {
        let r = reference();
        let mut a = summary(gauss, 5_000, 6);
        let b = summary(|r| gauss(r) * 3.0 + 1.0, 7_000, 7);
        let mut union = DriftSummary::new("x", &r.bin_edges, 0);
        for (seed, f, n) in [(6, 0, 5_000), (7, 1, 7_000)] {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..n {
                let g = gauss(&mut rng);
                union.add(if f == 0 { g } else { g * 3.0 + 1.0 });
            }
        }
        a.merge(&b).unwrap();
        assert_eq!(a.bins, union.bins);
        assert_eq!(a.moments.count, union.moments.count);
        assert!((a.moments.mean - union.moments.mean).abs() < 1e-12);
        assert!((a.moments.variance() / union.moments.variance() - 1.0).abs() < 1e-10);
        assert_eq!(
            (a.moments.min, a.moments.max),
            (union.moments.min, union.moments.max)
        );
        // Quantiles within the sketch's relative accuracy of the union's.
        for q in [0.01, 0.25, 0.5, 0.75, 0.99] {
            let (x, y) = (
                a.quantile(q).unwrap().unwrap(),
                union.quantile(q).unwrap().unwrap(),
            );
            assert!(
                (x - y).abs() <= 2.0 * SKETCH_ALPHA * y.abs() + 1e-9,
                "q{q}: {x} vs {y}"
            );
        }
        // Different bins refuse to merge.
        let mut other = DriftSummary::new("x", &[0.0, 1.0, 2.0], 0);
        assert!(matches!(other.merge(&a), Err(DriftError::BinsDiffer(_))));
    }

    #[test]
    fn sketch_rank_error_is_small_and_survives_encoding() {
        let mut s = summary(|r| gauss(r) * 10.0 + 50.0, 50_000, 8);
        let mut exact: Vec<f64> = {
            let mut r = fastrand::Rng::with_seed(8);
            (0..50_000).map(|_| gauss(&mut r) * 10.0 + 50.0).collect()
        };
        exact.sort_by(f64::total_cmp);
        s.seal();
        let bytes = {
            let mut b = Vec::new();
            ciborium::into_writer(&s, &mut b).unwrap();
            b
        };
        let mut back: DriftSummary = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, s);
        for q in [0.01, 0.1, 0.5, 0.9, 0.99] {
            let v = back.quantile(q).unwrap().unwrap();
            let rank = exact.partition_point(|x| *x < v) as f64 / exact.len() as f64;
            assert!((rank - q).abs() < 0.01, "q{q}: value {v} has rank {rank}");
        }
        // Size after CBOR + zstd, independent of the sample count: well under 2 KB.
        let z = zstd::bulk::compress(&bytes, 3).unwrap();
        assert!(z.len() < 2048, "{} bytes", z.len());
    }

    /// Property check over random distributions, sizes and splits: every sketch quantile is
    /// within the relative accuracy of the exact order statistic, and a merge of random
    /// parts equals the summary of the union (histogram and count exactly, moments to
    /// rounding, and the same sketch quantiles).
    #[test]
    fn sketch_and_merge_properties_hold_on_random_data() {
        let r0 = reference();
        type Dist = fn(&mut fastrand::Rng) -> f64;
        let dists: [(&str, Dist); 5] = [
            ("gauss", |r| gauss(r) * 3.0 + 1.0),
            ("exponential", |r| -(r.f64().max(1e-12)).ln() * 2.0),
            ("uniform", |r| r.f64() * 200.0 - 50.0),
            ("bimodal", |r| {
                if r.bool() {
                    gauss(r) - 4.0
                } else {
                    gauss(r) + 6.0
                }
            }),
            ("lognormal", |r| (gauss(r) * 1.5).exp()),
        ];
        for seed in 0..40u64 {
            let mut r = fastrand::Rng::with_seed(seed);
            let (name, f) = dists[(seed % 5) as usize];
            let n = r.usize(1..20_000);
            let vals: Vec<f64> = (0..n).map(|_| f(&mut r)).collect();
            let mut union = DriftSummary::new("x", &r0.bin_edges, 0);
            vals.iter().for_each(|v| union.add(*v));
            union.seal();
            let mut sorted = vals.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0] {
                let est = union.quantile(q).unwrap().unwrap();
                let exact = sorted[(q * (n - 1) as f64).floor() as usize];
                assert!(
                    (est - exact).abs() <= SKETCH_ALPHA * exact.abs() + 1e-9,
                    "{name} seed {seed} n {n} q{q}: {est} vs {exact}"
                );
            }
            // Random split into up to 8 parts, each sealed and decoded as on the wire.
            let parts = r.usize(1..=8);
            let mut cuts: Vec<usize> = (0..parts - 1).map(|_| r.usize(0..=n)).collect();
            cuts.push(0);
            cuts.push(n);
            cuts.sort_unstable();
            let mut merged: Option<DriftSummary> = None;
            for w in cuts.windows(2) {
                let mut p = DriftSummary::new("x", &r0.bin_edges, 0);
                vals[w[0]..w[1]].iter().for_each(|v| p.add(*v));
                p.seal();
                let mut b = Vec::new();
                ciborium::into_writer(&p, &mut b).unwrap();
                let p: DriftSummary = ciborium::from_reader(b.as_slice()).unwrap();
                match &mut merged {
                    None => merged = Some(p),
                    Some(m) => m.merge(&p).unwrap(),
                }
            }
            let mut m = merged.unwrap();
            assert_eq!(m.bins, union.bins, "{name} seed {seed}");
            assert_eq!(m.moments.count, union.moments.count);
            assert_eq!(
                (m.moments.min, m.moments.max),
                (union.moments.min, union.moments.max)
            );
            let scale = union.moments.mean.abs().max(1.0);
            assert!((m.moments.mean - union.moments.mean).abs() < 1e-9 * scale);
            assert!((m.moments.m2 - union.moments.m2).abs() <= 1e-9 * union.moments.m2.max(1.0));
            for q in [0.01, 0.5, 0.99] {
                assert_eq!(
                    m.quantile(q).unwrap(),
                    union.quantile(q).unwrap(),
                    "{name} seed {seed} q{q}"
                );
            }
        }
    }

    #[test]
    fn non_finite_values_are_missing() {
        let r = reference();
        let mut s = DriftSummary::new("x", &r.bin_edges, 0);
        for x in [f64::NAN, f64::INFINITY, 1.0] {
            s.add(x);
        }
        assert_eq!((s.missing, s.moments.count), (2, 1));
    }
}
