//! [`Retention`]: how long the fleet keeps uploaded records, per stream
//! (`serve --retain samples=7d,features=30d`); streams not named are kept for ever. Applied
//! by `serve`'s housekeeping every 10 minutes (and at start) on every replica: deleting is
//! idempotent, so replicas doing it at once only repeat each other's work.
//!
//! What a record's age is: its measurement time (`ts_ms`, from the device), so a backlog
//! uploaded late is kept as long as the data is young, and history a device backfills from
//! long ago goes at the next pass. Upload cursors never move back and deleted records are
//! never stored again (`FleetStore::ingest` skips what is at or below the ack).
//!
//! On PostgreSQL records live in weekly partitions (`store::partitions`): when every stream
//! has a retention, weeks past the longest are dropped whole before rows are deleted.

use std::time::Duration;

use edge_wire::records::Stream;

use crate::store::{FleetStore, Result};

/// Records deleted per transaction.
const BATCH: i64 = 10_000;

/// How long uploaded records are kept, per stream (`serve --retain`); streams not named are
/// kept forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// (stream name, how long its records are kept).
    pub keep: Vec<(Stream, Duration)>,
}

/// Why a `--retain` value was refused ([`Retention::parse`]); each names the part.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetentionError {
    /// A part without `=` (the part).
    #[error("`{0}`: expected stream=duration, e.g. samples=7d")]
    NoEquals(String),
    /// Not a stream name (the name).
    #[error("unknown stream `{0}`: one of {names}", names = stream_names())]
    UnknownStream(String),
    /// The duration does not parse.
    #[error("`{part}`: duration `{text}`: {reason}")]
    BadDuration {
        /// The part.
        part: String,
        /// The duration as written.
        text: String,
        /// Why it does not parse.
        reason: humantime::DurationError,
    },
    /// A duration under an hour (the part).
    #[error("`{0}`: keep records at least 1h")]
    TooShort(String),
}

fn stream_names() -> String {
    Stream::ALL
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Retention {
    /// Parses `stream=duration[,stream=duration…]` (`samples=7d,features=30d`), the error
    /// naming what is wrong. A stream named twice keeps the last.
    pub fn parse(spec: &str) -> std::result::Result<Retention, RetentionError> {
        let mut keep: Vec<(Stream, Duration)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, dur) = part
                .split_once('=')
                .ok_or_else(|| RetentionError::NoEquals(part.to_string()))?;
            let stream = Stream::from_name(name.trim())
                .ok_or_else(|| RetentionError::UnknownStream(name.trim().to_string()))?;
            let d = humantime::parse_duration(dur.trim()).map_err(|reason| {
                RetentionError::BadDuration {
                    part: part.to_string(),
                    text: dur.trim().to_string(),
                    reason,
                }
            })?;
            if d < Duration::from_secs(3600) {
                return Err(RetentionError::TooShort(part.to_string()));
            }
            keep.retain(|(s, _)| *s != stream);
            keep.push((stream, d));
        }
        Ok(Retention { keep })
    }

    /// The longest retention when every stream has one: a week of records (all streams
    /// together) may go when it has passed (without one for every stream, old weeks hold
    /// records kept for ever).
    pub fn longest_if_all(&self) -> Option<Duration> {
        Stream::ALL
            .iter()
            .map(|s| self.keep.iter().find(|(x, _)| x == s).map(|(_, d)| *d))
            .collect::<Option<Vec<Duration>>>()?
            .into_iter()
            .max()
    }

    /// Adds what another `--retain` gave (a later one wins per stream).
    pub fn merge(mut self, other: Retention) -> Retention {
        for (s, d) in other.keep {
            self.keep.retain(|(x, _)| *x != s);
            self.keep.push((s, d));
        }
        self
    }

    /// Deletes what is past its time as of `now_ms`; (stream, records deleted) per stream.
    pub async fn apply(&self, store: &FleetStore, now_ms: i64) -> Result<Vec<(Stream, u64)>> {
        let mut out = Vec::new();
        // PostgreSQL: whole weeks past every stream's retention go at once (a partition
        // dropped, not rows deleted); possible only when every stream has one.
        if let Some(longest) = self.longest_if_all() {
            let keep_ms = i64::try_from(longest.as_millis()).unwrap_or(i64::MAX);
            for table in store
                .drop_record_weeks(now_ms.saturating_sub(keep_ms))
                .await?
            {
                tracing::info!(partition = table, "retention: dropped a week of records");
            }
        }
        for (stream, keep) in &self.keep {
            let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            let n = store
                .prune_records(stream.name(), now_ms.saturating_sub(keep_ms), BATCH)
                .await?;
            out.push((*stream, n));
        }
        Ok(out)
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .keep
            .iter()
            .map(|(s, d)| {
                let secs = d.as_secs();
                let text = if secs % 86_400 == 0 {
                    format!("{}d", secs / 86_400)
                } else if secs % 3600 == 0 {
                    format!("{}h", secs / 3600)
                } else {
                    format!("{secs}s")
                };
                format!("{}={text}", s.name())
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_errors_name_the_problem() {
        let r = Retention::parse("samples=7d, features=30d,samples=2d").unwrap();
        assert_eq!(
            r.keep,
            vec![
                (Stream::Features, Duration::from_secs(30 * 86400)),
                (Stream::Samples, Duration::from_secs(2 * 86400)),
            ]
        );
        assert_eq!(r.to_string(), "features=30d,samples=2d");
        let e = Retention::parse("sample=7d").unwrap_err().to_string();
        assert!(
            e.contains("unknown stream `sample`") && e.contains("samples"),
            "{e}"
        );
        let e = |spec: &str| Retention::parse(spec).unwrap_err().to_string();
        assert!(e("samples").contains("stream=duration"));
        assert!(e("samples=soon").contains("duration `soon`"));
        assert!(e("samples=10m").contains("at least 1h"));
        let merged = Retention::parse("samples=7d")
            .unwrap()
            .merge(Retention::parse("samples=1d,drift=90d").unwrap());
        assert_eq!(merged.to_string(), "samples=1d,drift=90d");
    }
}
