//! MQTT against Mosquitto (an independent broker), with mosquitto_pub as the publisher:
//! plain and JSON payloads, timestamps, wildcard tag names, malformed payloads, user/password,
//! mutual TLS (and a rogue certificate), broker restarts, QoS 1 messages queued by the
//! broker while the agent was away, an oversize (poison) message, and a fast replay.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_sources::mqtt::{MqttSourceConfig, MqttSubscriber};
use edge_sources::source::BadMessage;
use edge_wire::{Quality, Value};
use interop_tests::*;

const TAGS: &str = r#"
[[tags]]
name = "flow"
topic = "plant/line1/flow"
[[tags]]
name = "line1.temperature"
topic = "plant/line1/json"
json_pointer = "/data/temp"
timestamp_pointer = "/ts"
[[tags]]
name = "line1.running"
topic = "plant/line1/json"
json_pointer = "/data/on"
[[tags]]
name = "{1}.pressure"
topic = "plant/+/pressure"
"#;

fn config(broker: &str, extra_top: &str) -> MqttSourceConfig {
    toml_config(&format!(
        "name = \"broker\"\n{extra_top}\n[broker]\n{broker}\nreconnect = {{ initial = \"100ms\", max = \"1s\" }}\n{TAGS}"
    ))
}

fn anon(port: u16) -> String {
    format!("url = \"mqtt://127.0.0.1:{port}\"")
}

async fn subscribed(h: &mut Harness, port: u16, extra: &[&str]) {
    // Publish until the subscription is in place (the first message may precede SUBACK).
    for _ in 0..100 {
        mqtt_publish(port, "plant/line1/flow", "-1", extra);
        let got = h.collect_for(Duration::from_millis(100)).await;
        if got
            .iter()
            .any(|s| &*s.tag == "flow" && s.value == Value::Int(-1))
        {
            return;
        }
    }
    panic!("subscription never delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_json_timestamps_and_wildcard_names() {
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let mut h = Harness::start(
        "broker",
        Box::new(MqttSubscriber::new(
            config(&anon(b.anon), ""),
            "it-1".into(),
        )),
    );
    subscribed(&mut h, b.anon, &[]).await;
    mqtt_publish(b.anon, "plant/line1/flow", "42.5", &[]);
    let s = h
        .wait_for(Duration::from_secs(5), "flow 42.5", |s| {
            &*s.tag == "flow" && s.value == Value::Float(42.5)
        })
        .await;
    assert_eq!(s.quality, Quality::Good);
    mqtt_publish(
        b.anon,
        "plant/line1/json",
        r#"{"ts":"2026-11-27T05:00:00.250Z","data":{"temp":61.25,"on":true}}"#,
        &[],
    );
    let t = h
        .wait_for(Duration::from_secs(5), "temperature", |s| {
            &*s.tag == "line1.temperature"
        })
        .await;
    assert_eq!(
        (t.value.clone(), t.quality),
        (Value::Float(61.25), Quality::Good)
    );
    assert_eq!(
        t.ts_ns, 1_795_755_600_250_000_000,
        "timestamp from the payload"
    );
    let r = h
        .wait_for(Duration::from_secs(5), "running", |s| {
            &*s.tag == "line1.running"
        })
        .await;
    assert_eq!(r.value, Value::Bool(true));
    mqtt_publish(b.anon, "plant/pumpA/pressure", "3.5", &[]);
    let p = h
        .wait_for(Duration::from_secs(5), "pumpA.pressure", |s| {
            &*s.tag == "pumpA.pressure"
        })
        .await;
    assert_eq!(p.value, Value::Float(3.5));
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_payloads_are_bad_quality_and_the_source_carries_on() {
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let mut h = Harness::start(
        "broker",
        Box::new(MqttSubscriber::new(
            config(&anon(b.anon), ""),
            "it-2".into(),
        )),
    );
    subscribed(&mut h, b.anon, &[]).await;
    for (topic, payload, tag) in [
        ("plant/line1/flow", "hot", "flow"),
        ("plant/line1/flow", "NaN", "flow"),
        ("plant/line1/flow", "inf", "flow"),
        ("plant/line1/flow", "1e999", "flow"),
        (
            "plant/line1/json",
            "{\"data\": {\"temp\": ",
            "line1.temperature",
        ),
        (
            "plant/line1/json",
            r#"{"data":{"temp":"warm","on":true}}"#,
            "line1.temperature",
        ),
        ("plant/line1/json", r#"{"other":1}"#, "line1.temperature"),
    ] {
        mqtt_publish(b.anon, topic, payload, &[]);
        let s = h
            .wait_for(Duration::from_secs(5), tag, |s| &*s.tag == tag)
            .await;
        assert_eq!(
            s.quality,
            Quality::Bad,
            "{payload} must give a bad sample, got {s:?}"
        );
    }
    // A bad timestamp keeps the value but flags it.
    mqtt_publish(
        b.anon,
        "plant/line1/json",
        r#"{"ts":"yesterday","data":{"temp":20.0,"on":false}}"#,
        &[],
    );
    let s = h
        .wait_for(Duration::from_secs(5), "temp with bad ts", |s| {
            &*s.tag == "line1.temperature"
        })
        .await;
    assert_eq!(
        (s.value.clone(), s.quality),
        (Value::Float(20.0), Quality::Uncertain)
    );
    mqtt_publish(b.anon, "plant/line1/flow", "7", &[]);
    h.wait_for(
        Duration::from_secs(5),
        "good flow after the bad ones",
        |s| &*s.tag == "flow" && s.value == Value::Int(7),
    )
    .await;
    // Every bad payload is counted under its reason, the non-finite numbers too.
    assert!(h.stat(|s| &s.errors) >= 8, "{}", h.stat(|s| &s.errors));
    for (why, n) in [
        (BadMessage::NotANumber, 1),
        (BadMessage::NotFinite, 3),
        (BadMessage::BadJson, 1),
        (BadMessage::WrongType, 1),
        (BadMessage::Missing, 1),
        (BadMessage::BadTimestamp, 1),
        (BadMessage::Oversize, 0),
    ] {
        assert_eq!(h.stats.bad_messages(why), n, "{}", why.name());
    }
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn username_password_accepted_and_wrong_password_refused() {
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let good = format!(
        "url = \"mqtt://127.0.0.1:{}\"\nusername = \"edge\"\npassword = \"edge-pass\"",
        b.userpass
    );
    let mut h = Harness::start(
        "ok",
        Box::new(MqttSubscriber::new(config(&good, ""), "it-3".into())),
    );
    subscribed(&mut h, b.userpass, &["-u", "edge", "-P", "edge-pass"]).await;
    h.stop().await.unwrap();

    let bad = format!(
        "url = \"mqtt://127.0.0.1:{}\"\nusername = \"edge\"\npassword = \"nope\"",
        b.userpass
    );
    let mut h = Harness::start(
        "bad",
        Box::new(MqttSubscriber::new(config(&bad, ""), "it-4".into())),
    );
    let s = h
        .wait_for(Duration::from_secs(5), "bad quality", |s| {
            s.quality == Quality::Bad
        })
        .await;
    assert_eq!(s.value, Value::Null);
    h.wait_stats(
        Duration::from_secs(10),
        "the refusal counted, not connected",
        |s| s.errors.load(std::sync::atomic::Ordering::Relaxed) >= 1 && !s.is_connected(),
    )
    .await;
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_the_right_certificate_only() {
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let c = b.certs.display();
    let tls = format!(
        "url = \"mqtts://127.0.0.1:{}\"\nca_file = \"{c}/ca.crt\"\ncert_file = \"{c}/client.crt\"\nkey_file = \"{c}/client.key\"",
        b.mtls
    );
    let pub_tls = [
        "--cafile".to_string(),
        format!("{c}/ca.crt"),
        "--cert".to_string(),
        format!("{c}/client.crt"),
        "--key".to_string(),
        format!("{c}/client.key"),
    ];
    let pub_tls: Vec<&str> = pub_tls.iter().map(String::as_str).collect();
    let mut h = Harness::start(
        "tls",
        Box::new(MqttSubscriber::new(config(&tls, ""), "it-5".into())),
    );
    subscribed(&mut h, b.mtls, &pub_tls).await;
    h.stop().await.unwrap();

    let rogue = format!(
        "url = \"mqtts://127.0.0.1:{}\"\nca_file = \"{c}/ca.crt\"\ncert_file = \"{c}/rogue.crt\"\nkey_file = \"{c}/rogue.key\"",
        b.mtls
    );
    let mut h = Harness::start(
        "rogue",
        Box::new(MqttSubscriber::new(config(&rogue, ""), "it-6".into())),
    );
    h.wait_for(Duration::from_secs(5), "bad quality", |s| {
        s.quality == Quality::Bad
    })
    .await;
    mqtt_publish(b.mtls, "plant/line1/flow", "1", &pub_tls);
    let got = h.collect_for(Duration::from_secs(1)).await;
    assert!(
        got.iter().all(|s| s.quality == Quality::Bad),
        "a rogue certificate must not get data"
    );
    assert!(!h.stats.is_connected());
    h.stop().await.unwrap();

    // A CA that did not sign the broker's certificate: the handshake fails on our side.
    let wrong_ca = format!(
        "url = \"mqtts://127.0.0.1:{}\"\nca_file = \"{c}/rogue-ca.crt\"",
        b.mtls
    );
    let mut h = Harness::start(
        "wrong-ca",
        Box::new(MqttSubscriber::new(config(&wrong_ca, ""), "it-7".into())),
    );
    h.wait_for(Duration::from_secs(5), "bad quality", |s| {
        s.quality == Quality::Bad
    })
    .await;
    assert!(!h.stats.is_connected());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_marks_tags_bad_then_resubscribes() {
    let dir = tempdir();
    let mut b = mosquitto(dir.path());
    let mut h = Harness::start(
        "broker",
        Box::new(MqttSubscriber::new(
            config(&anon(b.anon), ""),
            "it-8".into(),
        )),
    );
    subscribed(&mut h, b.anon, &[]).await;
    b.peer.kill();
    h.wait_for(
        Duration::from_secs(10),
        "bad flow while the broker is down",
        |s| &*s.tag == "flow" && s.quality == Quality::Bad,
    )
    .await;
    b.peer.restart(); // persistence is off: the broker forgot the subscription
    subscribed(&mut h, b.anon, &[]).await;
    assert!(h.stat(|s| &s.reconnects) >= 1);
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn qos1_messages_sent_while_the_agent_was_away_are_delivered() {
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let cfg = config(
        &format!(
            "{}\nclient_id = \"persistent-1\"\nclean_session = false",
            anon(b.anon)
        ),
        "qos = 1",
    );
    let mut h = Harness::start(
        "broker",
        Box::new(MqttSubscriber::new(cfg.clone(), "x".into())),
    );
    subscribed(&mut h, b.anon, &[]).await;
    h.stop().await.unwrap();
    // Agent away: the broker queues QoS 1 messages for its persistent session.
    for i in 0..20 {
        mqtt_publish(b.anon, "plant/line1/flow", &format!("{}", 1000 + i), &[]);
    }
    let mut h = Harness::start("broker", Box::new(MqttSubscriber::new(cfg, "x".into())));
    let mut got = Vec::new();
    while got.len() < 20 {
        let s = h
            .wait_for(Duration::from_secs(10), "queued messages", |s| {
                &*s.tag == "flow"
            })
            .await;
        if let Value::Int(v) = s.value {
            if v >= 1000 {
                got.push(v);
            }
        }
    }
    assert_eq!(
        got,
        (1000..1020).collect::<Vec<_>>(),
        "all queued messages, in order"
    );
    h.stop().await.unwrap();
}

fn persistent(port: u16, id: &str) -> MqttSourceConfig {
    config(
        &format!(
            "{}\nclient_id = \"{id}\"\nclean_session = false",
            anon(port)
        ),
        "qos = 1",
    )
}

/// A 1 MB QoS 1 message over `max_packet_size` (256 KiB by default) on a persistent session:
/// acknowledged, counted as oversize, and the messages after it flow; no reconnect loop, and
/// a new run of the same session does not get it again.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_message_is_acknowledged_counted_and_later_messages_flow() {
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let cfg = persistent(b.anon, "poison-1");
    let mut h = Harness::start(
        "broker",
        Box::new(MqttSubscriber::new(cfg.clone(), "x".into())),
    );
    subscribed(&mut h, b.anon, &[]).await;
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "1".repeat(1 << 20)).unwrap();
    mqtt_publish_file(b.anon, "plant/line1/flow", &big);
    mqtt_publish(b.anon, "plant/line1/flow", "42", &[]);
    h.wait_for(
        Duration::from_secs(10),
        "the message after the oversize one",
        |s| &*s.tag == "flow" && s.value == Value::Int(42),
    )
    .await;
    assert_eq!(h.stats.bad_messages(BadMessage::Oversize), 1);
    assert_eq!(
        h.stat(|s| &s.reconnects),
        0,
        "the oversize message broke the connection"
    );
    h.stop().await.unwrap();
    let mut h = Harness::start("broker", Box::new(MqttSubscriber::new(cfg, "x".into())));
    mqtt_publish(b.anon, "plant/line1/flow", "43", &[]);
    h.wait_for(Duration::from_secs(10), "the next run's message", |s| {
        &*s.tag == "flow" && s.value == Value::Int(43)
    })
    .await;
    assert_eq!(
        h.stats.bad_messages(BadMessage::Oversize),
        0,
        "the acknowledged oversize message was delivered again"
    );
    h.stop().await.unwrap();
}

/// mosquitto_pub replays 50 000 QoS 1 messages as fast as it can: every one arrives, once
/// acknowledged only after the pipeline took it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fast_replay_of_50000_qos1_messages_all_arrive() {
    const N: i64 = 50_000;
    let dir = tempdir();
    let b = mosquitto(dir.path());
    let mut h = Harness::start(
        "broker",
        Box::new(MqttSubscriber::new(
            persistent(b.anon, "replay-1"),
            "x".into(),
        )),
    );
    subscribed(&mut h, b.anon, &[]).await;
    let lines: String = (0..N).map(|i| format!("{i}\n")).collect();
    let port = b.anon;
    let publisher =
        std::thread::spawn(move || mqtt_publish_lines(port, "plant/line1/flow", &lines));
    let mut got = std::collections::BTreeSet::new();
    let mut idle = 0;
    // Until everything arrived, or nothing more came for 20 s.
    while (got.len() as i64) < N && idle < 100 {
        let batch = h.collect_for(Duration::from_millis(200)).await;
        idle = if batch.is_empty() { idle + 1 } else { 0 };
        for s in batch {
            if let (true, Value::Int(v)) = (&*s.tag == "flow", &s.value) {
                if *v >= 0 {
                    got.insert(*v);
                }
            }
        }
    }
    publisher.join().unwrap();
    let missing: Vec<i64> = (0..N).filter(|v| !got.contains(v)).take(10).collect();
    assert_eq!(
        got.len() as i64,
        N,
        "{} of {N} messages missing (first: {missing:?})",
        N - got.len() as i64
    );
    assert_eq!(h.stats.bad_messages(BadMessage::Oversize), 0);
    h.stop().await.unwrap();
}
