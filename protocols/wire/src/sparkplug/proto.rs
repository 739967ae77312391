//! The Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`, Sparkplug 3.0), written from
//! the specification's schema with prost: field numbers and types are the wire contract.
//! Only what an edge node publishes and reads is modelled (no templates or datasets); unknown
//! fields of received messages are skipped by protobuf.

/// Sparkplug data types (specification, "Data Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataType {
    /// Signed 8-bit (in `int_value`).
    Int8 = 1,
    /// Signed 16-bit (in `int_value`).
    Int16 = 2,
    /// Signed 32-bit (in `int_value`).
    Int32 = 3,
    /// Signed 64-bit (in `long_value`).
    Int64 = 4,
    /// Unsigned 8-bit.
    UInt8 = 5,
    /// Unsigned 16-bit.
    UInt16 = 6,
    /// Unsigned 32-bit (decoders disagree on its layout; see the brief).
    UInt32 = 7,
    /// Unsigned 64-bit (in `long_value`).
    UInt64 = 8,
    /// IEEE 754 single precision.
    Float = 9,
    /// IEEE 754 double precision.
    Double = 10,
    /// `true`/`false`.
    Boolean = 11,
    /// UTF-8 text.
    String = 12,
    /// Unix milliseconds (in `long_value`).
    DateTime = 13,
    /// UTF-8 text (long).
    Text = 14,
}

/// One Sparkplug message body (NBIRTH, NDATA, DBIRTH, DDATA, NCMD, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Message time, Unix ms.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Sequence number 0..=255 (absent in NDEATH).
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// Optional UUID of the body's format.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Optional opaque body.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric: a name (births) or alias (data), a value, and its flags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Its name (births and commands; data messages use the alias).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Its alias, assigned in the birth.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Measurement time, Unix ms.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] code.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Sent from the backlog, not live.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Not to be historized.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// No value (bad quality).
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// Properties (the agent sends `Quality`).
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    /// The value.
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// A metric's value, by its wire field.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// 32-bit and narrower integers.
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// 64-bit integers and DateTime.
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "12")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    /// String and Text.
    #[prost(string, tag = "15")]
    StringValue(String),
    /// Bytes.
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// Properties of a metric: parallel lists of keys and values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    /// The property names.
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    /// One value per key.
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// One property value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    /// A [`DataType`] code.
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    /// No value.
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueKind>,
}

/// A property's value, by its wire field.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    /// 32-bit and narrower integers.
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    /// 64-bit integers and DateTime.
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "5")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    /// String and Text.
    #[prost(string, tag = "8")]
    StringValue(String),
}

impl Payload {
    /// The protobuf bytes.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// Parses protobuf bytes (unknown fields skipped).
    pub fn decode(bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
        <Payload as prost::Message>::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_numbers_match_the_schema() {
        // seq = 3 (varint 5), metrics = 2 (len-delimited) with name = 1, datatype = 4,
        // double_value = 13: hand-checked bytes of the Tahu schema.
        let p = Payload {
            timestamp: None,
            metrics: vec![Metric {
                name: Some("a".into()),
                datatype: Some(DataType::Double as u32),
                value: Some(MetricValue::DoubleValue(1.0)),
                ..Default::default()
            }],
            seq: Some(5),
            ..Default::default()
        };
        let b = p.encode_to_vec();
        let want = [
            0x12, 0x0e, 0x0a, 0x01, b'a', 0x20, 0x0a, 0x69, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x18,
            0x05,
        ];
        assert_eq!(b, want);
        assert_eq!(Payload::decode(&b).unwrap(), p);
        assert!(
            Payload::decode(&[0x12, 0x40]).is_err(),
            "a truncated payload is an error"
        );
    }
}
