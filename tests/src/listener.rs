//! The MQTT listener peer (paho-mqtt + the Eclipse Tahu Sparkplug schema): every message the
//! agent publishes, decoded, and what the tests read from them.

use std::path::Path;
use std::time::Duration;

use crate::peer::{poll_until, python, workspace, Peer};

/// The Sparkplug/JSON listener peer (`tests/peers/spb_peer.py listen`): paho-mqtt subscribed
/// to `spBv1.0/#` and `edge/#`, decoding Sparkplug payloads with the Tahu schema. Its output
/// is one JSON object per message, in arrival order.
#[derive(Debug)]
pub struct MqttListener {
    pub peer: Peer,
}

impl MqttListener {
    pub fn start(dir: &Path, port: u16) -> MqttListener {
        let script = workspace().join("tests/peers/spb_peer.py");
        let peer = Peer::start(
            "mqtt-listener",
            python(),
            &[
                script.to_str().unwrap_or_default(),
                "listen",
                &format!("127.0.0.1:{port}"),
            ],
            dir,
            None,
        );
        let l = MqttListener { peer };
        assert!(
            l.wait_for(Duration::from_secs(20), |m| m
                .iter()
                .any(|x| x["subscribed"] == true)),
            "the listener did not subscribe: {}",
            l.peer.log_tail()
        );
        l
    }

    /// Every message received so far (lines that are not JSON are skipped).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.peer.log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pred` holds for the messages so far; whether it did ([`poll_until`]).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        poll_until(timeout, Duration::from_millis(100), || {
            pred(&self.messages()).then_some(())
        })
        .is_some()
    }
}

/// The sequence numbers of every JSON sample message of agent `agent` the listener received
/// (`edge/<agent>/samples/...`), in arrival order.
pub fn sample_seqs(l: &MqttListener, agent: &str) -> Vec<u64> {
    let prefix = format!("edge/{agent}/samples/");
    l.messages()
        .iter()
        .filter(|m| m["topic"].as_str().is_some_and(|t| t.starts_with(&prefix)))
        .filter_map(|m| {
            let body: serde_json::Value = serde_json::from_str(m["text"].as_str()?).ok()?;
            body["seq"].as_u64()
        })
        .collect()
}

/// The ranges an agent's log announced as skipped for the samples stream
/// (`seq_skipped_from`/`seq_skipped_to`).
pub fn skipped_ranges(log: &str) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(name)? + name.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("stream=\"samples\""))
        .filter_map(|l| Some((field(l, "seq_skipped_from=")?, field(l, "seq_skipped_to=")?)))
        .collect()
}

/// The highest number seen, and the numbers in 1..=it that never arrived and that no
/// announced skip covers.
pub fn unannounced_gaps(seqs: &[u64], skipped: &[(u64, u64)]) -> (u64, Vec<u64>) {
    let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let max = set.last().copied().unwrap_or(0);
    let missing = (1..=max)
        .filter(|s| !set.contains(s))
        .filter(|s| !skipped.iter().any(|(a, b)| (a..=b).contains(&s)))
        .collect();
    (max, missing)
}
