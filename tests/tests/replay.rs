//! `edge-agent replay` against a live agent: the same recording played into a running agent
//! (`[[sources.replay]]`) and published to Mosquitto gives, message for message, the
//! predictions `replay` writes offline — byte-identical payloads, read back by an independent
//! subscriber (paho-mqtt, `tests/peers/spb_peer.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use interop_tests::*;
use serde_json::Value;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("edge-agent"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn replay_writes_what_a_live_agent_publishes_for_the_same_recording() {
    let dir = tempdir();
    let d = dir.path();
    let rec = d.join("rec.csv");
    pump_recording(&rec, 6000, None);
    let o = agent(&["bundle", "keygen", "--out", d.join("ml").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = d.join("ml.key.pem");
    let bundle = pack_conv_net(d, &key, &rec, 1, "0.9");
    // A shadow challenger (version 2, a threshold it crosses often): compared, never
    // published.
    let challenger = pack_conv_net(d, &key, &rec, 2, "0.5, raise_after = 1");

    let broker = mosquitto(d);
    let listener = MqttListener::start(d, broker.anon);
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "gw1"
data_dir = "{d}/data"

[[sources.replay]]
name = "history"
path = "{rec}"
speed = "max"

[bundles]
trusted_keys = ["{d}/ml.pub.pem"]

[[models]]
name = "pump-conv"
bundle = "{bundle}"
when_busy = "wait"
shadow = "{challenger}"
drift_interval = "2m"

[[outputs.mqtt]]
name = "scada"
broker = {{ url = "mqtt://127.0.0.1:{port}" }}
format = "json"
topic_prefix = "edge"
streams = ["predictions", "alarms", "drift"]
"#,
            d = d.display(),
            rec = rec.display(),
            bundle = bundle.display(),
            challenger = challenger.display(),
            port = broker.anon,
        ),
    )
    .unwrap();

    // Offline first: what replay writes.
    let out = d.join("replayed");
    let o = agent(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--input",
        rec.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let offline: Vec<String> = std::fs::read_to_string(out.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // 10 min at 10 Hz, 64-point windows every 32 points.
    assert!(
        offline.len() >= 180,
        "{} predictions\n{stderr}",
        offline.len()
    );

    // Live: the same recording into a running agent, published to the broker.
    let mut live_agent = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    let topic = "edge/gw1/predictions/pump-conv";
    let payloads = |m: &[serde_json::Value]| -> Vec<String> {
        m.iter()
            .filter(|x| x["topic"] == topic)
            .filter_map(|x| x["text"].as_str().map(String::from))
            .collect()
    };
    listener.wait_for(
        Duration::from_secs(60),
        &format!("all {} predictions live", offline.len()),
        || {
            format!(
                "{} of {} predictions arrived live\n{}",
                payloads(&listener.messages()).len(),
                offline.len(),
                live_agent.log_tail()
            )
        },
        |m| payloads(m).len() >= offline.len(),
    );
    assert!(live_agent.terminate(Duration::from_secs(20)));
    let mut live = payloads(&listener.messages());
    let seq = |p: &String| {
        serde_json::from_str::<serde_json::Value>(p).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    live.sort_by_key(seq);
    live.dedup();
    assert_eq!(live.len(), offline.len(), "every window once");
    for (l, r) in live.iter().zip(&offline) {
        assert_eq!(l, r, "live payload vs replay line");
    }
    // The challenger: in the drift records' shadow summaries, in nothing else.
    let msgs = listener.messages();
    let bodies: Vec<Value> = msgs
        .iter()
        .filter_map(|m| m["text"].as_str())
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect();
    assert!(
        bodies.iter().all(|b| b["version_number"] != 2),
        "a challenger message was published"
    );
    let shadows: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["shadow"].is_object())
        .map(|b| &b["shadow"])
        .collect();
    assert!(!shadows.is_empty(), "no drift record with a shadow summary");
    assert!(shadows.iter().all(|s| s["version_number"] == 2));
    assert!(
        shadows
            .iter()
            .any(|s| s["agreement"].as_f64().is_some_and(|a| a < 1.0)),
        "{shadows:?}"
    );
}
