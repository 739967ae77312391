//! The sample recording format: CSV with header `tag,ts_ns,value,quality`, one sample per
//! row. Written by `[[outputs.file]] format = "csv"`, read back by offline tools (featurize,
//! bundle pack, replay, the `replay` source), so the ML engineer trains on exactly what the
//! device saw.
//!
//! Floats are written in Rust's shortest round-trip form, so reading a row back yields the
//! bit-identical `f64`. Text is quoted per RFC 4180 when it needs to be.
//!
//! [`RecordingReader`] also imports CSV from elsewhere (a historian export, a dataset), told
//! apart by the header ([`CsvLayout`]): *long* (one sample per row with named `tag`, `value`,
//! optional `quality` and a time column) and *wide* (a time column, then one column per tag).

use std::collections::VecDeque;
use std::io::BufRead;
use std::sync::Arc;

use edge_wire::{Quality, Sample, Tag, Value};

/// The header of the agent's own recordings (the native layout).
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

/// What is wrong with one line of a recording: the header, or a data row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// A quoted field has no closing quote.
    #[error("unterminated quoted field")]
    UnterminatedQuote,
    /// Something between a closing quote and the next comma.
    #[error("unexpected `{0}` after a quoted field")]
    AfterQuote(char),
    /// A native row without exactly four fields (the count found).
    #[error("expected 4 fields (tag,ts_ns,value,quality), found {0}")]
    FieldCount(usize),
    /// A native row's `ts_ns` is not an integer.
    #[error("ts_ns `{0}` is not an integer")]
    BadTsNs(String),
    /// A quality other than `good`, `uncertain`, `bad`.
    #[error("quality `{0}` is not good, uncertain or bad")]
    BadQuality(String),
    /// A value cell that is not a number, boolean, quoted text or empty.
    #[error("value `{0}` is not a number, boolean, quoted text or empty")]
    BadValue(String),
    /// An integer time column holds something else, or a time past the `i64` range.
    #[error("time `{0}` is not an integer in range")]
    TimeNotInteger(String),
    /// A seconds time column holds something else.
    #[error("time `{0}` is not a number of seconds")]
    TimeNotSeconds(String),
    /// A text time column holds no time it can read.
    #[error("time `{0}` is not RFC 3339 (2024-01-31T12:00:00Z), `2024-01-31 12:00:00` or seconds")]
    TimeNotText(String),
    /// A text time outside what nanoseconds in an `i64` hold.
    #[error("time `{0}` is out of range")]
    TimeOutOfRange(String),
    /// A long-layout row too short for one of its columns.
    #[error("no `{what}` field (column {column})")]
    MissingField {
        /// `time`, `value`, `quality` or `tag`.
        what: &'static str,
        /// The column (1-based).
        column: usize,
    },
    /// A wide-layout row too short for its time column, or a row too short for the tag
    /// column when only the tag names are read.
    #[error("no {what} field (column {column})")]
    MissingColumn {
        /// `time` or `tag`.
        what: &'static str,
        /// The column (1-based).
        column: usize,
    },
    /// A header with no time column (the header).
    #[error(
        "header `{0}`: no time column (ts_ns, ts_us, ts_ms, ts_s, epoch, timestamp, time, ts, datetime); the agent's own recordings start with `{CSV_HEADER}`"
    )]
    NoTimeColumn(String),
    /// A header with a time column and nothing else (the header).
    #[error("header `{0}`: a time column but no tag columns")]
    NoTagColumns(String),
}

/// Splits one CSV line into fields (RFC 4180 quoting, no embedded newlines). Returns the
/// fields and whether each was quoted.
fn split_fields(line: &str) -> Result<Vec<(String, bool)>, CsvError> {
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
                    None => return Err(CsvError::UnterminatedQuote),
                }
            }
        }
        while let Some(&c) = chars.peek() {
            if c == ',' {
                break;
            }
            if quoted {
                return Err(CsvError::AfterQuote(c));
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
pub fn parse_csv_row(line: &str) -> Result<Sample, CsvError> {
    let fields = split_fields(line.trim_end_matches(['\r', '\n']))?;
    let [(tag, _), (ts, _), (value, value_quoted), (quality, _)] =
        <[(String, bool); 4]>::try_from(fields).map_err(|f| CsvError::FieldCount(f.len()))?;
    native_row(Arc::from(tag.as_str()), &ts, &value, value_quoted, &quality)
}

/// A native row from its fields.
fn native_row(
    tag: Tag,
    ts: &str,
    value: &str,
    value_quoted: bool,
    quality: &str,
) -> Result<Sample, CsvError> {
    let ts_ns: i64 = ts
        .trim()
        .parse()
        .map_err(|_| CsvError::BadTsNs(ts.to_string()))?;
    let quality = match quality.trim() {
        "good" => Quality::Good,
        "uncertain" => Quality::Uncertain,
        "bad" => Quality::Bad,
        q => return Err(CsvError::BadQuality(q.to_string())),
    };
    let value = parse_value(value, value_quoted)?;
    Ok(Sample::new(tag, ts_ns, value, quality))
}

/// One shared `Arc` per tag name, so a recording of millions of samples allocates its tag
/// names once (bounded: past `MAX_INTERNED` names, each sample gets its own).
#[derive(Debug, Default)]
struct TagNames(std::collections::HashSet<Tag>);

const MAX_INTERNED: usize = 100_000;

impl TagNames {
    fn get(&mut self, name: &str) -> Tag {
        if let Some(t) = self.0.get(name) {
            return t.clone();
        }
        let t: Tag = Arc::from(name);
        if self.0.len() < MAX_INTERNED {
            self.0.insert(t.clone());
        }
        t
    }
}

/// How a time column is written, from its header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// Integer nanoseconds (`ts_ns`, `time_ns`).
    Nanos,
    /// Integer microseconds (`ts_us`).
    Micros,
    /// Integer milliseconds (`ts_ms`, `time_ms`).
    Millis,
    /// Seconds, possibly fractional (`ts_s`, `epoch`, `unix`).
    Seconds,
    /// RFC 3339 (`2024-01-31T12:00:00.5Z`, `+01:00` offsets) or `2024-01-31 12:00:00[.fff]`
    /// taken as UTC; a plain number is seconds (`timestamp`, `time`, `ts`, `datetime`, `date`).
    Text,
}

impl TimeFormat {
    fn of_column(name: &str) -> Option<TimeFormat> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "ts_ns" | "time_ns" | "timestamp_ns" => TimeFormat::Nanos,
            "ts_us" | "time_us" | "timestamp_us" => TimeFormat::Micros,
            "ts_ms" | "time_ms" | "timestamp_ms" => TimeFormat::Millis,
            "ts_s" | "time_s" | "epoch" | "unix" => TimeFormat::Seconds,
            "timestamp" | "time" | "ts" | "datetime" | "date_time" | "date" => TimeFormat::Text,
            _ => return None,
        })
    }

    /// UTC nanoseconds since the Unix epoch.
    pub fn parse(self, s: &str) -> Result<i64, CsvError> {
        let s = s.trim();
        let int = |scale: i64| {
            s.parse::<i64>()
                .ok()
                .and_then(|v| v.checked_mul(scale))
                .ok_or_else(|| CsvError::TimeNotInteger(s.to_string()))
        };
        let secs = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && v.abs() < 9.2e9)
                .map(|v| (v * 1e9).round() as i64)
        };
        match self {
            TimeFormat::Nanos => int(1),
            TimeFormat::Micros => int(1_000),
            TimeFormat::Millis => int(1_000_000),
            TimeFormat::Seconds => secs(s).ok_or_else(|| CsvError::TimeNotSeconds(s.to_string())),
            TimeFormat::Text => {
                if let Some(ns) = secs(s) {
                    return Ok(ns);
                }
                let dt = chrono::DateTime::parse_from_rfc3339(s)
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .or_else(|_| {
                        let t = s.trim_end_matches('Z').replace('T', " ");
                        chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
                            .map(|n| n.and_utc())
                    })
                    .map_err(|_| CsvError::TimeNotText(s.to_string()))?;
                dt.timestamp_nanos_opt()
                    .ok_or_else(|| CsvError::TimeOutOfRange(s.to_string()))
            }
        }
    }
}

/// The layouts a recording can have, told apart by its header.
#[derive(Debug, Clone, PartialEq)]
pub enum CsvLayout {
    /// `tag,ts_ns,value,quality`: what the agent records.
    Native,
    /// One sample per row: a time column, `tag`, `value` and optionally `quality`, in any
    /// order (other columns are ignored).
    Long {
        /// Index of the time column and how its values read.
        time: (usize, TimeFormat),
        /// Index of the `tag` column.
        tag: usize,
        /// Index of the `value` column.
        value: usize,
        /// Index of the `quality` column, if there is one (else every sample is good).
        quality: Option<usize>,
    },
    /// One row per time: the time column, then one column per tag (an empty cell is no
    /// sample; `nan` or text that is not a number is a bad-quality sample).
    Wide {
        /// Index of the time column and how its values read.
        time: (usize, TimeFormat),
        /// Each tag column's index and name (the header cell).
        tags: Vec<(usize, Tag)>,
    },
}

impl CsvLayout {
    /// Recognizes a header line.
    pub fn of_header(header: &str) -> Result<CsvLayout, CsvError> {
        let h = header.trim_end_matches(['\r', '\n']);
        if h == CSV_HEADER {
            return Ok(CsvLayout::Native);
        }
        let names: Vec<String> = split_fields(h)?
            .into_iter()
            .map(|(f, _)| f.trim().to_string())
            .collect();
        let find = |n: &str| names.iter().position(|c| c.eq_ignore_ascii_case(n));
        let time = names
            .iter()
            .enumerate()
            .find_map(|(i, n)| TimeFormat::of_column(n).map(|f| (i, f)))
            .ok_or_else(|| CsvError::NoTimeColumn(h.to_string()))?;
        if let (Some(tag), Some(value)) = (find("tag"), find("value")) {
            return Ok(CsvLayout::Long {
                time,
                tag,
                value,
                quality: find("quality"),
            });
        }
        let tags: Vec<(usize, Tag)> = names
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != time.0 && !n.is_empty())
            .map(|(i, n)| (i, Arc::from(n.as_str())))
            .collect();
        if tags.is_empty() {
            return Err(CsvError::NoTagColumns(h.to_string()));
        }
        Ok(CsvLayout::Wide { time, tags })
    }

    /// For messages: `native`, `long` or `wide (N tags)`.
    pub fn describe(&self) -> String {
        match self {
            CsvLayout::Native => "native (tag,ts_ns,value,quality)".into(),
            CsvLayout::Long { .. } => "long (one sample per row)".into(),
            CsvLayout::Wide { tags, .. } => format!("wide ({} tag columns)", tags.len()),
        }
    }
}

/// A value cell: a number, `true`/`false`, quoted text, or empty (`Null`).
fn parse_value(v: &str, quoted: bool) -> Result<Value, CsvError> {
    let v = if quoted { v } else { v.trim() };
    Ok(if quoted {
        Value::Text(Arc::from(v))
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
        return Err(CsvError::BadValue(v.to_string()));
    })
}

/// A recording that cannot be read, with where: the input (a path) and the line (1 = the
/// header; none for the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RecordingError {
    /// The input as named by the caller.
    pub input: String,
    /// The line the problem is on.
    pub line: Option<usize>,
    /// What is wrong there.
    pub reason: String,
}

/// Samples of a recording in file order, from any [`CsvLayout`]. Errors name the line.
#[derive(Debug)]
pub struct RecordingReader<R> {
    lines: std::io::Lines<R>,
    line: usize,
    layout: CsvLayout,
    what: String,
    pending: VecDeque<Sample>,
    tags: TagNames,
}

impl<R: BufRead> RecordingReader<R> {
    /// Reads the header; `what` names the input in errors (a path).
    pub fn new(input: R, what: &str) -> Result<Self, RecordingError> {
        let error = |line, reason: String| RecordingError {
            input: what.to_string(),
            line,
            reason,
        };
        let mut lines = input.lines();
        let layout = match lines.next() {
            Some(Ok(h)) => CsvLayout::of_header(&h).map_err(|e| error(Some(1), e.to_string()))?,
            Some(Err(e)) => return Err(error(None, e.to_string())),
            None => return Err(error(None, "empty file".into())),
        };
        Ok(RecordingReader {
            lines,
            line: 1,
            layout,
            what: what.to_string(),
            pending: VecDeque::new(),
            tags: TagNames::default(),
        })
    }

    /// Every tag of the recording in order of first appearance, reading only what names
    /// them (a wide file's header; a long file's tag column), not the values.
    pub fn tag_names(mut self) -> Result<Vec<String>, RecordingError> {
        let tag_col = match &self.layout {
            CsvLayout::Wide { tags, .. } => {
                return Ok(tags.iter().map(|(_, t)| t.to_string()).collect())
            }
            CsvLayout::Native => 0,
            CsvLayout::Long { tag, .. } => *tag,
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        while let Some(line) = self.lines.next() {
            self.line += 1;
            let line = line.map_err(|e| self.error(self.line, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let name = if !line.contains('"') {
                line.split(',').nth(tag_col).map(str::to_string)
            } else {
                split_fields(line.trim_end_matches('\r'))
                    .map_err(|e| self.error(self.line, e))?
                    .into_iter()
                    .nth(tag_col)
                    .map(|f| f.0)
            };
            let name = name.ok_or_else(|| {
                self.error(
                    self.line,
                    CsvError::MissingColumn {
                        what: "tag",
                        column: tag_col + 1,
                    },
                )
            })?;
            if !seen.contains(name.as_str()) {
                seen.insert(name.clone());
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The layout the header was recognized as.
    pub fn layout(&self) -> &CsvLayout {
        &self.layout
    }

    fn row(&mut self, line: &str) -> Result<(), CsvError> {
        match &self.layout {
            // The common case, no quoting: fields borrowed from the line, the tag interned.
            CsvLayout::Native if !line.contains('"') => {
                let mut f = line.split(',');
                let (Some(tag), Some(ts), Some(value), Some(quality), None) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(CsvError::FieldCount(line.split(',').count()));
                };
                let tag = self.tags.get(tag);
                self.pending
                    .push_back(native_row(tag, ts, value, false, quality)?);
            }
            CsvLayout::Native => self.pending.push_back(parse_csv_row(line)?),
            CsvLayout::Long {
                time,
                tag,
                value,
                quality,
            } => {
                let f = split_fields(line)?;
                let cell = |i: usize, what: &'static str| {
                    f.get(i).ok_or(CsvError::MissingField {
                        what,
                        column: i + 1,
                    })
                };
                let ts_ns = time.1.parse(&cell(time.0, "time")?.0)?;
                let (v, quoted) = cell(*value, "value")?;
                let quality = match quality {
                    None => Quality::Good,
                    Some(q) => match cell(*q, "quality")?.0.trim() {
                        "good" | "" => Quality::Good,
                        "uncertain" => Quality::Uncertain,
                        "bad" => Quality::Bad,
                        q => return Err(CsvError::BadQuality(q.to_string())),
                    },
                };
                let tag = self.tags.get(&cell(*tag, "tag")?.0);
                self.pending
                    .push_back(Sample::new(tag, ts_ns, parse_value(v, *quoted)?, quality));
            }
            CsvLayout::Wide { time, tags } => {
                let f = split_fields(line)?;
                let t = f.get(time.0).ok_or(CsvError::MissingColumn {
                    what: "time",
                    column: time.0 + 1,
                })?;
                let ts_ns = time.1.parse(&t.0)?;
                for (i, tag) in tags {
                    let Some((v, quoted)) = f.get(*i) else {
                        continue;
                    };
                    if v.trim().is_empty() && !quoted {
                        continue;
                    }
                    // A cell that is not a value (`n/a`, `#VALUE!`) is a bad sample here, not
                    // an error: exports mark outages that way.
                    let value = parse_value(v, *quoted).unwrap_or(Value::Null);
                    let q = if matches!(value, Value::Null) {
                        Quality::Bad
                    } else {
                        Quality::Good
                    };
                    self.pending
                        .push_back(Sample::new(tag.clone(), ts_ns, value, q));
                }
            }
        }
        Ok(())
    }
}

impl<R: BufRead> RecordingReader<R> {
    fn error(&self, line: usize, reason: impl ToString) -> RecordingError {
        RecordingError {
            input: self.what.clone(),
            line: Some(line),
            reason: reason.to_string(),
        }
    }
}

impl<R: BufRead> Iterator for RecordingReader<R> {
    type Item = Result<Sample, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.pending.pop_front() {
                return Some(Ok(s));
            }
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(self.error(self.line + 1, e))),
            };
            self.line += 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = self.row(line.trim_end_matches('\r')) {
                return Some(Err(self.error(self.line, e)));
            }
        }
    }
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
        let e = |line: &str| parse_csv_row(line).unwrap_err().to_string();
        assert!(e("a,1,2").contains("expected 4 fields"));
        assert!(e("a,x,2,good").contains("ts_ns"));
        assert!(e("a,1,2,fine").contains("quality"));
        assert!(e("a,1,hot,good").contains("hot"));
        assert!(e("\"a,1,2,good").contains("unterminated"));
        // NaN in a recording stays bad quality on the way back in.
        assert_eq!(parse_csv_row("a,1,NaN,good").unwrap().quality, Quality::Bad);
    }

    fn read_all(text: &str) -> Result<Vec<Sample>, String> {
        RecordingReader::new(std::io::Cursor::new(text), "rec.csv")
            .and_then(|r| r.collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn wide_csv_imports_one_sample_per_cell() {
        let got = read_all(
            "timestamp,pump.temp,pump.flow\n\
             2024-01-31T12:00:00Z,41.5,7\n\
             2024-01-31 12:00:00.5,,n/a\n",
        )
        .unwrap();
        let t0 = 1_706_702_400_000_000_000;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            (got[0].tag.as_ref(), got[0].ts_ns, &got[0].value),
            ("pump.temp", t0, &Value::Float(41.5))
        );
        assert_eq!(
            (got[1].tag.as_ref(), &got[1].value),
            ("pump.flow", &Value::Int(7))
        );
        // An empty cell is no sample; `n/a` is a bad one half a second later.
        assert_eq!(
            (got[2].tag.as_ref(), got[2].ts_ns, got[2].quality),
            ("pump.flow", t0 + 500_000_000, Quality::Bad)
        );
    }

    #[test]
    fn long_csv_with_named_columns_and_units() {
        let got = read_all("value,tag,ts_ms\n1.25,a,1000\n2,b,1001\n").unwrap();
        assert_eq!(
            got[0],
            Sample::new(
                Arc::from("a"),
                1_000_000_000,
                Value::Float(1.25),
                Quality::Good
            )
        );
        assert_eq!(got[1].ts_ns, 1_001_000_000);
        let e = read_all("ts_ms,tag,value\n5,a,1\n6,b\n").unwrap_err();
        assert_eq!(e, "rec.csv:3: no `value` field (column 3)");
        let e = read_all("when,tag,value\n").unwrap_err();
        assert!(
            e.starts_with("rec.csv:1: header `when,tag,value`: no time column"),
            "{e}"
        );
        let e = read_all("time,a\nyesterday,1\n").unwrap_err();
        assert!(
            e.starts_with("rec.csv:2: time `yesterday` is not RFC 3339"),
            "{e}"
        );
    }
}
