//! MQTT source ingest rate: how fast a subscriber drains a queue of JSON messages from
//! Mosquitto, the agent's `MqttSubscriber` against a bare rumqttc subscriber in the same run.
//!
//! Both subscribe with QoS 1 on a persistent session; a rumqttc publisher then queues
//! `N` JSON messages (`{"ts": <ms>, "data": {"temp": <f>}}`) for each, and the clock runs from
//! the subscriber's start until it has every message: the bare client counts publishes (rumqttc
//! acknowledges them itself); the agent's source decodes the value and its timestamp through
//! a `json_pointer` tag, hands the samples to a pipeline channel, and acknowledges what the
//! channel took. Each subscriber runs on a single-threaded tokio runtime (one core); the broker
//! and the publisher share the rest of the machine.
//!
//! Run: `cargo bench -p interop-tests --bench mqtt_ingest` (needs tests/peers/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use edge_sources::mqtt::{MqttSourceConfig, MqttSubscriber};
use interop_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Messages per run (below the test broker's max_queued_messages of 100 000).
const N: usize = 90_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A bare rumqttc subscriber on a persistent session: returns once it has `n` messages.
async fn bare(port: u16, id: &str, n: usize) -> Duration {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 1024);
    c.subscribe("bench/ingest", QoS::AtLeastOnce).await.unwrap();
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(_))) => got += 1,
            Ok(_) => {}
            Err(e) => panic!("bare subscriber: {e}"),
        }
    }
    let t = start.elapsed();
    let _ = c.disconnect().await;
    while let Ok(e) = ev.poll().await {
        if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
            break;
        }
    }
    t
}

fn source_config(port: u16, id: &str) -> MqttSourceConfig {
    toml_config(&format!(
        r#"
name = "ingest"
qos = 1
[broker]
url = "mqtt://127.0.0.1:{port}"
client_id = "{id}"
clean_session = false
[[tags]]
name = "temp"
topic = "bench/ingest"
json_pointer = "/data/temp"
timestamp_pointer = "/ts"
"#
    ))
}

/// The agent's source: returns once the pipeline channel got `n` samples.
async fn agent(port: u16, id: &str, n: usize) -> Duration {
    let start = Instant::now();
    let mut h = Harness::start(
        "ingest",
        Box::new(MqttSubscriber::new(source_config(port, id), id.to_string())),
    );
    let mut got = 0;
    while got < n {
        match h.next_batch().await {
            Some(batch) => got += batch.len(),
            None => panic!("the source stopped"),
        }
    }
    let t = start.elapsed();
    assert_eq!(
        h.stat(|s| &s.bad_samples),
        0,
        "bad samples in the benchmark"
    );
    let _ = h.stop().await;
    t
}

/// Creates the persistent sessions (so the broker queues for them), then publishes.
fn preload(port: u16, ids: &[&str]) {
    let rt = runtime();
    for id in ids {
        rt.block_on(async {
            let mut o = MqttOptions::new(*id, "127.0.0.1", port);
            o.set_clean_session(false);
            let (c, mut ev) = AsyncClient::new(o, 10);
            c.subscribe("bench/ingest", QoS::AtLeastOnce).await.unwrap();
            loop {
                if let Ok(Event::Incoming(Packet::SubAck(_))) = ev.poll().await {
                    break;
                }
            }
            c.disconnect().await.unwrap();
            while let Ok(e) = ev.poll().await {
                if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        });
    }
    // rumqttc publishes (QoS 1, 100 in flight): mosquitto_pub -l at full speed made this
    // Mosquitto (2.0.11) drop the publisher "due to out of memory" after ~24 000 messages.
    let ts = 1_796_000_000_000u64;
    rt.block_on(async {
        let mut o = MqttOptions::new("ingest-pub", "127.0.0.1", port);
        o.set_inflight(100);
        let (c, mut ev) = AsyncClient::new(o, 1000);
        let pubs = tokio::spawn(async move {
            for i in 0..N {
                let body = format!(
                    "{{\"ts\": {}, \"data\": {{\"temp\": {:.3}}}}}",
                    ts + i as u64,
                    20.0 + (i % 1000) as f64 / 100.0
                );
                c.publish("bench/ingest", QoS::AtLeastOnce, false, body)
                    .await
                    .unwrap();
            }
            c
        });
        let mut acked = 0;
        while acked < N {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
                acked += 1;
            }
        }
        let c = pubs.await.unwrap();
        c.disconnect().await.unwrap();
        while let Ok(e) = ev.poll().await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    });
}

fn main() {
    let dir = tempdir();
    let broker = mosquitto(dir.path());
    let port = broker.anon;
    println!("MQTT ingest: {N} queued JSON messages, QoS 1, one subscriber core\n");
    println!("| subscriber | messages | seconds | messages/s | ratio |");
    println!("|---|---|---|---|---|");
    for round in 0..2 {
        let (b, a) = (format!("bare-{round}"), format!("agent-{round}"));
        preload(port, &[&b, &a]);
        let tb = runtime().block_on(bare(port, &b, N));
        let ta = runtime().block_on(agent(port, &a, N));
        let (rb, ra) = (N as f64 / tb.as_secs_f64(), N as f64 / ta.as_secs_f64());
        println!(
            "| bare rumqttc (round {round}) | {N} | {:.2} | {rb:.0} | 1.00 |",
            tb.as_secs_f64()
        );
        println!(
            "| edge-agent MqttSubscriber, JSON pointer + timestamp (round {round}) | {N} | {:.2} | {ra:.0} | {:.2} |",
            ta.as_secs_f64(),
            ra / rb
        );
    }
}
