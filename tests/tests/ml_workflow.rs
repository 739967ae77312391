//! The ML engineer's workflow (examples/ml-workflow/run.sh) runs end to end: record a healthy
//! plant, featurize with the device's code, train an IsolationForest in Python, sign and pack,
//! verify, and serve it on a plant whose bearing wears out — the alarms must come with the
//! wear, not before.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

use interop_tests::*;

#[test]
fn record_featurize_train_pack_run() {
    let dir = tempdir();
    let work = dir.path().join("work");
    let out = Command::new("bash")
        .arg(workspace().join("examples/ml-workflow/run.sh"))
        .arg(&work)
        .env("EDGE_AGENT", workspace_bin("edge-agent"))
        .env("PYTHON", python())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "workflow failed:\n{text}");
    assert!(text.contains("OK: pump-anomaly 1.0.0"), "{text}");
    let preds: Vec<serde_json::Value> = std::fs::read_to_string(work.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(preds.len() > 100, "{} predictions\n{text}", preds.len());
    let t0 = preds[0]["start_ns"].as_i64().unwrap();
    let at = |p: &serde_json::Value| (p["start_ns"].as_i64().unwrap() - t0) as f64 / 1e9;
    // Healthy until the wear starts (2 min of plant time): no alarm in the first 100 s.
    let early: Vec<_> = preds.iter().filter(|p| at(p) < 100.0).collect();
    assert!(
        !early.is_empty() && early.iter().all(|p| p["alarm"] == false),
        "false alarms while healthy"
    );
    // Per-window labels: the forest is trained with contamination = 0.01, so about 1 % of
    // healthy windows are labelled anomalous by construction; the alarm's hysteresis is what
    // keeps them from reaching the operator (checked above). Allow up to 5 %.
    let flagged = early.iter().filter(|p| p["label"] != "normal").count();
    assert!(
        flagged * 20 <= early.len(),
        "{flagged} of {} healthy windows labelled anomalous",
        early.len()
    );
    // Worn late in the run: most windows alarm.
    let late: Vec<_> = preds.iter().filter(|p| at(p) > 240.0).collect();
    let alarms = late.iter().filter(|p| p["alarm"] == true).count();
    assert!(
        !late.is_empty() && alarms * 2 > late.len(),
        "{alarms} of {} late windows alarm",
        late.len()
    );
    assert!(late.iter().any(|p| p["label"] == "anomaly"));
}
