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
//!   (`labelled`, `unlabelled`, `accuracy`, `precision`, `recall`, `mae` when known);
//! - status (retained): `state` (`online`/`offline`), `agent`, `agent_version`, `ts`, `models`
//!   (name -> version number), `outbox` (stream -> backlog and dropped counts); once per
//!   connect, then every 30 s.

use std::collections::BTreeMap;
use std::sync::Arc;

use edge_protocols::{Quality, Value};
use rumqttc::{LastWill, QoS};
use serde_json::{json, Map};

use super::forwarder::{Format, Msg};
use super::topics;
use crate::models::ModelStats;
use crate::outbox::{SledOutbox, Stream};
use edge_protocols::records;

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
        body: Map<String, serde_json::Value>,
        seq: u64,
        historical: bool,
        retain: bool,
    ) -> Msg {
        let topic = topics::json_data(&self.prefix, &self.device, kind, &level(name));
        self.msg_at(topic, body, seq, historical, retain)
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

/// Topic name of a drift alarm under `alarms/` (see `topics.rs`).
fn drift_alarm_name(model: &str, d: &crate::pipeline::record::DriftAlarm) -> String {
    use crate::pipeline::record::DriftAlarmKind;
    let subject = level(&d.subject).replace('/', "_");
    match d.kind {
        DriftAlarmKind::Dataset => topics::drift_alarm(&level(model), "dataset", None),
        k => topics::drift_alarm(&level(model), k.as_str(), Some(&subject)),
    }
}

fn drift_columns(cols: &[edge_protocols::drift::ColumnDrift]) -> serde_json::Value {
    let finite = |x: f64| x.is_finite().then_some(x);
    let m: Map<String, serde_json::Value> = cols
        .iter()
        .map(|c| {
            let mo = &c.summary.moments;
            let mut v = json!({
                "count": mo.count,
                "missing": c.summary.missing,
                "mean": finite(mo.mean),
                "std": finite(mo.variance().sqrt()),
                "drifting": c.drifting,
            });
            if let (Some(s), Some(o)) = (c.scores, v.as_object_mut()) {
                o.insert("psi".into(), json!(finite(s.psi)));
                o.insert("js".into(), json!(finite(s.js)));
                o.insert("ks".into(), json!(finite(s.ks)));
                o.insert("w1_std".into(), json!(finite(s.w1_std)));
                o.insert("band".into(), json!(s.band));
            }
            (c.summary.name.clone(), v)
        })
        .collect();
    serde_json::Value::Object(m)
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
                let name = match &a.drift {
                    None => level(&a.source.model),
                    Some(d) => {
                        b.insert("kind".into(), json!(d.kind.as_str()));
                        b.insert("subject".into(), json!(d.subject));
                        b.insert("metric".into(), json!(d.metric));
                        b.insert("value".into(), json!(a.score));
                        b.insert("intervals".into(), json!(d.intervals));
                        drift_alarm_name(&a.source.model, d)
                    }
                };
                // Live alarm states are retained; replayed history must not overwrite them.
                vec![self.msg_at(
                    topics::json_data(&self.prefix, &self.device, "alarms", &name),
                    b,
                    seq,
                    historical,
                    !historical,
                )]
            }
            Stream::Drift => {
                let Ok(d) = records::decode_drift(payload) else {
                    return bad("drift");
                };
                let mut b = Map::new();
                b.insert("ts".into(), json!(ms(d.end_ns)));
                b.insert("window_start".into(), json!(ms(d.start_ns)));
                identity(&mut b, &d.source);
                b.insert("windows".into(), json!(d.windows));
                b.insert("metric".into(), json!(d.metric.name()));
                b.insert("dataset_drift".into(), json!(d.dataset_drift));
                b.insert("drifting".into(), json!(d.drifting));
                b.insert("columns".into(), drift_columns(&d.columns));
                b.insert("outputs".into(), drift_columns(&d.outputs));
                if let Some(p) = &d.performance {
                    b.insert(
                        "performance".into(),
                        json!({
                            "labelled": p.labelled,
                            "unlabelled": p.unlabelled,
                            "accuracy": p.accuracy(),
                            "precision": p.precision(),
                            "recall": p.recall(),
                            "mae": p.mae(),
                        }),
                    );
                }
                vec![self.msg("drift", &d.source.model, b, seq, historical, false)]
            }
            Stream::Events => Vec::new(),
        }
    }
}
