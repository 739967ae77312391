//! OPC-UA values to samples: `Variant` -> [`Value`], `StatusCode` -> [`Quality`], timestamp
//! choice. Pure functions.

use std::sync::Arc;

use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use super::config::TimestampSource;
use edge_wire::sample::{Quality, Sample, Tag, Value};

/// Scalar variants map to typed values; arrays and structures are not sensor readings and map
/// to `None` (the caller emits a `Bad` sample and logs the type once).
pub fn variant_to_value(v: &Variant) -> Option<Value> {
    Some(match v {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::Int((*x).into()),
        Variant::Int16(x) => Value::Int((*x).into()),
        Variant::Int32(x) => Value::Int((*x).into()),
        Variant::Int64(x) => Value::Int(*x),
        Variant::Byte(x) => Value::UInt((*x).into()),
        Variant::UInt16(x) => Value::UInt((*x).into()),
        Variant::UInt32(x) => Value::UInt((*x).into()),
        Variant::UInt64(x) => Value::UInt(*x),
        Variant::Float(x) => Value::Float((*x).into()),
        Variant::Double(x) => Value::Float(*x),
        Variant::String(s) => Value::Text(Arc::from(s.as_ref())),
        Variant::LocalizedText(t) => Value::Text(Arc::from(t.text.as_ref())),
        Variant::DateTime(d) => match datetime_ns(d) {
            Some(ns) => Value::Int(ns),
            None => return None,
        },
        _ => return None,
    })
}

/// The sample quality of an OPC-UA status code: good, uncertain or bad.
pub fn status_to_quality(s: StatusCode) -> Quality {
    if s.is_good() {
        Quality::Good
    } else if s.is_uncertain() {
        Quality::Uncertain
    } else {
        Quality::Bad
    }
}

/// OPC-UA DateTime (100 ns ticks since 1601) to Unix nanoseconds; `None` for the null time.
pub fn datetime_ns(d: &DateTime) -> Option<i64> {
    if d.is_null() {
        return None;
    }
    const EPOCH_DIFF_TICKS: i64 = 116_444_736_000_000_000;
    d.ticks().checked_sub(EPOCH_DIFF_TICKS)?.checked_mul(100)
}

/// Builds the sample of one DataValue. `arrived_ns` is the agent's clock at reception.
pub fn data_value_to_sample(
    tag: &Tag,
    dv: &DataValue,
    ts_pref: TimestampSource,
    arrived_ns: i64,
) -> Sample {
    let source = dv.source_timestamp.as_ref().and_then(datetime_ns);
    let server = dv.server_timestamp.as_ref().and_then(datetime_ns);
    let ts = match ts_pref {
        TimestampSource::Source => source.or(server),
        TimestampSource::Server => server.or(source),
        TimestampSource::Agent => None,
    }
    .unwrap_or(arrived_ns);
    let quality = status_to_quality(dv.status());
    match dv.value.as_ref().and_then(variant_to_value) {
        Some(v) => Sample::new(tag.clone(), ts, v, quality),
        None => Sample::bad(tag.clone(), ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_statuses_and_timestamps() {
        assert_eq!(
            variant_to_value(&Variant::Double(1.5)),
            Some(Value::Float(1.5))
        );
        assert_eq!(variant_to_value(&Variant::UInt32(7)), Some(Value::UInt(7)));
        assert_eq!(variant_to_value(&Variant::Int16(-7)), Some(Value::Int(-7)));
        assert_eq!(
            variant_to_value(&Variant::Boolean(true)),
            Some(Value::Bool(true))
        );
        assert_eq!(variant_to_value(&Variant::Empty), None);
        assert_eq!(status_to_quality(StatusCode::Good), Quality::Good);
        assert_eq!(
            status_to_quality(StatusCode::UncertainLastUsableValue),
            Quality::Uncertain
        );
        assert_eq!(
            status_to_quality(StatusCode::BadNodeIdUnknown),
            Quality::Bad
        );

        let tag: Tag = Arc::from("t");
        let src = DateTime::from(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        let dv = DataValue {
            value: Some(Variant::Double(f64::NAN)),
            status: Some(StatusCode::Good),
            source_timestamp: Some(src),
            ..Default::default()
        };
        let s = data_value_to_sample(&tag, &dv, TimestampSource::Source, 5);
        assert_eq!(s.ts_ns, 1_700_000_000_000_000_000);
        assert_eq!(s.quality, Quality::Bad, "NaN from a server is bad quality");
        let s = data_value_to_sample(&tag, &dv, TimestampSource::Agent, 5);
        assert_eq!(s.ts_ns, 5);
        let dv = DataValue {
            value: None,
            status: Some(StatusCode::Good),
            ..Default::default()
        };
        assert_eq!(
            data_value_to_sample(&tag, &dv, TimestampSource::Server, 9).quality,
            Quality::Bad
        );
    }
}
