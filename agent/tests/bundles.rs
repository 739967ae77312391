//! Bundles end to end through the binary: keygen, pack (reference statistics from a real
//! recording), inspect, verify, featurize; every kind of bad bundle refused with a clear error;
//! a running agent hot-reloads a good bundle and keeps serving through bad ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct Keys {
    key: PathBuf,
    public: PathBuf,
}

fn keygen(dir: &Path, name: &str) -> Keys {
    let prefix = dir.join(name);
    let o = run(&["bundle", "keygen", "--out", prefix.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    Keys {
        key: dir.join(format!("{name}.key.pem")),
        public: dir.join(format!("{name}.pub.pem")),
    }
}

/// A pack spec with a different version number.
fn spec_version(dir: &Path, n: u64) -> PathBuf {
    let text = std::fs::read_to_string(fixture("pump_pack.toml")).unwrap();
    let p = dir.join(format!("pack-v{n}.toml"));
    std::fs::write(
        &p,
        text.replace("version_number = 1", &format!("version_number = {n}"))
            .replace("\"1.0.0\"", &format!("\"1.{n}.0\"")),
    )
    .unwrap();
    p
}

fn verify(b: &Path, key: &Path, floor: u64) -> std::process::Output {
    run(&[
        "bundle",
        "verify",
        b.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--floor",
        &floor.to_string(),
    ])
}

/// A score index past the end of its output is refused at pack, naming the valid range.
#[test]
fn pack_refuses_a_score_index_past_the_output() {
    let dir = tmp("pack-index");
    let train = record(&dir, Duration::from_secs(80), 40.0, "");
    let k = keygen(&dir, "ml");
    let text = std::fs::read_to_string(fixture("pump_pack.toml")).unwrap();
    let spec = dir.join("bad-index.toml");
    std::fs::write(
        &spec,
        text.replace(
            r#"score = { output = "score", index = 0,"#,
            r#"score = { output = "score", index = 1,"#,
        ),
    )
    .unwrap();
    let b = dir.join("bad.bundle");
    let o = pack(&spec, &model("dense_autoencoder"), &train, &k.key, &b, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "postprocess.score.index 1 is past the end of output `score` (1 element: indices 0..=0)"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!b.exists(), "a bundle was written");
}

#[test]
fn pack_inspect_verify_featurize() {
    let dir = tmp("pack");
    let train = record(&dir, Duration::from_secs(120), 40.0, "");
    let k = keygen(&dir, "ml");
    let b = dir.join("pump.bundle");
    let o = pack(
        &fixture("pump_pack.toml"),
        &model("dense_autoencoder"),
        &train,
        &k.key,
        &b,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("pump-ae 1.0.0 (version number 1), 12 features"),
        "{}",
        stdout(&o)
    );

    let o = run(&["bundle", "inspect", b.to_str().unwrap()]);
    let text = stdout(&o);
    assert!(
        text.contains("pump-ae 1.0.0 (version number 1)")
            && text.contains("pump1.vibration:band_0.5-5hz"),
        "{text}"
    );
    assert!(text.contains("signature not checked"), "{text}");
    // In the spec's own words, not Rust's debug forms.
    assert!(
        text.contains("layout vector,") && text.contains("score[0] threshold 5 alarm above"),
        "{text}"
    );
    let o = run(&["bundle", "inspect", "--json", b.to_str().unwrap()]);
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let windows = m["reference"]["windows"].as_u64().unwrap();
    assert!(windows > 20, "{windows} training windows");
    let f0 = &m["reference"]["features"][0];
    assert_eq!(f0["name"], "pump1.temperature:mean");
    assert_eq!(
        f0["bin_freqs"].as_array().unwrap().len() + 1,
        f0["bin_edges"].as_array().unwrap().len()
    );
    assert!(m["reference"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["name"] == "score[0]"));

    let o = verify(&b, &k.public, 0);
    assert!(
        o.status.success() && stdout(&o).starts_with("OK: pump-ae 1.0.0"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );

    // featurize --bundle gives exactly the windows the reference statistics came from.
    let feats = dir.join("features.csv");
    let o = run(&[
        "featurize",
        "--bundle",
        b.to_str().unwrap(),
        "--input",
        train.to_str().unwrap(),
        "--output",
        feats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&feats).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("start_ns,end_ns,pump1.temperature:mean,pump1.temperature:slope"),
        "{header}"
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len() as u64, windows);
    // The reference statistics were computed from exactly these numbers.
    let col: Vec<f64> = rows.iter().map(|r| r[2]).collect();
    let min = col.iter().copied().fold(f64::INFINITY, f64::min);
    let max = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(
        min.to_bits(),
        f0["min"].as_f64().unwrap().to_bits(),
        "same code, same numbers"
    );
    assert_eq!(max.to_bits(), f0["max"].as_f64().unwrap().to_bits());
    let mean = col.iter().sum::<f64>() / col.len() as f64;
    assert!((mean - f0["mean"].as_f64().unwrap()).abs() < 1e-9);
    // Twice the same input, twice the same bytes.
    let again = dir.join("again.csv");
    run(&[
        "featurize",
        "--spec",
        fixture("pump_pack.toml").to_str().unwrap(),
        "--input",
        train.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&feats).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn bad_bundles_are_refused_with_clear_errors() {
    let dir = tmp("bad");
    let train = record(&dir, Duration::from_secs(80), 40.0, "");
    let k = keygen(&dir, "ml");
    let other = keygen(&dir, "intruder");
    let good = dir.join("good.bundle");
    assert!(pack(
        &fixture("pump_pack.toml"),
        &model("dense_autoencoder"),
        &train,
        &k.key,
        &good,
        &[]
    )
    .status
    .success());
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let mut flipped_model = bytes.clone();
    let n = flipped_model.len();
    flipped_model[n - 200] ^= 0x55; // inside the ONNX bytes
    let mut unsigned = bytes.clone();
    unsigned[n - 64..].fill(0);
    let mut flipped_sig = bytes.clone();
    flipped_sig[n - 1] ^= 1;
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write("garbage.bundle", b"PK\x03\x04 this is a zip"),
            "not a bundle",
        ),
        (
            write("truncated.bundle", &bytes[..bytes.len() / 2]),
            "truncated",
        ),
        (
            write("tampered-model.bundle", &flipped_model),
            "model hash mismatch",
        ),
        (
            write("unsigned.bundle", &unsigned),
            "signature does not verify",
        ),
        (
            write("bad-signature.bundle", &flipped_sig),
            "signature does not verify",
        ),
    ];
    for (path, want) in &cases {
        let o = verify(path, &k.public, 0);
        assert_eq!(o.status.code(), Some(2), "{}", path.display());
        assert!(
            stderr(&o).contains(want),
            "{}: want `{want}`, got {}",
            path.display(),
            stderr(&o)
        );
    }
    // Signed by a key the device does not trust.
    let foreign = dir.join("foreign.bundle");
    assert!(pack(
        &fixture("pump_pack.toml"),
        &model("dense_autoencoder"),
        &train,
        &other.key,
        &foreign,
        &[]
    )
    .status
    .success());
    assert!(stderr(&verify(&foreign, &k.public, 0)).contains("which is not trusted here"));
    // A downgrade below the floor.
    assert!(stderr(&verify(&good, &k.public, 2))
        .contains("below this device's floor 2: refusing a downgrade"));
    // A model that does not take the spec's input: refused at pack time.
    let o = pack(
        &fixture("pump_pack.toml"),
        &model("conv1d"),
        &train,
        &k.key,
        &dir.join("x.bundle"),
        &[],
    );
    assert!(
        !o.status.success()
            && stderr(&o).contains("does not accept the feature spec's input [1, 12]"),
        "{}",
        stderr(&o)
    );
    // A feature spec naming a tag no source provides: refused by `check`.
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"gw\"\ndata_dir = \"{d}\"\n[[sources.simulated]]\nname = \"p\"\n[[sources.simulated.assets]]\nname = \"pumpX\"\n\
             [bundles]\ntrusted_keys = [\"{k}\"]\n[[models]]\nname = \"m\"\nbundle = \"{b}\"\n",
            d = dir.display(), k = k.public.display(), b = good.display()
        ),
    )
    .unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("models[0].bundle")
            && stderr(&o).contains("reads tags no source provides: pump1.temperature"),
        "{}",
        stderr(&o)
    );
    // Missing trusted keys for configured models.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("trusted_keys = [\"{}\"]", k.public.display()),
            "trusted_keys = []",
        ),
    )
    .unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("bundles.trusted_keys") && stderr(&o).contains("no key is trusted"),
        "{}",
        stderr(&o)
    );
}

fn predictions(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "prediction")
        .collect()
}

#[test]
fn a_running_agent_keeps_serving_through_bad_bundles_and_takes_a_good_one() {
    let dir = tmp("reload");
    let train = record(&dir, Duration::from_secs(80), 40.0, "");
    let k = keygen(&dir, "ml");
    let v1 = dir.join("v1.bundle");
    let v2 = dir.join("v2.bundle");
    assert!(pack(
        &spec_version(&dir, 1),
        &model("dense_autoencoder"),
        &train,
        &k.key,
        &v1,
        &[]
    )
    .status
    .success());
    assert!(pack(
        &spec_version(&dir, 2),
        &model("dense_autoencoder"),
        &train,
        &k.key,
        &v2,
        &[]
    )
    .status
    .success());
    let live = dir.join("live.bundle");
    std::fs::copy(&v1, &live).unwrap();
    let out = dir.join("out.jsonl");
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"gw\"\ndata_dir = \"{d}\"\n[[sources.simulated]]\nname = \"p\"\ntime_scale = 20\n[[sources.simulated.assets]]\nname = \"pump1\"\n\
             [bundles]\ntrusted_keys = [\"{k}\"]\n[[models]]\nname = \"pump\"\nbundle = \"{b}\"\nreload_check = \"200ms\"\n\
             [[outputs.file]]\nname = \"o\"\npath = \"{o}\"\nrecords = [\"predictions\"]\n",
            d = dir.display(), k = k.public.display(), b = live.display(), o = out.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&cfg);
    agent.wait_log("model serving", Duration::from_secs(20));
    let wait_predictions = |version: u64, min: usize| {
        let t0 = std::time::Instant::now();
        loop {
            let n = predictions(&out)
                .iter()
                .filter(|p| p["version_number"] == version)
                .count();
            if n >= min {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "only {n} predictions of v{version}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_predictions(1, 3);
    let p = &predictions(&out)[0];
    assert!(
        p["score"].as_f64().is_some() && p["alarm"].is_boolean() && p["bundle"] == "pump-ae",
        "{p}"
    );
    // A tampered bundle arrives: refused, v1 keeps serving.
    let mut bad = std::fs::read(&v2).unwrap();
    let n = bad.len();
    bad[n - 1] ^= 1;
    std::fs::write(&live, &bad).unwrap();
    agent.wait_log("refused the new bundle", Duration::from_secs(10));
    let before = predictions(&out).len();
    wait_predictions(1, before + 3);
    // The good v2: taken.
    std::fs::copy(&v2, &live).unwrap();
    agent.wait_log("new bundle loaded", Duration::from_secs(10));
    wait_predictions(2, 3);
    // Now the signed v1 again: a downgrade below the floor, refused; v2 keeps serving.
    std::fs::copy(&v1, &live).unwrap();
    agent.wait_log("refusing a downgrade", Duration::from_secs(10));
    let v2_count = predictions(&out)
        .iter()
        .filter(|p| p["version_number"] == 2)
        .count();
    wait_predictions(2, v2_count + 3);
    assert!(agent.stop(), "{}", agent.log());
    // The floor survives a restart: the device remembers it ran v2.
    let floor: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bundles/floor.json")).unwrap())
            .unwrap();
    assert_eq!(floor["pump-ae"], 2);
}

#[test]
fn a_raw_window_feeds_the_conv_net() {
    let dir = tmp("raw");
    let train = record(&dir, Duration::from_secs(80), 40.0, "");
    let k = keygen(&dir, "ml");
    let b = dir.join("conv.bundle");
    let o = pack(
        &fixture("raw_pack.toml"),
        &model("conv1d"),
        &train,
        &k.key,
        &b,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(verify(&b, &k.public, 0).status.success());
    let o = run(&["bundle", "inspect", "--json", b.to_str().unwrap()]);
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(m["model"]["input"]["shape"], serde_json::json!([1, 3, 64]));
    assert_eq!(
        m["model"]["input"]["name"], "X",
        "the ONNX input's own name"
    );
    let p = m["reference"]["outputs"][0]["mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "sigmoid output {p}");
}

/// Lineage: the training data's fingerprint, the feature spec's hash, and the code revision,
/// parameters and metrics given at pack travel signed in the manifest; inspect shows them.
#[test]
fn pack_records_lineage_and_inspect_shows_it() {
    let dir = tmp("lineage");
    let train = record(&dir, Duration::from_secs(80), 40.0, "");
    let k = keygen(&dir, "ml");
    let text = std::fs::read_to_string(fixture("pump_pack.toml")).unwrap();
    let spec = dir.join("lineage.toml");
    std::fs::write(
        &spec,
        format!("{text}\n[lineage]\ncode_revision = \"from-spec\"\nparams = {{ epochs = 40, optimizer = \"adam\" }}\nmetrics = {{ val_mse = 0.5 }}\n"),
    )
    .unwrap();
    let b = dir.join("pump.bundle");
    let flags = [
        "--code-revision",
        "3f2c9e1",
        "--param",
        "seed=7",
        "--metric",
        "val_mse=0.25",
    ];
    let ae = model("dense_autoencoder");
    let o = pack(&spec, &ae, &train, &k.key, &b, &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        verify(&b, &k.public, 0).status.success(),
        "lineage is signed with the rest"
    );
    let o = run(&["bundle", "inspect", "--json", b.to_str().unwrap()]);
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let l = &m["lineage"];
    let sum = std::process::Command::new("sha256sum")
        .arg(&train)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(l["training_data_sha256"], expected.as_str());
    assert_eq!(l["training_data_name"], "recording.csv");
    assert_eq!(l["code_revision"], "3f2c9e1", "the flag wins over the spec");
    assert_eq!(
        l["params"],
        serde_json::json!({"epochs": "40", "optimizer": "adam", "seed": "7"})
    );
    assert_eq!(l["metrics"], serde_json::json!({"val_mse": 0.25}));
    assert!(l["packed_by"].as_str().unwrap().starts_with("edge-agent "));
    let spec_hash = l["feature_spec_sha256"].as_str().unwrap().to_string();
    assert_eq!(spec_hash.len(), 64);
    let o = run(&["bundle", "inspect", b.to_str().unwrap()]);
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "trained on  recording.csv (sha256 {})",
            &expected[..16]
        )),
        "{text}"
    );
    assert!(text.contains("code        3f2c9e1"), "{text}");
    assert!(
        text.contains("params      epochs=40, optimizer=adam, seed=7"),
        "{text}"
    );
    assert!(text.contains("metrics     val_mse=0.25"), "{text}");

    // The same spec packed again hashes the same; a bad flag is refused.
    let bad = dir.join("bad.bundle");
    let o = pack(&spec, &ae, &train, &k.key, &bad, &["--metric", "auc=high"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--metric `auc=high`: `high` is not a finite number"),
        "{}",
        stderr(&o)
    );
}
