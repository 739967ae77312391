//! Fleet drift: typed decoding of the stored drift records (stream `drift`, CBOR of
//! [`DriftRecord`]), the operator's views built on [`MergedDrift`] (one device per interval,
//! one device over a time range, a labelled device group or the whole fleet, optionally one
//! merge per time bucket), scored against the bundle's reference from the registry, and the
//! retrain trigger: policies evaluated over time buckets, events, and their hooks.
//!
//! Every view is per (bundle name, version number): another version has another reference,
//! so records of different versions are never merged (grouped by version instead).
//!
//! Submodules: [`views`] (merged views and one device's records), [`heatmap`] (the latest
//! record per device or label group, per column, banded), [`policies`] (retrain policies
//! and their evaluation), [`hooks`] (what runs on an event).
//!
//! Cost: records are found through the drift index written at ingest (bundle, version,
//! device, time range), so a view decodes only the records it merges.

use std::time::Duration;

use edge_wire::drift::DriftRecord;

use crate::registry::RegistryError;
use crate::store::StoreError;

/// The outbox stream drift records arrive on.
pub const STREAM: &str = "drift";
/// Records read per query page.
const PAGE: i64 = 500;
/// How long a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// A bucket is evaluated this long after its end (at most one bucket length), so records
/// uploaded shortly after their interval closed still count.
pub const SETTLE_NS: i64 = 120 * 1_000_000_000;
/// The operator API path of the drift views.
pub const API_PATH: &str = "/v1/operator/drift";

/// Why a drift view, heatmap or policy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// A bad parameter (CLI or API: 400).
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry could not read a bundle.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn invalid(msg: impl Into<String>) -> DriftError {
    DriftError::Invalid(msg.into())
}

/// Decodes one stored drift record (through the outbox record schema).
pub fn decode(body: &[u8]) -> Result<DriftRecord, edge_wire::records::DecodeError> {
    edge_wire::records::decode_drift(body)
}

// ---- time ----

/// Now, Unix ns.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC, milliseconds) of a Unix ns time.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A point in time: RFC 3339 (`2025-01-31T12:00:00Z`) or a duration ago (`2h`, `90m`).
pub fn parse_time(s: &str, now_ns: i64) -> Result<i64, DriftError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| invalid(format!("time `{s}` is out of range")));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ns.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))),
        Err(_) => Err(invalid(format!(
            "time `{s}` is neither RFC 3339 (2025-01-31T12:00:00Z) nor a duration ago (2h)"
        ))),
    }
}

/// A bucket length (`1h`, `10m`), at least one second.
pub fn parse_every(s: &str) -> Result<i64, DriftError> {
    let d = humantime::parse_duration(s)
        .map_err(|e| invalid(format!("duration `{s}`: {e} (e.g. 10m, 1h)")))?;
    if d < Duration::from_secs(1) {
        return Err(invalid(format!("duration `{s}` must be at least 1s")));
    }
    i64::try_from(d.as_nanos()).map_err(|_| invalid(format!("duration `{s}` is too long")))
}

fn fmt_duration(ns: i64) -> String {
    humantime::format_duration(Duration::from_nanos(ns.max(0) as u64)).to_string()
}

/// `key=value` labels as `rollout` selectors take them.
pub fn check_selector(select: &[String]) -> Result<(), DriftError> {
    for l in select {
        if l.is_empty() || l.contains(',') || l.len() > 64 || !l.contains('=') {
            return Err(invalid(format!(
                "selector `{l}` must be key=value (1-64 characters, no commas)"
            )));
        }
    }
    Ok(())
}

mod heatmap;
mod hooks;
mod policies;
mod views;

pub use heatmap::{build_heatmap, Band, HeatCell, HeatRow, Heatmap, HeatmapGroup, HeatmapQuery};
pub use hooks::run_hook;
pub use policies::{
    describe_policy, evaluate_all, evaluate_policy, remove_policy, set_policy, Fired, Hook,
    NewPolicy, PolicyRule,
};
pub use views::{
    merged, percent_encode, record_json, select_devices, show, ColumnOut, DriftQuery,
    DriftRecordOut, DriftView, PerformanceOut, RecordColumnOut,
};
