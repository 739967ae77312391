//! Plain JSON over MQTT: one message per sample, feature row, prediction and alarm, on the
//! topics of `topics.rs`, plus a retained status with a last will. Payload fields:
//!
//! - every message: `ts` (measurement time, Unix ms), `seq` (sequence number of the outbox
//!   record it came from, per stream: the samples of one read cycle share one record, so a
//!   sample is identified by (`seq`, tag); consumers can de-duplicate replays),
//!   `historical: true` for backlog sent after an outage (live values are the ones without it);
//! - samples: `value` (number, boolean, string, or null when bad), `quality`;
//! - features: `window_start`, `model`, `bundle`, `model_version`, `version_number`,
//!   `features` (name -> value);
//! - predictions: as features, with `score`, `label`, `alarm`, `over_threshold`, `outputs`;
//! - alarms: `model`, `bundle`, `model_version`, `state` (`raised`/`cleared`), `score`,
//!   `threshold` — retained when live, so a SCADA client that connects later sees the state;
//!   drift alarms (on their own topics) add `kind` (`column`/`output`/`dataset`/
//!   `performance`), `subject`, `metric`, `value` (= `score`), `intervals`;
//! - drift (one per model and interval): `window_start` (interval start), `windows`,
//!   `metric`, `dataset_drift`, `drifting`, `columns` and `outputs` (name -> `psi`, `js`,
//!   `ks`, `w1_std`, `band`, `count`, `missing`, `mean`, `std`, `drifting`), `performance`
//!   (`labelled`, `unlabelled`, `accuracy`, `precision`, `recall`, `mae` when known), `shadow`
//!   with a shadow challenger (`bundle`, `version`, `version_number`, `windows`, `errors`,
//!   `agreement`, `decided`, `champion_over`, `challenger_over`, `mean_score_diff`,
//!   `mean_abs_score_diff`, `max_abs_score_diff`);
//! - status (retained): `state` (`online`/`offline`), `agent`, `agent_version`, `ts`, `models`
//!   (name -> version number), `outbox` (stream -> backlog and dropped counts); once per
//!   connect, then every 30 s.

use std::collections::BTreeMap;
use std::sync::Arc;

use rumqttc::{LastWill, QoS};
use serde_json::{json, Map};

use super::forwarder::{Format, Msg};
use super::json_body::{self, ms};
use super::topics;
use crate::models::ModelStats;
use crate::outbox::{SledOutbox, Stream};

/// The plain-JSON format of an MQTT output: one message per sample, feature row, prediction,
/// alarm and drift record on `{prefix}/{device}/{kind}/{name}`, and a retained status.
#[derive(Debug)]
pub struct JsonFormat {
    /// First topic level (`topic_prefix`).
    pub prefix: String,
    /// This agent's id (second topic level, and in the status).
    pub device: String,
    /// QoS of data messages (the status is always QoS 1).
    pub qos: QoS,
    /// The outbox, whose per-stream backlog and drops the status reports.
    pub outbox: Arc<SledOutbox>,
    /// The models, whose served bundle versions the status reports.
    pub models: Vec<(String, Arc<ModelStats>)>,
}

impl JsonFormat {
    /// The last will: the retained status topic set to `offline`.
    pub fn will(prefix: &str, device: &str) -> LastWill {
        let body = json!({"state": "offline", "agent": device}).to_string();
        LastWill::new(
            topics::json_status(prefix, device),
            body,
            QoS::AtLeastOnce,
            true,
        )
    }

    fn status(&self, state: &str) -> Msg {
        let mut outbox = Map::new();
        for s in self.outbox.stats() {
            outbox.insert(
                s.stream.into(),
                json!({"backlog": s.records, "dropped": s.dropped}),
            );
        }
        let models: BTreeMap<&str, u64> = self
            .models
            .iter()
            .map(|(n, st)| {
                (
                    n.as_str(),
                    st.version_number.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect();
        let body = json!({
            "state": state,
            "agent": self.device,
            "agent_version": crate::version(),
            "ts": ms(edge_wire::now_ns()),
            "models": models,
            "outbox": outbox,
        });
        Msg {
            topic: topics::json_status(&self.prefix, &self.device),
            payload: body.to_string().into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: true,
        }
    }

    fn msg_at(
        &self,
        topic: String,
        mut body: Map<String, serde_json::Value>,
        seq: u64,
        historical: bool,
        retain: bool,
    ) -> Msg {
        body.insert("seq".into(), json!(seq));
        if historical {
            body.insert("historical".into(), json!(true));
        }
        Msg {
            topic,
            payload: serde_json::Value::Object(body).to_string().into_bytes(),
            qos: self.qos,
            retain,
        }
    }
}

impl Format for JsonFormat {
    fn on_connect(&mut self) -> Vec<Msg> {
        vec![self.status("online")]
    }

    fn periodic(&mut self) -> Vec<Msg> {
        vec![self.status("online")]
    }

    fn on_shutdown(&mut self) -> Vec<Msg> {
        vec![self.status("offline")]
    }

    fn encode(&mut self, stream: Stream, seq: u64, payload: &[u8], historical: bool) -> Vec<Msg> {
        let bodies = match json_body::bodies(stream, payload) {
            Ok(b) => b,
            Err(what) => {
                tracing::error!(
                    stream = stream.name(),
                    seq,
                    "undecodable {what} record in the outbox; skipped"
                );
                return Vec::new();
            }
        };
        bodies
            .into_iter()
            .map(|b| {
                let topic = topics::json_data(&self.prefix, &self.device, b.kind, &b.name);
                // Live alarm states are retained; replayed history must not overwrite them.
                let retain = b.kind == "alarms" && !historical;
                self.msg_at(topic, b.body, seq, historical, retain)
            })
            .collect()
    }
}
