//! Network faults between the real agent and its peers. The agent runs in its own network
//! namespace, reaching Mosquitto and the fleet server only through a user-space netem
//! (`tests/peers/netem.py`: real IP packets lost, delayed, reordered, duplicated, or the link
//! cut). Through all of it, nothing acknowledged is lost: every sample record reaches the MQTT
//! subscriber and the fleet server (the server's contiguous mark catches up with what the
//! subscriber saw), apart from numbers the agent announced as skipped.
//!
//! Short versions run in the test suite; the long runs (one-hour fleet outage, one-hour
//! soak) are the same tests with `EDGE_OUTAGE_SECS` / `EDGE_SOAK_SECS` set: `tests/soak.sh`.
//! Figures: RELIABILITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use interop_tests::faults::*;
use interop_tests::fleet::*;
use interop_tests::*;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Everything one test needs: the wire, a broker and a fleet server on the host, and an
/// enrolled agent in the namespace publishing JSON to the broker and syncing with the server.
struct Loop {
    wire: Wire,
    _broker: Peer,
    listener: MqttListener,
    server: FleetServer,
    agent: Peer,
    id: String,
    key: PathBuf,
    data: PathBuf,
}

fn start_loop(d: &Path, agent_id: &str) -> Option<Loop> {
    let Some(wire) = Wire::start(d) else {
        eprintln!("SKIPPED: no network namespaces or TUN devices here (needs root)");
        return None;
    };
    let host = wire.host_ip();
    let (broker, mport) = mosquitto_everywhere(d);
    let listener = MqttListener::start(d, mport);
    let server = FleetServer::start_everywhere(d, &host, free_port());
    let (key, public) = keygen(d, "ml");
    server.cli(&["model", "trust", &public.display().to_string()]);
    let bundle = d.join("pump.bundle");
    std::fs::write(&bundle, demo_bundle_version(&key, 1, |_| {})).expect("bundle");
    let tok = token(&server, &["site=wire"]);
    let cfg = agent_config(
        d,
        AgentSetup {
            id: agent_id,
            server_port: server.port,
            ca: &server.ca(),
            token: &tok,
            bundle: &bundle,
            trusted: &public,
            extra_sync: "",
        },
    );
    // Through the wire: the fleet server and the broker at the host's address.
    let mut text = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace("https://127.0.0.1:", &format!("https://{host}:"));
    text.push_str(&format!(
        r#"
[[outputs.mqtt]]
name = "historian"
broker = {{ url = "mqtt://{host}:{mport}", keep_alive = "5s", reconnect = {{ initial = "200ms", max = "2s" }} }}
streams = ["samples", "predictions", "alarms"]
"#
    ));
    std::fs::write(&cfg, text).expect("config");
    let agent = wire.start_peer(
        agent_id,
        &workspace_bin("edge-agent"),
        &["run", "--config", &cfg.display().to_string()],
        d,
    );
    let id = server.wait(
        "enrollment through the wire",
        Duration::from_secs(60),
        || server.devices().first()?["id"].as_str().map(String::from),
    );
    Some(Loop {
        wire,
        _broker: broker,
        listener,
        server,
        agent,
        id,
        key,
        data: d.join(agent_id),
    })
}

impl Loop {
    fn seqs(&self) -> Vec<u64> {
        sample_seqs(&self.listener, self.agent_name())
    }

    fn agent_name(&self) -> &str {
        self.data
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
    }

    fn max_seen(&self) -> u64 {
        self.seqs().into_iter().max().unwrap_or(0)
    }

    fn acked(&self) -> u64 {
        self.server.acked_through(&self.id, "samples").max(0) as u64
    }

    /// Waits until the subscriber saw `n` more sample records and the server acknowledged `n`
    /// more: progress under whatever the wire does now.
    fn wait_progress(&self, what: &str, n: u64, limit: Duration) {
        let (s0, a0) = (self.max_seen(), self.acked());
        self.server.wait(what, limit, || {
            (self.max_seen() >= s0 + n && self.acked() >= a0 + n).then_some(())
        });
    }

    /// With a clean wire: waits until the server's contiguous mark passes everything the
    /// subscriber has seen, then checks that the subscriber has every number up to it.
    fn check_nothing_lost(&self, limit: Duration) -> u64 {
        self.wire.set(Impairment::CLEAN);
        let target = self.max_seen();
        self.server.wait("fleet catch-up", limit, || {
            (self.acked() >= target).then_some(())
        });
        let log = std::fs::read_to_string(self.agent.log_path()).unwrap_or_default();
        let skipped = skipped_ranges(&log);
        let (max, missing) = unannounced_gaps(&self.seqs(), &skipped);
        assert!(
            missing.is_empty(),
            "sample records missing at the subscriber (announced skips: {skipped:?}): {missing:?}"
        );
        assert!(max >= target, "{max} < {target}");
        target
    }
}

#[test]
fn loss_delay_reordering_duplicates_and_link_flaps_lose_nothing() {
    let dir = tempdir();
    let Some(lp) = start_loop(dir.path(), "wired") else {
        return;
    };
    lp.wait_progress("first records", 20, Duration::from_secs(60));

    // A bad network: progress continues (TCP retransmits, MQTT and sync ride it out).
    lp.wire.set(Impairment::LOSSY);
    lp.wait_progress(
        "progress under loss and reordering",
        100,
        Duration::from_secs(120),
    );

    // A flapping link on top of it: down 3 s, up 2 s, four times (the fault schedule, not a
    // wait for a result).
    for _ in 0..4 {
        lp.wire.set(Impairment::DOWN);
        hold_fault(Duration::from_secs(3), "link down");
        lp.wire.set(Impairment::LOSSY);
        hold_fault(Duration::from_secs(2), "link up, lossy");
    }
    lp.wait_progress("progress after the flaps", 50, Duration::from_secs(120));

    let through = lp.check_nothing_lost(Duration::from_secs(180));
    let counts = lp.wire.stop().unwrap_or_default();
    eprintln!("wire: {counts}; every sample record through {through} arrived at both ends");
    let c: serde_json::Value = serde_json::from_str(&counts).expect("wire counts");
    for k in ["lost", "reordered", "duplicated", "down"] {
        assert!(
            c[k].as_u64().unwrap_or(0) > 0,
            "the wire did not exercise `{k}`: {c}"
        );
    }
}

#[test]
fn a_fleet_server_outage_then_recovery_loses_nothing() {
    let outage = Duration::from_secs(env_secs("EDGE_OUTAGE_SECS", 20));
    let dir = tempdir();
    let d = dir.path();
    let Some(mut lp) = start_loop(d, "outage") else {
        return;
    };
    lp.wait_progress("first records", 20, Duration::from_secs(60));
    let port = lp.server.port;
    let log = std::fs::read_to_string(lp.agent.log_path()).unwrap_or_default();
    let sync_errors = log.matches("fleet sync: ").count();
    assert!(lp.server.peer.terminate(Duration::from_secs(10)));
    let before = lp.max_seen();
    // The outage (the fault schedule); MQTT keeps flowing meanwhile.
    hold_fault(outage, "fleet server stopped");
    assert!(
        lp.max_seen() > before,
        "MQTT delivery stopped during the fleet outage"
    );
    lp.agent.wait_log(
        Duration::from_secs(60),
        "the agent to report the unreachable fleet server",
        "fleet sync: ",
        sync_errors + 1,
    );
    lp.server = FleetServer::start_everywhere(d, &lp.wire.host_ip(), port);
    // The backlog of the outage drains: at 10 samples/s, allow it twice the outage.
    let through = lp.check_nothing_lost(outage * 2 + Duration::from_secs(120));
    eprintln!("after a {outage:?} fleet outage every sample record through {through} arrived");
}

/// The whole loop for `EDGE_SOAK_SECS` (default 60): agent + broker + fleet server through a
/// mildly lossy wire, with a model update rolled out every sixth of the run. Memory, file
/// descriptors and disk of the agent and the server are sampled and must stay bounded;
/// nothing is lost; every update is applied.
#[test]
fn soak_of_the_whole_loop_with_model_updates_stays_bounded() {
    let secs = env_secs("EDGE_SOAK_SECS", 60);
    let dir = tempdir();
    let d = dir.path();
    let Some(lp) = start_loop(d, "soak") else {
        return;
    };
    lp.wait_progress("first records", 20, Duration::from_secs(60));
    let mild = Impairment {
        loss: 0.01,
        delay_ms: 10.0,
        jitter_ms: 5.0,
        reorder: 0.02,
        ..Impairment::CLEAN
    };
    lp.wire.set(mild);
    let agent_pid = lp.agent.pid().expect("agent pid");
    let server_pid = lp.server.peer.pid().expect("server pid");
    let mut agent = Sampler::new(agent_pid, &lp.data);
    let mut server = Sampler::new(server_pid, &lp.server.data_dir);
    let every = Duration::from_secs((secs / 60).clamp(2, 10));
    let updates = 6u64;
    let start = std::time::Instant::now();
    let mut next_update = 1u64;
    while start.elapsed() < Duration::from_secs(secs) {
        // A new model version every sixth of the run, rolled out to the device.
        let due = 1 + start.elapsed().as_secs() * updates / secs;
        if due > next_update && next_update < updates {
            next_update += 1;
            let v = next_update;
            let p = d.join(format!("v{v}.bundle"));
            std::fs::write(&p, demo_bundle_version(&lp.key, v, |_| {})).expect("bundle");
            lp.server.cli(&["model", "push", &p.display().to_string()]);
            lp.server.cli(&[
                "model",
                "rollout",
                "start",
                "pump-anomaly",
                &v.to_string(),
                "--select",
                "site=wire",
            ]);
        }
        assert!(
            agent.sample().is_some(),
            "the agent died:\n{}",
            lp.agent.log_tail()
        );
        assert!(server.sample().is_some(), "the fleet server died");
        std::thread::sleep(every);
    }
    // Every update applied: the device runs the last version.
    lp.server
        .wait("last update applied", Duration::from_secs(120), || {
            let show = lp.server.device_show(&lp.id);
            (show["status"]["models"][0]["version_number"].as_u64()? == next_update).then_some(())
        });
    let through = lp.check_nothing_lost(Duration::from_secs(180));
    agent.sample();
    server.sample();

    let out = workspace().join("target/soak");
    let _ = std::fs::create_dir_all(&out);
    agent.write_csv(&out.join(format!("agent-{secs}s.csv")));
    server.write_csv(&out.join(format!("fleet-server-{secs}s.csv")));
    // Bounded: after the first third (warm-up, first model loads), memory and descriptors
    // stop growing: the last third's peak stays within the second third's peak plus a
    // margin; the agent's data (outbox drained, bundles replaced) stays small.
    let third = secs as f64 / 3.0;
    for (name, s) in [("agent", &agent), ("fleet-server", &server)] {
        let rss_mid = s.max_between(third, 2.0 * third, |o| o.rss_kb);
        let rss_end = s.max_between(2.0 * third, f64::INFINITY, |o| o.rss_kb);
        let fds_mid = s.max_between(third, 2.0 * third, |o| o.fds);
        let fds_end = s.max_between(2.0 * third, f64::INFINITY, |o| o.fds);
        eprintln!(
            "{name}: RSS peak {rss_mid} kB (middle third) -> {rss_end} kB (last third); fds {fds_mid} -> {fds_end}; disk {} bytes at the end",
            s.seen.last().map(|o| o.disk_bytes).unwrap_or(0)
        );
        // A short run (the test suite's minute, on a busy machine) is mostly warm-up: it
        // only catches runaway growth; a long run holds memory within 20 % + 8 MB.
        let allowed = if secs >= 600 {
            rss_mid + rss_mid / 5 + 8 * 1024
        } else {
            2 * rss_mid + 32 * 1024
        };
        assert!(
            rss_end <= allowed,
            "{name}'s memory keeps growing: {rss_mid} kB -> {rss_end} kB (allowed {allowed} kB)"
        );
        assert!(
            fds_end <= fds_mid + 8,
            "{name}'s file descriptors keep growing: {fds_mid} -> {fds_end}"
        );
    }
    let agent_disk = agent.seen.last().map(|o| o.disk_bytes).unwrap_or(0);
    assert!(
        agent_disk < 64 << 20,
        "the agent's data directory grew to {agent_disk} bytes"
    );
    eprintln!(
        "soak {secs}s: {updates} model versions, every sample record through {through} arrived"
    );
}
