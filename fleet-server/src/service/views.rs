//! What the operator operations take and return: the JSON shapes of the operator API (and
//! of the CLI's `--json`), shared by the service, the HTTP handlers, the remote client and
//! the console. List queries travel as URL query pairs (`to_pairs` / `from_pairs`; repeated
//! keys for lists, unknown keys refused).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drift::{Hook, PolicyRule};
use crate::store::{
    ApiTokenRow, BundleRow, Device, HistoryPoint, LabelGroup, Rollout, StateCounts,
    StateThresholds, StreamMark, UpdateRow,
};
use crate::types::{
    AlarmKind, DeviceRolloutState, DeviceSortKey, DeviceState, Problem, Role, UnknownValue,
};

use super::ServiceError;

/// Query pairs being read: each key read at most once per name, the rest refused.
#[derive(Debug)]
pub struct Params<'a> {
    pairs: &'a [(String, String)],
    used: Vec<bool>,
}

impl<'a> Params<'a> {
    /// Starts reading `pairs`; nothing is used yet.
    pub fn new(pairs: &'a [(String, String)]) -> Params<'a> {
        Params {
            pairs,
            used: vec![false; pairs.len()],
        }
    }

    /// Every value of `key`.
    pub fn all(&mut self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if k == key {
                self.used[i] = true;
                out.push(v.clone());
            }
        }
        out
    }

    /// The value of `key` (the last one if repeated), empty values as absent.
    pub fn one(&mut self, key: &str) -> Option<String> {
        self.all(key).pop().filter(|v| !v.is_empty())
    }

    /// The value of `key` parsed as `T`; a value that does not parse is
    /// [`ServiceError::Invalid`] naming the key.
    pub fn parse<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, ServiceError>
    where
        T::Err: std::fmt::Display,
    {
        self.one(key)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| ServiceError::Invalid(format!("{key}: {e}")))
            })
            .transpose()
    }

    /// The value of `key` as a whole number.
    pub fn int(&mut self, key: &str) -> Result<Option<i64>, ServiceError> {
        self.one(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ServiceError::Invalid(format!("{key}: `{v}` is not a whole number"))
                })
            })
            .transpose()
    }

    /// The value of `key` as a flag: `true`/`1` or `false`/`0` (absent: false).
    pub fn flag(&mut self, key: &str) -> Result<bool, ServiceError> {
        match self.one(key).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(ServiceError::Invalid(format!(
                "{key}: `{v}` is not true or false"
            ))),
        }
    }

    /// Refuses the keys nobody read.
    pub fn finish(self) -> Result<(), ServiceError> {
        match self.pairs.iter().zip(&self.used).find(|(_, used)| !**used) {
            Some(((k, _), _)) => Err(ServiceError::Invalid(format!("unknown parameter `{k}`"))),
            None => Ok(()),
        }
    }
}

fn push(out: &mut Vec<(String, String)>, k: &str, v: impl ToString) {
    out.push((k.to_string(), v.to_string()));
}

/// The largest page any list returns.
pub const MAX_PAGE: i64 = 500;

fn page_limit(p: &mut Params, default: i64) -> Result<i64, ServiceError> {
    let l = p.int("limit")?.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&l) {
        return Err(ServiceError::Invalid(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(l)
}

fn offset(p: &mut Params) -> Result<i64, ServiceError> {
    let o = p.int("offset")?.unwrap_or(0);
    if o < 0 {
        return Err(ServiceError::Invalid("offset must not be negative".into()));
    }
    Ok(o)
}

// ---- identity and health ----

/// Who the caller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The user name.
    pub user: String,
    /// The role in force for this caller.
    pub role: Role,
    /// `session` (console), `token` (API token) or `local` (CLI on the data directory).
    pub via: String,
}

/// The server's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Server version and git commit.
    pub version: String,
    /// Seconds since this server process started.
    pub uptime_s: u64,
    /// Whether the database answers, and how fast.
    pub database: DatabaseHealth,
    /// Device counts by state (zero while the database does not answer).
    pub devices: StateCounts,
    /// Bundle versions stored.
    pub bundles: usize,
    /// Rollouts in state `active`.
    pub active_rollouts: usize,
    /// Alarms raised and not cleared.
    pub active_alarms: i64,
    /// Deltas being computed now.
    pub deltas_in_flight: usize,
    /// When the drift policies were last evaluated (ms), if since this server started.
    pub drift_evaluated_at: Option<i64>,
    /// Seconds between device check-ins.
    pub checkin_s: u64,
}

/// The database as the health view sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Whether a ping round trip succeeded.
    pub ok: bool,
    /// One round trip.
    pub latency_ms: f64,
    /// The newest schema migration this server knows.
    pub schema_version: i64,
    /// Why the ping failed, if it did.
    pub error: Option<String>,
}

// ---- devices ----

/// Which problems a device list asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemSelect {
    /// Devices with any problem.
    Any,
    /// Devices with this problem.
    Only(Problem),
}

impl std::str::FromStr for ProblemSelect {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        if s == "any" {
            return Ok(ProblemSelect::Any);
        }
        s.parse::<Problem>()
            .map(ProblemSelect::Only)
            .map_err(|e| UnknownValue {
                expected: &[
                    "any",
                    "error",
                    "backlog_growing",
                    "drops",
                    "update_failed",
                    "drift_alarm",
                ],
                ..e
            })
    }
}

impl std::fmt::Display for ProblemSelect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProblemSelect::Any => f.write_str("any"),
            ProblemSelect::Only(p) => f.write_str(p.as_str()),
        }
    }
}

/// `GET /v1/operator/devices` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    /// `key=value` labels the devices must all carry (`label`, repeatable).
    pub labels: Vec<String>,
    /// Only devices in this state (`state`).
    pub state: Option<DeviceState>,
    /// Only devices with problems, or with this one (`problem`).
    pub problem: Option<ProblemSelect>,
    /// `NAME` or `NAME#VERSION_NUMBER` the device runs.
    pub bundle: Option<String>,
    /// Only devices whose agent reports this version (`agent_version`).
    pub agent_version: Option<String>,
    /// Substring of id or name (`q`).
    pub text: Option<String>,
    /// Sort key (`sort`; default: problems).
    pub sort: DeviceSortKey,
    /// Sort descending (`order=desc`).
    pub descending: bool,
    /// Devices to skip (`offset`, default 0).
    pub offset: i64,
    /// Page size (`limit`, 1..=500, default 50).
    pub limit: i64,
}

impl Default for DeviceQuery {
    fn default() -> Self {
        DeviceQuery {
            labels: Vec::new(),
            state: None,
            problem: None,
            bundle: None,
            agent_version: None,
            text: None,
            sort: DeviceSortKey::Problems,
            descending: false,
            offset: 0,
            limit: 50,
        }
    }
}

impl DeviceQuery {
    /// Reads the query pairs; an unknown key, a bad value or a bad label is
    /// [`ServiceError::Invalid`].
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<DeviceQuery, ServiceError> {
        let mut p = Params::new(pairs);
        let q = DeviceQuery {
            labels: p
                .all("label")
                .into_iter()
                .filter(|l| !l.is_empty())
                .collect(),
            state: p.parse("state")?,
            problem: p.parse("problem")?,
            bundle: p.one("bundle"),
            agent_version: p.one("agent_version"),
            text: p.one("q"),
            sort: p.parse("sort")?.unwrap_or(DeviceSortKey::Problems),
            descending: p.one("order").as_deref() == Some("desc"),
            offset: offset(&mut p)?,
            limit: page_limit(&mut p, 50)?,
        };
        p.finish()?;
        super::check_labels(&q.labels)?;
        Ok(q)
    }

    /// The query as URL pairs ([`DeviceQuery::from_pairs`] reads them back).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for l in &self.labels {
            push(&mut out, "label", l);
        }
        if let Some(s) = self.state {
            push(&mut out, "state", s);
        }
        if let Some(p) = self.problem {
            push(&mut out, "problem", p);
        }
        if let Some(b) = &self.bundle {
            push(&mut out, "bundle", b);
        }
        if let Some(v) = &self.agent_version {
            push(&mut out, "agent_version", v);
        }
        if let Some(t) = &self.text {
            push(&mut out, "q", t);
        }
        push(&mut out, "sort", self.sort);
        if self.descending {
            push(&mut out, "order", "desc");
        }
        push(&mut out, "offset", self.offset);
        push(&mut out, "limit", self.limit);
        out
    }
}

/// A device in lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// The device id the server assigned at enrollment.
    pub id: String,
    /// The name the device enrolled with (its agent id).
    pub name: String,
    /// Its `key=value` labels.
    pub labels: Vec<String>,
    /// Online, stale, offline or revoked, as of the request.
    pub state: DeviceState,
    /// Its current problems (none for a revoked device).
    pub problems: Vec<Problem>,
    /// Last check-in (Unix ms); `None` before the first.
    pub last_seen: Option<i64>,
    /// Enrollment time (Unix ms).
    pub enrolled_at: i64,
    /// When it was revoked (Unix ms), if it was.
    pub revoked_at: Option<i64>,
    /// Agent version at the last check-in.
    pub agent_version: Option<String>,
    /// `bundle#version_number` per running model.
    pub models: Vec<String>,
    /// Outbox records waiting for the fleet server at the last check-in, all streams.
    pub backlog: i64,
    /// Records the device dropped under its limits (its counter since the agent started).
    pub dropped: i64,
    /// The last error the device reported, if any.
    pub last_error: Option<String>,
    /// When the device certificate in use expires (Unix ms; renewed automatically at two
    /// thirds of its lifetime).
    pub cert_expires_at: Option<i64>,
}

impl DeviceSummary {
    /// The summary of a stored device, judged against `t`.
    pub fn of(d: &Device, t: &StateThresholds) -> DeviceSummary {
        DeviceSummary {
            id: d.id.clone(),
            name: d.name.clone(),
            labels: d.labels.clone(),
            state: d.state(t),
            problems: d.problems(t),
            last_seen: d.last_seen,
            enrolled_at: d.enrolled_at,
            revoked_at: d.revoked_at,
            agent_version: d.agent_version.clone(),
            models: d.models.clone(),
            backlog: d.backlog,
            dropped: d.dropped,
            last_error: d.last_error.clone(),
            cert_expires_at: d.cert_expires_at,
        }
    }
}

/// One page of a device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePage {
    /// Devices matching the filters (all pages).
    pub total: i64,
    /// Devices skipped before this page.
    pub offset: i64,
    /// The page size used (the query's `limit`, within 1..=500).
    pub limit: i64,
    /// The page, in the query's order.
    pub devices: Vec<DeviceSummary>,
}

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    /// Devices per state.
    pub counts: StateCounts,
    /// Devices with problems, the worst first (at most 20).
    pub problem_devices: Vec<DeviceSummary>,
    /// Counts per label.
    pub groups: Vec<LabelGroup>,
    /// Seconds between check-ins, and what online / offline mean.
    pub checkin_s: u64,
    /// Seen within this many seconds: online.
    pub online_within_s: i64,
    /// Not seen for this many seconds: offline (in between: stale).
    pub offline_after_s: i64,
}

/// A device's place in one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRollout {
    /// Rollout id.
    pub rollout: String,
    /// The bundle name it rolls out.
    pub bundle: String,
    /// The version number it rolls out.
    pub version_number: i64,
    /// Where this device stands in it.
    pub state: DeviceRolloutState,
}

/// One device in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The device as in lists.
    pub device: DeviceSummary,
    /// Its last check-in as it sent it.
    pub status: Option<edge_wire::sync::CheckIn>,
    /// Records stored per stream.
    pub streams: Vec<StreamMark>,
    /// Errors it reported (each when it first appeared), newest first (at most 10).
    pub errors: Vec<ReportedError>,
    /// Update reports, newest first (at most 20).
    pub updates: Vec<UpdateRow>,
    /// Alarms, newest change first (at most 20).
    pub alarms: Vec<crate::store::AlarmRow>,
    /// Rollouts that target it, newest first (at most 10).
    pub rollouts: Vec<DeviceRollout>,
}

/// An error a device reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedError {
    /// When the server first saw it (ms).
    pub at: i64,
    /// The error text as the device sent it.
    pub error: String,
}

/// `GET /v1/operator/devices/{id}/history` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    /// From this time (ms; default: 24 hours ago).
    pub since_ms: Option<i64>,
}

impl HistoryQuery {
    /// Reads `since` (RFC 3339 or a duration ago, e.g. `6h`); anything else is
    /// [`ServiceError::Invalid`].
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<HistoryQuery, ServiceError> {
        let mut p = Params::new(pairs);
        let since = p.one("since");
        p.finish()?;
        let since_ms = since
            .map(|s| {
                crate::drift::parse_time(&s, crate::drift::now_ns())
                    .map(|ns| ns / 1_000_000)
                    .map_err(|e| ServiceError::Invalid(format!("since: {e}")))
            })
            .transpose()?;
        Ok(HistoryQuery { since_ms })
    }

    /// The query as URL pairs (`since` as RFC 3339).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.since_ms
            .map(|ms| {
                vec![(
                    "since".to_string(),
                    crate::drift::rfc3339(ms.saturating_mul(1_000_000)),
                )]
            })
            .unwrap_or_default()
    }
}

/// A device's status history, oldest first.
pub type History = Vec<HistoryPoint>;

/// `GET /v1/operator/devices/{id}/drift` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceDriftQuery {
    /// Only records of this bundle name (`bundle`).
    pub bundle: Option<String>,
    /// Records ending at or after this (Unix ns; default: all).
    pub since_ns: Option<i64>,
    /// At most this many (the newest), default 100.
    pub limit: i64,
}

impl DeviceDriftQuery {
    /// Reads `bundle`, `since` (RFC 3339 or a duration ago) and `limit` (1..=500, default 100).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<DeviceDriftQuery, ServiceError> {
        let mut p = Params::new(pairs);
        let bundle = p.one("bundle");
        let since = p.one("since");
        let limit = page_limit(&mut p, 100)?;
        p.finish()?;
        Ok(DeviceDriftQuery {
            bundle,
            since_ns: since
                .map(|s| {
                    crate::drift::parse_time(&s, crate::drift::now_ns())
                        .map_err(|e| ServiceError::Invalid(format!("since: {e}")))
                })
                .transpose()?,
            limit,
        })
    }

    /// The query as URL pairs (`since` as RFC 3339).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(b) = &self.bundle {
            push(&mut out, "bundle", b);
        }
        if let Some(s) = self.since_ns {
            push(&mut out, "since", crate::drift::rfc3339(s));
        }
        push(&mut out, "limit", self.limit);
        out
    }
}

/// One prediction a device uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionOut {
    /// Its sequence number in the device's `predictions` stream.
    pub seq: i64,
    /// The `[[models]]` name on the device.
    pub model: String,
    /// The bundle name.
    pub bundle: String,
    /// The bundle version number.
    pub version_number: u64,
    /// Window end, RFC 3339.
    pub end: String,
    /// Window end, Unix ns.
    pub end_ns: i64,
    /// The manifest's score (`None` without a score rule, or when it was not finite).
    pub score: Option<f64>,
    /// Class name from the manifest's label rule.
    pub label: Option<String>,
    /// Whether the score is past the manifest's threshold.
    pub over_threshold: Option<bool>,
    /// The model's alarm state after hysteresis.
    pub alarm: Option<bool>,
}

/// `PUT /v1/operator/devices/{id}/labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelsRequest {
    /// The device's new labels (replacing the old ones).
    pub labels: Vec<String>,
}

/// `POST /v1/operator/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenRequest {
    /// Labels the enrolled device gets.
    #[serde(default)]
    pub labels: Vec<String>,
    /// How long it stays valid (`24h`, `7d`; default 24h).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A new one-time enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Shown once: only its hash is stored.
    pub token: String,
    /// Labels the enrolled device gets.
    pub labels: Vec<String>,
    /// When the token expires unused (Unix ms).
    pub expires_at: i64,
}

// ---- models ----

/// `POST /v1/operator/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustKeyRequest {
    /// The ed25519 public key, PEM.
    pub public_pem: String,
}

/// A stored bundle version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleOut {
    /// The stored version: name, version, version number, SHA-256, size, signer, who pushed it
    /// when.
    #[serde(flatten)]
    pub row: BundleRow,
    /// The manifest's description.
    pub description: Option<String>,
    /// The manifest's creation time (RFC 3339).
    pub created: Option<String>,
    /// Feature column names (the model input).
    pub columns: Vec<String>,
    /// Non-revoked devices running it at their last check-in.
    pub running: i64,
    /// The manifest's lineage (training data and feature spec hashes, code revision,
    /// parameters, metrics), when the bundle was packed with one.
    pub lineage: Option<serde_json::Value>,
    /// Its validation run on its name's gate, if one ran.
    pub validation: Option<ValidationOut>,
}

/// A bundle name's validation gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOut {
    /// The bundle name the gate applies to (every version of it).
    pub bundle: String,
    /// The holdout recording's name, as given.
    pub holdout_name: String,
    /// SHA-256 of the holdout recording (hex).
    pub holdout_sha256: String,
    /// Size of the holdout recording (bytes).
    pub holdout_size: i64,
    /// The limits a version must meet on the holdout.
    pub rules: crate::validation::GateRules,
    /// Who set the gate.
    pub created_by: String,
    /// When it was set (Unix ms).
    pub created_at: i64,
}

/// A version's validation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationOut {
    /// Bundle name.
    pub bundle: String,
    /// The version number that ran.
    pub version_number: i64,
    /// `passed`, `failed` or `error`.
    pub status: crate::validation::ValidationStatus,
    /// What the run measured (windows, predictions, alarm rate, label metrics).
    pub metrics: crate::validation::ValidationMetrics,
    /// Which limit failed, or why the run did (empty when it passed).
    pub detail: String,
    /// SHA-256 of the holdout it ran on; a result on another holdout does not count.
    pub holdout_sha256: String,
    /// When it ran (Unix ms).
    pub at: i64,
}

/// `PUT /v1/operator/gates/{bundle}` query: the holdout's name and the limits (the body is
/// the recording).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateRequest {
    /// The holdout recording's name (for people).
    pub holdout_name: String,
    /// The limits a version must meet.
    #[serde(flatten)]
    pub rules: crate::validation::GateRules,
}

/// A cached delta to a bundle version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaOut {
    /// Bundle name.
    pub bundle: String,
    /// The base version (absent: a device running a bundle this server never stored).
    pub from_version_number: Option<i64>,
    /// The target version number.
    pub to_version_number: i64,
    /// The method devices get: the smallest, or `full`.
    pub method: String,
    /// Bytes devices download with that method.
    pub size: i64,
    /// SHA-256 of the artifact devices download (the delta, or the bundle itself).
    pub artifact_sha256: String,
    /// Bytes per method (`full` is the bundle itself).
    pub sizes: BTreeMap<String, u64>,
}

/// `POST /v1/operator/bundles/{name}/deltas`: the two version numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRequest {
    /// Base version number.
    pub from: i64,
    /// Target version number.
    pub to: i64,
}

// ---- rollouts ----

/// A rollout with its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    /// The rollout as stored.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Non-revoked devices its selector targets.
    pub targeted: i64,
    /// Targeted devices per state (every state present, zero or not).
    pub progress: BTreeMap<DeviceRolloutState, i64>,
    /// The canaries among them per state (all zero without a canary label or percentage):
    /// the canary results to decide a promotion on.
    pub canaries: BTreeMap<DeviceRolloutState, i64>,
}

/// One targeted device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDevice {
    /// Device id.
    pub id: String,
    /// Device name.
    pub name: String,
    /// Whether it is one of the canaries.
    pub canary: bool,
    /// Where it stands in the rollout.
    pub state: DeviceRolloutState,
    /// The device's report (when it sent one).
    pub detail: Option<String>,
    /// When it sent its report (Unix ms).
    pub reported_at: Option<i64>,
    /// Its last check-in (Unix ms).
    pub last_seen: Option<i64>,
}

/// A rollout with every targeted device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDetail {
    /// The rollout and its counts.
    #[serde(flatten)]
    pub summary: RolloutSummary,
    /// Every targeted device (revoked ones excluded).
    pub devices: Vec<RolloutDevice>,
}

// ---- drift ----

/// A retrain policy as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyOut {
    /// Policy name.
    pub name: String,
    /// The bundle name it watches.
    pub bundle: String,
    /// `key=value` labels a device must all carry to count (empty: every device).
    pub select: Vec<String>,
    /// Bucket length (`10m`).
    pub every: String,
    /// Consecutive drifting buckets that make an event.
    pub intervals: i64,
    /// When a bucket drifts.
    pub rule: PolicyRule,
    /// What runs on an event.
    pub hook: Hook,
    /// The evaluator's cursor.
    pub state: serde_json::Value,
    /// Who set it last.
    pub created_by: String,
    /// When it was set last (Unix ms).
    pub updated_at: i64,
}

/// `PUT /v1/operator/drift/policies/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRequest {
    /// The bundle name to watch.
    pub bundle: String,
    /// `key=value` labels a device must all carry to count (empty: every device).
    #[serde(default)]
    pub select: Vec<String>,
    /// Bucket length (`10m`).
    pub every: String,
    /// Consecutive drifting buckets that make an event (default 3).
    #[serde(default = "three")]
    pub intervals: u32,
    /// When a bucket drifts.
    pub rule: PolicyRule,
    /// What runs on an event (a command or a URL, run by the server).
    pub hook: Hook,
}

fn three() -> u32 {
    3
}

/// A recorded retrain event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventOut {
    /// Event id.
    pub id: String,
    /// The policy that made it.
    pub policy: String,
    /// Bundle name.
    pub bundle: String,
    /// The version number that drifted.
    pub version_number: i64,
    /// Start of the drifting buckets (RFC 3339).
    pub from: String,
    /// End of the drifting buckets (RFC 3339).
    pub to: String,
    /// When the event was recorded (Unix ms).
    pub created_at: i64,
    /// `pending`, `ok`, `failed`, `timeout`, `error`.
    pub hook_status: String,
    /// What the hook answered or why it failed.
    pub hook_detail: String,
    /// The event JSON the hook got.
    pub body: serde_json::Value,
}

// ---- alarms ----

/// `GET /v1/operator/alarms` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmListQuery {
    /// Only this device's alarms (`device`).
    pub device: Option<String>,
    /// Only raised alarms, not cleared ones (`active=true`).
    pub active_only: bool,
    /// Only alarms nobody acknowledged (`unacked=true`).
    pub unacked_only: bool,
    /// Only alarms of this kind (`kind`).
    pub kind: Option<AlarmKind>,
    /// Alarms to skip (`offset`).
    pub offset: i64,
    /// Page size (`limit`, 1..=500, default 50).
    pub limit: i64,
}

impl Default for AlarmListQuery {
    fn default() -> Self {
        AlarmListQuery {
            device: None,
            active_only: false,
            unacked_only: false,
            kind: None,
            offset: 0,
            limit: 50,
        }
    }
}

impl AlarmListQuery {
    /// Reads the query pairs; an unknown key or a bad value is [`ServiceError::Invalid`].
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<AlarmListQuery, ServiceError> {
        let mut p = Params::new(pairs);
        let q = AlarmListQuery {
            device: p.one("device"),
            active_only: p.flag("active")?,
            unacked_only: p.flag("unacked")?,
            kind: p.parse("kind")?,
            offset: offset(&mut p)?,
            limit: page_limit(&mut p, 50)?,
        };
        p.finish()?;
        Ok(q)
    }

    /// The query as URL pairs ([`AlarmListQuery::from_pairs`] reads them back).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(d) = &self.device {
            push(&mut out, "device", d);
        }
        if self.active_only {
            push(&mut out, "active", "true");
        }
        if self.unacked_only {
            push(&mut out, "unacked", "true");
        }
        if let Some(k) = self.kind {
            push(&mut out, "kind", k);
        }
        push(&mut out, "offset", self.offset);
        push(&mut out, "limit", self.limit);
        out
    }
}

/// One page of alarms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmPage {
    /// Alarms matching the filters (all pages).
    pub total: i64,
    /// Alarms skipped before this page.
    pub offset: i64,
    /// The page size used (the query's `limit`, within 1..=500).
    pub limit: i64,
    /// The page, most recently changed first.
    pub alarms: Vec<crate::store::AlarmRow>,
}

// ---- audit ----

/// `GET /v1/operator/audit` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditListQuery {
    /// Only entries by this user (`actor`).
    pub actor: Option<String>,
    /// Actions starting with this (`rollout.`).
    pub action: Option<String>,
    /// Entries before this time (ms).
    pub before: Option<i64>,
    /// Entries to return (`limit`, 1..=500, default 50).
    pub limit: i64,
}

impl Default for AuditListQuery {
    fn default() -> Self {
        AuditListQuery {
            actor: None,
            action: None,
            before: None,
            limit: 50,
        }
    }
}

impl AuditListQuery {
    /// Reads the query pairs; an unknown key or a bad value is [`ServiceError::Invalid`].
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<AuditListQuery, ServiceError> {
        let mut p = Params::new(pairs);
        let q = AuditListQuery {
            actor: p.one("actor"),
            action: p.one("action"),
            before: p.int("before")?,
            limit: page_limit(&mut p, 50)?,
        };
        p.finish()?;
        Ok(q)
    }

    /// The query as URL pairs ([`AuditListQuery::from_pairs`] reads them back).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(a) = &self.actor {
            push(&mut out, "actor", a);
        }
        if let Some(a) = &self.action {
            push(&mut out, "action", a);
        }
        if let Some(b) = self.before {
            push(&mut out, "before", b);
        }
        push(&mut out, "limit", self.limit);
        out
    }
}

// ---- accounts ----

/// `POST /v1/operator/session`: sign in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// A new console session (its id goes in the `fleet_session` cookie only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginReply {
    /// The user signed in.
    pub user: String,
    /// Their role.
    pub role: Role,
    /// Send it back as `X-CSRF-Token` on every state change made with the cookie.
    pub csrf: String,
    /// When the session ends at the latest (Unix ms).
    pub expires_at: i64,
}

/// `POST /v1/operator/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// User name: 1-64 characters of `A-Z a-z 0-9 - _ . @`, starting with a letter or digit.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Initial password (at least 10 characters).
    pub password: String,
}

/// `PUT /v1/operator/users/{name}`: a new role (admin), a new password (admin, or the user
/// with `current_password`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserUpdate {
    /// The new role (admin only).
    #[serde(default)]
    pub role: Option<Role>,
    /// The new password; ends the user's sessions.
    #[serde(default)]
    pub password: Option<String>,
    /// The current password: required to change one's own, except for an admin at a console
    /// session.
    #[serde(default)]
    pub current_password: Option<String>,
}

/// An operator account as listed (the stored row; the password hash is never serialized).
pub type UserOut = crate::store::UserRow;

/// `POST /v1/operator/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// A name for people (1-64 characters).
    pub name: String,
    /// At most the owner's role (default: the owner's role).
    #[serde(default)]
    pub role: Option<Role>,
    /// How long it stays valid (`90d`; default 90 days).
    #[serde(default)]
    pub ttl: Option<String>,
    /// Owner (admins only; default: the caller).
    #[serde(default)]
    pub user: Option<String>,
}

/// A new API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// Shown once: only its SHA-256 is stored. `Authorization: Bearer <token>`.
    pub token: String,
    /// The token as stored and listed.
    #[serde(flatten)]
    pub info: ApiTokenRow,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn device_queries_round_trip_and_refuse_unknown_keys() {
        let q = DeviceQuery {
            labels: vec!["site=a".into(), "line=2".into()],
            state: Some(DeviceState::Stale),
            problem: Some(ProblemSelect::Only(Problem::Drops)),
            bundle: Some("pump#3".into()),
            text: Some("gw".into()),
            sort: DeviceSortKey::LastSeen,
            descending: true,
            offset: 50,
            limit: 25,
            ..Default::default()
        };
        assert_eq!(DeviceQuery::from_pairs(&q.to_pairs()).unwrap(), q);
        let e = DeviceQuery::from_pairs(&pairs(&[("colour", "red")])).unwrap_err();
        assert_eq!(e.to_string(), "unknown parameter `colour`");
        let e = DeviceQuery::from_pairs(&pairs(&[("state", "asleep")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("state: `asleep` is not a valid device state"),
            "{e}"
        );
        let e = DeviceQuery::from_pairs(&pairs(&[("limit", "5000")])).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let e = DeviceQuery::from_pairs(&pairs(&[("problem", "bad")])).unwrap_err();
        assert!(e.to_string().contains("any, error"), "{e}");
        let a = AlarmListQuery {
            device: Some("d-1".into()),
            active_only: true,
            kind: Some(AlarmKind::Dataset),
            ..Default::default()
        };
        assert_eq!(AlarmListQuery::from_pairs(&a.to_pairs()).unwrap(), a);
        let a = AuditListQuery {
            action: Some("rollout.".into()),
            before: Some(5),
            ..Default::default()
        };
        assert_eq!(AuditListQuery::from_pairs(&a.to_pairs()).unwrap(), a);
    }
}

/// Where the fleet CA stands (`GET /v1/operator/ca/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaStatus {
    /// SHA-256 of the CA certificate (PEM) that signs device certificates.
    pub ca_sha256: String,
    /// During a rotation: the previous CA's.
    pub previous_sha256: Option<String>,
    /// Non-revoked devices whose certificate another CA signed (they renew at their next
    /// check-in during a rotation).
    pub devices_on_other_ca: Vec<String>,
}

/// `POST /v1/operator/ca/finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FinishRotation {
    /// Finish although devices still hold certificates of the previous CA (audited).
    #[serde(default)]
    pub force: bool,
}
