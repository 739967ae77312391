//! The outbox record schema: the streams a device stores and forwards, and what each
//! stream's records hold on the wire, in one place. The agent writes and reads its outbox
//! through here; the fleet server decodes uploaded records (predictions, alarms, drift)
//! through here. CBOR throughout.
//!
//! Samples are stored as compact arrays `[tag, ts_ns, quality, value]` with the value's type
//! kept explicit (`{"f": 1.5}`, `{"i": -3}`, `{"u": 7}`, ...): a plain untagged encoding would
//! turn an unsigned register value into a signed one on the way back. Features, predictions,
//! alarms and drift summaries are stored as the structs below (CBOR maps).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::bundle::BundleRef;
pub use crate::drift::{ColumnDrift, DriftRecord};
use crate::{Quality, Sample, Value};

/// The streams of the outbox (and of the fleet upload). One place lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Sample batches: one record per source read cycle.
    Samples,
    /// Feature rows of model windows.
    Features,
    /// Model predictions, one per window.
    Predictions,
    /// Alarm state changes (model score, drift, performance).
    Alarms,
    /// Drift records, one per model and interval.
    Drift,
    /// Reserved for agent events: nothing writes it yet, and the MQTT formats skip it.
    Events,
}

impl Stream {
    /// Every stream, in wire order.
    pub const ALL: [Stream; 6] = [
        Stream::Samples,
        Stream::Features,
        Stream::Predictions,
        Stream::Alarms,
        Stream::Drift,
        Stream::Events,
    ];

    /// The stream's name on the wire and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Samples => "samples",
            Stream::Features => "features",
            Stream::Predictions => "predictions",
            Stream::Alarms => "alarms",
            Stream::Drift => "drift",
            Stream::Events => "events",
        }
    }

    /// The stream of a wire name.
    pub fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One `T` per [`Stream`], indexed by the stream (where code would otherwise keep parallel
/// arrays indexed by position).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerStream<T>([T; Stream::ALL.len()]);

impl<T> PerStream<T> {
    /// A value per stream, made by `f`.
    pub fn from_fn(mut f: impl FnMut(Stream) -> T) -> Self {
        PerStream(Stream::ALL.map(&mut f))
    }

    /// A value per stream, made by `f`, or its first error.
    pub fn try_from_fn<E>(mut f: impl FnMut(Stream) -> Result<T, E>) -> Result<Self, E> {
        let mut values = Vec::with_capacity(Stream::ALL.len());
        for s in Stream::ALL {
            values.push(f(s)?);
        }
        match <[T; Stream::ALL.len()]>::try_from(values) {
            Ok(a) => Ok(PerStream(a)),
            Err(_) => unreachable!("one value per stream was made"),
        }
    }

    /// Each stream with its value, in [`Stream::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Stream, &T)> {
        Stream::ALL.into_iter().zip(self.0.iter())
    }

    /// Each stream with its value, mutable, in [`Stream::ALL`] order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Stream, &mut T)> {
        Stream::ALL.into_iter().zip(self.0.iter_mut())
    }

    /// The values, in [`Stream::ALL`] order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T> std::ops::Index<Stream> for PerStream<T> {
    type Output = T;
    fn index(&self, s: Stream) -> &T {
        &self.0[s as usize]
    }
}

impl<T> std::ops::IndexMut<Stream> for PerStream<T> {
    fn index_mut(&mut self, s: Stream) -> &mut T {
        &mut self.0[s as usize]
    }
}

impl<'a, T> IntoIterator for &'a PerStream<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> IntoIterator for PerStream<T> {
    type Item = T;
    type IntoIter = std::array::IntoIter<T, 6>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The features of one model window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    /// The model and bundle the window belongs to.
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    /// Window start, UTC ns.
    pub start_ns: i64,
    /// Window end (its last grid point), UTC ns.
    pub end_ns: i64,
    /// Feature column names, in the feature spec's order.
    pub names: Arc<[String]>,
    /// One value per name.
    pub values: Vec<f64>,
}

/// What the model made of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The model and bundle that predicted.
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    /// Window start, UTC ns.
    pub start_ns: i64,
    /// Window end, UTC ns.
    pub end_ns: i64,
    /// Raw model outputs by name (flattened).
    pub outputs: Vec<(String, Vec<f64>)>,
    /// The manifest's score, if it declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Class name from the manifest's label rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether this window's score is past the manifest's threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_threshold: Option<bool>,
    /// The alarm state after hysteresis (`raise_after` / `clear_after` windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<bool>,
}

/// An alarm state change of a model (hysteresis applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// The model and bundle whose alarm changed.
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    /// End of the window that changed the state.
    pub ts_ns: i64,
    /// `true`: raised; `false`: cleared.
    pub active: bool,
    /// The score (or, for drift and performance alarms, the metric's value) that decided.
    pub score: f64,
    /// The limit it was compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Set for drift and performance alarms (`score` is then the metric's value and
    /// `threshold` its limit); absent for the model's score alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftAlarm>,
}

/// What a drift alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAlarmKind {
    /// A feature column drifts from the bundle's reference.
    Column,
    /// A model output drifts from the outputs seen on the training data.
    Output,
    /// At least `dataset_share` of the feature columns drift.
    Dataset,
    /// Accuracy / recall / MAE on late labels past its limit (concept drift).
    Performance,
}

impl DriftAlarmKind {
    /// The kind's name on the wire and in topics.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAlarmKind::Column => "column",
            DriftAlarmKind::Output => "output",
            DriftAlarmKind::Dataset => "dataset",
            DriftAlarmKind::Performance => "performance",
        }
    }
}

/// The drift part of an [`AlarmEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    /// Column or output name, `dataset`, or the performance metric (`accuracy`, `recall`, `mae`).
    pub subject: String,
    /// What kind of subject.
    pub kind: DriftAlarmKind,
    /// The metric compared: `psi`, `js`, `ks`, `w1_std`, `drifting_share`, `accuracy`,
    /// `recall`, `mae`; `bundle_replaced` when a new bundle cleared it.
    pub metric: String,
    /// Consecutive intervals that decided the change.
    pub intervals: u32,
}

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

/// A record that does not decode as its stream's payload.
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

/// One sample batch as a record: compact arrays `[tag, ts_ns, quality, value]`.
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

/// The samples of a sample record.
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

/// A feature row as a record.
pub fn encode_features(f: &FeatureRecord) -> Vec<u8> {
    to_cbor(f)
}

/// The feature row of a record.
pub fn decode_features(b: &[u8]) -> Result<FeatureRecord, DecodeError> {
    from_cbor(b)
}

/// A prediction as a record.
pub fn encode_prediction(p: &Prediction) -> Vec<u8> {
    to_cbor(p)
}

/// The prediction of a record.
pub fn decode_prediction(b: &[u8]) -> Result<Prediction, DecodeError> {
    from_cbor(b)
}

/// An alarm state change as a record.
pub fn encode_alarm(a: &AlarmEvent) -> Vec<u8> {
    to_cbor(a)
}

/// The alarm state change of a record.
pub fn decode_alarm(b: &[u8]) -> Result<AlarmEvent, DecodeError> {
    from_cbor(b)
}

/// Drift records: CBOR of [`DriftRecord`]; each summary carries its sealed sketch.
pub fn encode_drift(d: &DriftRecord) -> Vec<u8> {
    to_cbor(d)
}

/// The drift record of a record.
pub fn decode_drift(b: &[u8]) -> Result<DriftRecord, DecodeError> {
    from_cbor(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_their_exact_type_and_quality() {
        let t: crate::Tag = Arc::from("p1.count");
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
