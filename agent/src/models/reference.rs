//! Reference statistics of a column of training values (a feature, a raw channel, or a model
//! output), stored in the bundle as the baseline for drift: moments, quantiles, and a
//! histogram over decile edges (equal-frequency bins, the usual choice for PSI).

use edge_wire::bundle::manifest::{ColumnStats, REFERENCE_QUANTILES};

fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Statistics of `values` (finite values only; at least one).
pub fn column_stats(name: &str, values: &[f64]) -> Option<ColumnStats> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    let quantiles = REFERENCE_QUANTILES
        .iter()
        .map(|q| quantile_sorted(&v, *q))
        .collect();
    // Edges: min, the distinct interior deciles, max. Bins are [e_i, e_i+1), the last closed;
    // in use the outer edges stand for -inf and +inf.
    let mut edges = vec![v[0]];
    for k in 1..10 {
        let e = quantile_sorted(&v, k as f64 / 10.0);
        if e > *edges.last().unwrap_or(&f64::NEG_INFINITY) && e < v[v.len() - 1] {
            edges.push(e);
        }
    }
    edges.push(v[v.len() - 1]);
    let bins = edges.len() - 1;
    let mut counts = vec![0u64; bins.max(1)];
    for x in &v {
        // Index of the bin: the last edge <= x among the interior edges.
        let k = edges[1..edges.len() - 1].partition_point(|e| e <= x);
        let last = counts.len() - 1;
        counts[k.min(last)] += 1;
    }
    Some(ColumnStats {
        name: name.to_string(),
        count: v.len() as u64,
        mean,
        std,
        min: v[0],
        max: v[v.len() - 1],
        quantiles,
        bin_edges: edges,
        bin_freqs: counts.iter().map(|c| *c as f64 / n).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_values_give_equal_frequency_bins() {
        let v: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let s = column_stats("x", &v).unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.bin_edges.len(), 11);
        assert!(
            s.bin_freqs.iter().all(|f| (f - 0.1).abs() < 0.002),
            "{:?}",
            s.bin_freqs
        );
        assert!((s.bin_freqs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(s.quantiles[3], 499.5);
        assert_eq!((s.min, s.max), (0.0, 999.0));
    }

    #[test]
    fn constant_and_non_finite_columns() {
        let s = column_stats("c", &[3.0, 3.0, f64::NAN, 3.0]).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.bin_edges, vec![3.0, 3.0]);
        assert_eq!(s.bin_freqs, vec![1.0]);
        assert_eq!(s.std, 0.0);
        assert!(column_stats("e", &[f64::NAN]).is_none());
    }
}
