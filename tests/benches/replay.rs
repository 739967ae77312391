//! `edge-agent replay --speed max` throughput against `edge-agent featurize` on the same
//! recording, in the same run: featurize is the floor (read the CSV, assemble windows,
//! compute features); replay adds the live pipeline around it (source task, hub, model
//! stage, inference, postprocess, drift, JSON output).
//!
//! The recording: 6 hours of three pump channels at 10 Hz (648 000 samples) in the agent's
//! CSV format; the model: the 12-feature dense autoencoder of `agent/tests/fixtures/
//! pump_pack.toml` (5 s windows every 1 s, with an FFT band energy), packed by the bench.
//!
//! Run: `cargo build --release -p edge-agent && cargo bench -p interop-tests --bench replay`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use interop_tests::{workspace, workspace_bin};

const HOURS: i64 = 6;
const RUNS: usize = 3;

fn agent(args: &[&str]) -> Duration {
    agent_with_log(args).0
}

/// The run's wall time and its standard error (replay's own summary).
fn agent_with_log(args: &[&str]) -> (Duration, String) {
    let t = Instant::now();
    let o = Command::new(workspace_bin("edge-agent"))
        .args(args)
        .output()
        .expect("edge-agent runs");
    let took = t.elapsed();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "edge-agent {args:?}: {log}");
    (took, log)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rec = d.join("rec.csv");
    let samples = interop_tests::pump_recording(&rec, HOURS * 36_000, None);
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let spec = workspace().join("agent/tests/fixtures/pump_pack.toml");
    let model = workspace().join("tests/models/dense_autoencoder.onnx");
    agent(&["bundle", "keygen", "--out", &s(&d.join("ml"))]);
    let bundle = d.join("ae.bundle");
    agent(&[
        "bundle",
        "pack",
        "--spec",
        &s(&spec),
        "--model",
        &s(&model),
        "--train",
        &s(&rec),
        "--key",
        &s(&d.join("ml.key.pem")),
        "--out",
        &s(&bundle),
    ]);
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"bench\"\ndata_dir = \"{d}\"\n[[sources.replay]]\nname = \"r\"\npath = \"{rec}\"\n\
             [bundles]\ntrusted_keys = [\"{d}/ml.pub.pem\"]\n[[models]]\nname = \"ae\"\nbundle = \"{b}\"\n",
            d = d.display(),
            rec = rec.display(),
            b = bundle.display()
        ),
    )
    .expect("write config");
    let (mut featurize, mut replay, mut log) = (Duration::MAX, Duration::MAX, String::new());
    for _ in 0..RUNS {
        let out = d.join("features.csv");
        featurize = featurize.min(agent(&[
            "featurize",
            "--spec",
            &s(&spec),
            "--input",
            &s(&rec),
            "--output",
            &s(&out),
        ]));
        let out = d.join("out");
        let (t, l) = agent_with_log(&[
            "replay",
            "--config",
            &s(&cfg),
            "--input",
            &s(&rec),
            "--output",
            &s(&out),
            "--speed",
            "max",
        ]);
        if t < replay {
            (replay, log) = (t, l);
        }
    }
    let rate = |t: Duration| samples as f64 / t.as_secs_f64();
    println!("recording: {samples} samples ({HOURS} h, 3 tags at 10 Hz), best of {RUNS} runs, whole process");
    println!(
        "featurize (baseline): {:.3} s, {:.0} samples/s",
        featurize.as_secs_f64(),
        rate(featurize)
    );
    println!(
        "replay --speed max:   {:.3} s, {:.0} samples/s",
        replay.as_secs_f64(),
        rate(replay)
    );
    println!(
        "ratio replay/featurize time: {:.2}",
        replay.as_secs_f64() / featurize.as_secs_f64()
    );
    for l in log.lines().filter(|l| l.starts_with("replay:")) {
        println!("  (best replay's own summary) {l}");
    }
    // The demo IsolationForest (skl2onnx, 1 300 ONNX nodes) on the same recording, once:
    // there inference dominates.
    let demo_cfg = d.join("demo.toml");
    let ws = workspace();
    std::fs::write(
        &demo_cfg,
        format!(
            "[agent]\nid = \"bench\"\ndata_dir = \"{d}\"\n[[sources.replay]]\nname = \"r\"\n\
             path = \"{rec}\"\n[bundles]\ntrusted_keys = [\"{ws}/examples/demo/demo.pub.pem\"]\n\
             [[models]]\nname = \"if\"\nbundle = \"{ws}/examples/demo/pump-anomaly.bundle\"\n",
            d = d.display(),
            rec = rec.display(),
            ws = ws.display()
        ),
    )
    .expect("write config");
    let out = d.join("out-demo");
    let (t, l) = agent_with_log(&[
        "replay",
        "--config",
        &s(&demo_cfg),
        "--input",
        &s(&rec),
        "--output",
        &s(&out),
    ]);
    println!(
        "replay, demo IsolationForest (1 run): {:.3} s, {:.0} samples/s",
        t.as_secs_f64(),
        rate(t)
    );
    for l in l.lines().filter(|l| l.starts_with("replay:")) {
        println!("  {l}");
    }
}
