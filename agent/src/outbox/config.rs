//! `[outbox]`: where the outbox lives, its commit cadence, and per-stream limits.

use std::path::PathBuf;
use std::time::Duration;

use edge_wire::config_check::{Issues, KeyPath};
use serde::Deserialize;

pub use edge_wire::records::Stream;

/// What a full stream gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest records to make room: the newest data survives a long outage, the
    /// oldest is lost (counted). Right for samples and features.
    #[default]
    DropOldest,
    /// Refuse new records: the oldest survive, the newest are lost (counted). Right when the
    /// start of an incident matters more than its end.
    DropNewest,
}

/// `[outbox.<stream>]`: the bounds of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamLimits {
    /// Largest size of the stream on disk (payload bytes).
    pub max_bytes: u64,
    /// Records older than this are dropped (counted), delivered or not.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// What happens to a record that would take the stream past `max_bytes` (default: drop the
    /// oldest).
    #[serde(default)]
    pub when_full: WhenFull,
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Folder of the database. Default: `<agent.data_dir>/outbox`.
    pub path: Option<PathBuf>,
    /// Group commit: records become durable (and deliverable) at the next commit, at most this
    /// long after they were written.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit early once this many records wait.
    pub commit_max_records: usize,
    /// Database page cache (sled's default is 1 GB: far too much for a gateway).
    pub cache_mb: u64,
    /// Disk space kept free for alarms, drift and events when the disk fills up (a file of
    /// this size beside the database, freed when a write fails; see `reserve.rs`). 0: none.
    pub reserve_mb: u64,
    /// Store at most one sample per tag per interval (quality changes always pass). Default:
    /// every sample.
    #[serde(with = "humantime_serde::option")]
    pub sample_interval: Option<Duration>,
    /// `[outbox.samples]`: default 512 MiB, a week.
    pub samples: StreamLimits,
    /// `[outbox.features]`: default 128 MiB, a week.
    pub features: StreamLimits,
    /// `[outbox.predictions]`: default 128 MiB, a week.
    pub predictions: StreamLimits,
    /// `[outbox.alarms]`: default 16 MiB, a week.
    pub alarms: StreamLimits,
    /// `[outbox.drift]`: default 64 MiB, a week.
    pub drift: StreamLimits,
    /// `[outbox.events]`: default 16 MiB, a week.
    pub events: StreamLimits,
}

const MB: u64 = 1 << 20;
const WEEK: Duration = Duration::from_secs(7 * 86_400);

impl Default for OutboxConfig {
    fn default() -> Self {
        let l = |mb: u64| StreamLimits {
            max_bytes: mb * MB,
            max_age: WEEK,
            when_full: WhenFull::DropOldest,
        };
        OutboxConfig {
            path: None,
            commit_interval: Duration::from_millis(500),
            commit_max_records: 10_000,
            cache_mb: 8,
            reserve_mb: 4,
            sample_interval: None,
            samples: l(512),
            features: l(128),
            predictions: l(128),
            alarms: l(16),
            drift: l(64),
            events: l(16),
        }
    }
}

impl OutboxConfig {
    /// The bounds of stream `s`.
    pub fn limits(&self, s: Stream) -> StreamLimits {
        match s {
            Stream::Samples => self.samples,
            Stream::Features => self.features,
            Stream::Predictions => self.predictions,
            Stream::Alarms => self.alarms,
            Stream::Drift => self.drift,
            Stream::Events => self.events,
        }
    }

    /// Checks the section (commit interval and size, cache, reserve, each stream's bounds), adding
    /// problems under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(
            self.commit_interval >= Duration::from_millis(1),
            at.key("commit_interval"),
            || "commit_interval must be at least 1ms".into(),
        );
        issues.check(
            self.commit_max_records >= 1,
            at.key("commit_max_records"),
            || "must be at least 1".into(),
        );
        issues.check(self.cache_mb >= 1, at.key("cache_mb"), || {
            "must be at least 1".into()
        });
        issues.check(self.reserve_mb <= 1024, at.key("reserve_mb"), || {
            "must be at most 1024 (MiB)".into()
        });
        for s in Stream::ALL {
            let l = self.limits(s);
            issues.check(
                l.max_bytes >= 64 * 1024,
                at.key(s.name()).key("max_bytes"),
                || "max_bytes must be at least 65536".into(),
            );
            issues.check(
                l.max_age >= Duration::from_secs(1),
                at.key(s.name()).key("max_age"),
                || "max_age must be at least 1s".into(),
            );
        }
    }
}
