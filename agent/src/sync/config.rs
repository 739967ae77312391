//! `[sync]`: the fleet server this agent syncs with, and how.

use std::path::PathBuf;
use std::time::Duration;

use edge_sources::secret::Secret;
use edge_wire::config_check::{Issues, KeyPath};
use serde::Deserialize;

use crate::outbox::Stream;

/// `[sync]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// `https://host[:port]` of the fleet server.
    pub server: String,
    /// The fleet CA certificate (PEM, from `fleet-server ca export`): the only authority
    /// trusted for the server's certificate.
    pub server_ca: PathBuf,
    /// One-time enrollment token (`fleet-server device enroll`): inline, `{ file = … }` or
    /// `{ env = … }`. Only needed until the device is enrolled.
    #[serde(default)]
    pub enroll_token: Option<Secret>,
    /// Check-in period when the server does not say otherwise.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Streams uploaded to the server, in priority order (earlier streams are uploaded first).
    #[serde(default = "default_streams")]
    pub streams: Vec<Stream>,
    /// Records per upload request.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// Payload bytes per upload request (before compression).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// Bandwidth cap for uploads and downloads, bytes per second (0: none).
    #[serde(default)]
    pub max_bytes_per_s: u64,
    /// Bound on each request (and each wait for download data).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `[sync.health]`: when a freshly installed bundle counts as healthy.
    #[serde(default)]
    pub health: HealthConfig,
    /// How long a configuration file the fleet sent has to become healthy (every source
    /// connected, pipeline moving, MQTT outputs connected, a fleet check-in) before the
    /// agent rolls it back to the last good one. Taken from the new file.
    #[serde(default = "default_config_health_timeout", with = "humantime_serde")]
    pub config_health_timeout: Duration,
    /// Retry timing after a failed sync: exponential from `initial` up to `max`, jittered
    /// (each delay drawn from [d/2, d]) so a fleet that lost its server does not come back
    /// in lockstep. `max` is also the delay after a refusal only an operator can fix
    /// (revoked device, used token). Default `{ initial = "1s", max = "60s" }`.
    #[serde(default = "default_retry")]
    pub retry: edge_sources::backoff::ReconnectConfig,
    /// `[sync.agent_update]`: fleet releases of the agent binary itself.
    #[serde(default)]
    pub agent_update: AgentUpdateConfig,
}

/// `[sync.agent_update]`: whether and how this device takes new agent binaries from the
/// fleet (docs/fleet.md, "Agent software updates"). Off until a release key is trusted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentUpdateConfig {
    /// Public keys (ed25519 PEM) agent releases must be signed with. Empty (the default):
    /// every release the fleet offers is refused and reported as such.
    pub trusted_keys: Vec<PathBuf>,
    /// How long a new binary has to become healthy (every source connected, pipeline
    /// moving, MQTT outputs connected, a fleet check-in) before it is rolled back.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
}

impl Default for AgentUpdateConfig {
    fn default() -> Self {
        AgentUpdateConfig {
            trusted_keys: Vec::new(),
            health_timeout: Duration::from_secs(120),
        }
    }
}

impl AgentUpdateConfig {
    /// The trusted release keys, read and parsed.
    pub fn keys(&self) -> Result<Vec<ed25519_dalek::VerifyingKey>, edge_wire::bundle::BundleError> {
        self.trusted_keys
            .iter()
            .map(|p| edge_wire::bundle::file::read_public_key(p))
            .collect()
    }
}

fn default_config_health_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_retry() -> edge_sources::backoff::ReconnectConfig {
    edge_sources::backoff::ReconnectConfig {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    }
}

/// `[sync.health]`: when a freshly installed bundle counts as healthy. It must load, then
/// serve `windows` predictions with fewer than `max_inference_errors` inference errors and
/// fewer than `max_out_of_range` outputs outside the manifest's declared ranges; otherwise
/// the previous bundle is restored and the server told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Predictions the new bundle must serve before it is judged (at least 1; default 10).
    pub windows: u64,
    /// Inference errors in those windows that fail the bundle (default 1: any error).
    pub max_inference_errors: u64,
    /// Outputs outside the manifest's declared ranges that fail the bundle (default 3).
    pub max_out_of_range: u64,
    /// Give up waiting for `windows` predictions after this long (the bundle is then kept:
    /// no evidence against it, and the report says so).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            windows: 10,
            max_inference_errors: 1,
            max_out_of_range: 3,
            timeout: Duration::from_secs(120),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_streams() -> Vec<Stream> {
    vec![
        Stream::Alarms,
        Stream::Drift,
        Stream::Events,
        Stream::Predictions,
        Stream::Features,
        Stream::Samples,
    ]
}
fn default_batch_records() -> usize {
    1000
}
fn default_batch_bytes() -> usize {
    1 << 20
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SyncConfig {
    /// Checks the section (server URL, CA file, interval, batches, timeouts, retry, streams,
    /// health), adding problems under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        if let Err(e) = super::client::ServerUrl::parse(&self.server) {
            issues.push(at.key("server"), e.to_string());
        }
        issues.check(self.server_ca.is_file(), at.key("server_ca"), || {
            format!(
                "{} does not exist (copy the fleet CA here: `fleet-server ca export > {}`)",
                self.server_ca.display(),
                self.server_ca.display()
            )
        });
        issues.check(
            self.interval >= Duration::from_secs(1),
            at.key("interval"),
            || "must be at least 1s".into(),
        );
        issues.check(self.batch_records >= 1, at.key("batch_records"), || {
            "must be at least 1".into()
        });
        issues.check(
            self.batch_bytes >= 1024 && self.batch_bytes <= 8 << 20,
            at.key("batch_bytes"),
            || "must be between 1024 and 8388608 (the server refuses bodies over 16 MiB)".into(),
        );
        issues.check(
            self.request_timeout >= Duration::from_secs(1),
            at.key("request_timeout"),
            || "must be at least 1s".into(),
        );
        issues.check(
            self.config_health_timeout >= Duration::from_secs(2)
                && self.config_health_timeout <= Duration::from_secs(3600),
            at.key("config_health_timeout"),
            || "must be between 2s and 1h".into(),
        );
        issues.check(
            self.retry.initial >= Duration::from_millis(100),
            at.key("retry").key("initial"),
            || "must be at least 100ms".into(),
        );
        issues.check(
            self.retry.max >= self.retry.initial && self.retry.max <= Duration::from_secs(3600),
            at.key("retry").key("max"),
            || "must be at least `initial` and at most 1h".into(),
        );
        let mut seen = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            issues.check(!seen.contains(s), at.key("streams").index(i), || {
                format!("stream `{}` is listed twice", s.name())
            });
            seen.push(*s);
        }
        issues.check(
            self.health.windows >= 1,
            at.key("health").key("windows"),
            || "must be at least 1".into(),
        );
        let au = at.key("agent_update");
        for (i, p) in self.agent_update.trusted_keys.iter().enumerate() {
            if let Err(e) = edge_wire::bundle::file::read_public_key(p) {
                issues.push(au.key("trusted_keys").index(i), e.to_string());
            }
        }
        issues.check(
            self.agent_update.health_timeout >= Duration::from_secs(2)
                && self.agent_update.health_timeout <= Duration::from_secs(3600),
            au.key("health_timeout"),
            || "must be between 2s and 1h".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> SyncConfig {
        toml::from_str(&format!(
            "server = \"https://fleet:8443\"\nserver_ca = \"/nonexistent/ca.pem\"\n{extra}"
        ))
        .unwrap()
    }

    /// The retry ceiling is a documented key, 60 s by default (it was a hidden 300 s: sync
    /// resumed 134 s after the server came back).
    #[test]
    fn retry_defaults_to_a_minute_and_is_validated() {
        let c = parse("");
        assert_eq!(c.retry.initial, Duration::from_secs(1));
        assert_eq!(c.retry.max, Duration::from_secs(60));
        let mut b = c.retry.backoff();
        for _ in 0..30 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        assert!(b.fatal_delay() <= Duration::from_secs(60));
        let c = parse("retry = { initial = \"10ms\", max = \"2h\" }");
        let mut issues = Issues::default();
        c.validate(&KeyPath::root().key("sync"), &mut issues);
        let paths: Vec<String> = issues.0.iter().map(|i| i.path.to_string()).collect();
        assert!(
            paths.contains(&"sync.retry.initial".to_string()),
            "{paths:?}"
        );
        assert!(paths.contains(&"sync.retry.max".to_string()), "{paths:?}");
    }
}
