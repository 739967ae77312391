//! The one record every source produces: [`Sample`] — a tag, a UTC timestamp in nanoseconds,
//! a typed [`Value`] and a [`Quality`].
//!
//! Architecture invariant: a non-finite float (NaN, +inf, -inf) never leaves this module with
//! `Quality::Good` or `Quality::Uncertain`. Every float sample is built through
//! [`Sample::new`], which downgrades non-finite values to `Quality::Bad`, so nothing downstream
//! (windows, features, models) can be fed NaN/inf silently.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Name of a measured signal, unique across all sources of one agent (checked at config load).
/// Shared (`Arc`) so cloning a sample never copies the name.
pub type Tag = Arc<str>;

/// Data quality of a sample, the common denominator of OPC-UA status codes, Modbus exception
/// responses/timeouts and payload parse results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// The value was read successfully and the device vouches for it.
    Good,
    /// The device delivered a value but flags it as doubtful (OPC-UA `Uncertain*`).
    Uncertain,
    /// No trustworthy value: device error, exception, timeout, disconnected, or unparseable.
    Bad,
}

impl Quality {
    /// The quality's name on every wire: `good`, `uncertain`, `bad`.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed sensor value. Integers keep their signedness so 64-bit counters are exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A coil, a discrete input, a bit, `true`/`false`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (a register, a counter).
    UInt(u64),
    /// A float; non-finite only with `Quality::Bad`.
    Float(f64),
    /// Text (an OPC-UA string).
    Text(Arc<str>),
    /// No value available (e.g. the source is disconnected); always paired with `Quality::Bad`.
    Null,
}

impl Value {
    /// Numeric view used by windows and features: booleans are 0/1, text and null have none.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            Value::Text(_) | Value::Null => None,
        }
    }

    /// A float that is NaN or infinite: such a value is never good quality.
    pub fn is_non_finite(&self) -> bool {
        matches!(*self, Value::Float(f) if !f.is_finite())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::UInt(v)
    }
}

/// One measurement of one tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The tag it measures.
    pub tag: Tag,
    /// Measurement time, nanoseconds since the Unix epoch (UTC).
    pub ts_ns: i64,
    /// The value (`Null` when there is none).
    pub value: Value,
    /// How far the value can be trusted.
    pub quality: Quality,
}

impl Sample {
    /// Builds a sample, enforcing the NaN/inf invariant: a non-finite float becomes `Bad`.
    pub fn new(tag: Tag, ts_ns: i64, value: Value, quality: Quality) -> Self {
        let quality = if value.is_non_finite() || matches!(value, Value::Null) {
            Quality::Bad
        } else {
            quality
        };
        Sample {
            tag,
            ts_ns,
            value,
            quality,
        }
    }

    /// A `Bad`, value-less sample: what a source emits for each of its tags when it loses
    /// its device, so consumers see the outage instead of a stale "good" value.
    pub fn bad(tag: Tag, ts_ns: i64) -> Self {
        Sample {
            tag,
            ts_ns,
            value: Value::Null,
            quality: Quality::Bad,
        }
    }

    /// The value as a float if it is usable by a model: good or uncertain quality and finite.
    pub fn usable_f64(&self) -> Option<f64> {
        if self.quality == Quality::Bad {
            return None;
        }
        self.value.as_f64().filter(|v| v.is_finite())
    }
}

/// Current wall-clock time as UTC nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // A clock set before 1970 is a misconfigured device; report it as negative time.
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Tag {
        Arc::from("t")
    }

    #[test]
    fn non_finite_floats_are_bad_quality() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let s = Sample::new(tag(), 1, Value::Float(v), Quality::Good);
            assert_eq!(s.quality, Quality::Bad, "{v} must be bad");
            assert_eq!(s.usable_f64(), None);
        }
        let s = Sample::new(tag(), 1, Value::Float(1.5), Quality::Uncertain);
        assert_eq!(s.quality, Quality::Uncertain);
        assert_eq!(s.usable_f64(), Some(1.5));
    }

    #[test]
    fn null_is_always_bad_and_bools_are_numeric() {
        assert_eq!(
            Sample::new(tag(), 0, Value::Null, Quality::Good).quality,
            Quality::Bad
        );
        assert_eq!(Value::Bool(true).as_f64(), Some(1.0));
        assert_eq!(Value::Text(Arc::from("x")).as_f64(), None);
        assert_eq!(Value::UInt(u64::MAX).as_f64(), Some(u64::MAX as f64));
    }

    #[test]
    fn json_shape_is_plain() {
        let s = Sample::new(tag(), 7, Value::Float(2.5), Quality::Good);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"tag":"t","ts_ns":7,"value":2.5,"quality":"good"}"#);
    }
}
