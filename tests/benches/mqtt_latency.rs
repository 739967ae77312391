//! End-to-end latency from measurement to MQTT delivery on loopback, against the floor of
//! the same broker and client in the same run.
//!
//! - baseline: a bare rumqttc client publishes JSON stamped with the send time, QoS 1, 10 Hz;
//!   a subscriber on the same Mosquitto measures receive time − stamp;
//! - edge-agent: the real binary on the simulated plant (10 Hz, 5 tags) with a JSON MQTT
//!   output; the subscriber measures receive time − sample timestamp (`ts`, ms). Every record
//!   goes through the outbox and is published only once durable, so the group-commit
//!   interval bounds the latency: measured at the default (500 ms) and at 20 ms.
//!
//! Run: `cargo build --release -p edge-agent && cargo bench -p interop-tests --bench
//! mqtt_latency` (needs tests/peers/setup.sh).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interop_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const SECONDS: u64 = 20;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Collects latencies (µs) of messages on `filter` for `d`; `stamp` reads the send time (µs).
async fn subscribe(
    port: u16,
    filter: &str,
    d: Duration,
    stamp: fn(&serde_json::Value) -> Option<i64>,
) -> Vec<i64> {
    let mut o = MqttOptions::new(format!("lat-sub-{}", now_us()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 1000);
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, ev.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = e {
            let now = now_us();
            if let Some(t) = serde_json::from_slice(&p.payload)
                .ok()
                .as_ref()
                .and_then(stamp)
            {
                out.push(now - t);
            }
        }
    }
    out
}

fn pct(v: &mut [i64], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

async fn baseline(port: u16) -> Vec<i64> {
    let sub = tokio::spawn(subscribe(
        port,
        "bench/direct",
        Duration::from_secs(SECONDS),
        |v| v["ts_us"].as_i64(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, mut ev) = AsyncClient::new(MqttOptions::new("lat-pub", "127.0.0.1", port), 100);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..(SECONDS - 2) * 10 {
        tick.tick().await;
        let body = serde_json::json!({"ts_us": now_us(), "value": 1.5}).to_string();
        c.publish("bench/direct", QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    sub.await.unwrap()
}

async fn agent(port: u16, commit: &str) -> Vec<i64> {
    let dir = tempdir();
    let d = dir.path();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "lat"
data_dir = "{d}"
[[sources.simulated]]
name = "plant"
sample_interval = "100ms"
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
[outbox]
commit_interval = "{commit}"
[[outputs.mqtt]]
name = "scada"
broker = {{ url = "mqtt://127.0.0.1:{port}" }}
streams = ["samples"]
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let _agent = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    subscribe(
        port,
        "edge/lat/samples/#",
        Duration::from_secs(SECONDS),
        |v| v["ts"].as_i64().map(|ms| ms * 1000),
    )
    .await
}

fn main() {
    let dir = tempdir();
    let broker = mosquitto(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("latency measurement -> subscriber on loopback Mosquitto, {SECONDS} s each\n");
        println!("| path | messages | p50 ms | p99 ms |");
        println!("|---|---|---|---|");
        let mut base = baseline(broker.anon).await;
        let (b50, b99) = (pct(&mut base, 0.5), pct(&mut base, 0.99));
        println!(
            "| baseline: bare rumqttc publish, QoS 1 | {} | {b50:.2} | {b99:.2} |",
            base.len()
        );
        for commit in ["500ms", "20ms"] {
            let mut v = agent(broker.anon, commit).await;
            println!(
                "| edge-agent sample -> outbox (commit {commit}) -> MQTT | {} | {:.2} | {:.2} |",
                v.len(),
                pct(&mut v, 0.5),
                pct(&mut v, 0.99)
            );
        }
    });
}
