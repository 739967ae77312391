//! `edge-agent replay` through the binary: a raw-window conv net measures drift on window
//! statistics (its own training data is calm, shifted data drifts and alarms), imported wide
//! CSV gives the same predictions as the agent's own recording format, off-grid timestamps
//! are warned about, and bad input fails with the line named.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::*;

const T0: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z, on every grid
const PERIOD: i64 = 100_000_000; // 10 Hz
const TAGS: [&str; 3] = ["pump1.temperature", "pump1.vibration", "pump1.current"];

/// Deterministic noise (xorshift), uniform in [-1, 1).
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// `minutes` of the three pump channels at 10 Hz (a slow temperature cycle plus noise);
/// `shift` is added to the temperature. Returns one (ts, [values]) per grid point.
fn signal(minutes: i64, shift: f64, seed: u64, offset_ns: i64) -> Vec<(i64, [f64; 3])> {
    let mut n = Noise(seed);
    (0..minutes * 600)
        .map(|i| {
            let t = i as f64 / 10.0;
            let temp = 55.0 + 2.0 * (t / 600.0 * std::f64::consts::TAU).sin() + 0.5 * n.next();
            (
                T0 + i * PERIOD + offset_ns,
                [temp + shift, 1.8 + 0.3 * n.next(), 38.0 + 2.0 * n.next()],
            )
        })
        .collect()
}

/// The agent's own recording format.
fn write_native(path: &Path, rows: &[(i64, [f64; 3])]) -> PathBuf {
    let mut s = String::from("tag,ts_ns,value,quality\n");
    for (ts, v) in rows {
        for (tag, x) in TAGS.iter().zip(v) {
            let _ = writeln!(s, "{tag},{ts},{x:?},good");
        }
    }
    std::fs::write(path, s).unwrap();
    path.to_path_buf()
}

/// A historian-style wide export: RFC 3339 times, one column per tag.
fn write_wide(path: &Path, rows: &[(i64, [f64; 3])]) -> PathBuf {
    let mut s = format!("timestamp,{}\n", TAGS.join(","));
    for (ts, v) in rows {
        let t = chrono::DateTime::from_timestamp_nanos(*ts);
        let _ = writeln!(
            s,
            "{},{:?},{:?},{:?}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            v[0],
            v[1],
            v[2]
        );
    }
    std::fs::write(path, s).unwrap();
    path.to_path_buf()
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    train: PathBuf,
}

/// A conv-net bundle (raw_ct window of the three channels) packed on 2 h of calm data, and
/// an agent config that serves it with 20-minute drift intervals.
fn setup(name: &str) -> Setup {
    let dir = tmp(name);
    let train = write_native(&dir.join("train.csv"), &signal(120, 0.0, 1, 0));
    let keys = dir.join("ml");
    let o = run(&["bundle", "keygen", "--out", keys.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = dir.join("conv.bundle");
    let key = dir.join("ml.key.pem");
    let o = pack(
        &fixture("raw_pack.toml"),
        &model("conv1d"),
        &train,
        &key,
        &bundle,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"gw1\"\ndata_dir = \"{d}\"\n\
             [[sources.replay]]\nname = \"history\"\npath = \"{train}\"\n\
             [bundles]\ntrusted_keys = [\"{d}/ml.pub.pem\"]\n\
             [[models]]\nname = \"pump-conv\"\nbundle = \"{b}\"\ndrift_interval = \"20m\"\n",
            d = dir.display(),
            train = train.display(),
            b = bundle.display()
        ),
    )
    .unwrap();
    Setup { dir, config, train }
}

fn replay(s: &Setup, input: &Path, out: &str) -> (std::process::Output, PathBuf) {
    let out = s.dir.join(out);
    let o = run(&[
        "replay",
        "--config",
        s.config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    (o, out)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Issue 17's defect: raw-layout drift used to compare sample k of the first channel with
/// the reference of channel k's window mean (PSI 8.28 on the model's own training data).
#[test]
fn a_raw_window_model_is_calm_on_its_training_data_and_drifts_on_shifted_data() {
    let s = setup("raw-drift");
    let o = run(&[
        "bundle",
        "inspect",
        "--json",
        s.dir.join("conv.bundle").to_str().unwrap(),
    ]);
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = m["reference"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pump1.temperature:mean",
            "pump1.temperature:std",
            "pump1.vibration:mean",
            "pump1.vibration:std",
            "pump1.current:mean",
            "pump1.current:std"
        ],
        "raw layouts keep window statistics per channel as the drift reference"
    );

    // The training data itself: every interval calm.
    let (o, out) = replay(&s, &s.train, "calm");
    assert!(o.status.success(), "{}", stderr(&o));
    let drift = lines(&out.join("drift.jsonl"));
    assert!(
        drift.len() >= 5,
        "{} drift records\n{}",
        drift.len(),
        stderr(&o)
    );
    for d in &drift {
        assert_eq!(d["dataset_drift"], false, "{d}");
        assert_eq!(d["drifting"], serde_json::json!([]), "{d}");
        let cols = d["columns"].as_object().unwrap();
        assert_eq!(cols.len(), 6, "{d}");
        // Each window's output counts in its own interval, however far inference lags.
        let out = &d["outputs"]["prob[0]"];
        assert_eq!(out["count"], d["windows"], "{d}");
        assert_eq!(out["missing"], 0, "{d}");
        for (name, c) in cols {
            let psi = c["psi"].as_f64().unwrap();
            assert!(psi < 0.1, "{name}: PSI {psi} on the training data itself");
        }
    }
    assert!(lines(&out.join("alarms.jsonl")).is_empty());
    let preds = lines(&out.join("predictions.jsonl"));
    assert!(preds.len() > 2000, "{} predictions", preds.len());

    // Fresh data, temperature 6 degrees higher: its mean drifts, and the alarm is raised
    // after three drifting intervals.
    let shifted = write_native(&s.dir.join("shifted.csv"), &signal(120, 6.0, 2, 0));
    let (o, out) = replay(&s, &shifted, "shifted");
    assert!(o.status.success(), "{}", stderr(&o));
    let drift = lines(&out.join("drift.jsonl"));
    assert!(drift.len() >= 5);
    for d in &drift {
        let drifting: Vec<&str> = d["drifting"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(drifting.contains(&"pump1.temperature:mean"), "{d}");
        assert!(!drifting.contains(&"pump1.current:mean"), "{d}");
    }
    let alarms = lines(&out.join("alarms.jsonl"));
    assert!(
        alarms.iter().any(|a| a["state"] == "raised"
            && a["kind"] == "column"
            && a["subject"] == "pump1.temperature:mean"),
        "{alarms:?}"
    );
}

/// The same samples as a wide historian export give bit-identical predictions; timestamps
/// 1 ms off the grid are warned about; a bad row names its line.
#[test]
fn wide_csv_imports_identically_and_off_grid_and_bad_rows_are_reported() {
    let s = setup("replay-wide");
    let rows = signal(20, 0.0, 3, 0);
    let native = write_native(&s.dir.join("native.csv"), &rows);
    let wide = write_wide(&s.dir.join("wide.csv"), &rows);
    let (o, a) = replay(&s, &native, "native");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("off the"), "{}", stderr(&o));
    let (o, b) = replay(&s, &wide, "wide");
    assert!(o.status.success(), "{}", stderr(&o));
    let (pa, pb) = (
        std::fs::read_to_string(a.join("predictions.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("predictions.jsonl")).unwrap(),
    );
    assert!(pa.lines().count() > 300, "{pa}");
    assert_eq!(
        pa, pb,
        "the wide import must give the same predictions, byte for byte"
    );
    let first: serde_json::Value = serde_json::from_str(pa.lines().next().unwrap()).unwrap();
    for k in [
        "ts",
        "window_start",
        "model",
        "model_version",
        "score",
        "outputs",
        "seq",
    ] {
        assert!(first.get(k).is_some(), "no `{k}` in {first}");
    }
    assert_eq!(first["seq"], 1);

    // 1 ms late on every sample: featurize and replay say so.
    let late = write_native(&s.dir.join("late.csv"), &signal(20, 0.0, 3, 1_000_000));
    let (o, _) = replay(&s, &late, "late");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("samples are off the 10 Hz grid (e.g. 1 ms after a grid point"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "featurize",
        "--spec",
        fixture("raw_pack.toml").to_str().unwrap(),
        "--input",
        late.to_str().unwrap(),
        "--output",
        s.dir.join("late-features.csv").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("off the 10 Hz grid"), "{}", stderr(&o));

    // A broken row: the command fails naming the file and line; nothing is half-written as
    // if it were complete.
    let bad = s.dir.join("bad.csv");
    let text = std::fs::read_to_string(&native).unwrap();
    let mut broken: Vec<&str> = text.lines().collect();
    broken.insert(40, "pump1.temperature,notatime,1.0,good");
    std::fs::write(&bad, broken.join("\n")).unwrap();
    let (o, _) = replay(&s, &bad, "bad");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.csv:41: ts_ns `notatime` is not an integer"),
        "{}",
        stderr(&o)
    );
}

/// An autoencoder scored on its reconstruction error: the score is the MSE of `recon`
/// against the model input (the test model also computes that MSE in its graph, as output
/// `score`: an independent check), per-feature errors are published, and a faulty stretch
/// raises the alarm while calm data does not.
#[test]
fn an_autoencoder_alarms_on_its_reconstruction_error() {
    let dir = tmp("recon");
    let calm = write_native(&dir.join("calm.csv"), &signal(30, 0.0, 4, 0));
    let mut rows = signal(30, 0.0, 5, 0);
    for (i, (_, v)) in rows.iter_mut().enumerate() {
        if i >= 6000 {
            v[0] += 100.0; // a failed temperature sensor for the last 20 minutes
        }
    }
    let faulty = write_native(&dir.join("faulty.csv"), &rows);
    let o = run(&[
        "bundle",
        "keygen",
        "--out",
        dir.join("ml").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let base = std::fs::read_to_string(fixture("pump_pack.toml")).unwrap();
    let pack_with = |threshold: f64| {
        let spec = dir.join("ae.toml");
        std::fs::write(
            &spec,
            base.replace(
                r#"score = { output = "score", index = 0, threshold = 5.0, alarm_above = true }"#,
                &format!(
                    r#"score = {{ output = "recon", reconstruction = "mse", per_feature = true, threshold = {threshold:?}, raise_after = 2 }}"#
                ),
            ),
        )
        .unwrap();
        let b = dir.join("ae.bundle");
        let key = dir.join("ml.key.pem");
        let o = pack(&spec, &model("dense_autoencoder"), &calm, &key, &b, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        b
    };
    let b = pack_with(1e9);
    let o = run(&["bundle", "inspect", b.to_str().unwrap()]);
    assert!(
        stdout(&o).contains(
            "score       mse of recon against the input (per feature too) threshold 1000000000"
        ),
        "{}",
        stdout(&o)
    );
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"gw1\"\ndata_dir = \"{d}\"\n\
             [[sources.replay]]\nname = \"history\"\npath = \"{calm}\"\n\
             [bundles]\ntrusted_keys = [\"{d}/ml.pub.pem\"]\n\
             [[models]]\nname = \"pump-ae\"\nbundle = \"{b}\"\n",
            d = dir.display(),
            calm = calm.display(),
            b = b.display()
        ),
    )
    .unwrap();
    let replay = |input: &Path, out: &str| {
        let out = dir.join(out);
        let o = run(&[
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        (
            lines(&out.join("predictions.jsonl")),
            lines(&out.join("alarms.jsonl")),
        )
    };
    let (preds, _) = replay(&calm, "calm-probe");
    assert!(preds.len() > 1000, "{} predictions", preds.len());
    let mut calm_max = 0f64;
    for p in &preds {
        let score = p["score"].as_f64().unwrap();
        let graph = p["outputs"]["score"][0].as_f64().unwrap();
        assert!(
            (score - graph).abs() <= 1e-5 * graph.abs().max(1.0),
            "reconstruction MSE {score} vs the model's own {graph}"
        );
        let errs = p["outputs"]["reconstruction_error"].as_array().unwrap();
        assert_eq!(errs.len(), 12);
        let mean = errs.iter().map(|e| e.as_f64().unwrap()).sum::<f64>() / 12.0;
        assert!(
            (mean - score).abs() <= 1e-12 * score.max(1.0),
            "{mean} vs {score}"
        );
        calm_max = calm_max.max(score);
    }
    // Threshold at twice the worst calm window: calm data never alarms, the fault does.
    pack_with(2.0 * calm_max);
    let (_, alarms) = replay(&calm, "calm");
    assert!(alarms.is_empty(), "{alarms:?}");
    let (preds, alarms) = replay(&faulty, "faulty");
    let raised: Vec<_> = alarms.iter().filter(|a| a["state"] == "raised").collect();
    assert_eq!(raised.len(), 1, "{alarms:?}");
    let fault_ms = (T0 + 6000 * PERIOD) / 1_000_000;
    assert!(raised[0]["ts"].as_i64().unwrap() >= fault_ms, "{raised:?}");
    let late: Vec<_> = preds
        .iter()
        .filter(|p| p["window_start"].as_i64().unwrap() > fault_ms)
        .collect();
    assert!(
        late.iter().all(|p| p["over_threshold"] == true),
        "every faulty window is over"
    );
}

/// A shadow challenger (same spec, another threshold) runs on every window: the drift
/// records compare it with the champion, nothing of it is published or alarmed.
#[test]
fn a_shadow_challenger_is_compared_and_never_published() {
    let s = setup("shadow");
    let spec = s.dir.join("challenger.toml");
    std::fs::write(
        &spec,
        std::fs::read_to_string(fixture("raw_pack.toml"))
            .unwrap()
            .replace("version_number = 1", "version_number = 2")
            .replace("\"0.1.0\"", "\"0.2.0\"")
            .replace("threshold = 0.9", "threshold = 0.5, raise_after = 1"),
    )
    .unwrap();
    let challenger = s.dir.join("challenger.bundle");
    let key = s.dir.join("ml.key.pem");
    let o = pack(&spec, &model("conv1d"), &s.train, &key, &challenger, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{text}shadow = \"{}\"\n", challenger.display()),
    )
    .unwrap();
    let (o, out) = replay(&s, &s.train, "shadow-out");
    assert!(o.status.success(), "{}", stderr(&o));
    let drift = lines(&out.join("drift.jsonl"));
    assert!(drift.len() >= 5);
    let mut disagreed = 0;
    for d in &drift {
        let sh = &d["shadow"];
        assert_eq!(sh["version_number"], 2, "{d}");
        assert_eq!(sh["windows"], d["windows"], "every window compared: {d}");
        assert_eq!(sh["errors"], 0);
        assert_eq!(sh["decided"], d["windows"]);
        assert_eq!(
            sh["max_abs_score_diff"], 0.0,
            "same model, same input: same scores"
        );
        assert_eq!(sh["champion_over"], 0, "nothing reaches the champion's 0.9");
        let agreement = sh["agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agreement));
        if agreement < 1.0 {
            disagreed += 1;
            assert!(sh["challenger_over"].as_u64().unwrap() > 0, "{d}");
        }
    }
    assert!(
        disagreed > 0,
        "the 0.5 threshold must disagree somewhere: {drift:?}"
    );
    // Only the champion speaks.
    let preds = lines(&out.join("predictions.jsonl"));
    assert!(!preds.is_empty());
    assert!(preds.iter().all(|p| p["version_number"] == 1));
    assert!(lines(&out.join("alarms.jsonl"))
        .iter()
        .all(|a| a["version_number"] == 1));
    assert!(
        lines(&out.join("alarms.jsonl")).is_empty(),
        "the challenger would alarm; it must not"
    );
}
