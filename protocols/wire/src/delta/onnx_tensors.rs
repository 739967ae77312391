//! Where the weights are in an ONNX file: the byte range of each initializer's raw data.
//!
//! A minimal protobuf wire walker (not a decoder): `ModelProto.graph` (field 7) →
//! `GraphProto.initializer` (field 5, repeated `TensorProto`) → `name` (8), `data_type` (2),
//! `raw_data` (9) or packed `float_data` (4) / `double_data` (10) / `int64_data` (7) /
//! `int32_data` (5). Field numbers are from onnx.proto3. Offsets, not copies, are what the
//! tensor delta needs, which is why this walks the wire format instead of decoding it.
//! Anything it does not understand ends the walk with `None` (the caller then uses a
//! generic delta method).

use std::ops::Range;

/// One initializer's payload inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpan {
    /// The initializer's name.
    pub name: String,
    /// Bytes of the tensor's data in the file.
    pub range: Range<usize>,
    /// Size of one element (1, 2, 4 or 8): the byte-shuffle stride.
    pub elem: usize,
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Iterates the fields of one message: (field number, wire type, payload range).
fn fields(b: &[u8], within: Range<usize>) -> Option<Vec<(u64, u8, Range<usize>)>> {
    let mut out = Vec::new();
    let mut pos = within.start;
    while pos < within.end {
        let key = varint(b, &mut pos)?;
        let (field, wt) = (key >> 3, (key & 7) as u8);
        let start = pos;
        match wt {
            0 => {
                varint(b, &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let s = pos;
                pos = pos.checked_add(len)?;
                if pos > within.end {
                    return None;
                }
                out.push((field, wt, s..pos));
                continue;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
        if pos > within.end {
            return None;
        }
        out.push((field, wt, start..pos));
    }
    Some(out)
}

fn elem_size(data_type: u64) -> usize {
    // onnx TensorProto.DataType
    match data_type {
        1 | 6 | 12 => 4,      // float, int32, uint32
        7 | 11 | 13 => 8,     // int64, double, uint64
        5 | 4 | 10 | 16 => 2, // int16, uint16, float16, bfloat16
        _ => 1,
    }
}

/// The initializers of an ONNX model held in `b[model]`, with absolute offsets in `b`.
/// `None` if the bytes are not a model this walker understands.
pub fn tensor_spans(b: &[u8], model: Range<usize>) -> Option<Vec<TensorSpan>> {
    let top = fields(b, model)?;
    let mut spans = Vec::new();
    for (_, _, graph) in top.iter().filter(|f| f.0 == 7 && f.1 == 2) {
        for (_, _, t) in fields(b, graph.clone())?
            .into_iter()
            .filter(|f| f.0 == 5 && f.1 == 2)
        {
            let mut name = None;
            let mut dtype = 0;
            let mut data = None;
            for (f, wt, r) in fields(b, t)? {
                match (f, wt) {
                    (8, 2) => name = std::str::from_utf8(&b[r]).ok().map(str::to_string),
                    (2, 0) => {
                        let mut p = r.start;
                        dtype = varint(b, &mut p)?;
                    }
                    (9, 2) => data = Some((r, None)),
                    (4, 2) | (5, 2) => data = data.or(Some((r, Some(4)))),
                    (10, 2) | (7, 2) => data = data.or(Some((r, Some(8)))),
                    _ => {}
                }
            }
            if let (Some(name), Some((range, packed))) = (name, data) {
                if range.len() >= 64 {
                    let elem = packed.unwrap_or_else(|| elem_size(dtype));
                    spans.push(TensorSpan { name, range, elem });
                }
            }
        }
    }
    Some(spans)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn key(field: u64, wt: u64, out: &mut Vec<u8>) {
        put_varint((field << 3) | wt, out);
    }
    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        put_varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    /// A model with two float initializers, built by hand from the field numbers.
    pub(crate) fn tiny_model(w1: &[f32], w2: &[f32]) -> Vec<u8> {
        let tensor = |name: &str, w: &[f32]| {
            let mut t = Vec::new();
            key(2, 0, &mut t);
            put_varint(1, &mut t);
            bytes_field(8, name.as_bytes(), &mut t);
            let raw: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes_field(9, &raw, &mut t);
            t
        };
        let mut graph = Vec::new();
        bytes_field(2, b"graph-name", &mut graph);
        bytes_field(5, &tensor("w1", w1), &mut graph);
        bytes_field(5, &tensor("w2", w2), &mut graph);
        let mut model = Vec::new();
        key(1, 0, &mut model);
        put_varint(8, &mut model);
        bytes_field(7, &graph, &mut model);
        model
    }

    #[test]
    fn finds_initializers_with_offsets() {
        let w1: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let w2: Vec<f32> = (0..40).map(|i| -(i as f32)).collect();
        let m = tiny_model(&w1, &w2);
        let spans = tensor_spans(&m, 0..m.len()).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "w1");
        assert_eq!(spans[0].elem, 4);
        assert_eq!(spans[1].range.len(), 160);
        let back: Vec<f32> = m[spans[1].range.clone()]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, w2);
    }

    #[test]
    fn garbage_is_not_a_model() {
        let g = vec![0xffu8; 100];
        assert_eq!(tensor_spans(&g, 0..g.len()), None);
        let m = tiny_model(&[1.0; 32], &[2.0; 32]);
        // Cut inside the graph: the length prefix points past the end.
        assert_eq!(tensor_spans(&m, 0..m.len() - 10), None);
    }
}
