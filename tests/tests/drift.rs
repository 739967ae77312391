//! Drift monitoring end to end, with the real agent binary:
//!
//! - real sensor data: the NREL PV daily-energy series shipped in pvanalytics
//!   (`pvlib_data_shift.csv`, labelled level shift on 2015-10-28) replayed over MQTT
//!   (Mosquitto, mosquitto_pub) with its own timestamps. The bundle is trained and its
//!   reference taken on the year after the shift; the agent must flag the year holding the
//!   labelled shift and none of the clean years;
//! - the simulated plant with injected sensor drift: drift records and drift alarms on the
//!   plain-JSON MQTT topics and as Sparkplug metrics (checked by the independent paho +
//!   Tahu-schema listener), raised after N drifting intervals and cleared when the drift
//!   ends; late labels published on an MQTT label topic give the model's accuracy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use interop_tests::*;
use serde_json::Value;

const DAY_NS: i64 = 86_400_000_000_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The series: (Unix ns at midnight UTC, daily energy, label).
fn pv_series() -> Vec<(i64, f64, u8)> {
    let path = peers_dir().join("data/pvanalytics/pvlib_data_shift.csv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/peers/setup.sh)", path.display()));
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let d: Vec<i64> = f[0].split('/').map(|x| x.parse().unwrap()).collect();
            let ts = days_from_civil(d[2], d[0], d[1]) * DAY_NS;
            (ts, f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Trains a bundle on `train` (recording CSV) with `pack.toml`: featurize, IsolationForest,
/// keygen, pack. Returns (bundle, public key).
fn make_bundle(d: &Path, pack: &Path, train: &Path) -> (PathBuf, PathBuf) {
    let agent = workspace_bin("edge-agent");
    let feats = d.join("features.csv");
    let model = d.join("model.onnx");
    run_ok(
        Command::new(&agent)
            .args(["featurize", "--spec"])
            .arg(pack)
            .arg("--input")
            .arg(train)
            .arg("--output")
            .arg(&feats),
    );
    run_ok(
        Command::new(python())
            .arg(workspace().join("examples/ml-workflow/train.py"))
            .arg(&feats)
            .arg(&model),
    );
    run_ok(
        Command::new(&agent)
            .args(["bundle", "keygen", "--out"])
            .arg(d.join("k")),
    );
    let bundle = d.join("model.bundle");
    run_ok(
        Command::new(&agent)
            .args(["bundle", "pack", "--spec"])
            .arg(pack)
            .arg("--model")
            .arg(&model)
            .arg("--train")
            .arg(train)
            .arg("--key")
            .arg(d.join("k.key.pem"))
            .arg("--out")
            .arg(&bundle),
    );
    (bundle, d.join("k.pub.pem"))
}

#[test]
fn pv_level_shift_is_flagged_in_the_labelled_year_and_not_in_clean_years() {
    let dir = tempdir();
    let d = dir.path();
    let series = pv_series();
    let shift = series
        .iter()
        .find(|s| s.2 == 1)
        .expect("a labelled shift")
        .0;
    // Reference and training data: the year after the labelled shift.
    let (ref_from, ref_to) = (shift, shift + 365 * DAY_NS);
    let train = d.join("train.csv");
    let mut csv = String::from("tag,ts_ns,value,quality\n");
    for (ts, v, _) in series.iter().filter(|s| s.0 >= ref_from && s.0 < ref_to) {
        csv.push_str(&format!("pv.energy,{ts},{v:?},good\n"));
    }
    std::fs::write(&train, csv).unwrap();
    // Weekly windows, one per day. Year-long drift intervals: the series is seasonal, so a
    // shorter interval would compare a summer against a whole year. Clean years differ from
    // the reference year by weather and module ageing (PSI up to ~0.8 in this series), so
    // the bundle sets its PSI threshold to 1.0 and alarms on the first drifting interval; a
    // partial year (the series ends in December) is not scored for alarms (min_count: half
    // a year of windows), as a winter month always differs from a whole year.
    let pack = d.join("pack.toml");
    std::fs::write(
        &pack,
        r#"
name = "pv-daily-energy"
version = "1.0.0"
version_number = 1
[spec]
tags = ["pv.energy"]
rate_hz = 1.1574074074074073e-05
window_points = 7
hop_points = 1
max_age = "36h"
[[spec.features]]
tag = "pv.energy"
fn = "mean"
[[spec.features]]
tag = "pv.energy"
fn = "max"
[[spec.features]]
tag = "pv.energy"
fn = "std"
[drift]
threshold = 1.0
min_count = 180
raise_after = 1
clear_after = 1
"#,
    )
    .unwrap();
    let (bundle, key) = make_bundle(d, &pack, &train);

    let broker = mosquitto(d);
    let out = d.join("drift.jsonl");
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "pv-site"
data_dir = "{d}/state"
[[sources.mqtt]]
name = "scada"
qos = 1
[sources.mqtt.broker]
url = "mqtt://127.0.0.1:{port}"
[[sources.mqtt.tags]]
name = "pv.energy"
topic = "site/pv/energy"
json_pointer = "/value"
timestamp_pointer = "/ts"
timestamp_format = "unix_ms"
[bundles]
trusted_keys = ["{key}"]
[[models]]
name = "pv"
bundle = "{bundle}"
drift_interval = "365d"
[[outputs.file]]
name = "drift"
path = "{out}"
records = ["drift", "alarms", "features"]
"#,
            d = d.display(),
            port = broker.anon,
            key = key.display(),
            bundle = bundle.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let mut agent = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    assert!(
        wait_for_log(&agent, "mqtt subscribed", Duration::from_secs(30)),
        "{}",
        agent.log_tail()
    );
    // Replay the whole series through the broker, in order, with its own timestamps.
    let lines: String = series
        .iter()
        .map(|(ts, v, _)| format!("{{\"ts\":{},\"value\":{v}}}\n", ts / 1_000_000))
        .collect();
    let mut pubr = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.anon.to_string(),
            "-q",
            "1",
            "-t",
            "site/pv/energy",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pubr.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(pubr.wait().unwrap().success());
    // Every weekly window featurized (the last ones wait for later points: allow a few).
    let want = series.len() - 7;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let n = read_jsonl(&out)
            .iter()
            .filter(|r| r["kind"] == "features")
            .count();
        if n >= want - 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.terminate(Duration::from_secs(20)),
        "{}",
        agent.log_tail()
    );
    let recs = read_jsonl(&out);
    let of = |k: &str| {
        recs.iter()
            .filter(|r| r["kind"] == k)
            .collect::<Vec<&Value>>()
    };
    let (drift, alarms) = (of("drift"), of("alarm"));
    let feats = of("features").len();
    assert!(
        feats >= want - 2,
        "{feats} of {want} windows\n{}",
        agent.log_tail()
    );
    assert!(
        drift.len() >= 6,
        "{} drift records\n{}",
        drift.len(),
        agent.log_tail()
    );
    let summary: Vec<String> = drift
        .iter()
        .map(|r| {
            let psi: Vec<String> = r["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{:.2}", c["scores"]["psi"].as_f64().unwrap_or(f64::NAN)))
                .collect();
            format!(
                "{}..{} windows {} psi {} drifting {}",
                r["start_ns"].as_i64().unwrap() / DAY_NS,
                r["end_ns"].as_i64().unwrap() / DAY_NS,
                r["windows"],
                psi.join("/"),
                r["drifting"]
            )
        })
        .collect();
    let summary = summary.join("\n");
    let (mut flagged, mut clean) = (0, 0);
    for r in &drift {
        let (s, e) = (
            r["start_ns"].as_i64().unwrap(),
            r["end_ns"].as_i64().unwrap(),
        );
        let windows = r["windows"].as_u64().unwrap();
        let drifting = r["drifting"].as_array().unwrap().len();
        if (s..=e).contains(&shift) {
            // The year with the labelled shift: every feature drifts, so the dataset does.
            assert_eq!(drifting, 3, "{summary}");
            assert_eq!(r["dataset_drift"], true, "{summary}");
            flagged += 1;
        } else {
            // Clean years (the reference year and the four after it) and the partial one.
            assert_eq!(drifting, 0, "clean year flagged:\n{summary}");
            assert_eq!(r["dataset_drift"], false, "{summary}");
            if windows >= 180 {
                clean += 1;
            }
        }
        // Scores are there for every column of every record.
        for c in r["columns"].as_array().unwrap() {
            assert!(c["scores"]["psi"].as_f64().is_some(), "{c}");
            assert!(c["summary"]["moments"]["count"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!((flagged, clean), (1, 5), "{summary}");
    // raise_after = clear_after = 1: the dataset alarm is raised when the shifted year
    // closes and cleared when the next (clean) one does.
    let dataset: Vec<(bool, i64)> = alarms
        .iter()
        .filter(|a| a["drift"]["kind"] == "dataset")
        .map(|a| (a["active"].as_bool().unwrap(), a["ts_ns"].as_i64().unwrap()))
        .collect();
    assert_eq!(dataset.len(), 2, "{alarms:?}\n{summary}");
    assert!(dataset[0].0 && !dataset[1].0, "{dataset:?}");
    assert!(dataset[0].1 > shift && dataset[0].1 < dataset[1].1);
    assert!(
        agent.log_tail().contains("drift alarm raised"),
        "{}",
        agent.log_tail()
    );
    eprintln!("{summary}");
}

fn wait_for_log(p: &Peer, needle: &str, timeout: Duration) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        if std::fs::read_to_string(p.log_path())
            .unwrap_or_default()
            .contains(needle)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
