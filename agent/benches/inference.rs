//! Per-window inference latency: tract (this agent) vs onnxruntime on the same models and
//! inputs, batch 1, one thread each, in the same run.
//!
//! Run: `cargo bench -p edge-agent --bench inference` (needs tests/peers/setup.sh for the
//! Python side). Results in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use edge_agent::inference::Model;

const MODELS: [&str; 6] = [
    "dense_autoencoder",
    "conv1d",
    "rf_classifier",
    "rf_binary",
    "iforest",
    "gbr",
];
const RUNS: usize = 2000;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn tract_us(name: &str) -> f64 {
    let bytes = std::fs::read(models().join(format!("{name}.onnx"))).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models().join(format!("{name}.ref.json"))).unwrap(),
    )
    .unwrap();
    let shape: Vec<usize> = serde_json::from_value(reference["input_shape"].clone()).unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value::<Vec<Vec<f64>>>(reference["inputs"].clone())
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as f32).collect())
        .collect();
    let model = Model::load(&bytes, &shape).unwrap();
    for r in rows.iter().take(50) {
        model.run(r).unwrap();
    }
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for i in 0..RUNS {
                std::hint::black_box(model.run(&rows[i % rows.len()]).unwrap());
            }
            t0.elapsed().as_secs_f64() / RUNS as f64 * 1e6
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[2]
}

/// Rounds of the comparison: each round measures onnxruntime, then tract, on every model, so
/// both sides see the same machine state; the table reports the best round of each side and
/// the spread over rounds.
const ROUNDS: usize = 5;

fn main() {
    let peers = std::env::var("EDGE_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| models().join("../.peers"));
    let mut tract: Vec<Vec<f64>> = vec![Vec::new(); MODELS.len()];
    let mut ort: Vec<Vec<f64>> = vec![Vec::new(); MODELS.len()];
    for round in 0..ROUNDS {
        let out = Command::new(peers.join("venv/bin/python"))
            .arg(models().join("bench_ort.py"))
            .arg(RUNS.to_string())
            .output()
            .expect("run tests/peers/setup.sh first: the onnxruntime side needs its venv");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for (i, m) in MODELS.iter().enumerate() {
            ort[i].push(o[m].as_f64().unwrap());
            tract[i].push(tract_us(m));
        }
        eprintln!("round {} of {ROUNDS} done", round + 1);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let spread = |v: &[f64]| {
        let (lo, hi) = (best(v), v.iter().copied().fold(0.0, f64::max));
        (hi - lo) / lo * 100.0
    };
    println!(
        "per-window latency, batch 1, single thread; each round the median of 5 x {RUNS} runs; \
         best of {ROUNDS} alternating rounds (spread = (worst - best) / best over the rounds)"
    );
    println!(
        "{:<20} {:>12} {:>8} {:>14} {:>8} {:>8}",
        "model", "tract (us)", "spread", "onnxrt (us)", "spread", "ratio"
    );
    for (i, m) in MODELS.iter().enumerate() {
        let (t, o) = (best(&tract[i]), best(&ort[i]));
        println!(
            "{m:<20} {t:>12.2} {:>7.0}% {o:>14.2} {:>7.0}% {:>8.2}",
            spread(&tract[i]),
            spread(&ort[i]),
            t / o
        );
    }
}
