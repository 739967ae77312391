//! Fleet drift: typed decoding of the stored drift records (stream `drift`, CBOR of
//! [`DriftRecord`]), the operator's views built on [`MergedDrift`] (one device per interval,
//! one device over a time range, a labelled device group or the whole fleet, optionally one
//! merge per time bucket), scored against the bundle's reference from the registry, and the
//! retrain trigger: policies evaluated over time buckets, events, and their hooks.
//!
//! Every view is per (bundle name, version number): another version has another reference,
//! so records of different versions are never merged (grouped by version instead).
//!
//! Cost: the records table has only the device's append time (`ts_ms`, the device clock,
//! which need not match the data time of a replayed recording), so time filters decode
//! every drift record of the selected devices and filter on the record's `end_ns`. That is
//! one CBOR decode per stored record and query (a few KB each); fine for thousands of
//! records, an index table written at ingest is the next step past that.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edge_protocols::bundle::manifest::Reference;
use edge_protocols::drift::fleet::{ColumnView, MergedDrift};
use edge_protocols::drift::{ColumnDrift, DriftPolicy, DriftRecord, DriftRules, Performance};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::registry::{Registry, RegistryError};
use crate::store::{now_ms, Device, DriftEventRow, DriftPolicyRow, FleetStore, StoreError};

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

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// A bad parameter (CLI or API: 400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn invalid(msg: impl Into<String>) -> DriftError {
    DriftError::Invalid(msg.into())
}

/// Decodes one stored drift record.
pub fn decode(body: &[u8]) -> Result<DriftRecord, String> {
    ciborium::from_reader(body).map_err(|e| e.to_string())
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

// ---- queries and views ----

/// What to show: one bundle, optionally one version, one device or a label group (or the
/// whole fleet), a time range on the records' end time, and optional buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriftQuery {
    pub bundle: String,
    pub version_number: Option<u64>,
    pub device: Option<String>,
    pub select: Vec<String>,
    /// Records ending at or after this (Unix ns)…
    pub since_ns: Option<i64>,
    /// …and before this.
    pub until_ns: Option<i64>,
    /// One merge per bucket of this length (aligned to the Unix epoch), by record end time.
    pub every_ns: Option<i64>,
}

impl DriftQuery {
    /// From the operator API's query parameters (`select` may repeat).
    pub fn from_pairs(pairs: &[(String, String)], now_ns: i64) -> Result<DriftQuery, DriftError> {
        let mut q = DriftQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "bundle" => q.bundle = v.clone(),
                "version_number" => {
                    q.version_number = Some(v.parse().map_err(|_| {
                        invalid(format!("version_number `{v}` is not a whole number"))
                    })?)
                }
                "device" => q.device = Some(v.clone()),
                "select" => q.select.push(v.clone()),
                "since" => q.since_ns = Some(parse_time(v, now_ns).map_err(|e| named("since", e))?),
                "until" => q.until_ns = Some(parse_time(v, now_ns).map_err(|e| named("until", e))?),
                "every" => q.every_ns = Some(parse_every(v).map_err(|e| named("every", e))?),
                other => return Err(invalid(format!("unknown parameter `{other}`"))),
            }
        }
        q.validate()?;
        Ok(q)
    }

    pub fn validate(&self) -> Result<(), DriftError> {
        if self.bundle.is_empty() {
            return Err(invalid("a bundle name is required (bundle=NAME)"));
        }
        if self.device.is_some() && !self.select.is_empty() {
            return Err(invalid("give either a device or label selectors, not both"));
        }
        check_selector(&self.select)?;
        if let (Some(a), Some(b)) = (self.since_ns, self.until_ns) {
            if a >= b {
                return Err(invalid(format!(
                    "since ({}) must be before until ({})",
                    rfc3339(a),
                    rfc3339(b)
                )));
            }
        }
        Ok(())
    }

    fn contains(&self, rec: &DriftRecord) -> bool {
        *rec.source.bundle == *self.bundle
            && self
                .version_number
                .is_none_or(|v| v == rec.source.version_number)
            && self.since_ns.is_none_or(|t| rec.end_ns >= t)
            && self.until_ns.is_none_or(|t| rec.end_ns < t)
    }

    /// The operator API path and query string that shows this.
    pub fn api_path(&self) -> String {
        let mut p = vec![("bundle", self.bundle.clone())];
        if let Some(v) = self.version_number {
            p.push(("version_number", v.to_string()));
        }
        if let Some(d) = &self.device {
            p.push(("device", d.clone()));
        }
        p.extend(self.select.iter().map(|s| ("select", s.clone())));
        if let Some(t) = self.since_ns {
            p.push(("since", rfc3339(t)));
        }
        if let Some(t) = self.until_ns {
            p.push(("until", rfc3339(t)));
        }
        if let Some(e) = self.every_ns {
            p.push(("every", fmt_duration(e)));
        }
        let q: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        format!("{API_PATH}?{}", q.join("&"))
    }

    /// The `fleet-server drift show` command line that shows this.
    pub fn cli(&self) -> String {
        let mut c = format!(
            "fleet-server drift show --bundle {}",
            shell_quote(&self.bundle)
        );
        if let Some(v) = self.version_number {
            c.push_str(&format!(" --version-number {v}"));
        }
        if let Some(d) = &self.device {
            c.push_str(&format!(" --device {}", shell_quote(d)));
        }
        for s in &self.select {
            c.push_str(&format!(" --select {}", shell_quote(s)));
        }
        if let Some(t) = self.since_ns {
            c.push_str(&format!(" --since {}", rfc3339(t)));
        }
        if let Some(t) = self.until_ns {
            c.push_str(&format!(" --until {}", rfc3339(t)));
        }
        if let Some(e) = self.every_ns {
            c.push_str(&format!(" --every {}", shell_quote(&fmt_duration(e))));
        }
        c
    }
}

fn named(param: &str, e: DriftError) -> DriftError {
    invalid(format!("{param}: {e}"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.=:/+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One column of a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnOut {
    pub name: String,
    pub count: u64,
    pub missing: u64,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub ks: Option<f64>,
    pub w1_std: Option<f64>,
    pub drifting: bool,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl ColumnOut {
    fn of(c: &ColumnView) -> ColumnOut {
        let empty = c.count == 0;
        ColumnOut {
            name: c.name.clone(),
            count: c.count,
            missing: c.missing,
            mean: finite(c.mean).filter(|_| !empty),
            std: finite(c.std).filter(|_| !empty),
            min: finite(c.min),
            max: finite(c.max),
            p50: c.p50.and_then(finite),
            p99: c.p99.and_then(finite),
            psi: c.scores.map(|s| s.psi),
            js: c.scores.map(|s| s.js),
            ks: c.scores.map(|s| s.ks),
            w1_std: c.scores.map(|s| s.w1_std),
            drifting: c.drifting,
        }
    }
}

/// Model performance from late labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerformanceOut {
    pub labelled: u64,
    pub unlabelled: u64,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub mae: Option<f64>,
}

impl PerformanceOut {
    fn of(p: &Performance) -> Option<PerformanceOut> {
        (p.labelled + p.unlabelled > 0).then(|| PerformanceOut {
            labelled: p.labelled,
            unlabelled: p.unlabelled,
            accuracy: p.accuracy(),
            precision: p.precision(),
            recall: p.recall(),
            mae: p.mae(),
        })
    }
}

/// One merged view (one JSON line of `drift show`, one element of the API's array).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftView {
    pub bundle: String,
    pub version_number: u64,
    /// Time the merged records cover (earliest start, latest end).
    pub from: String,
    pub to: String,
    /// The bucket (with `every`): records whose end falls in [bucket_from, bucket_to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_to: Option<String>,
    pub devices: Vec<String>,
    pub records: u64,
    pub windows: u64,
    pub dataset_drift_records: u64,
    /// Scored against the bundle's reference (the registry has this version); otherwise
    /// only moments and quantiles, and `note` says why.
    pub scored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub columns: Vec<ColumnOut>,
    pub outputs: Vec<ColumnOut>,
    pub performance: Option<PerformanceOut>,
}

/// One (version, bucket)'s records merged, plus what [`MergedDrift`] does not keep.
#[derive(Debug, Clone, Default)]
struct Acc {
    merged: MergedDrift,
    /// Per device: (records, records with dataset drift).
    per_device: BTreeMap<String, (u64, u64)>,
    /// Column names the devices flagged drifting, with how many records did.
    flagged: BTreeMap<String, u64>,
}

impl Acc {
    fn add(&mut self, device: &str, rec: &DriftRecord) -> bool {
        if let Err(e) = self.merged.add(device, rec) {
            tracing::warn!(device, "drift record not merged: {e}");
            return false;
        }
        let d = self.per_device.entry(device.to_string()).or_default();
        d.0 += 1;
        d.1 += u64::from(rec.dataset_drift);
        for n in &rec.drifting {
            *self.flagged.entry(n.clone()).or_default() += 1;
        }
        true
    }

    fn absorb(&mut self, o: &Acc) -> Result<(), String> {
        // MergedDrift has no merge of two merges: re-add through its summaries would lose
        // the per-record counts, so merge the parts by hand with the same rules.
        if self.merged.records == 0 {
            *self = o.clone();
            return Ok(());
        }
        if o.merged.bundle != self.merged.bundle
            || o.merged.version_number != self.merged.version_number
        {
            return Err("another bundle version".into());
        }
        for (name, s) in &o.merged.columns {
            match self.merged.columns.get_mut(name) {
                Some(m) => m.merge(s).map_err(|e| e.to_string())?,
                None => {
                    self.merged.columns.insert(name.clone(), s.clone());
                }
            }
        }
        for (name, s) in &o.merged.outputs {
            match self.merged.outputs.get_mut(name) {
                Some(m) => m.merge(s).map_err(|e| e.to_string())?,
                None => {
                    self.merged.outputs.insert(name.clone(), s.clone());
                }
            }
        }
        let m = &mut self.merged;
        m.performance.merge(&o.merged.performance);
        m.from_ns = m.from_ns.min(o.merged.from_ns);
        m.to_ns = m.to_ns.max(o.merged.to_ns);
        m.records += o.merged.records;
        m.windows += o.merged.windows;
        m.dataset_drift_records += o.merged.dataset_drift_records;
        m.devices.extend(o.merged.devices.iter().cloned());
        for (d, (n, k)) in &o.per_device {
            let e = self.per_device.entry(d.clone()).or_default();
            e.0 += n;
            e.1 += k;
        }
        for (n, k) in &o.flagged {
            *self.flagged.entry(n.clone()).or_default() += k;
        }
        Ok(())
    }
}

/// The devices a query covers: one by id, or every device carrying all `select` labels.
pub async fn select_devices(
    store: &FleetStore,
    device: Option<&str>,
    select: &[String],
) -> Result<Vec<Device>, DriftError> {
    match device {
        Some(id) => Ok(vec![store
            .device(id)
            .await?
            .ok_or_else(|| invalid(format!("no device `{id}`")))?]),
        None => Ok(store
            .devices()
            .await?
            .into_iter()
            .filter(|d| crate::rollout::selects(select, d))
            .collect()),
    }
}

/// Every drift record of `devices` matching `keep`, bucketed: key (version, bucket start).
async fn collect(
    store: &FleetStore,
    devices: &[Device],
    every_ns: Option<i64>,
    keep: impl Fn(&DriftRecord) -> bool,
) -> Result<BTreeMap<(u64, i64), Acc>, DriftError> {
    let mut out: BTreeMap<(u64, i64), Acc> = BTreeMap::new();
    for d in devices {
        let mut after = 0;
        let mut undecodable = 0u64;
        loop {
            let page = store.records(&d.id, STREAM, after, PAGE).await?;
            let Some(last) = page.last().map(|r| r.0) else {
                break;
            };
            after = last;
            for (_, _, body) in &page {
                let rec = match decode(body) {
                    Ok(r) => r,
                    Err(_) => {
                        undecodable += 1;
                        continue;
                    }
                };
                if !keep(&rec) {
                    continue;
                }
                let bucket = every_ns.map_or(0, |e| rec.end_ns.div_euclid(e) * e);
                out.entry((rec.source.version_number, bucket))
                    .or_default()
                    .add(&d.id, &rec);
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        if undecodable > 0 {
            tracing::warn!(device = %d.id, undecodable, "drift records that do not decode were skipped");
        }
    }
    Ok(out)
}

/// Reference and rules per bundle version, read from the registry once.
struct References<'a> {
    registry: &'a Registry,
    bundle: String,
    cache: BTreeMap<u64, Result<(Reference, DriftRules), String>>,
}

impl<'a> References<'a> {
    fn new(registry: &'a Registry, bundle: &str) -> Self {
        References {
            registry,
            bundle: bundle.to_string(),
            cache: BTreeMap::new(),
        }
    }

    async fn get(&mut self, version: u64) -> &Result<(Reference, DriftRules), String> {
        if !self.cache.contains_key(&version) {
            let r = match i64::try_from(version) {
                Err(_) => Err(format!("version number {version} is out of range")),
                Ok(vn) => match self.registry.manifest(&self.bundle, vn).await {
                    Ok(Some(m)) => Ok((m.reference, m.drift.resolve())),
                    Ok(None) => Err(format!(
                        "the registry has no {} #{version}: unscored (moments and quantiles only)",
                        self.bundle
                    )),
                    Err(e) => Err(format!(
                        "cannot read {} #{version} from the registry ({e}): unscored",
                        self.bundle
                    )),
                },
            };
            self.cache.insert(version, r);
        }
        &self.cache[&version]
    }

    /// The merged columns and outputs, scored when the reference is known.
    async fn score(
        &mut self,
        m: &MergedDrift,
    ) -> (Vec<ColumnView>, Vec<ColumnView>, Option<String>) {
        match self.get(m.version_number).await {
            Ok((reference, rules)) => {
                let (c, o) = m.scored(reference, rules);
                (c, o, None)
            }
            Err(note) => {
                let (c, o) = m.scored(&Reference::default(), &DriftRules::default());
                (c, o, Some(note.clone()))
            }
        }
    }
}

async fn view_of(refs: &mut References<'_>, acc: &Acc, bucket: Option<(i64, i64)>) -> DriftView {
    let m = &acc.merged;
    let (cols, outs, note) = refs.score(m).await;
    DriftView {
        bundle: m.bundle.clone(),
        version_number: m.version_number,
        from: rfc3339(m.from_ns),
        to: rfc3339(m.to_ns),
        bucket_from: bucket.map(|b| rfc3339(b.0)),
        bucket_to: bucket.map(|b| rfc3339(b.1)),
        devices: m.devices.iter().cloned().collect(),
        records: m.records,
        windows: m.windows,
        dataset_drift_records: m.dataset_drift_records,
        scored: note.is_none(),
        note,
        columns: cols.iter().map(ColumnOut::of).collect(),
        outputs: outs.iter().map(ColumnOut::of).collect(),
        performance: PerformanceOut::of(&m.performance),
    }
}

/// The merges behind [`show`]: per bundle version (and bucket: its start and end), in
/// version then time order. Devices are read in [`FleetStore::devices`] order and each
/// device's records in sequence order.
pub async fn merged(
    store: &FleetStore,
    q: &DriftQuery,
) -> Result<Vec<(Option<(i64, i64)>, MergedDrift)>, DriftError> {
    q.validate()?;
    let devices = select_devices(store, q.device.as_deref(), &q.select).await?;
    let groups = collect(store, &devices, q.every_ns, |r| q.contains(r)).await?;
    Ok(groups
        .into_iter()
        .map(|((_, b), acc)| (q.every_ns.map(|e| (b, b + e)), acc.merged))
        .collect())
}

/// The merged views of a query: one per bundle version (and bucket), oldest version first.
pub async fn show(
    store: &FleetStore,
    registry: &Registry,
    q: &DriftQuery,
) -> Result<Vec<DriftView>, DriftError> {
    q.validate()?;
    let devices = select_devices(store, q.device.as_deref(), &q.select).await?;
    let groups = collect(store, &devices, q.every_ns, |r| q.contains(r)).await?;
    let mut refs = References::new(registry, &q.bundle);
    let mut out = Vec::with_capacity(groups.len());
    for ((_, bucket), acc) in &groups {
        let b = q.every_ns.map(|e| (*bucket, bucket + e));
        out.push(view_of(&mut refs, acc, b).await);
    }
    Ok(out)
}

/// Per-column output of one device's record (`device drift ID`).
fn record_column(c: &ColumnDrift) -> serde_json::Value {
    let m = &c.summary.moments;
    json!({
        "name": c.summary.name,
        "count": m.count,
        "missing": c.summary.missing,
        "mean": finite(m.mean).filter(|_| m.count > 0),
        "std": finite(m.variance().sqrt()).filter(|_| m.count > 0),
        "min": finite(m.min),
        "max": finite(m.max),
        "scores": c.scores,
        "drifting": c.drifting,
    })
}

/// One device's record as the JSON line `device drift ID` prints.
pub fn record_json(seq: i64, r: &DriftRecord) -> serde_json::Value {
    json!({
        "seq": seq,
        "model": &*r.source.model,
        "bundle": &*r.source.bundle,
        "version": &*r.source.version,
        "version_number": r.source.version_number,
        "sha256": &*r.source.sha256,
        "from": rfc3339(r.start_ns),
        "to": rfc3339(r.end_ns),
        "start_ns": r.start_ns,
        "end_ns": r.end_ns,
        "windows": r.windows,
        "metric": r.metric,
        "dataset_drift": r.dataset_drift,
        "drifting": r.drifting,
        "columns": r.columns.iter().map(record_column).collect::<Vec<_>>(),
        "outputs": r.outputs.iter().map(record_column).collect::<Vec<_>>(),
        "performance": r.performance.as_ref().and_then(PerformanceOut::of),
    })
}

// ---- retrain policies ----

/// When a bucket counts as drifting (either criterion given suffices).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// Share of the reporting devices whose records in the bucket (at least half of them)
    /// had dataset drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// Merged performance (late labels) of the bucket below / above these limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_recall: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mae: Option<f64>,
}

impl PolicyRule {
    fn validate(&self) -> Result<(), DriftError> {
        if self.share.is_none()
            && self.min_accuracy.is_none()
            && self.min_recall.is_none()
            && self.max_mae.is_none()
        {
            return Err(invalid(
                "give at least one of --share, --min-accuracy, --min-recall, --max-mae",
            ));
        }
        if let Some(s) = self.share {
            if !(s > 0.0 && s <= 1.0) {
                return Err(invalid(format!("--share must be in (0, 1], got {s}")));
            }
        }
        for (k, v) in [
            ("--min-accuracy", self.min_accuracy),
            ("--min-recall", self.min_recall),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return Err(invalid(format!("{k} must be in [0, 1], got {v}")));
                }
            }
        }
        if let Some(v) = self.max_mae {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(format!(
                    "--max-mae must be a positive number, got {v}"
                )));
            }
        }
        Ok(())
    }

    fn performance_rules(&self) -> DriftRules {
        DriftPolicy {
            min_accuracy: self.min_accuracy,
            min_recall: self.min_recall,
            max_mae: self.max_mae,
            ..Default::default()
        }
        .resolve()
    }
}

/// What runs on an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// `sh -c COMMAND`, the event JSON on stdin and in `$FLEET_DRIFT_EVENT_FILE`.
    Command(String),
    /// HTTP POST of the event JSON (plain `http://` only).
    Url(String),
}

/// The evaluator's cursor of one policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct PolicyState {
    /// The bundle version evaluated last (another one starts over).
    version: Option<u64>,
    /// End of the last bucket evaluated, Unix ns.
    cursor_ns: Option<i64>,
    /// Consecutive drifting buckets so far.
    streak: u32,
    /// An event was recorded and no calm bucket came since.
    in_episode: bool,
}

/// `fleet-server drift policy set`.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub name: String,
    pub bundle: String,
    pub select: Vec<String>,
    pub every: Duration,
    pub intervals: u32,
    pub rule: PolicyRule,
    pub hook: Hook,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Creates or replaces a policy (evaluation starts over) and audits it.
pub async fn set_policy(
    store: &FleetStore,
    p: NewPolicy,
    actor: &str,
) -> Result<DriftPolicyRow, DriftError> {
    if !valid_name(&p.name) {
        return Err(invalid(
            "policy name must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    if p.bundle.is_empty() {
        return Err(invalid("a bundle name is required"));
    }
    check_selector(&p.select)?;
    if p.every < Duration::from_secs(1) {
        return Err(invalid("--every must be at least 1s"));
    }
    if p.intervals < 1 {
        return Err(invalid("--intervals must be at least 1"));
    }
    p.rule.validate()?;
    match &p.hook {
        Hook::Command(c) if c.trim().is_empty() => return Err(invalid("--hook-command is empty")),
        Hook::Url(u) => {
            parse_http_url(u)?;
        }
        Hook::Command(_) => {}
    }
    let every_ms =
        i64::try_from(p.every.as_millis()).map_err(|_| invalid("--every is too long"))?;
    let row = DriftPolicyRow {
        name: p.name,
        bundle: p.bundle,
        selector: p.select,
        every_ms,
        intervals: i64::from(p.intervals),
        rule: enc(&p.rule),
        hook: enc(&p.hook),
        state: enc(&PolicyState::default()),
        created_by: actor.to_string(),
        updated_at: now_ms(),
    };
    store.set_drift_policy(&row).await?;
    store
        .audit(
            actor,
            "drift.policy.set",
            &row.name,
            &format!(
                "bundle {} select [{}] every {} intervals {} rule {} hook {}",
                row.bundle,
                row.selector.join(","),
                fmt_duration(every_ms * 1_000_000),
                row.intervals,
                row.rule,
                row.hook
            ),
        )
        .await?;
    Ok(row)
}

/// JSON of one of our own small values (maps with string keys, finite or null floats:
/// serializing cannot fail).
fn enc<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub async fn remove_policy(store: &FleetStore, name: &str, actor: &str) -> Result<(), DriftError> {
    if !store.remove_drift_policy(name).await? {
        return Err(invalid(format!("no drift policy `{name}`")));
    }
    store.audit(actor, "drift.policy.remove", name, "").await?;
    Ok(())
}

/// A bucket's verdict.
#[derive(Debug, Clone, Serialize)]
struct BucketVerdict {
    from: String,
    to: String,
    devices: usize,
    drifting_devices: usize,
    share: f64,
    /// Performance limits breached: (metric, value, limit).
    performance_breaches: Vec<(String, f64, f64)>,
    drifting: bool,
}

fn verdict(acc: &Acc, rule: &PolicyRule, from: i64, to: i64) -> BucketVerdict {
    let devices = acc.per_device.len();
    // A device drifts in the bucket when at least half of its records there had dataset
    // drift (one noisy interval among many does not count).
    let drifting_devices = acc
        .per_device
        .values()
        .filter(|(n, k)| *n > 0 && 2 * k >= *n)
        .count();
    let share = if devices == 0 {
        0.0
    } else {
        drifting_devices as f64 / devices as f64
    };
    let breaches: Vec<(String, f64, f64)> = acc
        .merged
        .performance
        .checks(&rule.performance_rules())
        .into_iter()
        .filter(|c| c.3)
        .map(|(m, v, l, _)| (m.to_string(), v, l))
        .collect();
    let drifting = rule.share.is_some_and(|s| devices > 0 && share >= s) || !breaches.is_empty();
    BucketVerdict {
        from: rfc3339(from),
        to: rfc3339(to),
        devices,
        drifting_devices,
        share,
        performance_breaches: breaches,
        drifting,
    }
}

/// An event recorded by an evaluation, with the hook to run for it.
#[derive(Debug, Clone)]
pub struct Fired {
    pub event: DriftEventRow,
    pub hook: Hook,
}

/// Evaluates one policy up to `now_ns`: walks the completed buckets since its cursor and
/// records an event when `intervals` consecutive buckets drift and no episode is open.
/// The new cursor and the events are written compare-and-set; `Ok(vec![])` when another
/// evaluator moved the cursor meanwhile.
pub async fn evaluate_policy(
    store: &FleetStore,
    registry: &Registry,
    p: &DriftPolicyRow,
    now_ns: i64,
) -> Result<Vec<Fired>, DriftError> {
    let hook: Hook = serde_json::from_str(&p.hook)
        .map_err(|e| invalid(format!("policy {}: stored hook: {e}", p.name)))?;
    let rule: PolicyRule = serde_json::from_str(&p.rule)
        .map_err(|e| invalid(format!("policy {}: stored rule: {e}", p.name)))?;
    let mut st: PolicyState = serde_json::from_str(&p.state).unwrap_or_default();
    let every = p.every_ms.max(1000).saturating_mul(1_000_000);
    let intervals = u32::try_from(p.intervals.max(1)).unwrap_or(u32::MAX);
    let span = every.saturating_mul(i64::from(intervals));
    // Buckets [k·every, (k+1)·every) are evaluated once their end is `grace` in the past,
    // so records uploaded shortly after an interval closes still count.
    let grace = every.min(SETTLE_NS);
    let done_until = now_ns.saturating_sub(grace).div_euclid(every) * every;
    // A new policy looks back `intervals` buckets (drift going on now), not at all history.
    let start = st
        .cursor_ns
        .unwrap_or_else(|| done_until.saturating_sub(span));
    if start >= done_until {
        return Ok(vec![]);
    }
    let devices = select_devices(store, None, &p.selector).await?;
    let names: BTreeMap<&str, &str> = devices
        .iter()
        .map(|d| (d.id.as_str(), d.name.as_str()))
        .collect();
    // Earlier buckets too: an event's merged view may reach back into a streak that began
    // in an earlier evaluation.
    let look_from = start.saturating_sub(span - every);
    let groups = collect(store, &devices, Some(every), |r| {
        *r.source.bundle == *p.bundle && r.end_ns >= look_from && r.end_ns < done_until
    })
    .await?;
    // The latest version with records in the buckets to evaluate.
    let version = groups
        .keys()
        .filter(|(_, b)| *b >= start)
        .map(|(v, _)| *v)
        .max();
    if version.is_some() && version != st.version {
        st = PolicyState {
            version,
            cursor_ns: st.cursor_ns,
            ..Default::default()
        };
    }
    let mut events = Vec::new();
    let mut prev_end = start;
    if let Some(v) = version {
        let mut refs = References::new(registry, &p.bundle);
        for ((_, from), acc) in groups.range((v, start)..(v, done_until)) {
            let to = from + every;
            if prev_end != *from {
                // Buckets without records in between: not consecutive.
                st.streak = 0;
            }
            prev_end = to;
            if !verdict(acc, &rule, *from, to).drifting {
                st.streak = 0;
                st.in_episode = false;
                continue;
            }
            st.streak = st.streak.saturating_add(1);
            if st.in_episode || st.streak < intervals {
                continue;
            }
            st.in_episode = true;
            // The event covers the last `intervals` (drifting, consecutive) buckets.
            let ev_from = to - span;
            let mut merged = Acc::default();
            let mut buckets = Vec::new();
            for ((_, b), a) in groups.range((v, ev_from)..(v, to)) {
                buckets.push(verdict(a, &rule, *b, b + every));
                if let Err(e) = merged.absorb(a) {
                    tracing::warn!(policy = %p.name, bucket = b, "bucket not merged: {e}");
                }
            }
            events.push(
                event_of(
                    p,
                    &mut refs,
                    &merged,
                    (ev_from, to, every),
                    &buckets,
                    &names,
                )
                .await,
            );
        }
    }
    if prev_end != done_until {
        // Trailing buckets without records break a streak.
        st.streak = 0;
    }
    st.cursor_ns = Some(done_until);
    let new_state = serde_json::to_string(&st).unwrap_or_default();
    if !store
        .advance_drift_policy(&p.name, &p.state, &new_state, &events)
        .await?
    {
        tracing::debug!(policy = %p.name, "another evaluator advanced this policy");
        return Ok(vec![]);
    }
    Ok(events
        .into_iter()
        .map(|event| Fired {
            event,
            hook: hook.clone(),
        })
        .collect())
}

async fn event_of(
    p: &DriftPolicyRow,
    refs: &mut References<'_>,
    acc: &Acc,
    (from, to, every): (i64, i64, i64),
    buckets: &[BucketVerdict],
    names: &BTreeMap<&str, &str>,
) -> DriftEventRow {
    let m = &acc.merged;
    let (cols, outs, note) = refs.score(m).await;
    let drifting: Vec<serde_json::Value> = if note.is_none() {
        cols.iter()
            .chain(&outs)
            .filter(|c| c.drifting)
            .map(|c| serde_json::to_value(ColumnOut::of(c)).unwrap_or_default())
            .collect()
    } else {
        // Unscored here: the columns the devices flagged, with the merged moments.
        cols.iter()
            .chain(&outs)
            .filter(|c| acc.flagged.contains_key(&c.name))
            .map(|c| {
                let mut v = serde_json::to_value(ColumnOut::of(c)).unwrap_or_default();
                v["flagged_records"] = acc.flagged.get(&c.name).copied().unwrap_or(0).into();
                v
            })
            .collect()
    };
    let column_names: Vec<&str> = drifting.iter().filter_map(|c| c["name"].as_str()).collect();
    let devices: Vec<serde_json::Value> = m
        .devices
        .iter()
        .map(|d| json!({"id": d, "name": names.get(d.as_str()).copied().unwrap_or("")}))
        .collect();
    let id = format!("de{:x}{:04x}", now_ms(), fastrand::u16(..));
    let query = DriftQuery {
        bundle: p.bundle.clone(),
        version_number: Some(m.version_number),
        device: None,
        select: p.selector.clone(),
        since_ns: Some(from),
        until_ns: Some(to),
        every_ns: Some(every),
    };
    let body = json!({
        "event": id,
        "policy": p.name,
        "bundle": {"name": p.bundle, "version_number": m.version_number},
        "select": p.selector,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "buckets": buckets,
        "devices": devices,
        "drifting_columns": drifting,
        "scored": note.is_none(),
        "note": note,
        "performance": PerformanceOut::of(&m.performance),
        "more": {"api": query.api_path(), "cli": query.cli()},
    });
    DriftEventRow {
        id,
        policy: p.name.clone(),
        bundle: p.bundle.clone(),
        version_number: i64::try_from(m.version_number).unwrap_or(i64::MAX),
        from_ns: from,
        to_ns: to,
        devices: serde_json::to_string(&m.devices).unwrap_or_default(),
        columns: serde_json::to_string(&column_names).unwrap_or_default(),
        body: body.to_string(),
        created_at: now_ms(),
        hook_status: "pending".into(),
        hook_detail: String::new(),
    }
}

/// Evaluates every policy, runs the hooks of new events and records how they went.
/// Returns the events recorded. A failing policy is logged and does not stop the others.
pub async fn evaluate_all(
    store: &FleetStore,
    registry: &Registry,
    data_dir: &Path,
    now_ns: i64,
) -> Result<Vec<DriftEventRow>, DriftError> {
    let mut out = Vec::new();
    for p in store.drift_policies().await? {
        let fired = match evaluate_policy(store, registry, &p, now_ns).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(policy = %p.name, "drift policy evaluation failed: {e}");
                continue;
            }
        };
        for mut f in fired {
            tracing::warn!(policy = %p.name, event = %f.event.id, bundle = %f.event.bundle,
                version_number = f.event.version_number, columns = %f.event.columns,
                "drift retrain event");
            let (status, detail) = run_hook(&f.hook, &f.event, data_dir).await;
            if status != "ok" {
                tracing::error!(policy = %p.name, event = %f.event.id, %status, "drift hook: {detail}");
            }
            store
                .set_drift_event_hook(&f.event.id, &status, &detail)
                .await?;
            f.event.hook_status = status;
            f.event.hook_detail = detail;
            out.push(f.event);
        }
    }
    Ok(out)
}

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// Runs a hook for an event: (status `ok` | `failed` | `timeout` | `error`, detail).
pub async fn run_hook(hook: &Hook, event: &DriftEventRow, data_dir: &Path) -> (String, String) {
    match hook {
        Hook::Command(cmd) => run_command(cmd, event, data_dir).await,
        Hook::Url(url) => {
            match tokio::time::timeout(HOOK_TIMEOUT, post_json(url, &event.body)).await {
                Ok(Ok((status, body))) if (200..300).contains(&status) => {
                    ("ok".into(), format!("HTTP {status}; {}", tail(&body, 2000)))
                }
                Ok(Ok((status, body))) => (
                    "failed".into(),
                    format!("HTTP {status}; {}", tail(&body, 2000)),
                ),
                Ok(Err(e)) => ("error".into(), e),
                Err(_) => (
                    "timeout".into(),
                    format!("no answer within {}s", HOOK_TIMEOUT.as_secs()),
                ),
            }
        }
    }
}

async fn run_command(cmd: &str, event: &DriftEventRow, data_dir: &Path) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let dir = data_dir.join("drift-events");
    let file = dir.join(format!("{}.json", event.id));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| crate::registry::write_atomic(&file, event.body.as_bytes()));
    if let Err(e) = written {
        return (
            "error".into(),
            format!("cannot write {}: {e}", file.display()),
        );
    }
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FLEET_DRIFT_EVENT_FILE", &file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return ("error".into(), format!("cannot start sh: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let body = event.body.clone();
        // On its own task: a command that does not read stdin must not block us.
        tokio::spawn(async move {
            let _ = stdin.write_all(body.as_bytes()).await;
        });
    }
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let stderr = tail(&String::from_utf8_lossy(&out.stderr), 2000);
            let detail = format!("exit status {}; stderr: {stderr}", out.status);
            (
                if out.status.success() { "ok" } else { "failed" }.into(),
                detail,
            )
        }
        Ok(Err(e)) => ("error".into(), format!("waiting for the command: {e}")),
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => (
            "timeout".into(),
            format!("killed after {}s", HOOK_TIMEOUT.as_secs()),
        ),
    }
}

/// `http://host[:port][/path]` → (host, port, path).
fn parse_http_url(url: &str) -> Result<(String, u16, String), DriftError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(format!(
            "hook URL `{url}` must be plain http:// (https hooks are not supported yet)"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad_port = |p: &str| invalid(format!("hook URL `{url}`: bad port `{p}`"));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| invalid(format!("hook URL `{url}`: unclosed [")))?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad_port(p))?,
            None => 80,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| bad_port(p))?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(invalid(format!("hook URL `{url}` has no host")));
    }
    Ok((host, port, path.to_string()))
}

/// POSTs `body` as JSON; (status, response body).
async fn post_json(url: &str, body: &str) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Full};
    let (host, port, path) = parse_http_url(url).map_err(|e| e.to_string())?;
    let addr = format!("{host}:{port}");
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(hyper::body::Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("POST {url}: reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// The evaluation task of `serve`: every `every` until `stop`.
pub async fn evaluation_task(
    store: FleetStore,
    registry: Registry,
    data_dir: std::path::PathBuf,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = evaluate_all(&store, &registry, &data_dir, now_ns()).await {
            tracing::error!("drift policy evaluation failed: {e}");
        }
    }
}
