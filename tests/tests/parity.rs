//! Training-serving parity: one recording replayed through a live MQTT source into the running
//! agent, and through `edge-agent featurize`; the features must be bit-identical.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interop_tests::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, QoS};

fn run_ok(args: &[&str]) -> String {
    let o = Command::new(workspace_bin("edge-agent"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "edge-agent {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Kills the child if the test fails before stopping it.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm_and_wait(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(6), "agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_features_are_bit_identical_to_offline_features() {
    let dir = tempdir();
    let d = dir.path();
    let ws = workspace();
    // 1. A recording of the simulated plant, with sensor dropouts and NaN readings in it.
    let rec_cfg = d.join("record.toml");
    let recording = d.join("recording.csv");
    std::fs::write(
        &rec_cfg,
        format!(
            "[agent]\nid = \"rec\"\ndata_dir = \"{d}\"\n[[sources.simulated]]\nname = \"plant\"\nseed = 11\ntime_scale = 40\n\
             [[sources.simulated.assets]]\nname = \"pump1\"\n\
             [[sources.simulated.faults]]\nasset = \"pump1\"\nkind = \"dropout\"\nsignal = \"vibration\"\nstart = \"20s\"\nduration = \"3s\"\n\
             [[sources.simulated.faults]]\nasset = \"pump1\"\nkind = \"nan\"\nsignal = \"current\"\nstart = \"40s\"\nduration = \"2s\"\n\
             [[outputs.file]]\nname = \"rec\"\npath = \"{r}\"\nformat = \"csv\"\n",
            d = d.display(),
            r = recording.display()
        ),
    )
    .unwrap();
    let mut rec = KillOnDrop(
        Command::new(workspace_bin("edge-agent"))
            .args(["run", "--config"])
            .arg(&rec_cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Two minutes of plant time (both faults and what follows them) are on file.
    wait_until(
        "two minutes of recorded plant time",
        Duration::from_secs(60),
        String::new,
        || (recording_span_ns(&recording)? >= 120_000_000_000).then_some(()),
    );
    sigterm_and_wait(&mut rec.0);

    // 2. A bundle over those tags, and the offline features.
    let spec = ws.join("agent/tests/fixtures/pump_pack.toml");
    let key = d.join("ml");
    run_ok(&["bundle", "keygen", "--out", key.to_str().unwrap()]);
    let bundle = d.join("pump.bundle");
    run_ok(&[
        "bundle",
        "pack",
        "--spec",
        spec.to_str().unwrap(),
        "--model",
        ws.join("tests/models/dense_autoencoder.onnx")
            .to_str()
            .unwrap(),
        "--train",
        recording.to_str().unwrap(),
        "--key",
        d.join("ml.key.pem").to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    let offline = d.join("offline.csv");
    run_ok(&[
        "featurize",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        recording.to_str().unwrap(),
        "--output",
        offline.to_str().unwrap(),
    ]);
    let offline_rows: Vec<Vec<String>> = std::fs::read_to_string(&offline)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert!(
        offline_rows.len() > 20,
        "{} offline windows",
        offline_rows.len()
    );

    // 3. The agent, reading the same samples from MQTT.
    let broker = mosquitto(d);
    let live = d.join("live.jsonl");
    let tags = ["pump1.temperature", "pump1.vibration", "pump1.current"];
    let mut cfg = format!(
        "[agent]\nid = \"live\"\ndata_dir = \"{d}\"\n[[sources.mqtt]]\nname = \"replay\"\n[sources.mqtt.broker]\nurl = \"mqtt://127.0.0.1:{p}\"\n",
        d = d.display(),
        p = broker.anon
    );
    for t in tags {
        cfg.push_str(&format!(
            "[[sources.mqtt.tags]]\nname = \"{t}\"\ntopic = \"replay/{t}\"\njson_pointer = \"/v\"\ntimestamp_pointer = \"/ts\"\ntimestamp_format = \"unix_ns\"\n"
        ));
    }
    cfg.push_str(&format!(
        "[bundles]\ntrusted_keys = [\"{k}\"]\n[[models]]\nname = \"pump\"\nbundle = \"{b}\"\nqueue = 10000\n\
         [[outputs.file]]\nname = \"live\"\npath = \"{o}\"\nrecords = [\"features\"]\n",
        k = d.join("ml.pub.pem").display(),
        b = bundle.display(),
        o = live.display()
    ));
    let cfg_path = d.join("live.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let agent_log = d.join("agent.log");
    let mut agent = KillOnDrop(
        Command::new(workspace_bin("edge-agent"))
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("EDGE_LOG", "info,edge_sources::mqtt=debug")
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );

    // 4. Replay the recording in file order with QoS 1 (mosquitto keeps per-client order).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Wait until the agent is connected and subscribed: earlier messages would be lost
        // (the broker has no session for it yet).
        let t0 = Instant::now();
        while !std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .contains("mqtt subscribed")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "agent never subscribed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut o = MqttOptions::new("replayer", "127.0.0.1", broker.anon);
        o.set_inflight(50);
        let (client, mut ev) = AsyncClient::new(o, 100);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acks = acked.clone();
        let poller = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => panic!("replayer: {e}"),
                }
            }
        });
        let f = std::fs::File::open(&recording).unwrap();
        let mut sent = 0usize;
        for line in std::io::BufReader::new(f).lines().skip(1) {
            let line = line.unwrap();
            let parts: Vec<&str> = line.split(',').collect();
            if !tags.contains(&parts[0]) {
                continue;
            }
            let v = match parts[2] {
                "" => "null".to_string(),
                "NaN" | "inf" | "-inf" => format!("\"{}\"", parts[2]),
                x => x.to_string(),
            };
            let payload = format!("{{\"ts\":{},\"v\":{v}}}", parts[1]);
            client
                .publish(
                    format!("replay/{}", parts[0]),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
            sent += 1;
        }
        let t0 = Instant::now();
        while acked.load(std::sync::atomic::Ordering::SeqCst) < sent {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "broker acknowledged {acked:?} of {sent}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.disconnect().await.unwrap();
        poller.await.unwrap();
    });

    // 5. Wait for the live features, stop, compare.
    let t0 = Instant::now();
    let live_rows = loop {
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(&live)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if rows.len() >= offline_rows.len() || t0.elapsed() > Duration::from_secs(60) {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    sigterm_and_wait(&mut agent.0);
    let mut log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let live_starts: Vec<i64> = live_rows
        .iter()
        .map(|r| r["start_ns"].as_i64().unwrap_or(0))
        .collect();
    let off_starts: Vec<i64> = offline_rows
        .iter()
        .map(|r| r[0].parse().unwrap_or(0))
        .collect();
    let missing: Vec<usize> = off_starts
        .iter()
        .enumerate()
        .filter(|(_, s)| !live_starts.contains(s))
        .map(|(i, _)| i)
        .collect();
    log.push_str(&format!("\nmissing offline windows (index): {missing:?}\n"));
    assert_eq!(
        live_rows.len(),
        offline_rows.len(),
        "live and offline window counts; agent log:\n{log}"
    );
    for (i, (l, o)) in live_rows.iter().zip(&offline_rows).enumerate() {
        assert_eq!(
            l["start_ns"].as_i64().unwrap().to_string(),
            o[0],
            "window {i} start"
        );
        assert_eq!(
            l["end_ns"].as_i64().unwrap().to_string(),
            o[1],
            "window {i} end"
        );
        let values = l["values"].as_array().unwrap();
        assert_eq!(values.len(), o.len() - 2);
        for (k, (lv, ov)) in values.iter().zip(&o[2..]).enumerate() {
            let lv = lv.as_f64().unwrap();
            let ov: f64 = ov.parse().unwrap();
            assert_eq!(
                lv.to_bits(),
                ov.to_bits(),
                "window {i} feature {k}: live {lv} vs offline {ov}"
            );
        }
    }
}
