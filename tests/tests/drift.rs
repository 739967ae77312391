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
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
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
    // A threshold for a column the bundle does not have is an error that names it.
    let bad = d.join("bad-pack.toml");
    let text = std::fs::read_to_string(&pack).unwrap();
    std::fs::write(
        &bad,
        format!("{text}[drift.thresholds]\n\"pv.energy:mena\" = 2.0\n"),
    )
    .unwrap();
    let out = Command::new(workspace_bin("edge-agent"))
        .args(["bundle", "pack", "--spec"])
        .arg(&bad)
        .arg("--model")
        .arg(d.join("model.onnx"))
        .arg("--train")
        .arg(&train)
        .arg("--key")
        .arg(d.join("k.key.pem"))
        .arg("--out")
        .arg(d.join("bad.bundle"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("drift.thresholds names pv.energy:mena"),
        "{err}"
    );
    assert!(!d.join("bad.bundle").exists());

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
    agent.wait_log(
        Duration::from_secs(30),
        "the MQTT source to subscribe",
        "mqtt subscribed",
        1,
    );
    // Replay the whole series through the broker, in order, with its own timestamps.
    let lines: String = series
        .iter()
        .map(|(ts, v, _)| format!("{{\"ts\":{},\"value\":{v}}}\n", ts / 1_000_000))
        .collect();
    mqtt_publish_lines(broker.anon, "site/pv/energy", &lines);
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

/// Sparkplug DDATA/DBIRTH metrics of one device as (name, metric), names resolved through
/// the aliases of its DBIRTHs.
fn spb_metrics(msgs: &[Value], device: &str) -> Vec<(String, Value)> {
    let mut names: std::collections::BTreeMap<String, String> = Default::default();
    let mut out = Vec::new();
    for m in msgs {
        let topic = m["topic"].as_str().unwrap_or_default();
        if !topic.ends_with(&format!("/gw1/{device}")) {
            continue;
        }
        for x in m["payload"]["metrics"].as_array().into_iter().flatten() {
            let alias = x["alias"].as_str().unwrap_or_default().to_string();
            if topic.contains("/DBIRTH/") {
                if let Some(n) = x["name"].as_str() {
                    names.insert(alias.clone(), n.to_string());
                }
            } else if let Some(n) = names.get(&alias) {
                out.push((n.clone(), x.clone()));
            }
        }
    }
    out
}

#[test]
fn injected_sensor_drift_raises_and_clears_alarms_on_json_and_sparkplug_with_late_labels() {
    let dir = tempdir();
    let d = dir.path();
    let ws = workspace();
    let broker = mosquitto(d);
    let port = broker.anon;
    // The plant, healthy: its second simulated day is the training data and the reference
    // of the bundle (examples/ml-workflow/pack.toml: 8 window features of pump1,
    // IsolationForest). The simulated plant starts warm, so any whole day is typical.
    let plant = |seed: u32| {
        format!(
            r#"
[[sources.simulated]]
name = "plant"
seed = {seed}
day_length = "10m"
time_scale = 120.0
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
load = 0.7
"#
        )
    };
    let rec_cfg = d.join("record.toml");
    let recording = d.join("healthy.csv");
    std::fs::write(
        &rec_cfg,
        format!(
            "[agent]\nid = \"rec\"\ndata_dir = \"{d}/rec-state\"\n{p}\n[[outputs.file]]\nname = \"rec\"\npath = \"{r}\"\nformat = \"csv\"\n",
            d = d.display(),
            p = plant(7),
            r = recording.display()
        ),
    )
    .unwrap();
    let mut rec = Peer::start(
        "recorder",
        workspace_bin("edge-agent"),
        &["run", "--config", rec_cfg.to_str().unwrap()],
        d,
        None,
    );
    rec.wait_log(
        Duration::from_secs(30),
        "the simulated plant to start",
        "simulated plant starting",
        1,
    );
    // Record until the file holds the second plant day (20 minutes of plant time).
    wait_until(
        "two recorded plant days",
        Duration::from_secs(120),
        || rec.log_tail(),
        || (recording_span_ns(&recording)? >= 1_200_000_000_000).then_some(()),
    );
    assert!(rec.terminate(Duration::from_secs(20)), "{}", rec.log_tail());
    let text = std::fs::read_to_string(&recording).unwrap();
    let first_ts: i64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').nth(1))
        .and_then(|t| t.parse().ok())
        .expect("a recorded sample");
    let day2: String = std::iter::once("tag,ts_ns,value,quality")
        .chain(text.lines().skip(1).filter(|l| {
            l.split(',')
                .nth(1)
                .and_then(|t| t.parse::<i64>().ok())
                .is_some_and(|t| {
                    t >= first_ts + 600_000_000_000 && t < first_ts + 1_200_000_000_000
                })
        }))
        .map(|l| format!("{l}\n"))
        .collect();
    let train = d.join("day2.csv");
    std::fs::write(&train, day2).unwrap();
    let (bundle, key) = make_bundle(d, &ws.join("examples/ml-workflow/pack.toml"), &train);
    let listener = MqttListener::start(d, port);
    // Another run of the plant (another seed: its own noise and load wander). A day is a
    // drift interval: at 120x, one per 5 s. pump1's temperature sensor drifts +20 from minute
    // 50 to 70 (days 6 and 7): its column alarm is raised when the 2nd drifting day closes
    // and cleared when the 2nd calm one after it does.
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "gw1"
data_dir = "{d}/state"
{p}
[[sources.simulated.faults]]
asset = "pump1"
kind = "drift"
signal = "temperature"
start = "50m"
ramp = "1m"
duration = "20m"
magnitude = 20.0
[[sources.mqtt]]
name = "maintenance"
qos = 1
[sources.mqtt.broker]
url = "mqtt://127.0.0.1:{port}"
[[sources.mqtt.tags]]
name = "pump1.failure"
topic = "plant/pump1/failure"
json_pointer = "/value"
timestamp_pointer = "/ts"
timestamp_format = "unix_ms"
[bundles]
trusted_keys = ["{key}"]
[[models]]
name = "pump1-anomaly"
bundle = "{bundle}"
drift_interval = "10m"
# An operator's choice for a process with a strong daily cycle: alarm on a move of one
# reference standard deviation of a feature (healthy days: about 0.1; the +20 °C sensor
# fault: about 4).
[models.drift]
metric = "w1_std"
threshold = 1.0
raise_after = 2
clear_after = 2
min_accuracy = 0.8
[models.labels]
tag = "pump1.failure"
horizon = "5m"
[outbox]
commit_interval = "100ms"
[[outputs.mqtt]]
name = "json"
broker = {{ url = "mqtt://127.0.0.1:{port}" }}
streams = ["predictions", "alarms", "drift"]
[[outputs.mqtt]]
name = "spb"
broker = {{ url = "mqtt://127.0.0.1:{port}" }}
format = "sparkplug"
streams = ["alarms", "drift"]
sparkplug = {{ group_id = "plant", edge_node_id = "gw1" }}
"#,
            d = d.display(),
            p = plant(11),
            key = key.display(),
            bundle = bundle.display(),
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
    agent.wait_log(
        Duration::from_secs(30),
        "the MQTT source to subscribe",
        "mqtt subscribed",
        1,
    );
    // Ground truth arrives late (about a second, i.e. two simulated minutes, after each
    // prediction): maintenance reports the period of the sensor fault as a failure the model
    // should have caught, everything else as normal.
    let pred_topic = "edge/gw1/predictions/pump1-anomaly";
    let mut labelled = 0usize;
    let t0 = std::time::Instant::now();
    let done = |m: &[Value]| {
        on(m, "edge/gw1/drift/pump1-anomaly")
            .iter()
            .filter(|r| r["windows"].as_u64().unwrap_or(0) > 300)
            .count()
            >= 10
    };
    while t0.elapsed() < Duration::from_secs(180) {
        let msgs = listener.messages();
        if done(&msgs) {
            break;
        }
        let preds = on(&msgs, pred_topic);
        if preds.len() > labelled {
            let start = preds[0]["window_start"].as_i64().unwrap();
            let lines: String = preds[labelled..]
                .iter()
                .map(|p| {
                    let mid = (p["ts"].as_i64().unwrap() + p["window_start"].as_i64().unwrap()) / 2;
                    let failed = (3_000_000..4_200_000).contains(&(mid - start));
                    format!("{{\"ts\":{mid},\"value\":{}}}\n", u8::from(failed))
                })
                .collect();
            labelled = preds.len();
            mqtt_publish_lines(port, "plant/pump1/failure", &lines);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        agent.terminate(Duration::from_secs(20)),
        "{}",
        agent.log_tail()
    );
    let msgs = listener.messages();
    let drift = on(&msgs, "edge/gw1/drift/pump1-anomaly");
    let summary: String = drift
        .iter()
        .map(|r| {
            format!(
                "windows {} drifting {} temp.mean {:.2} w1_std {:.2} acc {} labelled {}\n",
                r["windows"],
                r["drifting"],
                r["columns"]["pump1.temperature:mean"]["mean"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["columns"]["pump1.temperature:mean"]["w1_std"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["performance"]["accuracy"],
                r["performance"]["labelled"],
            )
        })
        .collect();
    let mut topics: std::collections::BTreeMap<String, usize> = Default::default();
    for m in &msgs {
        *topics
            .entry(m["topic"].as_str().unwrap_or("-").to_string())
            .or_default() += 1;
    }
    assert!(done(&msgs), "{summary}\n{topics:?}\n{}", agent.log_tail());
    let full: Vec<&Value> = drift
        .iter()
        .filter(|r| r["windows"].as_u64().unwrap_or(0) > 300)
        .collect();
    let temp_drifts: Vec<bool> = full
        .iter()
        .map(|r| {
            r["drifting"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "pump1.temperature:mean")
        })
        .collect();
    // Days 1-5 calm (4-5 checked), 6-7 drifting (the ramp starts at minute 50), 8-9 calm.
    assert_eq!(
        &temp_drifts[3..9],
        [false, false, true, true, false, false],
        "{summary}"
    );
    assert_eq!(full[3]["metric"], "w1_std");
    let w1 = |r: &Value| {
        r["columns"]["pump1.temperature:mean"]["w1_std"]
            .as_f64()
            .unwrap()
    };
    assert!(w1(full[3]) < 0.5 && w1(full[5]) > 2.0, "{summary}");
    // Late labels joined by window: accuracy high while the labels say normal, low while
    // they report the failure the model does not see.
    let acc = |r: &Value| r["performance"]["accuracy"].as_f64().unwrap_or(f64::NAN);
    assert!(
        full[3]["performance"]["labelled"].as_u64().unwrap() > 100,
        "{summary}"
    );
    assert!(acc(full[3]) >= 0.8 && acc(full[4]) >= 0.8, "{summary}");
    assert!(acc(full[6]) < 0.5, "{summary}");
    let perf: Vec<String> = on(
        &msgs,
        "edge/gw1/alarms/pump1-anomaly/drift/performance/accuracy",
    )
    .iter()
    .map(|a| a["state"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(
        perf.first().map(String::as_str),
        Some("raised"),
        "{perf:?}\n{summary}"
    );
    // The column alarm on its JSON topic: raised, then cleared (retained when live).
    let alarm_topic = "edge/gw1/alarms/pump1-anomaly/drift/column/pump1.temperature:mean";
    let alarm: Vec<(String, f64)> = on(&msgs, alarm_topic)
        .iter()
        .map(|a| {
            (
                a["state"].as_str().unwrap().to_string(),
                a["value"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    assert_eq!(
        alarm.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["raised", "cleared"],
        "{alarm:?}\n{summary}"
    );
    assert!(alarm[0].1 > 2.0, "the W1 that raised it: {alarm:?}");
    // Retained: a SCADA client connecting now gets the current (cleared) state.
    let late = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            alarm_topic,
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    let retained: Value = serde_json::from_slice(&late.stdout).unwrap_or(Value::Null);
    assert_eq!(retained["state"], "cleared", "{late:?}");
    // The same on Sparkplug: the alarm metric true then false, per-column drift scores.
    let spb = spb_metrics(&msgs, "pump1-anomaly");
    let states: Vec<bool> = spb
        .iter()
        .filter(|(n, _)| n == "Drift Alarm/column/pump1.temperature:mean")
        .filter_map(|(_, m)| m["boolean_value"].as_bool())
        .collect();
    assert_eq!(states, [true, false], "{spb:?}");
    let scores = spb
        .iter()
        .filter(|(n, _)| n == "Drift/pump1.temperature:mean/Score")
        .count();
    assert!(scores >= 6, "{scores} drift score metrics");
    eprintln!("{summary}");
}

fn on(msgs: &[Value], topic: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["topic"] == topic)
        .filter_map(|m| {
            m["text"]
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
        })
        .collect()
}

#[test]
fn fleet_merges_two_devices_drift_and_runs_the_retrain_hook_once() {
    use interop_tests::fleet::*;
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let (key, public) = keygen(d, "ml");
    server.cli(&["model", "trust", &public.display().to_string()]);
    // The demo model; its [drift] policy scores intervals of 5 windows (5 s here).
    let v1 = demo_bundle_version(&key, 1, |m| m.drift.min_count = Some(5));
    let bundle = d.join("pump.bundle");
    std::fs::write(&bundle, &v1).unwrap();
    server.cli(&["model", "push", &bundle.display().to_string()]);
    // Retrain when at least half of site=a drifts for 2 buckets of 10 s in a row.
    let hook_out = d.join("hook.jsonl");
    server.cli(&[
        "drift",
        "policy",
        "set",
        "--name",
        "retrain-pump",
        "--bundle",
        "pump-anomaly",
        "--select",
        "site=a",
        "--every",
        "10s",
        "--intervals",
        "2",
        "--share",
        "0.5",
        "--hook-command",
        &format!(
            "cat >> {}; echo >> {}",
            hook_out.display(),
            hook_out.display()
        ),
    ]);
    // Two gateways whose pump1 bearing is worn from the start: vibration features and the
    // temperature leave the reference, so every interval has dataset drift.
    let mut agents = Vec::new();
    for name in ["gw1", "gw2"] {
        let tok = server
            .cli(&["device", "enroll", "--label", "site=a"])
            .trim()
            .to_string();
        let data = d.join(name);
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"
[agent]
id = "{name}"
data_dir = "{data}"
[[sources.simulated]]
name = "plant"
seed = {seed}
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
load = 0.7
[[sources.simulated.faults]]
asset = "pump1"
kind = "bearing_wear"
ramp = "1s"
magnitude = 4.0
[bundles]
trusted_keys = ["{public}"]
[[models]]
name = "pump"
bundle = "{bundle}"
drift_interval = "5s"
[outbox]
commit_interval = "100ms"
[sync]
server = "https://127.0.0.1:{port}"
server_ca = "{ca}"
enroll_token = "{tok}"
interval = "1s"
streams = ["drift", "alarms"]
"#,
                data = data.display(),
                seed = if name == "gw1" { 1 } else { 2 },
                public = public.display(),
                bundle = bundle.display(),
                port = server.port,
                ca = server.ca().display(),
            ),
        )
        .unwrap();
        agents.push(Peer::start(
            name,
            workspace_bin("edge-agent"),
            &["run", "--config", cfg.to_str().unwrap()],
            d,
            None,
        ));
    }
    // The server evaluates every minute; the CLI evaluates now.
    let t0 = std::time::Instant::now();
    let event = loop {
        let eval = server.cli(&["drift", "evaluate"]);
        let text = std::fs::read_to_string(&hook_out).unwrap_or_default();
        if let Some(e) = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        {
            break e;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let views = server.cli(&[
                "drift",
                "show",
                "--bundle",
                "pump-anomaly",
                "--every",
                "10s",
            ]);
            let recs: Vec<String> = server
                .devices()
                .iter()
                .flat_map(|dev| {
                    server
                        .cli(&["device", "drift", dev["id"].as_str().unwrap()])
                        .lines()
                        .map(|l| {
                            let r: Value = serde_json::from_str(l).unwrap();
                            format!(
                                "{} {} {} {}",
                                dev["name"], r["end_ns"], r["dataset_drift"], r["drifting"]
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "no hook run\nevaluate: {eval}\nviews:\n{views}\nrecords:\n{}\n{}",
                recs.join("\n"),
                agents[0].log_tail()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(event["bundle"]["name"], "pump-anomaly");
    assert_eq!(event["bundle"]["version_number"], 1);
    let names: Vec<&str> = event["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(names.contains(&"gw1") && names.contains(&"gw2"), "{event}");
    let drifting: Vec<&str> = event["drifting_columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(drifting.contains(&"pump1.vibration:rms"), "{event}");
    assert!(event["more"]["cli"]
        .as_str()
        .unwrap()
        .starts_with("fleet-server drift show"));
    // Once per episode: more drifting buckets do not run it again. Three more intervals per
    // device (15 s) hold at least one more whole 10 s bucket.
    let stored = || -> usize {
        server
            .devices()
            .iter()
            .map(|dev| {
                server
                    .cli(&["device", "drift", dev["id"].as_str().unwrap_or_default()])
                    .lines()
                    .count()
            })
            .sum()
    };
    let before = stored();
    server.wait(
        "three more drift intervals per device",
        Duration::from_secs(90),
        || (stored() >= before + 6).then_some(()),
    );
    server.cli(&["drift", "evaluate"]);
    let hooks = std::fs::read_to_string(&hook_out).unwrap();
    assert_eq!(
        hooks.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{hooks}"
    );
    let events = server.cli(&["drift", "events"]);
    assert_eq!(events.lines().count(), 1, "{events}");
    for a in &mut agents {
        assert!(a.terminate(Duration::from_secs(20)), "{}", a.log_tail());
    }
    // The fleet view merges both devices' records: its counts are the sums of what each
    // device reported, and it is scored against the registry's reference.
    let per_device: Vec<Value> = server
        .devices()
        .iter()
        .flat_map(|dev| {
            server
                .cli(&["device", "drift", dev["id"].as_str().unwrap()])
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let view: Value = serde_json::from_str(
        server
            .cli(&[
                "drift",
                "show",
                "--bundle",
                "pump-anomaly",
                "--select",
                "site=a",
            ])
            .lines()
            .next()
            .expect("a fleet view"),
    )
    .unwrap();
    assert_eq!(view["devices"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(view["records"].as_u64().unwrap() as usize, per_device.len());
    let windows: u64 = per_device
        .iter()
        .map(|r| r["windows"].as_u64().unwrap())
        .sum();
    assert_eq!(view["windows"].as_u64().unwrap(), windows);
    assert_eq!(view["scored"], true);
    let col = |v: &Value, name: &str| -> Value {
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    let rms = col(&view, "pump1.vibration:rms");
    let count: u64 = per_device
        .iter()
        .map(|r| col(r, "pump1.vibration:rms")["count"].as_u64().unwrap())
        .sum();
    assert_eq!(rms["count"].as_u64().unwrap(), count);
    assert_eq!(rms["drifting"], true, "{rms}");
    assert!(rms["psi"].as_f64().unwrap() > 0.25, "{rms}");
}
