//! End-to-end latency from measurement to MQTT delivery on loopback, against the floor of
//! the same broker and client in the same run.
//!
//! - baseline: a bare rumqttc client publishes JSON stamped with the send time (Unix ms, the
//!   resolution of the agent's `ts`), QoS 1, 10 Hz; a subscriber on the same Mosquitto
//!   measures receive time − stamp;
//! - edge-agent samples: the real binary on the simulated plant (10 Hz, 5 tags) with a JSON
//!   MQTT output at the default commit interval; receive time − sample `ts`. Delivery is
//!   live-first, so the commit interval should not show;
//! - edge-agent predictions and alarms (the demo model, 1 s windows, the plant's bearing
//!   wears so alarms are raised): a window closes with the sample that completes it (the
//!   newest sample measured before the prediction went out, at most one sample interval
//!   before the window's end); receive time of the prediction (alarm) − that sample's `ts`.
//!
//! Run: `cargo build --release -p edge-agent && cargo bench -p interop-tests --bench
//! mqtt_latency` (needs tests/peers/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interop_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const SECONDS: u64 = 60;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One received message: receive time (µs), topic, JSON body.
type Received = (i64, String, serde_json::Value);

/// Collects the messages on `filter` for `d`.
async fn subscribe(port: u16, filter: &str, d: Duration) -> Vec<Received> {
    let mut o = MqttOptions::new(format!("lat-sub-{}", now_us()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 1000);
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, ev.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = e {
            let now = now_us();
            if let Ok(v) = serde_json::from_slice(&p.payload) {
                out.push((now, p.topic.clone(), v));
            }
        }
    }
    out
}

fn pct(v: &mut [i64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

async fn baseline(port: u16) -> Vec<i64> {
    let sub = tokio::spawn(subscribe(
        port,
        "bench/direct",
        Duration::from_secs(SECONDS),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, mut ev) = AsyncClient::new(MqttOptions::new("lat-pub", "127.0.0.1", port), 100);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..(SECONDS - 2) * 10 {
        tick.tick().await;
        let body = serde_json::json!({"ts": now_us() / 1000, "value": 1.5}).to_string();
        c.publish("bench/direct", QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    sub.await
        .unwrap()
        .iter()
        .filter_map(|(at, _, v)| Some(at - v["ts"].as_i64()? * 1000))
        .collect()
}

/// Latencies of (samples, predictions, alarms) from one agent run.
async fn agent(port: u16) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let dir = tempdir();
    let d = dir.path();
    let ws = workspace();
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
seed = 7
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
load = 0.7
[[sources.simulated.faults]]
asset = "pump1"
kind = "bearing_wear"
start = "5s"
ramp = "5s"
magnitude = 4.0
[bundles]
trusted_keys = ["{ws}/examples/demo/demo.pub.pem"]
[[models]]
name = "pump1-anomaly"
bundle = "{ws}/examples/demo/pump-anomaly.bundle"
[[outputs.mqtt]]
name = "scada"
broker = {{ url = "mqtt://127.0.0.1:{port}" }}
streams = ["samples", "predictions", "alarms"]
"#,
            d = d.display(),
            ws = ws.display()
        ),
    )
    .unwrap();
    let sub = tokio::spawn(subscribe(port, "edge/lat/#", Duration::from_secs(SECONDS)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _agent = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    let got = sub.await.unwrap();
    let kind = |t: &str| t.split('/').nth(2).unwrap_or("").to_string();
    let samples: Vec<i64> = got
        .iter()
        .filter(|(_, t, _)| kind(t) == "samples")
        .filter_map(|(at, _, v)| Some(at - v["ts"].as_i64()? * 1000))
        .collect();
    // The sample that closed a window is the newest one measured before the prediction
    // went out: (receive time µs, measurement time ms) in arrival order.
    let sample_at: Vec<(i64, i64)> = got
        .iter()
        .filter(|(_, t, _)| kind(t) == "samples")
        .filter_map(|(at, _, v)| Some((*at, v["ts"].as_i64()?)))
        .collect();
    let from_close = |k: &str| -> Vec<i64> {
        got.iter()
            .filter(|(_, t, v)| kind(t) == k && v.get("historical").is_none())
            .filter_map(|(at, _, v)| {
                let end = v["ts"].as_i64()?;
                // Only samples measured at or after the window's end can have closed it.
                let closing = sample_at
                    .iter()
                    .filter(|(r, ts)| r <= at && *ts >= end - 100)
                    .map(|(_, ts)| *ts)
                    .max()?;
                Some(at - closing * 1000)
            })
            .collect()
    };
    (samples, from_close("predictions"), from_close("alarms"))
}

fn main() {
    let dir = tempdir();
    let broker = mosquitto(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("latency -> subscriber on loopback Mosquitto, {SECONDS} s each, stamps in ms\n");
        println!("| path | messages | p50 ms | p99 ms | p99 ratio to baseline |");
        println!("|---|---|---|---|---|");
        let mut base = baseline(broker.anon).await;
        let (b50, b99) = (pct(&mut base, 0.5), pct(&mut base, 0.99));
        println!(
            "| baseline: bare rumqttc publish, QoS 1 | {} | {b50:.2} | {b99:.2} | 1.00 |",
            base.len()
        );
        let (mut samples, mut preds, mut alarms) = agent(broker.anon).await;
        // The first prediction of a run waits for one commit: the idle stream's first
        // sequence-number lease (see the outbox docs).
        let mut steady = preds.get(1..).unwrap_or_default().to_vec();
        for (what, v) in [
            (
                "edge-agent: sample -> MQTT (commit 500 ms, default)",
                &mut samples,
            ),
            ("edge-agent: window close -> prediction on MQTT", &mut preds),
            (
                "edge-agent: window close -> prediction, after the first",
                &mut steady,
            ),
            ("edge-agent: window close -> alarm on MQTT", &mut alarms),
        ] {
            let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
            println!(
                "| {what} | {} | {p50:.2} | {p99:.2} | {:.2} |",
                v.len(),
                p99 / b99
            );
        }
    });
}
