//! Drift summaries: bytes per feature per interval, CPU per sample summarized, scoring cost,
//! and the fleet merge of 1 000 devices x 50 features — each against a named baseline
//! measured in the same run.
//!
//! Run: `cargo bench -p edge-wire --bench drift`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Instant;

use edge_wire::bundle::manifest::{ColumnStats, REFERENCE_QUANTILES};
use edge_wire::bundle::BundleRef;
use edge_wire::drift::fleet::MergedDrift;
use edge_wire::drift::{score, ColumnDrift, DriftRecord, DriftRules, DriftSummary, Moments};

fn gauss(r: &mut fastrand::Rng) -> f64 {
    let (u, v) = (r.f64().max(1e-12), r.f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// A reference column of N(0, 1): decile bins.
fn reference(name: &str) -> ColumnStats {
    let mut r = fastrand::Rng::with_seed(1);
    let mut v: Vec<f64> = (0..100_000).map(|_| gauss(&mut r)).collect();
    v.sort_by(f64::total_cmp);
    let mut edges = vec![v[0]];
    for i in 1..10 {
        edges.push(v[i * v.len() / 10]);
    }
    edges.push(v[v.len() - 1]);
    ColumnStats {
        name: name.into(),
        count: v.len() as u64,
        mean: 0.0,
        std: 1.0,
        min: v[0],
        max: v[v.len() - 1],
        quantiles: REFERENCE_QUANTILES
            .iter()
            .map(|q| v[(q * (v.len() - 1) as f64) as usize])
            .collect(),
        bin_edges: edges,
        bin_freqs: vec![0.1; 10],
    }
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("cbor");
    out
}

fn zstd3(b: &[u8]) -> usize {
    zstd::bulk::compress(b, 3).expect("zstd").len()
}

fn per_sample_ns(t: std::time::Duration, n: usize) -> f64 {
    t.as_nanos() as f64 / n as f64
}

fn main() {
    let r0 = reference("x");
    println!("== bytes per feature per interval (CBOR + zstd -3)");
    println!(
        "{:<34} {:>10} {:>14} {:>18} {:>8}",
        "values", "count", "summary bytes", "raw f64 zstd bytes", "ratio"
    );
    let mut rng = fastrand::Rng::with_seed(2);
    type Gen = fn(&mut fastrand::Rng) -> f64;
    let dists: [(&str, Gen); 2] = [
        ("N(0,1) (both signs, down to ~0)", gauss),
        ("rms-like 1.5 + 0.3 N(0,1)", |r| 1.5 + 0.3 * gauss(r)),
    ];
    for ((label, f), n) in dists
        .iter()
        .flat_map(|d| [100usize, 10_000, 100_000, 1_000_000].map(|n| (*d, n)))
    {
        let vals: Vec<f64> = (0..n).map(|_| f(&mut rng)).collect();
        let mut s = DriftSummary::new("x", &r0.bin_edges, 0);
        vals.iter().for_each(|v| s.add(*v));
        s.seal();
        let sz = zstd3(&cbor(&s));
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let rz = zstd3(&raw);
        println!(
            "{label:<34} {n:>10} {sz:>14} {rz:>18} {:>8.5}",
            sz as f64 / rz as f64
        );
    }

    println!("\n== CPU per sample summarized (1 M samples, one column)");
    let n = 1_000_000;
    let vals: Vec<f64> = (0..n).map(|_| gauss(&mut rng)).collect();
    let best = |f: &mut dyn FnMut() -> f64| {
        let mut b = f64::INFINITY;
        for _ in 0..5 {
            b = b.min(f());
        }
        b
    };
    let summary_ns = best(&mut || {
        let t = Instant::now();
        let mut s = DriftSummary::new("x", &r0.bin_edges, 0);
        vals.iter().for_each(|v| s.add(*v));
        s.seal();
        std::hint::black_box(&s);
        per_sample_ns(t.elapsed(), n)
    });
    let moments_ns = best(&mut || {
        let t = Instant::now();
        let mut m = Moments::default();
        vals.iter().for_each(|v| m.add(*v));
        std::hint::black_box(&m);
        per_sample_ns(t.elapsed(), n)
    });
    let exact_ns = best(&mut || {
        // Keep every value, sort at the interval's close (exact quantiles).
        let t = Instant::now();
        let mut keep = Vec::with_capacity(n);
        keep.extend_from_slice(&vals);
        keep.sort_by(f64::total_cmp);
        std::hint::black_box(&keep);
        per_sample_ns(t.elapsed(), n)
    });
    println!("DriftSummary (moments + histogram + DDSketch): {summary_ns:.1} ns/sample ({:.1} ms per 1 M)", summary_ns);
    println!(
        "baseline Welford moments only:                 {moments_ns:.1} ns/sample  ratio {:.1}",
        summary_ns / moments_ns
    );
    println!("baseline keep all + sort (exact quantiles):    {exact_ns:.1} ns/sample  ratio {:.2} (and 8 MB per 1 M values held)", summary_ns / exact_ns);

    println!("\n== scoring one column against its reference (PSI, JS, W1, KS)");
    let mut s = DriftSummary::new("x", &r0.bin_edges, 0);
    vals.iter().take(600).for_each(|v| s.add(*v));
    s.seal();
    let k = 2000;
    let t = Instant::now();
    for _ in 0..k {
        std::hint::black_box(score(&s, &r0).expect("score"));
    }
    println!(
        "{:.1} us per column",
        t.elapsed().as_secs_f64() * 1e6 / k as f64
    );

    println!(
        "\n== fleet merge: 1 000 devices x 50 features (one 10-min interval of 1 s windows each)"
    );
    let cols = 50;
    let refs: Vec<ColumnStats> = (0..cols).map(|i| reference(&format!("f{i}"))).collect();
    let rules = DriftRules::default();
    let source = Arc::new(BundleRef {
        model: "m".into(),
        bundle: "pump".into(),
        version: "1".into(),
        version_number: 1,
        sha256: "s".into(),
    });
    let t = Instant::now();
    let records: Vec<Vec<u8>> = (0..1000)
        .map(|d| {
            let mut r = fastrand::Rng::with_seed(d);
            let columns = refs
                .iter()
                .map(|rf| {
                    let mut s = DriftSummary::new(&rf.name, &rf.bin_edges, 0);
                    (0..600).for_each(|_| s.add(gauss(&mut r) + (d % 7) as f64 * 0.1));
                    ColumnDrift::scored(s, rf, &rules)
                })
                .collect();
            let mut rec = DriftRecord {
                source: source.clone(),
                start_ns: 0,
                end_ns: 600_000_000_000,
                windows: 600,
                columns,
                outputs: vec![],
                drifting: vec![],
                dataset_drift: false,
                metric: rules.metric,
                performance: None,
                shadow: None,
            };
            rec.evaluate(&rules);
            cbor(&rec)
        })
        .collect();
    let made = t.elapsed();
    let bytes: usize = records.iter().map(|b| zstd3(b)).sum();
    println!(
        "records made on the devices (summaries of 600 windows x 50 + scoring): {:.2} ms per device; {:.1} kB per device-interval after zstd ({:.0} B per feature)",
        made.as_secs_f64() * 1e3 / 1000.0,
        bytes as f64 / 1000.0 / 1000.0,
        bytes as f64 / 1000.0 / cols as f64
    );
    let t = Instant::now();
    let decoded: Vec<DriftRecord> = records
        .iter()
        .map(|b| ciborium::from_reader(b.as_slice()).expect("decode"))
        .collect();
    let decode = t.elapsed();
    let merge = {
        let mut b = f64::INFINITY;
        let mut last = None;
        for _ in 0..3 {
            let t = Instant::now();
            let mut m = MergedDrift::default();
            for (i, rec) in decoded.iter().enumerate() {
                m.add(&format!("d{i}"), rec).expect("merge");
            }
            b = b.min(t.elapsed().as_secs_f64());
            last = Some(m);
        }
        let m = last.expect("merged");
        let t = Instant::now();
        let (scored, _) = m.scored(
            &edge_wire::bundle::manifest::Reference {
                windows: 0,
                features: refs.clone(),
                outputs: vec![],
            },
            &rules,
        );
        std::hint::black_box(&scored);
        println!(
            "MergedDrift of 1 000 records: {:.0} ms; scoring the 50 merged columns: {:.1} ms; CBOR decode of the records: {:.0} ms",
            b * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            decode.as_secs_f64() * 1e3
        );
        b
    };
    // Baseline: the same merge without sketches (histogram counts + Chan moments only).
    let t = Instant::now();
    let mut bins = vec![vec![0u64; 10]; cols];
    let mut moments = vec![Moments::default(); cols];
    for rec in &decoded {
        for (i, c) in rec.columns.iter().enumerate() {
            for (a, b) in bins[i].iter_mut().zip(&c.summary.bins) {
                *a += b;
            }
            moments[i].merge(&c.summary.moments);
        }
    }
    std::hint::black_box((&bins, &moments));
    let plain = t.elapsed().as_secs_f64();
    println!(
        "baseline histogram + moments merge (no sketch): {:.2} ms  ratio {:.0}",
        plain * 1e3,
        merge / plain
    );
}
