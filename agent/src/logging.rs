//! Log setup: `tracing` to stderr, text (journald adds its own timestamps, so none when
//! stderr is not a terminal) or JSON. `EDGE_LOG` overrides the configured filter.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Library crates that log every connection attempt at warn/error; keep them quieter than ours.
const QUIET: &str = "opcua_client=error,opcua_core=error,opcua_crypto=error,opcua_types=error,rumqttc=warn";

pub fn init(cfg: &LogConfig) {
    let spec = std::env::var("EDGE_LOG").unwrap_or_else(|_| format!("{QUIET},{}", cfg.level));
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let res = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text if tty => builder.try_init(),
        LogFormat::Text => builder.with_ansi(false).without_time().try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = res;
}
