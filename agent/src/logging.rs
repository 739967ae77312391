//! Log setup: `tracing` to stderr, text (journald adds its own timestamps, so none when
//! stderr is not a terminal) or JSON. `EDGE_LOG` overrides the configured filter.
//!
//! Every line that passes the filter is also kept in memory ([`LogRing`], the newest
//! [`RING_BYTES`]), so an operator can fetch recent logs through the fleet (the `logs`
//! command) without a shell on the gateway. Lost at a process restart; journald keeps the rest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use serde::Deserialize;

/// Library crates that log routine events (each failed connection attempt, a publish racing
/// subscription creation) as errors. The sources report every event that matters in their
/// own words (with source name and fix), so these are off unless asked for via `EDGE_LOG`
/// (e.g. `EDGE_LOG=info,opcua_client=debug`).
const QUIET: &str = "opcua_client=off,opcua_core=off,opcua_crypto=off,opcua_types=off,rumqttc=warn";

/// Installs the global tracing subscriber on stderr: `EDGE_LOG` if set, else `cfg.level` with
/// the noisy library crates quietened; an invalid filter falls back to `info`. A second call
/// (tests) keeps the subscriber already installed.
pub fn init(cfg: &LogConfig) {
    let spec = std::env::var("EDGE_LOG").unwrap_or_else(|_| format!("{QUIET},{}", cfg.level));
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let ring = RingLayer(ring().clone());
    let res = match cfg.format {
        LogFormat::Json => builder.json().finish().with(ring).try_init(),
        LogFormat::Text if tty => builder.finish().with(ring).try_init(),
        LogFormat::Text => builder
            .with_ansi(false)
            .without_time()
            .finish()
            .with(ring)
            .try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = res;
}

/// Bytes of log text the ring keeps (the oldest lines go first).
pub const RING_BYTES: usize = 1 << 20;

/// One kept log line.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Unix ms when it was logged.
    pub ts_ms: u64,
    /// Its level.
    pub level: tracing::Level,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields, `key=value`.
    pub text: String,
}

impl LogLine {
    fn size(&self) -> usize {
        self.text.len() + self.target.len() + 32
    }

    /// `2026-12-07T18:00:00.123Z  WARN target: text`.
    pub fn render(&self) -> String {
        let ts = chrono::DateTime::from_timestamp_millis(self.ts_ms as i64)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default();
        format!("{ts} {:>5} {}: {}", self.level, self.target, self.text)
    }
}

/// The newest log lines, bounded by bytes.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: Mutex<(VecDeque<LogLine>, usize)>,
}

impl LogRing {
    fn push(&self, l: LogLine) {
        let mut g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += l.size();
        g.0.push_back(l);
        while g.1 > RING_BYTES {
            match g.0.pop_front() {
                Some(old) => g.1 -= old.size(),
                None => break,
            }
        }
    }

    /// Lines in `[since_ms, until_ms]` at `level` or more severe, rendered, newest kept
    /// within `max_bytes`; and how many matching lines were left out for the cap.
    pub fn select(
        &self,
        since_ms: u64,
        until_ms: u64,
        level: tracing::Level,
        max_bytes: usize,
    ) -> (String, usize) {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let mut picked: Vec<String> = Vec::new();
        let mut bytes = 0;
        let mut left_out = 0;
        for l in g.0.iter().rev() {
            if l.ts_ms < since_ms || l.ts_ms > until_ms || l.level > level {
                continue;
            }
            let line = l.render();
            if bytes + line.len() + 1 > max_bytes {
                left_out += 1;
                continue;
            }
            bytes += line.len() + 1;
            picked.push(line);
        }
        picked.reverse();
        let mut out = picked.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        (out, left_out)
    }
}

/// The process's log ring.
pub fn ring() -> &'static Arc<LogRing> {
    static RING: OnceLock<Arc<LogRing>> = OnceLock::new();
    RING.get_or_init(Arc::default)
}

struct RingLayer(Arc<LogRing>);

/// Collects an event's message and fields as text.
struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(field.name());
            self.0.push('=');
            self.0.push_str(value);
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RingLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.push(LogLine {
            ts_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            text: text.0,
        });
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or per module `info,edge_sources::modbus=debug`.
    /// The `EDGE_LOG` environment variable overrides it.
    pub level: String,
    /// `text` (journald-friendly, no colours when not a terminal) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[log] format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; no colours or timestamps when stderr is not a terminal (journald adds
    /// its own).
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts_ms: u64, level: tracing::Level, text: &str) -> LogLine {
        LogLine {
            ts_ms,
            level,
            target: "edge_agent::x".into(),
            text: text.into(),
        }
    }

    #[test]
    fn selects_by_time_and_level_and_keeps_the_newest_within_the_cap() {
        let r = LogRing::default();
        r.push(line(1_000, tracing::Level::INFO, "old info"));
        r.push(line(2_000, tracing::Level::WARN, "a warning"));
        r.push(line(3_000, tracing::Level::DEBUG, "chatter"));
        r.push(line(4_000, tracing::Level::ERROR, "an error"));
        let (all, cut) = r.select(0, u64::MAX, tracing::Level::INFO, 1 << 20);
        assert_eq!(cut, 0);
        assert_eq!(all.lines().count(), 3, "{all}");
        assert!(!all.contains("chatter"));
        let (warn, _) = r.select(1_500, u64::MAX, tracing::Level::WARN, 1 << 20);
        assert_eq!(warn.lines().count(), 2, "{warn}");
        assert!(warn
            .lines()
            .next()
            .unwrap()
            .contains(" WARN edge_agent::x: a warning"));
        let (capped, cut) = r.select(0, u64::MAX, tracing::Level::TRACE, 60);
        assert!(
            capped.contains("an error") && !capped.contains("old info"),
            "{capped}"
        );
        assert!(cut >= 2, "{cut}");
    }

    #[test]
    fn the_ring_forgets_the_oldest_past_its_size() {
        let r = LogRing::default();
        let big = "x".repeat(1000);
        for i in 0..2000 {
            r.push(line(i, tracing::Level::INFO, &big));
        }
        let g = r.lines.lock().unwrap();
        assert!(g.1 <= RING_BYTES);
        assert_eq!(g.0.back().unwrap().ts_ms, 1999);
        assert!(g.0.front().unwrap().ts_ms > 900);
    }
}
