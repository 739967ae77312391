//! A broker outage and what SCADA sees afterwards: the release agent on the simulated plant
//! (10 Hz, 5 tags) publishes JSON samples to Mosquitto; the broker is killed for
//! `OUTAGE_SECONDS` (default 600) and started again on the same port. A rumqttc subscriber
//! records every message. Reported: when the agent was back (its retained status), when the
//! first fresh sample (measured after the broker returned) arrived, when the backlog was
//! complete (every sequence number since the first one seen), and what is missing.
//!
//! Run: `cargo build --release -p edge-agent && OUTAGE_SECONDS=600 cargo bench -p
//! interop-tests --bench mqtt_outage` (needs tests/peers/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use interop_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// (receive time ms, topic, body)
type Log = Arc<Mutex<Vec<(i64, String, serde_json::Value)>>>;

/// Subscribes to the agent's topics, reconnecting (and resubscribing) whenever the broker is
/// back.
fn subscriber(rt: &tokio::runtime::Runtime, port: u16, log: Log) {
    rt.spawn(async move {
        let mut o = MqttOptions::new("outage-sub", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (c, mut ev) = AsyncClient::new(o, 1000);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.try_subscribe("edge/out/#", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice(&p.payload) {
                        if let Ok(mut l) = log.lock() {
                            l.push((now_ms(), p.topic.clone(), v));
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

fn main() {
    let outage: u64 = std::env::var("OUTAGE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let dir = tempdir();
    let d = dir.path();
    let mut broker = mosquitto(d);
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "out"
data_dir = "{d}"
[[sources.simulated]]
name = "plant"
sample_interval = "100ms"
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
[[outputs.mqtt]]
name = "scada"
broker = {{ url = "mqtt://127.0.0.1:{port}" }}
streams = ["samples"]
"#,
            d = d.display(),
            port = broker.anon
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let log: Log = Arc::default();
    subscriber(&rt, broker.anon, log.clone());
    let _agent = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    std::thread::sleep(Duration::from_secs(5));
    broker.peer.kill();
    let down = now_ms();
    std::thread::sleep(Duration::from_secs(outage));
    broker.peer.restart();
    let up = now_ms();
    let started = Instant::now();
    let samples = |l: &[(i64, String, serde_json::Value)]| -> Vec<(i64, u64, i64, bool)> {
        l.iter()
            .filter(|(_, t, _)| t.starts_with("edge/out/samples/"))
            .filter_map(|(at, _, v)| {
                Some((
                    *at,
                    v["seq"].as_u64()?,
                    v["ts"].as_i64()?,
                    v.get("historical").is_some(),
                ))
            })
            .collect()
    };
    // Wait until every number since the first one seen arrived (or 5 minutes).
    let mut complete_at = None;
    while started.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(200));
        let l = log.lock().unwrap().clone();
        let s = samples(&l);
        let seqs: BTreeSet<u64> = s.iter().map(|x| x.1).collect();
        let (Some(lo), Some(hi)) = (seqs.first(), seqs.last()) else {
            continue;
        };
        let fresh = s.iter().any(|x| x.2 >= up && !x.3);
        if fresh && (*lo..=*hi).all(|q| seqs.contains(&q)) {
            complete_at = s.iter().filter(|x| x.0 >= up).map(|x| x.0).max();
            break;
        }
    }
    let l = log.lock().unwrap().clone();
    let s = samples(&l);
    let back = l
        .iter()
        .find(|(at, t, _)| *at >= up && t == "edge/out/status")
        .map(|x| x.0);
    let first_fresh = s.iter().find(|x| x.0 >= up && x.2 >= up && !x.3);
    let backlog: Vec<_> = s.iter().filter(|x| x.3).collect();
    let seqs: BTreeSet<u64> = s.iter().map(|x| x.1).collect();
    let missing = match (seqs.first(), seqs.last()) {
        (Some(lo), Some(hi)) => (*lo..=*hi).filter(|q| !seqs.contains(q)).count(),
        _ => 0,
    };
    let secs = |t: Option<i64>| {
        t.map_or("never".to_string(), |t| {
            format!("{:.1} s", (t - up) as f64 / 1000.0)
        })
    };
    println!(
        "broker outage {outage} s ({} ms measured), then back",
        up - down
    );
    println!("| what | after the broker returned |");
    println!("|---|---|");
    println!("| agent reconnected (status online) | {} |", secs(back));
    println!(
        "| first fresh sample (measured after the return) | {} |",
        secs(first_fresh.map(|x| x.0))
    );
    println!(
        "| first fresh sample after the agent reconnected | {} |",
        match (back, first_fresh) {
            (Some(b), Some(f)) => format!("{} ms", f.0 - b),
            _ => "n/a".into(),
        }
    );
    println!("| backlog complete | {} |", secs(complete_at));
    println!(
        "| historical messages | {} ({} records) |",
        backlog.len(),
        backlog.iter().map(|x| x.1).collect::<BTreeSet<_>>().len()
    );
    println!("| sequence numbers missing | {missing} |");
}
