//! The outbox under `kill -9`: the real agent, sampling fast and publishing to Mosquitto live
//! (before the commit), is killed at random moments 100 times and restarted each time.
//! Afterwards every durable sample record must have reached the subscriber: every sequence
//! number in 1..=N was seen, except those the agent announced as skipped after an unclean stop
//! (reserved for live delivery, never committed); a number seen twice carries the same
//! samples both times (never reused for another record); in order apart from at most one
//! replay per restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use interop_tests::*;

const KILLS: usize = 100;

/// A small deterministic generator for the kill moments (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Every sample message as (seq, topic, ts, value).
fn sample_msgs(l: &MqttListener) -> Vec<(u64, String, i64, String)> {
    l.messages()
        .iter()
        .filter_map(|m| {
            let topic = m["topic"].as_str()?;
            if !topic.starts_with("edge/crash/samples/") {
                return None;
            }
            let body: serde_json::Value = serde_json::from_str(m["text"].as_str()?).ok()?;
            Some((
                body["seq"].as_u64()?,
                topic.to_string(),
                body["ts"].as_i64()?,
                body["value"].to_string(),
            ))
        })
        .collect()
}

#[test]
fn a_hundred_kill_nines_under_load_lose_no_durable_record() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    let listener = MqttListener::start(d, broker.anon);
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "crash"
data_dir = "{d}"

[[sources.simulated]]
name = "plant"
sample_interval = "20ms"
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"

[outbox]
commit_interval = "50ms"
reserve_mb = 2

[[outputs.mqtt]]
name = "historian"
broker = {{ url = "mqtt://127.0.0.1:{port}", reconnect = {{ initial = "50ms", max = "200ms" }} }}
streams = ["samples"]
"#,
            d = d.display(),
            port = broker.anon
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
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..KILLS {
        // The kill schedule: a random moment under load.
        std::thread::sleep(Duration::from_millis(150 + rng.below(900)));
        agent.kill();
        agent.restart();
    }
    // The last run drains the backlog and keeps publishing live data.
    let seen_at_last_kill = sample_seqs(&listener, "crash")
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    listener.wait_for(
        Duration::from_secs(60),
        "publishing to resume (200 sample records past the last kill)",
        || format!("agent log:\n{}", agent.log_tail()),
        |_| {
            sample_seqs(&listener, "crash")
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                > seen_at_last_kill + 200
        },
    );
    let offline = |m: &[serde_json::Value]| {
        m.iter()
            .filter(|x| x["topic"] == "edge/crash/status")
            .filter_map(|x| serde_json::from_str::<serde_json::Value>(x["text"].as_str()?).ok())
            .filter(|status| status["state"] == "offline")
            .count()
    };
    let offline_before = offline(&listener.messages());
    assert!(agent.terminate(Duration::from_secs(6)));
    // The clean stop's last message is the offline status: everything before it is in.
    listener.wait_for(
        Duration::from_secs(20),
        "the offline status after the clean stop",
        || format!("agent log:\n{}", agent.log_tail()),
        |m| offline(m) > offline_before,
    );

    let seqs = sample_seqs(&listener, "crash");
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let skipped = skipped_ranges(&log);
    let (max, missing) = unannounced_gaps(&seqs, &skipped);
    assert!(
        missing.is_empty(),
        "{} of {max} sample records never arrived and were not announced as skipped (first: {:?}; skipped: {skipped:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // A number seen twice means the same samples both times.
    let mut first_seen: std::collections::HashMap<(u64, String), (i64, String)> =
        Default::default();
    for (seq, topic, ts, value) in sample_msgs(&listener) {
        let was = first_seen
            .entry((seq, topic.clone()))
            .or_insert((ts, value.clone()));
        assert_eq!(
            *was,
            (ts, value),
            "seq {seq} on {topic} was given to two different records"
        );
    }
    // In order, except that a restart may replay what was sent but not yet confirmed.
    let replays = seqs.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        replays <= KILLS + 1,
        "{replays} steps back in the sequence for {KILLS} restarts: out of order delivery"
    );
    assert!(
        !log.contains("moved aside"),
        "a kill -9 corrupted the outbox:\n{log}"
    );
    println!(
        "{KILLS} kills: {max} sample records, {} messages, {replays} replays, {} numbers skipped in {} ranges",
        seqs.len(),
        skipped.iter().map(|(a, b)| b - a + 1).sum::<u64>(),
        skipped.len()
    );
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` where this machine does not allow mounting (not root, or no CAP_SYS_ADMIN).
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn agent_toml(data_dir: &std::path::Path, port: u16, extra: &str) -> String {
    format!(
        r#"
[agent]
id = "crash"
data_dir = "{d}"

[[sources.simulated]]
name = "plant"
sample_interval = "10ms"
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"

[outbox]
commit_interval = "50ms"
reserve_mb = 2

[[outputs.mqtt]]
name = "historian"
broker = {{ url = "mqtt://127.0.0.1:{port}", reconnect = {{ initial = "50ms", max = "200ms" }} }}
streams = ["samples"]
{extra}
"#,
        d = data_dir.display()
    )
}

fn last_status(l: &MqttListener) -> Option<serde_json::Value> {
    l.messages()
        .iter()
        .rev()
        .find(|m| m["topic"] == "edge/crash/status")
        .and_then(|m| serde_json::from_str(m["text"].as_str()?).ok())
}

#[test]
fn a_full_disk_keeps_the_agent_running_counts_drops_and_recovers() {
    let dir = tempdir();
    let d = dir.path();
    let Some(_disk) = SmallDisk::mount(&d.join("small"), "12m") else {
        eprintln!("SKIPPED: this machine does not allow mounting a tmpfs (needs root)");
        return;
    };
    let broker = mosquitto(d);
    let listener = MqttListener::start(d, broker.anon);
    // The outbox lives on the small disk; a file recording on the big one.
    let rec = d.join("rec.csv");
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        agent_toml(
            &d.join("small"),
            broker.anon,
            &format!(
                "[[outputs.file]]\nname = \"rec\"\npath = \"{}\"\nformat = \"csv\"",
                rec.display()
            ),
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
    listener.wait_for(
        Duration::from_secs(20),
        "the first sample records",
        || format!("agent log:\n{}", agent.log_tail()),
        |_| !sample_seqs(&listener, "crash").is_empty(),
    );

    // Fill the disk to the last byte.
    let filler = d.join("small/filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // The outbox reports the full disk and frees its reserve for alarms.
    agent.wait_log(
        Duration::from_secs(30),
        "the full disk to be reported clearly",
        "disk full: freed the outbox's reserve",
        1,
    );
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        log.contains("No space left on device"),
        "the cause is not named:\n{}",
        agent.log_tail()
    );
    agent.wait_log(
        Duration::from_secs(30),
        "samples refused on the full disk to be reported",
        "samples records are dropped (counted)",
        1,
    );
    let rec_size = std::fs::metadata(&rec).map(|m| m.len()).unwrap_or(0);
    let grows = || std::fs::metadata(&rec).map(|m| m.len()).unwrap_or(0) > rec_size;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !grows() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(grows(), "other outputs must keep working");
    let before = sample_seqs(&listener, "crash")
        .iter()
        .copied()
        .max()
        .unwrap_or(0);

    // Space comes back: the outbox reopens and publishing resumes, with no gap in what
    // reached the subscriber apart from the numbers the reopen announced as skipped.
    std::fs::remove_file(&filler).unwrap();
    listener.wait_for(
        Duration::from_secs(30),
        "publishing to resume after space was freed",
        || format!("agent log:\n{}", agent.log_tail()),
        |_| {
            sample_seqs(&listener, "crash")
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                > before + 100
        },
    );
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(log.contains("outbox reopened"), "{}", agent.log_tail());
    assert!(
        log.contains("disk space is back: the outbox's reserve is restored"),
        "{}",
        agent.log_tail()
    );
    assert!(agent.terminate(Duration::from_secs(6)));
    // The offline status is the agent's last message.
    // A timeout here is judged by the assertions below, which show every status message.
    let _ = listener.poll_for(Duration::from_secs(10), |_| {
        last_status(&listener).is_some_and(|s| s["state"] == "offline")
    });
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let skipped = skipped_ranges(&log);
    let (_, missing) = unannounced_gaps(&sample_seqs(&listener, "crash"), &skipped);
    assert!(
        missing.is_empty(),
        "gaps after the disk-full episode that were not announced: {missing:?} (announced: {skipped:?})"
    );
    // What could not be stored is counted and reported (status on shutdown).
    let status = last_status(&listener).expect("a status message");
    assert_eq!(status["state"], "offline");
    assert!(
        status["outbox"]["samples"]["dropped"].as_u64().unwrap_or(0) > 0,
        "drops not reported: {status}; all status messages: {:?}\nagent log:\n{}",
        listener
            .messages()
            .iter()
            .filter(|m| m["topic"] == "edge/crash/status")
            .collect::<Vec<_>>(),
        agent.log_tail()
    );
}

#[test]
fn a_corrupt_outbox_is_moved_aside_and_the_agent_keeps_publishing() {
    let dir = tempdir();
    let d = dir.path();
    let broker = mosquitto(d);
    let listener = MqttListener::start(d, broker.anon);
    let outbox = d.join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::write(outbox.join("conf"), vec![0x5A; 62]).unwrap();
    std::fs::write(outbox.join("db"), vec![0xA5; 1 << 20]).unwrap();
    let cfg = d.join("agent.toml");
    std::fs::write(&cfg, agent_toml(d, broker.anon, "")).unwrap();
    let agent = Peer::start(
        "agent",
        workspace_bin("edge-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        d,
        None,
    );
    listener.wait_for(
        Duration::from_secs(20),
        "data after a corrupt outbox (50 sample records)",
        || format!("agent log:\n{}", agent.log_tail()),
        |_| sample_seqs(&listener, "crash").len() > 50,
    );
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        log.contains("ERROR") && log.contains("moved aside"),
        "{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.corrupt-")
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the corrupt database is kept for inspection"
    );
}
