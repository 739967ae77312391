//! The MQTT listener peer (paho-mqtt + the Eclipse Tahu Sparkplug schema): every message the
//! agent publishes, decoded, and what the tests read from them.

use std::path::Path;
use std::time::Duration;

use crate::peer::{poll_until, python, timed_out, workspace, Peer};

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
        l.wait_for(
            Duration::from_secs(20),
            "the listener to subscribe",
            String::new,
            |m| m.iter().any(|x| x["subscribed"] == true),
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

    /// The messages so far once `pred` holds for them (polled every 100 ms); `None` after
    /// `timeout` ([`poll_until`]: the caller judges the outcome, say when a timeout is what the
    /// test expects).
    pub fn poll_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Option<Vec<serde_json::Value>> {
        poll_until(timeout, Duration::from_millis(100), || {
            let m = self.messages();
            pred(&m).then_some(m)
        })
    }

    /// [`MqttListener::poll_for`] that fails the test on timeout, like [`crate::wait_until`]:
    /// the message names `what` and shows `context()` (say, the agent's log tail), then the
    /// listener's last lines.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        context: impl FnOnce() -> String,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        match self.poll_for(timeout, pred) {
            Some(m) => m,
            None => timed_out(
                what,
                timeout,
                &format!("{}\nlistener, last lines:\n{}", context(), self.tail(10)),
            ),
        }
    }

    /// The listener's last `n` output lines, each cut to 300 characters.
    fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.peer.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
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
