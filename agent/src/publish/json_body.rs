//! The JSON bodies of the plain-JSON MQTT format, one place for both users: the MQTT output
//! (`json.rs` adds `seq`, `historical` and the topic prefix) and `edge-agent replay`, whose
//! files hold exactly what a live agent publishes. The field list is in `json.rs`.

use edge_wire::records;
use edge_wire::{Quality, Value};
use serde_json::{json, Map};

use super::topics;
use crate::outbox::Stream;
use crate::pipeline::record::{AlarmEvent, DriftRecord, FeatureRecord, Prediction, Record};

/// One message body: the topic's kind level (`samples`, `features`, `predictions`, `alarms`,
/// `drift`) and its name level (tag, model, or alarm name), valid as MQTT topic levels.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonBody {
    /// The kind level: `samples`, `features`, `predictions`, `alarms` or `drift`.
    pub kind: &'static str,
    /// The name level (tag, model or alarm name), wildcards replaced ([`level`]).
    pub name: String,
    /// The JSON object published.
    pub body: Map<String, serde_json::Value>,
}

fn body(kind: &'static str, name: &str, body: Map<String, serde_json::Value>) -> JsonBody {
    JsonBody {
        kind,
        name: level(name),
        body,
    }
}

/// The bodies of one outbox record of `stream`; `Err` names the record kind that did not
/// decode.
pub fn bodies(stream: Stream, payload: &[u8]) -> Result<Vec<JsonBody>, &'static str> {
    Ok(match stream {
        Stream::Samples => sample_bodies(&records::decode_samples(payload).map_err(|_| "sample")?),
        Stream::Features => vec![features_body(
            &records::decode_features(payload).map_err(|_| "features")?,
        )],
        Stream::Predictions => vec![prediction_body(
            &records::decode_prediction(payload).map_err(|_| "prediction")?,
        )],
        Stream::Alarms => vec![alarm_body(
            &records::decode_alarm(payload).map_err(|_| "alarm")?,
        )],
        Stream::Drift => vec![drift_body(
            &records::decode_drift(payload).map_err(|_| "drift")?,
        )],
        Stream::Events => Vec::new(),
    })
}

/// The bodies of a pipeline record, as [`bodies`] gives them for its outbox encoding (the
/// outbox's CBOR round trip is lossless): for `replay`, which has no outbox.
pub fn record_bodies(rec: &Record) -> Vec<JsonBody> {
    match rec {
        Record::Samples(s) => sample_bodies(s),
        Record::Features(f) => vec![features_body(f)],
        Record::Prediction(p) => vec![prediction_body(p)],
        Record::Alarm(a) => vec![alarm_body(a)],
        Record::Drift(d) => vec![drift_body(d)],
    }
}

fn sample_bodies(samples: &[edge_wire::Sample]) -> Vec<JsonBody> {
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
            body("samples", &s.tag, b)
        })
        .collect()
}

fn features_body(f: &FeatureRecord) -> JsonBody {
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
    body("features", &f.source.model, b)
}

fn prediction_body(p: &Prediction) -> JsonBody {
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
    body("predictions", &p.source.model, b)
}

fn alarm_body(a: &AlarmEvent) -> JsonBody {
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
    JsonBody {
        kind: "alarms",
        name,
        body: b,
    }
}

fn drift_body(d: &DriftRecord) -> JsonBody {
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
    if let Some(sh) = &d.shadow {
        b.insert(
            "shadow".into(),
            json!({
                "bundle": sh.bundle,
                "version": sh.version,
                "version_number": sh.version_number,
                "windows": sh.windows,
                "errors": sh.errors,
                "agreement": sh.agreement(),
                "decided": sh.decided,
                "champion_over": sh.champion_over,
                "challenger_over": sh.challenger_over,
                "mean_score_diff": (sh.scored > 0).then_some(sh.mean_score_diff),
                "mean_abs_score_diff": (sh.scored > 0).then_some(sh.mean_abs_score_diff),
                "max_abs_score_diff": (sh.scored > 0).then_some(sh.max_abs_score_diff),
            }),
        );
    }
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
    body("drift", &d.source.model, b)
}

/// Nanoseconds to milliseconds, rounding toward negative infinity (timestamps before 1970
/// stay ordered).
pub fn ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// Keeps topic levels valid: MQTT wildcards cannot appear in a published topic.
pub fn level(s: &str) -> String {
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

/// Topic name of a drift alarm under `alarms/` (see `topics.rs`).
fn drift_alarm_name(model: &str, d: &crate::pipeline::record::DriftAlarm) -> String {
    use crate::pipeline::record::DriftAlarmKind;
    let subject = level(&d.subject).replace('/', "_");
    match d.kind {
        DriftAlarmKind::Dataset => topics::drift_alarm(&level(model), "dataset", None),
        k => topics::drift_alarm(&level(model), k.as_str(), Some(&subject)),
    }
}

fn drift_columns(cols: &[edge_wire::drift::ColumnDrift]) -> serde_json::Value {
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
