//! The CBOR schema of outbox records: what each stream stores, in one place. Every reader of
//! the outbox (MQTT formats, later the fleet sync) decodes through here.
//!
//! Samples are stored as compact arrays `[tag, ts_ns, quality, value]` with the value's type
//! kept explicit (`{"f": 1.5}`, `{"i": -3}`, `{"u": 7}`, ...): a plain untagged encoding would
//! turn an unsigned register value into a signed one on the way back. Features, predictions
//! and alarms are stored as their pipeline records (CBOR maps).

use std::sync::Arc;

use edge_protocols::{Quality, Sample, Value};
use serde::{Deserialize, Serialize};

use crate::pipeline::record::{AlarmEvent, DriftRecord, FeatureRecord, Prediction};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum StoredValue {
    #[serde(rename = "b")]
    Bool(bool),
    #[serde(rename = "i")]
    Int(i64),
    #[serde(rename = "u")]
    UInt(u64),
    #[serde(rename = "f")]
    Float(f64),
    #[serde(rename = "t")]
    Text(String),
    #[serde(rename = "n")]
    Null,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredSample(String, i64, u8, StoredValue);

fn quality_code(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Uncertain => 1,
        Quality::Bad => 2,
    }
}

fn quality_of(code: u8) -> Quality {
    match code {
        0 => Quality::Good,
        1 => Quality::Uncertain,
        _ => Quality::Bad,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable outbox record: {0}")]
pub struct DecodeError(String);

fn to_cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Serializing plain data into a Vec cannot fail.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

fn from_cbor<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, DecodeError> {
    ciborium::from_reader(b).map_err(|e| DecodeError(e.to_string()))
}

pub fn encode_samples<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Vec<u8> {
    let v: Vec<StoredSample> = samples
        .into_iter()
        .map(|s| {
            let value = match &s.value {
                Value::Bool(b) => StoredValue::Bool(*b),
                Value::Int(i) => StoredValue::Int(*i),
                Value::UInt(u) => StoredValue::UInt(*u),
                Value::Float(f) => StoredValue::Float(*f),
                Value::Text(t) => StoredValue::Text(t.to_string()),
                Value::Null => StoredValue::Null,
            };
            StoredSample(s.tag.to_string(), s.ts_ns, quality_code(s.quality), value)
        })
        .collect();
    to_cbor(&v)
}

pub fn decode_samples(b: &[u8]) -> Result<Vec<Sample>, DecodeError> {
    let v: Vec<StoredSample> = from_cbor(b)?;
    Ok(v.into_iter()
        .map(|StoredSample(tag, ts_ns, q, value)| {
            let value = match value {
                StoredValue::Bool(b) => Value::Bool(b),
                StoredValue::Int(i) => Value::Int(i),
                StoredValue::UInt(u) => Value::UInt(u),
                StoredValue::Float(f) => Value::Float(f),
                StoredValue::Text(t) => Value::Text(Arc::from(t)),
                StoredValue::Null => Value::Null,
            };
            Sample::new(Arc::from(tag), ts_ns, value, quality_of(q))
        })
        .collect())
}

pub fn encode_features(f: &FeatureRecord) -> Vec<u8> {
    to_cbor(f)
}

pub fn decode_features(b: &[u8]) -> Result<FeatureRecord, DecodeError> {
    from_cbor(b)
}

pub fn encode_prediction(p: &Prediction) -> Vec<u8> {
    to_cbor(p)
}

pub fn decode_prediction(b: &[u8]) -> Result<Prediction, DecodeError> {
    from_cbor(b)
}

pub fn encode_alarm(a: &AlarmEvent) -> Vec<u8> {
    to_cbor(a)
}

pub fn decode_alarm(b: &[u8]) -> Result<AlarmEvent, DecodeError> {
    from_cbor(b)
}

/// Drift records: CBOR of [`DriftRecord`]; each summary carries its sealed sketch.
pub fn encode_drift(d: &DriftRecord) -> Vec<u8> {
    to_cbor(d)
}

pub fn decode_drift(b: &[u8]) -> Result<DriftRecord, DecodeError> {
    from_cbor(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_their_exact_type_and_quality() {
        let t: edge_protocols::Tag = Arc::from("p1.count");
        let s = vec![
            Sample::new(t.clone(), 1, Value::UInt(7), Quality::Good),
            Sample::new(t.clone(), 2, Value::Int(-7), Quality::Uncertain),
            Sample::new(t.clone(), 3, Value::Float(1.0), Quality::Good),
            Sample::new(t.clone(), 4, Value::Bool(true), Quality::Good),
            Sample::new(t.clone(), 5, Value::Text(Arc::from("auto")), Quality::Good),
            Sample::bad(t.clone(), 6),
            Sample::new(t, 7, Value::UInt(u64::MAX), Quality::Good),
        ];
        let back = decode_samples(&encode_samples(&s)).unwrap();
        assert_eq!(back, s);
        assert!(
            decode_samples(&[0x85, 0x01]).is_err(),
            "truncated input is an error"
        );
    }
}
