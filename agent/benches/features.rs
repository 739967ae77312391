//! Feature throughput: the agent's feature library vs numpy computing the same 12 features
//! (the pump spec of `agent/tests/fixtures/pump_pack.toml`) on the same windows, one core each.
//!
//! Run: `cargo bench -p edge-agent --bench features` (the numpy side needs tests/peers/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use edge_agent::features::compute::Scratch;
use edge_wire::bundle::FeatureSpec;

const WINDOWS: usize = 5_000;
const CHANNELS: usize = 3;
const POINTS: usize = 50;
const RATE: f64 = 10.0;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/fixtures/pump_pack.toml")).unwrap();
    let spec = toml::from_str::<toml::Table>(&text).unwrap();
    let spec: FeatureSpec = spec["spec"].clone().try_into().unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let data: Vec<f64> = (0..WINDOWS * CHANNELS * POINTS)
        .map(|i| {
            let c = (i / POINTS) % CHANNELS;
            let t = (i % POINTS) as f64 / RATE;
            [55.0, 1.8, 38.0][c] + (t * 7.0).sin() * [0.5, 0.3, 2.0][c] + rng.f64() * 0.1
        })
        .collect();
    let path = std::env::temp_dir().join(format!("features-bench-{}.f64", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    for v in &data {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    drop(f);

    let channel_of: Vec<usize> = spec
        .features
        .iter()
        .map(|d| spec.tags.iter().position(|t| *t == d.tag).unwrap())
        .collect();
    let mut scratch = Scratch::default();
    let mut best = f64::MAX;
    let mut checksum = 0.0;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut sum = 0.0;
        for w in data.chunks_exact(CHANNELS * POINTS) {
            for (d, &c) in spec.features.iter().zip(&channel_of) {
                sum += scratch.compute(&d.kind, &w[c * POINTS..(c + 1) * POINTS], RATE);
            }
        }
        best = best.min(t0.elapsed().as_secs_f64());
        checksum = sum;
    }
    let peers = std::env::var("EDGE_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../tests/.peers"));
    let out = Command::new(peers.join("venv/bin/python"))
        .arg(root.join("../tests/models/bench_features_numpy.py"))
        .args([
            path.to_str().unwrap(),
            &WINDOWS.to_string(),
            &CHANNELS.to_string(),
            &POINTS.to_string(),
            &RATE.to_string(),
        ])
        .output()
        .expect("run tests/peers/setup.sh first: the numpy side needs its venv");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let np: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let np_s = np["seconds"].as_f64().unwrap();
    let vec_s = np["vectorized_seconds"].as_f64().unwrap();
    let samples = (WINDOWS * CHANNELS * POINTS) as f64;
    let rate = |secs: f64| samples / secs / 1e6;
    println!("12 features, {WINDOWS} windows x {CHANNELS} channels x {POINTS} points, best of 3, one core");
    println!(
        "  numpy, window by window                 {:>8.2} M samples/s",
        rate(np_s)
    );
    println!(
        "  numpy, vectorized over all windows      {:>8.2} M samples/s",
        rate(vec_s)
    );
    println!(
        "  edge-agent, window by window            {:>8.2} M samples/s",
        rate(best)
    );
    println!(
        "  ratio edge-agent / numpy vectorized:      {:.1}",
        vec_s / best
    );
    println!(
        "  ratio edge-agent / numpy window by window: {:.1}",
        np_s / best
    );
    for key in ["checksum", "vectorized_checksum"] {
        let rel = (checksum - np[key].as_f64().unwrap()).abs() / checksum.abs();
        println!("  {key} agreement: relative difference {rel:.1e}");
        assert!(rel < 1e-9, "the implementations disagree ({key})");
    }
}
