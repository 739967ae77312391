//! Log setup: `tracing` to stderr, text (journald adds its own timestamps, so none when
//! stderr is not a terminal) or JSON. `EDGE_LOG` overrides the configured filter.

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
    let res = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text if tty => builder.try_init(),
        LogFormat::Text => builder.with_ansi(false).without_time().try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = res;
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
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
