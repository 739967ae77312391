//! Plain JSON over MQTT: one message per sample, feature row, prediction and alarm, on the
//! topics of `topics.rs`, plus a retained status with a last will. Payload fields:
//!
//! - every message: `ts` (measurement time, Unix ms), `seq` (outbox sequence number of its
//!   stream: consumers can de-duplicate replays), `historical: true` for backlog sent after an
//!   outage (live values are the ones without it);
//! - samples: `value` (number, boolean, string, or null when bad), `quality`;
//! - features: `window_start`, `model`, `bundle`, `model_version`, `version_number`,
//!   `features` (name -> value);
//! - predictions: as features, with `score`, `label`, `alarm`, `over_threshold`, `outputs`;
//! - alarms: `model`, `bundle`, `model_version`, `state` (`raised`/`cleared`), `score`,
//!   `threshold` — retained when live, so a SCADA client that connects later sees the state;
//! - status (retained): `state` (`online`/`offline`), `agent`, `agent_version`, `ts`, `models`
//!   (name -> version number), `outbox` (stream -> backlog and dropped counts).

use std::collections::BTreeMap;
use std::sync::Arc;

use edge_protocols::{Quality, Value};
use rumqttc::{LastWill, QoS};
use serde_json::{json, Map};

use super::forwarder::{Format, Msg};
use super::topics;
use crate::models::ModelStats;
use crate::outbox::{records, SledOutbox, Stream};

pub struct JsonFormat {
    pub prefix: String,
    pub device: String,
    pub qos: QoS,
    pub outbox: Arc<SledOutbox>,
    pub models: Vec<(String, Arc<ModelStats>)>,
}

fn ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// Keeps topic levels valid: MQTT wildcards cannot appear in a published topic.
fn level(s: &str) -> String {
    s.replace(['+', '#'], "_")
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) if f.is_finite() => json!(f),
        Value::Text(t) => json!(&**t),
        Value::Float(_) | Value::Null => serde_json::Value::Null,
    }
}

impl JsonFormat {
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
            "agent_version": crate::VERSION,
            "ts": ms(edge_protocols::now_ns()),
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

    fn msg(
        &self,
        kind: &str,
        name: &str,
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
            topic: topics::json_data(&self.prefix, &self.device, kind, &level(name)),
            payload: serde_json::Value::Object(body).to_string().into_bytes(),
            qos: self.qos,
            retain,
        }
    }
}

fn identity(b: &mut Map<String, serde_json::Value>, src: &crate::pipeline::record::BundleRef) {
    b.insert("model".into(), json!(&*src.model));
    b.insert("bundle".into(), json!(&*src.bundle));
    b.insert("model_version".into(), json!(&*src.version));
    b.insert("version_number".into(), json!(src.version_number));
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
        let bad = |what: &str| {
            tracing::error!(
                stream = stream.name(),
                seq,
                "undecodable {what} record in the outbox; skipped"
            );
            Vec::new()
        };
        match stream {
            Stream::Samples => {
                let Ok(samples) = records::decode_samples(payload) else {
                    return bad("sample");
                };
                samples
                    .iter()
                    .map(|s| {
                        let mut b = Map::new();
                        b.insert("ts".into(), json!(ms(s.ts_ns)));
                        b.insert(
                            "value".into(),
                            if s.quality == Quality::Bad {
                                serde_json::Value::Null
                            } else {
                                value_json(&s.value)
                            },
                        );
                        b.insert("quality".into(), json!(s.quality.as_str()));
                        self.msg("samples", &s.tag, b, seq, historical, false)
                    })
                    .collect()
            }
            Stream::Features => {
                let Ok(f) = records::decode_features(payload) else {
                    return bad("features");
                };
                let mut b = Map::new();
                b.insert("ts".into(), json!(ms(f.end_ns)));
                b.insert("window_start".into(), json!(ms(f.start_ns)));
                identity(&mut b, &f.source);
                let feats: Map<String, serde_json::Value> = f
                    .names
                    .iter()
                    .zip(&f.values)
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect();
                b.insert("features".into(), serde_json::Value::Object(feats));
                vec![self.msg("features", &f.source.model, b, seq, historical, false)]
            }
            Stream::Predictions => {
                let Ok(p) = records::decode_prediction(payload) else {
                    return bad("prediction");
                };
                let mut b = Map::new();
                b.insert("ts".into(), json!(ms(p.end_ns)));
                b.insert("window_start".into(), json!(ms(p.start_ns)));
                identity(&mut b, &p.source);
                for (k, v) in [
                    ("score", p.score.map(|x| json!(x))),
                    ("label", p.label.as_ref().map(|x| json!(x))),
                    ("alarm", p.alarm.map(|x| json!(x))),
                    ("over_threshold", p.over_threshold.map(|x| json!(x))),
                ] {
                    if let Some(v) = v {
                        b.insert(k.into(), v);
                    }
                }
                let outs: Map<String, serde_json::Value> = p
                    .outputs
                    .iter()
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect();
                b.insert("outputs".into(), serde_json::Value::Object(outs));
                vec![self.msg("predictions", &p.source.model, b, seq, historical, false)]
            }
            Stream::Alarms => {
                let Ok(a) = records::decode_alarm(payload) else {
                    return bad("alarm");
                };
                let mut b = Map::new();
                b.insert("ts".into(), json!(ms(a.ts_ns)));
                identity(&mut b, &a.source);
                b.insert(
                    "state".into(),
                    json!(if a.active { "raised" } else { "cleared" }),
                );
                b.insert("score".into(), json!(a.score));
                if let Some(t) = a.threshold {
                    b.insert("threshold".into(), json!(t));
                }
                // Live alarm states are retained; replayed history must not overwrite them.
                vec![self.msg("alarms", &a.source.model, b, seq, historical, !historical)]
            }
            Stream::Drift | Stream::Events => Vec::new(),
        }
    }
}
