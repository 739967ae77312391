//! `[[outputs.mqtt]]`: publishing to SCADA systems and historians over MQTT, as plain JSON or
//! Sparkplug B, from the outbox (so nothing is lost while the broker or host is away).

use edge_sources::mqtt::BrokerConfig;
use edge_wire::config_check::{Issues, KeyPath};
use serde::Deserialize;

use super::topics::valid_level;
use crate::outbox::Stream;

/// `[[outputs.mqtt]] format`: the message format (default: JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MqttFormat {
    /// Plain JSON on `{prefix}/{device}/{kind}/{name}` (see `publish/topics.rs`).
    #[default]
    Json,
    /// Sparkplug B 3.0 (births, deaths, aliases, store-and-forward on the primary host state).
    Sparkplug,
}

/// `[[outputs.mqtt]]`: one MQTT publisher, fed from the outbox through its own cursor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttOutputConfig {
    /// Output name: also its cursor in the outbox (renaming it replays from the start).
    pub name: String,
    /// The broker and how to reach it (URL, TLS, credentials, reconnect backoff).
    pub broker: BrokerConfig,
    /// Message format (default `json`).
    #[serde(default)]
    pub format: MqttFormat,
    /// What to publish: any of `samples`, `features`, `predictions`, `alarms` (model score
    /// alarms and drift/performance alarms), `drift` (per-interval drift scores). Default: all.
    #[serde(default = "all_streams")]
    pub streams: Vec<Stream>,
    /// QoS of data messages: 1 (default; the outbox entry is released on the broker's ack) or
    /// 0 (released once written to the socket).
    #[serde(default = "one")]
    pub qos: u8,
    /// JSON: first topic level (default `edge`).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Outbox records per publish batch (a batch is acknowledged before the next one).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// While live records and a backlog (stored before the broker came back) compete, the
    /// backlog's share of the records published, in (0, 1] (default 0.5). Live records always
    /// go first; when none wait, the backlog drains at full speed.
    #[serde(default = "default_backlog_share")]
    pub backlog_share: f64,
    /// Sparkplug settings (required with `format = "sparkplug"`).
    pub sparkplug: Option<SparkplugConfig>,
}

/// `[outputs.mqtt.sparkplug]`: the Sparkplug B identity of this edge node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// Sparkplug group id (first topic level after `spBv1.0`); a valid topic level.
    pub group_id: String,
    /// Default: the agent id.
    pub edge_node_id: Option<String>,
    /// Host application whose `spBv1.0/STATE/{id}` gates publishing: while it is offline, data
    /// stays in the outbox; when it returns, a fresh birth is published and the backlog is
    /// sent with `is_historical = true`. Without it, data flows whenever the broker is up.
    pub primary_host_id: Option<String>,
    /// DDATA metrics carry their datatype (default true). The specification says data
    /// messages SHOULD NOT repeat it, but Eclipse Tahu's JavaScript decoder (Node-RED's
    /// Sparkplug nodes) decodes every value as null without it: set false only for hosts
    /// that want the bytes more than that compatibility.
    #[serde(default = "yes")]
    pub ddata_datatype: bool,
}

fn yes() -> bool {
    true
}

fn all_streams() -> Vec<Stream> {
    vec![
        Stream::Samples,
        Stream::Features,
        Stream::Predictions,
        Stream::Alarms,
        Stream::Drift,
    ]
}
fn one() -> u8 {
    1
}
fn default_prefix() -> String {
    "edge".into()
}
fn default_batch() -> usize {
    100
}
fn default_backlog_share() -> f64 {
    0.5
}

impl MqttOutputConfig {
    /// Checks the entry (broker, QoS, name, batch, backlog share, streams, format settings),
    /// adding problems under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        self.broker.validate(&at.key("broker"), issues);
        issues.check(self.qos <= 1, at.key("qos"), || {
            format!("qos {} is not supported: use 0 or 1", self.qos)
        });
        issues.check(valid_level(&self.name), at.key("name"), || {
            "name must be non-empty without `/`, `+`, `#`".into()
        });
        issues.check((1..=10_000).contains(&self.batch), at.key("batch"), || {
            "batch must be within 1..=10000".into()
        });
        issues.check(
            self.backlog_share > 0.0 && self.backlog_share <= 1.0,
            at.key("backlog_share"),
            || format!("backlog_share {} must be within (0, 1]", self.backlog_share),
        );
        for (i, s) in self.streams.iter().enumerate() {
            issues.check(
                matches!(
                    s,
                    Stream::Samples
                        | Stream::Features
                        | Stream::Predictions
                        | Stream::Alarms
                        | Stream::Drift
                ),
                at.key("streams").index(i),
                || format!("`{}` cannot be published over MQTT yet", s.name()),
            );
        }
        match self.format {
            MqttFormat::Json => {
                issues.check(
                    !self.topic_prefix.is_empty() && !self.topic_prefix.contains(['+', '#']),
                    at.key("topic_prefix"),
                    || "topic_prefix must be non-empty without `+`, `#`".into(),
                );
                issues.check(self.sparkplug.is_none(), at.key("sparkplug"), || {
                    "a [sparkplug] table needs format = \"sparkplug\"".into()
                });
            }
            MqttFormat::Sparkplug => match &self.sparkplug {
                None => issues.push(
                    at.key("format"),
                    "format \"sparkplug\" needs a [outputs.mqtt.sparkplug] table with group_id",
                ),
                Some(s) => {
                    let sp = at.key("sparkplug");
                    issues.check(valid_level(&s.group_id), sp.key("group_id"), || {
                        "group_id must be non-empty without `/`, `+`, `#`".into()
                    });
                    if let Some(n) = &s.edge_node_id {
                        issues.check(valid_level(n), sp.key("edge_node_id"), || {
                            "edge_node_id must be non-empty without `/`, `+`, `#`".into()
                        });
                    }
                    if let Some(h) = &s.primary_host_id {
                        issues.check(valid_level(h), sp.key("primary_host_id"), || {
                            "primary_host_id must be non-empty without `/`, `+`, `#`".into()
                        });
                    }
                }
            },
        }
    }
}
