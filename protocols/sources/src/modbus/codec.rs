//! Turning Modbus registers and bits into typed values: data types, the four byte/word
//! orders, bit extraction, and scale/offset. Pure functions, no I/O.

use serde::Deserialize;

use edge_wire::sample::Value;

/// How a tag's value is laid out in registers (or bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One coil / discrete input, or one bit of a register (with `bit`).
    Bool,
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers in the tag's byte order.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// IEEE 754 single precision, two registers.
    F32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 double precision, four registers.
    F64,
}

impl DataType {
    /// Registers occupied in a register table (bool-in-register uses one).
    pub fn register_count(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// The `type` name in the config.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F64 => "f64",
        }
    }
}

/// Byte and word order of a multi-byte value, named by where the most significant byte `A`
/// of a 32-bit value `A B C D` lands in the registers (the convention of most PLC manuals).
/// 64-bit values follow the same rule over four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// Big-endian: high word first, high byte first (the Modbus standard).
    #[default]
    Abcd,
    /// Word-swapped: low word first, bytes big-endian in each word (many PLCs, "CDAB").
    Cdab,
    /// Byte-swapped: high word first, bytes swapped in each word.
    Badc,
    /// Little-endian: low word first, low byte first.
    Dcba,
}

impl ByteOrder {
    fn words_reversed(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }
    fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }
}

/// Assembles `regs` (1, 2 or 4 registers as read off the wire) into big-endian bytes of the
/// value, undoing the device's byte/word order.
fn to_be_bytes<const N: usize>(regs: &[u16], order: ByteOrder) -> Option<[u8; N]> {
    if regs.len() * 2 != N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_exact_mut(2).enumerate() {
        let w = if order.words_reversed() {
            regs[regs.len() - 1 - i]
        } else {
            regs[i]
        };
        let w = if order.bytes_swapped() {
            w.swap_bytes()
        } else {
            w
        };
        chunk.copy_from_slice(&w.to_be_bytes());
    }
    Some(out)
}

/// Decodes a register-table value. `regs.len()` must equal `ty.register_count()`.
/// `bit` selects one bit (0 = least significant) of a single register for `DataType::Bool`.
pub fn decode_registers(
    regs: &[u16],
    ty: DataType,
    order: ByteOrder,
    bit: Option<u8>,
) -> Option<Value> {
    Some(match ty {
        DataType::Bool => {
            let w = *regs.first()?;
            Value::Bool((w >> bit.unwrap_or(0).min(15)) & 1 == 1)
        }
        DataType::U16 => Value::UInt(u16::from_be_bytes(to_be_bytes::<2>(regs, order)?).into()),
        DataType::I16 => Value::Int(i16::from_be_bytes(to_be_bytes::<2>(regs, order)?).into()),
        DataType::U32 => Value::UInt(u32::from_be_bytes(to_be_bytes::<4>(regs, order)?).into()),
        DataType::I32 => Value::Int(i32::from_be_bytes(to_be_bytes::<4>(regs, order)?).into()),
        DataType::F32 => Value::Float(f32::from_be_bytes(to_be_bytes::<4>(regs, order)?).into()),
        DataType::U64 => Value::UInt(u64::from_be_bytes(to_be_bytes::<8>(regs, order)?)),
        DataType::I64 => Value::Int(i64::from_be_bytes(to_be_bytes::<8>(regs, order)?)),
        DataType::F64 => Value::Float(f64::from_be_bytes(to_be_bytes::<8>(regs, order)?)),
    })
}

/// Applies `value * scale + offset`. Identity scaling keeps the raw type (an exact integer
/// stays an integer); any other scaling yields a float.
pub fn apply_scaling(v: Value, scale: f64, offset: f64) -> Value {
    if scale == 1.0 && offset == 0.0 {
        return v;
    }
    match v.as_f64() {
        Some(x) if !matches!(v, Value::Bool(_)) => Value::Float(x * scale + offset),
        _ => v,
    }
}

/// Encodes a value into registers in the given order: the inverse of [`decode_registers`],
/// used by tests and the benchmarks' register fixtures.
pub fn encode_be_bytes(be: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks_exact(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c[1]]);
            if order.bytes_swapped() {
                w.swap_bytes()
            } else {
                w
            }
        })
        .collect();
    if order.words_reversed() {
        words.reverse();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    #[test]
    fn float_1234_5_in_the_peer_layouts() {
        // The pymodbus peer stores 1234.5 as 0x449A 0x5000 (ABCD) and 0x5000 0x449A (CDAB).
        let abcd = [0x449A, 0x5000];
        let cdab = [0x5000, 0x449A];
        let badc = [0x9A44, 0x0050];
        let dcba = [0x0050, 0x9A44];
        for (regs, order) in [
            (abcd, ByteOrder::Abcd),
            (cdab, ByteOrder::Cdab),
            (badc, ByteOrder::Badc),
            (dcba, ByteOrder::Dcba),
        ] {
            assert_eq!(
                decode_registers(&regs, DataType::F32, order, None),
                Some(Value::Float(1234.5)),
                "{order:?}"
            );
        }
        // Reading ABCD data as CDAB gives a different (wrong) number: the order matters.
        assert_ne!(
            decode_registers(&abcd, DataType::F32, ByteOrder::Cdab, None),
            Some(Value::Float(1234.5))
        );
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        for order in ORDERS {
            let cases: Vec<(DataType, Vec<u8>, Value)> = vec![
                (
                    DataType::U16,
                    0xBEEFu16.to_be_bytes().to_vec(),
                    Value::UInt(0xBEEF),
                ),
                (
                    DataType::I16,
                    (-1234i16).to_be_bytes().to_vec(),
                    Value::Int(-1234),
                ),
                (
                    DataType::U32,
                    123456789u32.to_be_bytes().to_vec(),
                    Value::UInt(123456789),
                ),
                (
                    DataType::I32,
                    (-123456789i32).to_be_bytes().to_vec(),
                    Value::Int(-123456789),
                ),
                (
                    DataType::F32,
                    (-0.15625f32).to_be_bytes().to_vec(),
                    Value::Float(-0.15625),
                ),
                (
                    DataType::U64,
                    0x0102_0304_0506_0708u64.to_be_bytes().to_vec(),
                    Value::UInt(0x0102_0304_0506_0708),
                ),
                (
                    DataType::I64,
                    (-5i64).to_be_bytes().to_vec(),
                    Value::Int(-5),
                ),
                (
                    DataType::F64,
                    std::f64::consts::PI.to_be_bytes().to_vec(),
                    Value::Float(std::f64::consts::PI),
                ),
            ];
            for (ty, be, want) in cases {
                let regs = encode_be_bytes(&be, order);
                assert_eq!(regs.len(), ty.register_count() as usize);
                assert_eq!(
                    decode_registers(&regs, ty, order, None),
                    Some(want),
                    "{ty:?} {order:?}"
                );
            }
        }
    }

    #[test]
    fn u64_word_order_is_applied_across_four_words() {
        // CDAB for 64-bit: lowest word first.
        let regs = [0x0708, 0x0506, 0x0304, 0x0102];
        assert_eq!(
            decode_registers(&regs, DataType::U64, ByteOrder::Cdab, None),
            Some(Value::UInt(0x0102_0304_0506_0708))
        );
    }

    #[test]
    fn bits_of_a_register_and_wrong_lengths() {
        assert_eq!(
            decode_registers(&[0b1000], DataType::Bool, ByteOrder::Abcd, Some(3)),
            Some(Value::Bool(true))
        );
        assert_eq!(
            decode_registers(&[0b1000], DataType::Bool, ByteOrder::Abcd, Some(2)),
            Some(Value::Bool(false))
        );
        assert_eq!(
            decode_registers(&[1], DataType::F32, ByteOrder::Abcd, None),
            None
        );
        assert_eq!(
            decode_registers(&[], DataType::Bool, ByteOrder::Abcd, None),
            None
        );
    }

    #[test]
    fn scaling_keeps_integers_exact_unless_asked() {
        assert_eq!(apply_scaling(Value::Int(600), 1.0, 0.0), Value::Int(600));
        assert_eq!(
            apply_scaling(Value::UInt(600), 0.1, -40.0),
            Value::Float(600.0 * 0.1 - 40.0)
        );
        assert_eq!(
            apply_scaling(Value::Bool(true), 2.0, 1.0),
            Value::Bool(true)
        );
    }
}
