//! The outbox under `kill -9`: the real agent, sampling fast and publishing to Mosquitto, is
//! killed at random moments 50 times and restarted each time. Afterwards every sample record
//! must have reached the subscriber: the stream's sequence numbers seen are exactly 1..=N (a
//! record made durable before a kill and lost would leave a gap; the outbox never reuses a
//! number a consumer has seen), in order apart from at most one replay per restart.

use std::collections::BTreeSet;
use std::time::Duration;

use interop_tests::*;

const KILLS: usize = 50;

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

fn sample_seqs(l: &MqttListener) -> Vec<u64> {
    l.messages()
        .iter()
        .filter(|m| {
            m["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("edge/crash/samples/"))
        })
        .filter_map(|m| {
            let body: serde_json::Value = serde_json::from_str(m["text"].as_str()?).ok()?;
            body["seq"].as_u64()
        })
        .collect()
}

#[test]
fn fifty_kill_nines_under_load_lose_no_durable_record() {
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
        std::thread::sleep(Duration::from_millis(150 + rng.below(900)));
        agent.kill();
        agent.restart();
    }
    // The last run drains the backlog and keeps publishing live data.
    let seen_at_last_kill = sample_seqs(&listener).iter().copied().max().unwrap_or(0);
    let ok = listener.wait_for(Duration::from_secs(60), |_| {
        sample_seqs(&listener).iter().copied().max().unwrap_or(0) > seen_at_last_kill + 200
    });
    assert!(
        ok,
        "publishing did not resume; agent log:\n{}",
        agent.log_tail()
    );
    assert!(agent.terminate(Duration::from_secs(6)));
    std::thread::sleep(Duration::from_millis(500));

    let seqs = sample_seqs(&listener);
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    let max = *set.last().unwrap();
    let missing: Vec<u64> = (1..=max).filter(|s| !set.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {max} sample records never arrived (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // In order, except that a restart may replay what was sent but not yet confirmed.
    let replays = seqs.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        replays <= KILLS + 1,
        "{replays} steps back in the sequence for {KILLS} restarts: out of order delivery"
    );
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    assert!(
        !log.contains("moved aside"),
        "a kill -9 corrupted the outbox:\n{log}"
    );
    println!(
        "{KILLS} kills: {max} sample records, {} messages, {replays} replays",
        seqs.len()
    );
}
