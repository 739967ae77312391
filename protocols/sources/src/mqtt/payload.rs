//! Decoding MQTT payloads into values: plain numbers/booleans, or JSON with a JSON pointer per
//! tag and an optional timestamp field. Pure functions; every failure is a [`PayloadError`]
//! whose text says what was expected, so the source can log it and emit a `Bad` sample.

use serde::Deserialize;

use edge_wire::sample::Value;

/// How to read a timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// RFC 3339 strings (`2026-11-27T05:25:54.123Z`, offsets allowed), or numbers taken as
    /// Unix milliseconds.
    #[default]
    Auto,
    /// RFC 3339 text (`2024-01-31T12:00:00.5Z`).
    Rfc3339,
    /// Unix seconds (fractions allowed).
    UnixS,
    /// Unix milliseconds.
    UnixMs,
    /// Unix microseconds.
    UnixUs,
    /// Unix nanoseconds.
    UnixNs,
}

/// Why a payload gave no value (the sample is then bad, and the reason counted).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// The payload is not UTF-8 text.
    #[error("payload is not UTF-8 text")]
    NotUtf8,
    /// A plain payload that is not a number or `true`/`false`.
    #[error("payload `{0}` is not a number or true/false")]
    NotANumber(String),
    /// A payload that is not JSON, for a tag with a `json_pointer`.
    #[error("payload is not valid JSON: {0}")]
    BadJson(String),
    /// Nothing at the JSON pointer.
    #[error("JSON pointer `{0}` not found in payload")]
    Missing(String),
    /// Something at the JSON pointer that is not a value.
    #[error("JSON value at `{pointer}` is {found}, expected a number, boolean or numeric string")]
    WrongType {
        /// The value's JSON pointer.
        pointer: String,
        /// The JSON type found there.
        found: &'static str,
    },
    /// The timestamp at `timestamp_pointer` cannot be read.
    #[error("timestamp at `{pointer}`: {reason}")]
    BadTimestamp {
        /// The timestamp's JSON pointer.
        pointer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// NaN, ±infinity, or a number past f64's range (`1e999`): never a measurement.
    #[error("value `{0}` is not a finite number")]
    NotFinite(String),
}

impl PayloadError {
    /// The counter this error is booked under.
    pub fn reason(&self) -> crate::source::BadMessage {
        use crate::source::BadMessage as B;
        match self {
            PayloadError::NotUtf8 => B::NotUtf8,
            PayloadError::NotANumber(_) => B::NotANumber,
            PayloadError::BadJson(_) => B::BadJson,
            PayloadError::Missing(_) => B::Missing,
            PayloadError::WrongType { .. } => B::WrongType,
            PayloadError::BadTimestamp { .. } => B::BadTimestamp,
            PayloadError::NotFinite(_) => B::NotFinite,
        }
    }
}

/// Parses a whole payload as one plain value: an integer, a float or `true`/`false`.
pub fn parse_plain(payload: &[u8]) -> Result<Value, PayloadError> {
    let s = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    finite(
        parse_scalar_text(s.trim()).ok_or_else(|| PayloadError::NotANumber(truncate(s.trim())))?,
        s.trim(),
    )
}

/// `v`, unless it is a float that is not finite (an error naming the text it came from, so
/// the source logs and counts it like any other bad payload).
fn finite(v: Value, text: &str) -> Result<Value, PayloadError> {
    match v {
        Value::Float(f) if !f.is_finite() => Err(PayloadError::NotFinite(truncate(text))),
        v => Ok(v),
    }
}

fn parse_scalar_text(s: &str) -> Option<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::Int(i));
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(Value::UInt(u));
    }
    if let Ok(f) = s.parse::<f64>() {
        return Some(Value::Float(f));
    }
    match s {
        "true" | "TRUE" | "True" => Some(Value::Bool(true)),
        "false" | "FALSE" | "False" => Some(Value::Bool(false)),
        _ => None,
    }
}

fn truncate(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Parses a payload as JSON once, for all the tags that read from it.
pub fn parse_json(payload: &[u8]) -> Result<serde_json::Value, PayloadError> {
    serde_json::from_slice(payload).map_err(|e| PayloadError::BadJson(e.to_string()))
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads the value at `pointer` (RFC 6901, e.g. `/data/temp`; `""` is the whole document).
pub fn value_at(doc: &serde_json::Value, pointer: &str) -> Result<Value, PayloadError> {
    let v = doc
        .pointer(pointer)
        .ok_or_else(|| PayloadError::Missing(pointer.to_string()))?;
    let wrong = || PayloadError::WrongType {
        pointer: pointer.to_string(),
        found: json_type(v),
    };
    match v {
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Value::Int(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Value::UInt(u))
            } else {
                n.as_f64().map(Value::Float).ok_or_else(wrong)
            }
        }
        serde_json::Value::Bool(b) => Ok(Value::Bool(*b)),
        // Some devices quote their numbers; "NaN"/"inf" are errors like any bad payload.
        serde_json::Value::String(s) => finite(parse_scalar_text(s.trim()).ok_or_else(wrong)?, s),
        _ => Err(wrong()),
    }
}

/// Reads a timestamp field as Unix nanoseconds.
pub fn timestamp_at(
    doc: &serde_json::Value,
    pointer: &str,
    format: TimestampFormat,
) -> Result<i64, PayloadError> {
    let bad = |reason: String| PayloadError::BadTimestamp {
        pointer: pointer.to_string(),
        reason,
    };
    let v = doc
        .pointer(pointer)
        .ok_or_else(|| bad("field not found".into()))?;
    match v {
        serde_json::Value::String(s) => match format {
            TimestampFormat::Auto | TimestampFormat::Rfc3339 => {
                parse_rfc3339(s).map_err(|e| bad(e.to_string()))
            }
            _ => {
                let n: f64 = s
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`{}` is not a number", truncate(s))))?;
                unix_to_ns(n, format).ok_or_else(|| bad(format!("{n} is out of range")))
            }
        },
        serde_json::Value::Number(n) => {
            if format == TimestampFormat::Rfc3339 {
                return Err(bad("expected an RFC 3339 string, found a number".into()));
            }
            // Integer nanoseconds do not fit f64 exactly: keep integers exact.
            if let Some(i) = n.as_i64() {
                return unix_int_to_ns(i, format)
                    .ok_or_else(|| bad(format!("{i} is out of range")));
            }
            let f = n
                .as_f64()
                .ok_or_else(|| bad("not a finite number".into()))?;
            unix_to_ns(f, format).ok_or_else(|| bad(format!("{f} is out of range")))
        }
        other => Err(bad(format!(
            "expected a string or number, found {}",
            json_type(other)
        ))),
    }
}

fn unit_ns(format: TimestampFormat) -> i64 {
    match format {
        TimestampFormat::UnixS => 1_000_000_000,
        TimestampFormat::UnixUs => 1_000,
        TimestampFormat::UnixNs => 1,
        TimestampFormat::Auto | TimestampFormat::Rfc3339 | TimestampFormat::UnixMs => 1_000_000,
    }
}

fn unix_int_to_ns(v: i64, format: TimestampFormat) -> Option<i64> {
    v.checked_mul(unit_ns(format))
}

fn unix_to_ns(v: f64, format: TimestampFormat) -> Option<i64> {
    let ns = v * unit_ns(format) as f64;
    (ns.is_finite() && ns.abs() < 9.2e18).then_some(ns.round() as i64)
}

/// Why a text timestamp cannot be read ([`parse_rfc3339`]). The text is cut for messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rfc3339Error {
    /// Not RFC 3339 with an offset.
    #[error("`{text}` is not RFC 3339 ({reason})")]
    Syntax {
        /// The text (cut).
        text: String,
        /// chrono's reason.
        reason: chrono::ParseError,
    },
    /// A valid time outside what nanoseconds in an `i64` hold (about 1677..2262).
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// RFC 3339 / ISO 8601 with offset (`Z` or `+02:00`) to Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, Rfc3339Error> {
    let t =
        chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|reason| Rfc3339Error::Syntax {
            text: truncate(s),
            reason,
        })?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| Rfc3339Error::OutOfRange(truncate(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_payloads() {
        assert_eq!(parse_plain(b" 42\n"), Ok(Value::Int(42)));
        assert_eq!(
            parse_plain(b"18446744073709551615"),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(parse_plain(b"-1.5e3"), Ok(Value::Float(-1500.0)));
        assert_eq!(parse_plain(b"true"), Ok(Value::Bool(true)));
        // Non-finite numbers are errors (they became bad samples with no log and no count).
        for text in ["NaN", "nan", "inf", "-inf", "infinity", "1e999", "-1e999"] {
            assert_eq!(
                parse_plain(text.as_bytes()),
                Err(PayloadError::NotFinite(text.into())),
                "{text}"
            );
        }
        let doc = parse_json(br#"{"v": "NaN", "w": "1e999", "x": 1e300}"#).unwrap();
        assert_eq!(
            value_at(&doc, "/v"),
            Err(PayloadError::NotFinite("NaN".into()))
        );
        assert_eq!(
            value_at(&doc, "/w"),
            Err(PayloadError::NotFinite("1e999".into()))
        );
        assert_eq!(value_at(&doc, "/x"), Ok(Value::Float(1e300)));
        assert_eq!(
            parse_plain(b"hot"),
            Err(PayloadError::NotANumber("hot".into()))
        );
        assert_eq!(parse_plain(&[0xff, 0xfe]), Err(PayloadError::NotUtf8));
    }

    #[test]
    fn json_pointer_values_and_errors() {
        let doc =
            parse_json(br#"{"d":{"t":21.5,"on":true,"s":"7","n":null,"a":[1,2]},"c":3}"#).unwrap();
        assert_eq!(value_at(&doc, "/d/t"), Ok(Value::Float(21.5)));
        assert_eq!(value_at(&doc, "/c"), Ok(Value::Int(3)));
        assert_eq!(value_at(&doc, "/d/on"), Ok(Value::Bool(true)));
        assert_eq!(value_at(&doc, "/d/s"), Ok(Value::Int(7)));
        assert_eq!(value_at(&doc, "/d/a/1"), Ok(Value::Int(2)));
        assert_eq!(
            value_at(&doc, "/d/x"),
            Err(PayloadError::Missing("/d/x".into()))
        );
        let e = value_at(&doc, "/d/n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "JSON value at `/d/n` is null, expected a number, boolean or numeric string"
        );
        assert!(matches!(
            parse_json(b"{\"t\": 1"),
            Err(PayloadError::BadJson(_))
        ));
    }

    #[test]
    fn json_floats_parse_exactly() {
        // serde_json's default float parser can be off by an ulp; parity with recordings
        // (parsed by Rust's exact parser) needs the `float_roundtrip` feature.
        for text in [
            "0.000547046863624216",
            "61.58279432946513",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let doc = parse_json(format!("{{\"v\":{text}}}").as_bytes()).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(value_at(&doc, "/v"), Ok(Value::Float(want)), "{text}");
        }
    }

    #[test]
    fn timestamps_in_every_format() {
        let doc = parse_json(
            br#"{"iso":"2026-11-27T05:25:54.5Z","off":"2026-11-27T07:25:54.5+02:00","ms":1795757154500,"s":1795757154.5,"bad":"yesterday"}"#,
        )
        .unwrap();
        let want = 1_795_757_154_500_000_000i64;
        assert_eq!(timestamp_at(&doc, "/iso", TimestampFormat::Auto), Ok(want));
        assert_eq!(
            timestamp_at(&doc, "/off", TimestampFormat::Rfc3339),
            Ok(want)
        );
        assert_eq!(timestamp_at(&doc, "/ms", TimestampFormat::Auto), Ok(want));
        assert_eq!(timestamp_at(&doc, "/ms", TimestampFormat::UnixMs), Ok(want));
        assert_eq!(timestamp_at(&doc, "/s", TimestampFormat::UnixS), Ok(want));
        assert!(timestamp_at(&doc, "/bad", TimestampFormat::Auto).is_err());
        assert!(timestamp_at(&doc, "/ms", TimestampFormat::Rfc3339).is_err());
        assert!(timestamp_at(&doc, "/nope", TimestampFormat::Auto).is_err());
        // overflow is an error, not a wrap
        let big = parse_json(br#"{"t":9223372036854775807}"#).unwrap();
        assert!(timestamp_at(&big, "/t", TimestampFormat::UnixS).is_err());
    }
}
