//! The agent's MQTT outputs against Mosquitto, checked by an independent subscriber
//! (paho-mqtt + the Eclipse Tahu Sparkplug schema, `tests/peers/spb_peer.py`):
//! plain JSON topics, retained status and last will, alarms, backfill after a broker outage;
//! Sparkplug B births, aliases, bdSeq, seq wrap, rebirth, primary-host STATE gating with
//! historical backfill, and NDEATH on a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use interop_tests::*;
use serde_json::Value;

const SECS: Duration = Duration::from_secs(30);

/// An agent on the simulated plant (pump1's bearing wears after 20 simulated seconds, so the
/// demo model raises its alarm) with one MQTT output. `time_scale` > 1 runs the plant faster.
fn agent_config(
    d: &Path,
    port: u16,
    time_scale: f64,
    interval: &str,
    output: &str,
) -> std::path::PathBuf {
    let ws = workspace();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "gw1"
data_dir = "{d}"

[[sources.simulated]]
name = "plant"
sample_interval = "{interval}"
time_scale = {time_scale:.1}
seed = 7
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
load = 0.7
[[sources.simulated.faults]]
asset = "pump1"
kind = "bearing_wear"
start = "20s"
ramp = "10s"
magnitude = 4.0

[bundles]
trusted_keys = ["{ws}/examples/demo/demo.pub.pem"]

[[models]]
name = "pump1-anomaly"
bundle = "{ws}/examples/demo/pump-anomaly.bundle"

[outbox]
commit_interval = "100ms"

[metrics]
listen = "127.0.0.1:{metrics}"

[[outputs.mqtt]]
name = "scada"
broker = {{ url = "mqtt://127.0.0.1:{port}", reconnect = {{ initial = "100ms", max = "500ms" }} }}
{output}
"#,
            d = d.display(),
            ws = ws.display(),
            metrics = free_port(),
        ),
    )
    .unwrap();
    cfg
}

fn start_agent(d: &Path, cfg: &Path) -> Peer {
    let p = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    p
}

fn json_body(m: &Value) -> Option<Value> {
    m["text"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
}

fn on(msgs: &[Value], topic: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m["topic"] == topic)
        .filter_map(json_body)
        .collect()
}

#[test]
fn json_topics_status_will_alarms_and_backfill_after_a_network_outage() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    let listener = MqttListener::start(d, broker.anon);
    // The agent reaches the broker through a link that can be cut, at 50 kB/s (a few times
    // what the live data needs): after an outage the backlog takes a second or more to
    // drain, so live values must be seen to pass it.
    let link = TcpProxy::start_throttled(broker.anon, 50_000);
    let cfg = agent_config(
        d,
        link.port,
        5.0,
        "100ms",
        "format = \"json\"\ntopic_prefix = \"edge\"",
    );
    let mut agent = start_agent(d, &cfg);

    // Live data on the documented topics, with the documented fields.
    let temp = "edge/gw1/samples/pump1.temperature";
    listener.wait_for(
        SECS,
        "live samples, predictions, features and the online status",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            !on(m, temp).is_empty()
                && !on(m, "edge/gw1/predictions/pump1-anomaly").is_empty()
                && !on(m, "edge/gw1/features/pump1-anomaly").is_empty()
                && on(m, "edge/gw1/status")
                    .iter()
                    .any(|s| s["state"] == "online")
        },
    );
    let msgs = listener.messages();
    let s = &on(&msgs, temp)[0];
    assert!(s["value"].is_f64() && s["quality"] == "good" && s["ts"].is_i64() && s["seq"].is_u64());
    assert!(
        s.get("historical").is_none(),
        "live values are not historical"
    );
    let p = &on(&msgs, "edge/gw1/predictions/pump1-anomaly")[0];
    assert_eq!(p["model"], "pump1-anomaly");
    assert_eq!(p["model_version"], "1.0.0");
    assert!(p["score"].is_f64() && p["window_start"].as_i64() < p["ts"].as_i64());
    let f = &on(&msgs, "edge/gw1/features/pump1-anomaly")[0];
    assert!(f["features"]["pump1.vibration:rms"].is_f64());
    let st = on(&msgs, "edge/gw1/status");
    // Once per connect, then every 30 s (it went out twice on every connect).
    for w in st.windows(2) {
        let gap = w[1]["ts"].as_i64().unwrap() - w[0]["ts"].as_i64().unwrap();
        assert!(
            gap >= 20_000,
            "status published twice {gap} ms apart: {st:?}"
        );
    }
    assert_eq!(st[0]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st[0]["models"]["pump1-anomaly"], 1);
    assert!(st[0]["outbox"]["samples"]["dropped"].is_u64());

    // The outbox and the model report through the metrics endpoint.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mport: u16 = text
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let metrics = http_get(mport, "/metrics");
    for want in [
        "edge_outbox_dropped_total{stream=\"samples\"} 0",
        "edge_outbox_records{stream=\"samples\"}",
        "edge_model_predictions_total{model=\"pump1-anomaly\"}",
    ] {
        assert!(
            metrics.contains(want),
            "{want} missing from /metrics:\n{metrics}"
        );
    }

    // The bearing wears: the alarm is raised, retained.
    listener.wait_for(
        Duration::from_secs(60),
        "a raised alarm",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            on(m, "edge/gw1/alarms/pump1-anomaly")
                .iter()
                .any(|a| a["state"] == "raised")
        },
    );
    let alarm_msg = listener
        .messages()
        .into_iter()
        .find(|m| m["topic"] == "edge/gw1/alarms/pump1-anomaly")
        .unwrap();
    assert_eq!(alarm_msg["retain"], false, "delivered live to a subscriber");

    // Network outage: the agent keeps measuring into the outbox; afterwards the backlog
    // arrives marked historical, and nothing is missing.
    link.cut();
    hold_fault(Duration::from_secs(3), "broker link cut");
    let before = listener.messages().len();
    link.restore();
    listener.wait_for(
        SECS,
        "the historical backfill",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            m[before.min(m.len())..]
                .iter()
                .filter_map(|x| (x["topic"] == temp).then(|| json_body(x)).flatten())
                .any(|b| b["historical"] == true)
        },
    );
    // Live values resume (not historical).
    listener.wait_for(
        SECS,
        "live (not historical) data to resume",
        String::new,
        |m| {
            m.iter()
                .rev()
                .take(200)
                .filter_map(|x| (x["topic"] == temp).then(|| json_body(x)).flatten())
                .any(|b| b.get("historical").is_none())
        },
    );
    // Every sample record of the stream arrives: the sequence numbers seen become contiguous.
    let sample_seqs = |m: &[Value]| -> BTreeSet<u64> {
        m.iter()
            .filter(|m| {
                m["topic"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("edge/gw1/samples/"))
            })
            .filter_map(|m| json_body(m)?["seq"].as_u64())
            .collect()
    };
    let gaps = |seqs: &BTreeSet<u64>| -> Vec<u64> {
        let hi = seqs.last().copied().unwrap_or(0);
        (1..=hi).filter(|s| !seqs.contains(s)).collect()
    };
    // A timeout here is judged by the assertion below, which names the missing records.
    let _ = listener.poll_for(SECS, |m| gaps(&sample_seqs(m)).is_empty());
    let seqs = sample_seqs(&listener.messages());
    assert_eq!(seqs.first(), Some(&1));
    let missing = gaps(&seqs);
    assert!(
        missing.is_empty(),
        "sample records lost across the outage: {missing:?}"
    );
    // Live first: after the reconnect, fresh values arrived before the backlog was through.
    let after: Vec<bool> = listener.messages()[before..]
        .iter()
        .filter(|m| {
            m["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("edge/gw1/samples/"))
        })
        .filter_map(|m| Some(json_body(m)?["historical"] == true))
        .collect();
    let first_live = after.iter().position(|h| !h);
    let last_historical = after.iter().rposition(|h| *h);
    assert!(
        matches!((first_live, last_historical), (Some(l), Some(h)) if l < h),
        "live values waited behind the backlog: first live message {first_live:?}, last historical {last_historical:?}"
    );

    // A crash: the broker publishes the last will (retained offline status).
    agent.kill();
    listener.wait_for(
        SECS,
        "the last will (status offline) after kill -9",
        String::new,
        |m| {
            on(m, "edge/gw1/status")
                .last()
                .is_some_and(|s| s["state"] == "offline")
        },
    );
}

fn spb(msgs: &[Value]) -> Vec<(String, Value)> {
    msgs.iter()
        .filter(|m| {
            m["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("spBv1.0/plant/"))
        })
        .map(|m| {
            (
                m["topic"].as_str().unwrap().to_string(),
                m["payload"].clone(),
            )
        })
        .collect()
}

/// `msgs` (listener lines with `raw` payloads) decoded by Eclipse Tahu's JavaScript decoder
/// (`tests/sparkplug-js`, the library behind Node-RED's Sparkplug nodes): one JSON object
/// per message, `{"topic", "seq", "metrics": [{"name", "alias", "datatype", "value"}]}`.
fn tahu_js(msgs: &[&Value]) -> Vec<Value> {
    let dir = workspace().join("tests/sparkplug-js");
    assert!(
        dir.join("node_modules/sparkplug-payload").exists(),
        "Eclipse Tahu's JS decoder is missing: run tests/peers/setup.sh (npm ci in tests/sparkplug-js)"
    );
    let input: String = msgs
        .iter()
        .map(|m| {
            format!(
                "{}\t{}\n",
                m["topic"].as_str().unwrap(),
                m["raw"].as_str().expect("raw payload")
            )
        })
        .collect();
    let out = interop_tests::fleet::run_with_input(
        std::process::Command::new("node")
            .arg(dir.join("decode.js"))
            .current_dir(&dir),
        &input,
        "Tahu JS decoder",
    );
    assert!(
        out.status.success(),
        "Tahu JS decoder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metric<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["metrics"].as_array()?.iter().find(|m| m["name"] == name)
}

fn bdseq(p: &Value) -> Option<u64> {
    metric(p, "bdSeq")?["long_value"].as_str()?.parse().ok()
}

fn seq(p: &Value) -> Option<u64> {
    p["seq"].as_str()?.parse().ok()
}

fn state(port: u16, online: bool) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    mqtt_publish(
        port,
        "spBv1.0/STATE/scada",
        &format!(r#"{{"online": {online}, "timestamp": {ts}}}"#),
        &["-r"],
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn sparkplug_births_rebirth_state_gating_backfill_and_death() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    let port = broker.anon;
    state(port, true);
    let listener = MqttListener::start(d, port);
    let cfg = agent_config(
        d,
        port,
        1.0,
        "50ms",
        "format = \"sparkplug\"\nsparkplug = { group_id = \"plant\", edge_node_id = \"gw1\", primary_host_id = \"scada\" }",
    );
    let mut agent = start_agent(d, &cfg);

    // NBIRTH (bdSeq 0 on a fresh node, seq 0), DBIRTHs of the source and the model, then
    // DDATA by alias: and past 256 messages, so seq wraps.
    listener.wait_for(
        Duration::from_secs(60),
        "Sparkplug data (the model's DDATA, 300 messages)",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            let s = spb(m);
            s.iter()
                .any(|(t, _)| t == "spBv1.0/plant/DDATA/gw1/pump1-anomaly")
                && s.len() > 300
        },
    );
    let msgs = spb(&listener.messages());
    let (t0, nbirth) = &msgs[0];
    assert_eq!(t0, "spBv1.0/plant/NBIRTH/gw1");
    assert_eq!((bdseq(nbirth), seq(nbirth)), (Some(0), Some(0)));
    assert_eq!(
        metric(nbirth, "Node Control/Rebirth").unwrap()["boolean_value"],
        false
    );
    assert!(metric(nbirth, "Outbox/samples/Backlog").is_some());
    // Every data metric's alias was declared by its device's DBIRTH; types as documented.
    let mut aliases: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    let mut data = 0;
    for (t, p) in &msgs {
        let dev = t.rsplit('/').next().unwrap().to_string();
        if t.contains("/DBIRTH/") {
            let a = aliases.entry(dev).or_default();
            for m in p["metrics"].as_array().unwrap() {
                a.insert(m["alias"].as_str().unwrap().to_string(), m.clone());
            }
        } else if t.contains("/DDATA/") {
            for m in p["metrics"].as_array().unwrap() {
                assert!(m.get("name").is_none(), "DDATA uses aliases only");
                let alias = m["alias"].as_str().unwrap();
                assert!(
                    aliases.get(&dev).is_some_and(|a| a.contains_key(alias)),
                    "alias {alias} of {dev} not born"
                );
                data += 1;
            }
        }
    }
    assert!(data > 100);
    let plant = aliases
        .values()
        .flat_map(|a| a.values())
        .collect::<Vec<_>>();
    let by_name = |n: &str| plant.iter().find(|m| m["name"] == n).copied();
    assert_eq!(
        by_name("pump1.temperature").unwrap()["datatype_name"],
        "Double"
    );
    assert_eq!(by_name("Score").unwrap()["datatype_name"], "Double");
    assert_eq!(
        by_name("Window Start").unwrap()["datatype_name"],
        "DateTime"
    );
    assert_eq!(by_name("Model/Version").unwrap()["datatype_name"], "String");
    assert_eq!(
        by_name("Model/Version Number").unwrap()["datatype_name"],
        "UInt64"
    );
    assert_eq!(
        by_name("Features/pump1.vibration:rms").unwrap()["datatype_name"],
        "Double"
    );
    assert_eq!(
        by_name("pump1.temperature").unwrap()["properties"]["keys"][0],
        "Quality"
    );
    // Node-RED's decoder (Eclipse Tahu JS) reads every data value: it needs the datatype in
    // DDATA too (the spec says SHOULD NOT send it there; compatibility wins).
    let raw = listener.messages();
    let ddata: Vec<&Value> = raw
        .iter()
        .filter(|m| m["topic"].as_str().is_some_and(|t| t.contains("/DDATA/")))
        .take(200)
        .collect();
    let decoded = tahu_js(&ddata);
    assert_eq!(decoded.len(), ddata.len());
    let mut values = 0;
    for (ours, tahu) in ddata.iter().zip(&decoded) {
        let metrics = ours["payload"]["metrics"].as_array().unwrap();
        for (m, t) in metrics.iter().zip(tahu["metrics"].as_array().unwrap()) {
            assert!(
                m["datatype"].is_string() || m["datatype"].is_number(),
                "{m}"
            );
            if m["is_null"] == true {
                continue;
            }
            assert!(!t["value"].is_null(), "Tahu JS read no value: {t} ({m})");
            values += 1;
        }
    }
    assert!(values > 100, "{values} values read by Tahu JS");

    // seq: +1 per message from NBIRTH on, wrapping 255 -> 0.
    let seqs: Vec<u64> = msgs.iter().filter_map(|(_, p)| seq(p)).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], (w[0] + 1) % 256, "seq must increase by one and wrap");
    }
    assert!(seqs.contains(&255) && seqs[1..].contains(&0), "seq wrapped");

    // Rebirth on command: NBIRTH with the same bdSeq, seq 0, and every device again.
    let cmd = d.join("rebirth.bin");
    let st = std::process::Command::new(python())
        .arg(workspace().join("tests/peers/spb_peer.py"))
        .args(["rebirth", cmd.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let n_before = spb(&listener.messages()).len();
    mqtt_publish_file(port, "spBv1.0/plant/NCMD/gw1", &cmd);
    listener.wait_for(
        SECS,
        "a rebirth (NBIRTH and both DBIRTHs)",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            let s = spb(m);
            let after = &s[n_before.min(s.len())..];
            after.iter().any(|(t, _)| t == "spBv1.0/plant/NBIRTH/gw1")
                && after
                    .iter()
                    .any(|(t, _)| t == "spBv1.0/plant/DBIRTH/gw1/plant")
                && after
                    .iter()
                    .any(|(t, _)| t == "spBv1.0/plant/DBIRTH/gw1/pump1-anomaly")
        },
    );
    let s = spb(&listener.messages());
    let reborn = s[n_before..]
        .iter()
        .find(|(t, _)| t.ends_with("/NBIRTH/gw1"))
        .unwrap();
    assert_eq!((bdseq(&reborn.1), seq(&reborn.1)), (Some(0), Some(0)));

    // The primary host goes offline: data stops and waits in the outbox.
    state(port, false);
    agent.wait_log(
        SECS,
        "the agent to see the host go",
        "primary host offline",
        1,
    );
    let offline_from = now_ms();
    let n_off = spb(&listener.messages()).len();
    // The host stays away for 3 s of plant data (the fault schedule).
    hold_fault(Duration::from_secs(3), "primary host offline");
    let offline_to = now_ms();
    let during = spb(&listener.messages()).len() - n_off;
    assert_eq!(during, 0, "published while the primary host was offline");
    // Back online: a fresh birth, then the backlog as historical with measurement times,
    // then live data again.
    state(port, true);
    listener.wait_for(
        SECS,
        "the historical backfill and live data after the host came back",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            let s = spb(m);
            let after = &s[n_off.min(s.len())..];
            after.iter().any(|(t, p)| {
                t.contains("/DDATA/")
                    && p["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m["is_historical"] == true)
            }) && after.iter().rev().take(20).any(|(t, p)| {
                t.contains("/DDATA/gw1/plant")
                    && p["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|m| m.get("is_historical").is_none())
            })
        },
    );
    let s = spb(&listener.messages());
    let after = &s[n_off..];
    assert_eq!(
        after[0].0, "spBv1.0/plant/NBIRTH/gw1",
        "a birth comes first"
    );
    // The source's DBIRTH carries the last value measured while the host was away (it
    // carried the value from before the outage).
    let dbirth = after
        .iter()
        .find(|(t, _)| t == "spBv1.0/plant/DBIRTH/gw1/plant")
        .expect("the source's DBIRTH");
    let temp_ts: u64 = metric(&dbirth.1, "pump1.temperature").unwrap()["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        temp_ts + 500 >= offline_to,
        "the birth's value is from {temp_ts}, well before the host's absence ended at {offline_to}"
    );
    let historical_ts: Vec<u64> = after
        .iter()
        .filter(|(t, _)| t.contains("/DDATA/gw1/plant"))
        .flat_map(|(_, p)| p["metrics"].as_array().unwrap().clone())
        .filter(|m| m["is_historical"] == true)
        .filter_map(|m| m["timestamp"].as_str()?.parse().ok())
        .collect();
    // The backlog holds what was measured while the host was away, stamped with its
    // measurement time, in order.
    let inside = historical_ts
        .iter()
        .filter(|t| (offline_from..=offline_to).contains(*t))
        .count();
    assert!(
        inside > 50,
        "{inside} historical values measured during the outage ({offline_from}..{offline_to}): {:?} {:?}",
        historical_ts, after.iter().map(|(t, p)| (t.clone(), p["metrics"].as_array().map(|a| a.iter().map(|m| (m["timestamp"].clone(), m.get("is_historical").is_some())).collect::<Vec<_>>()))).collect::<Vec<_>>()
    );
    assert!(
        historical_ts.windows(2).all(|w| w[0] <= w[1]),
        "backlog out of order"
    );

    // Crash: the broker sends the NDEATH will with the bdSeq of the current session.
    agent.kill();
    listener.wait_for(SECS, "an NDEATH after kill -9", String::new, |m| {
        spb(m).iter().any(|(t, _)| t == "spBv1.0/plant/NDEATH/gw1")
    });
    let death = spb(&listener.messages())
        .into_iter()
        .find(|(t, _)| t.ends_with("/NDEATH/gw1"))
        .unwrap();
    assert_eq!(bdseq(&death.1), Some(0));
    // Restart: the next session's bdSeq is 1 (persisted across the crash).
    let n = spb(&listener.messages()).len();
    agent.restart();
    listener.wait_for(SECS, "an NBIRTH after the restart", String::new, |m| {
        spb(m)[n.min(spb(m).len())..]
            .iter()
            .any(|(t, _)| t.ends_with("/NBIRTH/gw1"))
    });
    let s = spb(&listener.messages());
    let nb = s[n..]
        .iter()
        .find(|(t, _)| t.ends_with("/NBIRTH/gw1"))
        .unwrap();
    assert_eq!(bdseq(&nb.1), Some(1));
    // A clean stop sends NDEATH with that bdSeq.
    let n = spb(&listener.messages()).len();
    assert!(
        agent.terminate(Duration::from_secs(6)),
        "agent did not stop on SIGTERM"
    );
    listener.wait_for(SECS, "an NDEATH on the clean stop", String::new, |m| {
        spb(m)[n.min(spb(m).len())..]
            .iter()
            .any(|(t, _)| t.ends_with("/NDEATH/gw1"))
    });
    let death = spb(&listener.messages())[n..]
        .iter()
        .find(|(t, _)| t.ends_with("/NDEATH/gw1"))
        .cloned()
        .unwrap();
    assert_eq!(bdseq(&death.1), Some(1));
}

#[test]
fn outputs_publish_over_mutual_tls_and_with_a_password() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    // The subscriber sits on the anonymous listener of the same broker.
    let listener = MqttListener::start(d, broker.anon);
    let c = broker.certs.display();
    let cfg = agent_config(
        d,
        broker.mtls,
        5.0,
        "100ms",
        &format!(
            r#"format = "json"
topic_prefix = "edge"
streams = ["samples"]
[outputs.mqtt.broker]
url = "mqtts://127.0.0.1:{mtls}"
ca_file = "{c}/ca.crt"
cert_file = "{c}/client.crt"
key_file = "{c}/client.key"

[[outputs.mqtt]]
name = "plain-auth"
topic_prefix = "edge/auth"  # the subscriber listens on edge/#
streams = ["samples"]
[outputs.mqtt.broker]
url = "mqtt://127.0.0.1:{up}"
username = "edge"
password = "edge-pass"
"#,
            mtls = broker.mtls,
            up = broker.userpass
        ),
    );
    // The first output's inline broker table is replaced by the [outputs.mqtt.broker] above.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!(
            "broker = {{ url = \"mqtt://127.0.0.1:{}\", reconnect = {{ initial = \"100ms\", max = \"500ms\" }} }}\n",
            broker.mtls
        ),
        "",
    );
    std::fs::write(&cfg, text).unwrap();
    let agent = start_agent(d, &cfg);
    listener.wait_for(
        SECS,
        "data over mTLS and over user name/password",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            !on(m, "edge/gw1/samples/pump1.temperature").is_empty()
                && !on(m, "edge/auth/gw1/samples/pump1.temperature").is_empty()
        },
    );
}

/// SIGTERM delivers what was read to the JSON output too (the last batches stayed in the
/// outbox for the next start): the subscriber gets every sample the agent's own CSV
/// recording has.
#[test]
fn a_clean_stop_delivers_every_recorded_sample_to_the_json_output() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    let listener = MqttListener::start(d, broker.anon);
    let csv = d.join("recording.csv");
    let cfg = agent_config(
        d,
        broker.anon,
        1.0,
        "20ms",
        &format!(
            "format = \"json\"\ntopic_prefix = \"edge\"\n\n[[outputs.file]]\nname = \"recording\"\npath = \"{}\"\nformat = \"csv\"",
            csv.display()
        ),
    );
    let mut agent = start_agent(d, &cfg);
    listener.wait_for(
        SECS,
        "200 sample messages",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| {
            m.iter()
                .filter(|x| {
                    x["topic"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("edge/gw1/samples/"))
                })
                .count()
                > 200
        },
    );
    assert!(agent.terminate(SECS), "the agent did not stop on SIGTERM");
    // Every sample the recording holds (tag, measurement ms) reaches the subscriber.
    let text = std::fs::read_to_string(&csv).unwrap();
    let recorded: BTreeSet<(String, i64)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let tag = f.next()?.to_string();
            let ns: i64 = f.next()?.parse().ok()?;
            Some((tag, ns.div_euclid(1_000_000)))
        })
        .collect();
    assert!(recorded.len() > 200, "{} recorded", recorded.len());
    let published = |m: &[Value]| -> BTreeSet<(String, i64)> {
        m.iter()
            .filter_map(|x| {
                let tag = x["topic"].as_str()?.strip_prefix("edge/gw1/samples/")?;
                Some((tag.to_string(), json_body(x)?["ts"].as_i64()?))
            })
            .collect()
    };
    let all_there = listener
        .poll_for(Duration::from_secs(10), |m| {
            recorded.is_subset(&published(m))
        })
        .is_some();
    let missing: Vec<_> = recorded
        .difference(&published(&listener.messages()))
        .take(10)
        .cloned()
        .collect();
    assert!(
        all_there,
        "recorded but never published (first 10): {missing:?}; agent log:\n{}",
        agent.log_tail()
    );
}
