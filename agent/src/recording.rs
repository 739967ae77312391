//! The sample recording format: CSV with header `tag,ts_ns,value,quality`, one sample per
//! row. Written by `[[outputs.file]] format = "csv"`, read back by offline tools (featurize),
//! so the ML engineer trains on exactly what the device saw.
//!
//! Floats are written in Rust's shortest round-trip form, so reading a row back yields the
//! bit-identical `f64`. Text is quoted per RFC 4180 when it needs to be.

use std::sync::Arc;

use edge_protocols::{Quality, Sample, Value};

pub const CSV_HEADER: &str = "tag,ts_ns,value,quality";

fn push_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Appends one CSV row (with trailing newline).
pub fn write_csv_row(out: &mut String, s: &Sample) {
    use std::fmt::Write;
    push_field(out, &s.tag);
    let _ = write!(out, ",{},", s.ts_ns);
    match &s.value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        // `{:?}` keeps a decimal point or exponent, so a float never reads back as an integer.
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Text(t) => {
            out.push('"');
            out.push_str(&t.replace('"', "\"\""));
            out.push('"');
        }
        Value::Null => {}
    }
    out.push(',');
    out.push_str(s.quality.as_str());
    out.push('\n');
}

/// Splits one CSV line into fields (RFC 4180 quoting, no embedded newlines). Returns the
/// fields and whether each was quoted.
fn split_fields(line: &str) -> Result<Vec<(String, bool)>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut f = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        f.push('"');
                    }
                    Some('"') => break,
                    Some(c) => f.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == ',' {
                break;
            }
            if quoted {
                return Err(format!("unexpected `{c}` after a quoted field"));
            }
            f.push(c);
            chars.next();
        }
        fields.push((f, quoted));
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

/// Parses one data row. Errors say what is wrong with the row.
pub fn parse_csv_row(line: &str) -> Result<Sample, String> {
    let fields = split_fields(line.trim_end_matches(['\r', '\n']))?;
    let [(tag, _), (ts, _), (value, value_quoted), (quality, _)] =
        <[(String, bool); 4]>::try_from(fields).map_err(|f| {
            format!(
                "expected 4 fields (tag,ts_ns,value,quality), found {}",
                f.len()
            )
        })?;
    let ts_ns: i64 = ts
        .trim()
        .parse()
        .map_err(|_| format!("ts_ns `{ts}` is not an integer"))?;
    let quality = match quality.trim() {
        "good" => Quality::Good,
        "uncertain" => Quality::Uncertain,
        "bad" => Quality::Bad,
        q => return Err(format!("quality `{q}` is not good, uncertain or bad")),
    };
    let v = value.trim();
    let value = if value_quoted {
        Value::Text(Arc::from(value.as_str()))
    } else if v.is_empty() {
        Value::Null
    } else if v == "true" || v == "false" {
        Value::Bool(v == "true")
    } else if let Ok(i) = v.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(u) = v.parse::<u64>() {
        Value::UInt(u)
    } else if let Ok(f) = v.parse::<f64>() {
        Value::Float(f)
    } else {
        return Err(format!(
            "value `{v}` is not a number, boolean, quoted text or empty"
        ));
    };
    Ok(Sample::new(Arc::from(tag.as_str()), ts_ns, value, quality))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_bit_exactly() {
        let samples = vec![
            Sample::new(
                Arc::from("p1.temp"),
                1,
                Value::Float(0.1 + 0.2),
                Quality::Good,
            ),
            Sample::new(
                Arc::from("p1.temp"),
                2,
                Value::Float(1e-300),
                Quality::Uncertain,
            ),
            Sample::new(Arc::from("p1.temp"), 3, Value::Float(3.0), Quality::Good),
            Sample::new(Arc::from("c"), -4, Value::Int(-7), Quality::Good),
            Sample::new(Arc::from("c"), 5, Value::UInt(u64::MAX), Quality::Good),
            Sample::new(Arc::from("b"), 6, Value::Bool(false), Quality::Good),
            Sample::new(
                Arc::from("odd,\"tag\""),
                7,
                Value::Text(Arc::from("a,\"b\"")),
                Quality::Good,
            ),
            Sample::bad(Arc::from("x"), 8),
        ];
        for s in samples {
            let mut line = String::new();
            write_csv_row(&mut line, &s);
            let back = parse_csv_row(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(back, s, "{line}");
            if let (Value::Float(a), Value::Float(b)) = (&back.value, &s.value) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }

    #[test]
    fn malformed_rows_are_explained() {
        assert!(parse_csv_row("a,1,2")
            .unwrap_err()
            .contains("expected 4 fields"));
        assert!(parse_csv_row("a,x,2,good").unwrap_err().contains("ts_ns"));
        assert!(parse_csv_row("a,1,2,fine").unwrap_err().contains("quality"));
        assert!(parse_csv_row("a,1,hot,good").unwrap_err().contains("hot"));
        assert!(parse_csv_row("\"a,1,2,good")
            .unwrap_err()
            .contains("unterminated"));
        // NaN in a recording stays bad quality on the way back in.
        assert_eq!(parse_csv_row("a,1,NaN,good").unwrap().quality, Quality::Bad);
    }
}
