//! Drift views: which records a query covers, merged per bundle version (and time bucket),
//! scored against the registry's reference; one device's records as JSON.

use std::collections::BTreeMap;

use edge_wire::bundle::manifest::Reference;
use edge_wire::drift::fleet::{ColumnView, MergedDrift};
use edge_wire::drift::{ColumnDrift, DriftRecord, DriftRules, Performance};
use serde::{Deserialize, Serialize};

use super::*;
use crate::registry::Registry;
use crate::store::{Device, FleetStore};

/// What to show: one bundle, optionally one version, one device or a label group (or the
/// whole fleet), a time range on the records' end time, and optional buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriftQuery {
    /// The bundle name (required).
    pub bundle: String,
    /// Only this version number (default: every version, one view each).
    pub version_number: Option<u64>,
    /// Only this device's records (not with `select`).
    pub device: Option<String>,
    /// `key=value` labels a device must all carry (empty, and no `device`: the whole fleet).
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

    /// Checks the query: a bundle, not both a device and selectors, valid selectors, `since`
    /// before `until`. A problem is [`DriftError::Invalid`].
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

    fn scope(&self) -> Scope<'_> {
        Scope {
            bundle: &self.bundle,
            version_number: self.version_number,
            since_ns: self.since_ns.unwrap_or(i64::MIN),
            until_ns: self.until_ns.unwrap_or(i64::MAX),
        }
    }

    /// The operator API path and query string that shows this.
    pub fn api_path(&self) -> String {
        let q: Vec<String> = self
            .to_pairs()
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        format!("{API_PATH}?{}", q.join("&"))
    }

    /// The query as URL query pairs ([`Self::from_pairs`] reads them back).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut p = vec![("bundle".to_string(), self.bundle.clone())];
        if let Some(v) = self.version_number {
            p.push(("version_number".into(), v.to_string()));
        }
        if let Some(d) = &self.device {
            p.push(("device".into(), d.clone()));
        }
        p.extend(
            self.select
                .iter()
                .map(|s| ("select".to_string(), s.clone())),
        );
        if let Some(t) = self.since_ns {
            p.push(("since".into(), rfc3339(t)));
        }
        if let Some(t) = self.until_ns {
            p.push(("until".into(), rfc3339(t)));
        }
        if let Some(e) = self.every_ns {
            p.push(("every".into(), fmt_duration(e)));
        }
        p
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

/// `s` percent-encoded for a URL query value (everything but `A-Z a-z 0-9 - _ . ~`).
pub fn percent_encode(s: &str) -> String {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnOut {
    /// Column name (feature, or output `name[k]`).
    pub name: String,
    /// Values summarized.
    pub count: u64,
    /// Values missing (non-finite, bad quality, skipped windows).
    pub missing: u64,
    /// Mean (`None` without values).
    pub mean: Option<f64>,
    /// Standard deviation (`None` without values).
    pub std: Option<f64>,
    /// Smallest value (`None` without values).
    pub min: Option<f64>,
    /// Largest value (`None` without values).
    pub max: Option<f64>,
    /// Median from the merged sketch.
    pub p50: Option<f64>,
    /// 99th percentile from the merged sketch.
    pub p99: Option<f64>,
    /// Population stability index against the reference (`None`: not scored).
    pub psi: Option<f64>,
    /// Jensen-Shannon distance, base 2: 0 (same) … 1 (disjoint).
    pub js: Option<f64>,
    /// Kolmogorov-Smirnov statistic at the reference bin edges.
    pub ks: Option<f64>,
    /// Wasserstein-1 distance divided by the reference standard deviation.
    pub w1_std: Option<f64>,
    /// Whether the version's drift policy says it drifts.
    pub drifting: bool,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl ColumnOut {
    pub(super) fn of(c: &ColumnView) -> ColumnOut {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceOut {
    /// Predictions resolved against a label.
    pub labelled: u64,
    /// Predictions whose label did not come within the horizon.
    pub unlabelled: u64,
    /// Classification: share of labelled predictions right.
    pub accuracy: Option<f64>,
    /// Classification: share of predicted positives that were positive.
    pub precision: Option<f64>,
    /// Classification: share of positives predicted positive.
    pub recall: Option<f64>,
    /// Regression: mean absolute error of the score.
    pub mae: Option<f64>,
}

impl PerformanceOut {
    pub(super) fn of(p: &Performance) -> Option<PerformanceOut> {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftView {
    /// Bundle name.
    pub bundle: String,
    /// Bundle version number.
    pub version_number: u64,
    /// Time the merged records cover (earliest start, latest end).
    pub from: String,
    /// End of the time the merged records cover (RFC 3339).
    pub to: String,
    /// The bucket (with `every`): records whose end falls in [bucket_from, bucket_to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_from: Option<String>,
    /// End of the bucket (RFC 3339, exclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_to: Option<String>,
    /// Ids of the devices whose records are merged here, sorted.
    pub devices: Vec<String>,
    /// Drift records merged.
    pub records: u64,
    /// Windows those records summarize.
    pub windows: u64,
    /// Records the devices flagged with dataset drift.
    pub dataset_drift_records: u64,
    /// Scored against the bundle's reference (the registry has this version); otherwise
    /// only moments and quantiles, and `note` says why.
    pub scored: bool,
    /// Why the view is not scored (the registry does not have this version, or cannot read
    /// it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Feature columns.
    pub columns: Vec<ColumnOut>,
    /// Model outputs (`name[k]`), when the bundle has output reference statistics.
    pub outputs: Vec<ColumnOut>,
    /// Late-label performance over the merged records (`None` without labels).
    pub performance: Option<PerformanceOut>,
}

/// Why one bucket's merge could not take in another's ([`Acc::absorb`]).
#[derive(Debug, thiserror::Error)]
pub(super) enum AbsorbError {
    #[error("another bundle version")]
    OtherVersion,
    #[error(transparent)]
    Summary(#[from] edge_wire::drift::DriftError),
}

/// Why a bundle version's views are not scored: the note shown with them.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unscored {
    #[error("version number {0} is out of range")]
    VersionOutOfRange(u64),
    #[error("the registry has no {bundle} #{version}: unscored (moments and quantiles only)")]
    NotInRegistry { bundle: String, version: u64 },
    #[error("cannot read {bundle} #{version} from the registry ({source}): unscored")]
    Unreadable {
        bundle: String,
        version: u64,
        source: RegistryError,
    },
}

/// One (version, bucket)'s records merged, plus what [`MergedDrift`] does not keep.
#[derive(Debug, Clone, Default)]
pub(super) struct Acc {
    pub(super) merged: MergedDrift,
    /// Per device: (records, records with dataset drift).
    pub(super) per_device: BTreeMap<String, (u64, u64)>,
    /// Column names the devices flagged drifting, with how many records did.
    pub(super) flagged: BTreeMap<String, u64>,
    /// Per device: whether its records of this bucket, merged and scored against the
    /// reference, have dataset drift (only when `collect` was given the references and the
    /// registry has this version).
    pub(super) device_drift: BTreeMap<String, bool>,
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

    pub(super) fn absorb(&mut self, o: &Acc) -> Result<(), AbsorbError> {
        // MergedDrift has no merge of two merges: re-add through its summaries would lose
        // the per-record counts, so merge the parts by hand with the same rules.
        if self.merged.records == 0 {
            *self = o.clone();
            return Ok(());
        }
        if o.merged.bundle != self.merged.bundle
            || o.merged.version_number != self.merged.version_number
        {
            return Err(AbsorbError::OtherVersion);
        }
        for (name, s) in &o.merged.columns {
            match self.merged.columns.get_mut(name) {
                Some(m) => m.merge(s)?,
                None => {
                    self.merged.columns.insert(name.clone(), s.clone());
                }
            }
        }
        for (name, s) in &o.merged.outputs {
            match self.merged.outputs.get_mut(name) {
                Some(m) => m.merge(s)?,
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
        // A device's verdicts of two buckets: drifting if either was (the policy scores
        // buckets one by one; this only keeps the event body's device list informative).
        for (d, x) in &o.device_drift {
            *self.device_drift.entry(d.clone()).or_default() |= *x;
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
        None => Ok(store.devices_with_labels(select).await?),
    }
}

/// Which drift records to read: one bundle (optionally one version), records ending in
/// `[since_ns, until_ns)`. Found through the drift index.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scope<'a> {
    pub bundle: &'a str,
    pub version_number: Option<u64>,
    pub since_ns: i64,
    pub until_ns: i64,
}

/// Every drift record of `devices` in `scope`, bucketed: key (version, bucket start).
///
/// With `refs`, each device's records of a (version, bucket) are also merged on their own and
/// scored against the version's reference: [`Acc::device_drift`] (bucket-level verdicts, so a
/// coarser bucket smooths out one noisy interval instead of counting its flag).
pub(super) async fn collect(
    store: &FleetStore,
    devices: &[Device],
    every_ns: Option<i64>,
    scope: Scope<'_>,
    mut refs: Option<&mut References<'_>>,
) -> Result<BTreeMap<(u64, i64), Acc>, DriftError> {
    let version = match scope.version_number.map(i64::try_from) {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return Ok(BTreeMap::new()),
        None => None,
    };
    let mut out: BTreeMap<(u64, i64), Acc> = BTreeMap::new();
    for d in devices {
        let mut after = 0;
        let mut undecodable = 0u64;
        // This device's records per (version, bucket), when bucket verdicts are wanted.
        let mut mine: BTreeMap<(u64, i64), MergedDrift> = BTreeMap::new();
        loop {
            let page = store
                .drift_records(
                    &d.id,
                    scope.bundle,
                    version,
                    scope.since_ns,
                    scope.until_ns,
                    after,
                    PAGE,
                )
                .await?;
            let Some(last) = page.last().map(|r| r.0) else {
                break;
            };
            after = last;
            for (_, body) in &page {
                let rec = match decode(body) {
                    Ok(r) => r,
                    Err(_) => {
                        undecodable += 1;
                        continue;
                    }
                };
                let bucket = every_ns.map_or(0, |e| rec.end_ns.div_euclid(e) * e);
                let key = (rec.source.version_number, bucket);
                if out.entry(key).or_default().add(&d.id, &rec) && refs.is_some() {
                    // `add` above merged it once already; a failure here was logged there.
                    let _ = mine.entry(key).or_default().add(&d.id, &rec);
                }
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        if undecodable > 0 {
            tracing::warn!(device = %d.id, undecodable, "drift records that do not decode were skipped");
        }
        if let Some(refs) = refs.as_deref_mut() {
            for (key, m) in mine {
                if let Ok((reference, rules)) = refs.get(key.0).await {
                    let (cols, _) = m.scored(reference, rules);
                    let drift = edge_wire::drift::fleet::dataset_drift(&cols, rules);
                    if let Some(acc) = out.get_mut(&key) {
                        acc.device_drift.insert(d.id.clone(), drift);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Reference and rules per bundle version, read from the registry once.
pub(super) struct References<'a> {
    registry: &'a Registry,
    bundle: String,
    cache: BTreeMap<u64, Result<(Reference, DriftRules), Unscored>>,
}

impl<'a> References<'a> {
    pub(super) fn new(registry: &'a Registry, bundle: &str) -> Self {
        References {
            registry,
            bundle: bundle.to_string(),
            cache: BTreeMap::new(),
        }
    }

    pub(super) async fn get(&mut self, version: u64) -> &Result<(Reference, DriftRules), Unscored> {
        if !self.cache.contains_key(&version) {
            let r = match i64::try_from(version) {
                Err(_) => Err(Unscored::VersionOutOfRange(version)),
                Ok(vn) => match self.registry.manifest(&self.bundle, vn).await {
                    Ok(Some(m)) => Ok((m.reference.clone(), m.drift.resolve())),
                    Ok(None) => Err(Unscored::NotInRegistry {
                        bundle: self.bundle.clone(),
                        version,
                    }),
                    Err(source) => Err(Unscored::Unreadable {
                        bundle: self.bundle.clone(),
                        version,
                        source,
                    }),
                },
            };
            self.cache.insert(version, r);
        }
        &self.cache[&version]
    }

    /// The merged columns and outputs, scored when the reference is known.
    pub(super) async fn score(
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
                (c, o, Some(note.to_string()))
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
    let groups = collect(store, &devices, q.every_ns, q.scope(), None).await?;
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
    let groups = collect(store, &devices, q.every_ns, q.scope(), None).await?;
    let mut refs = References::new(registry, &q.bundle);
    let mut out = Vec::with_capacity(groups.len());
    for ((_, bucket), acc) in &groups {
        let b = q.every_ns.map(|e| (*bucket, bucket + e));
        out.push(view_of(&mut refs, acc, b).await);
    }
    Ok(out)
}

/// One column of a device's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordColumnOut {
    /// Column name (feature, or output `name[k]`).
    pub name: String,
    /// Values summarized.
    pub count: u64,
    /// Values missing (non-finite, bad quality, skipped windows).
    pub missing: u64,
    /// Mean (`None` without values).
    pub mean: Option<f64>,
    /// Standard deviation (`None` without values).
    pub std: Option<f64>,
    /// Smallest value (`None` without values).
    pub min: Option<f64>,
    /// Largest value (`None` without values).
    pub max: Option<f64>,
    /// Against the bundle's reference, as the device scored it.
    pub scores: Option<edge_wire::drift::DriftScores>,
    /// Whether the device flagged it drifting.
    pub drifting: bool,
    /// Values per reference histogram bin (the reference's `bin_edges`).
    pub bins: Vec<u64>,
}

impl RecordColumnOut {
    fn of(c: &ColumnDrift) -> RecordColumnOut {
        let m = &c.summary.moments;
        RecordColumnOut {
            name: c.summary.name.clone(),
            count: m.count,
            missing: c.summary.missing,
            mean: finite(m.mean).filter(|_| m.count > 0),
            std: finite(m.variance().sqrt()).filter(|_| m.count > 0),
            min: finite(m.min),
            max: finite(m.max),
            scores: c.scores,
            drifting: c.drifting,
            bins: c.summary.bins.clone(),
        }
    }
}

/// One device's drift record (`device drift ID` prints one per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftRecordOut {
    /// Sequence number in the device's `drift` stream.
    pub seq: i64,
    /// The `[[models]]` name on the device.
    pub model: String,
    /// Bundle name.
    pub bundle: String,
    /// Bundle semantic version.
    pub version: String,
    /// Bundle version number.
    pub version_number: u64,
    /// SHA-256 of the bundle file (hex).
    pub sha256: String,
    /// Interval start (RFC 3339).
    pub from: String,
    /// Interval end (RFC 3339).
    pub to: String,
    /// Interval start, Unix ns.
    pub start_ns: i64,
    /// Interval end, Unix ns.
    pub end_ns: i64,
    /// Windows summarized.
    pub windows: u64,
    /// The metric the drifting flags were decided on.
    pub metric: edge_wire::drift::DriftMetric,
    /// Whether enough of the decisive feature columns drift (the policy's `dataset_share`).
    pub dataset_drift: bool,
    /// Names of the drifting columns (features, then outputs).
    pub drifting: Vec<String>,
    /// Feature columns.
    pub columns: Vec<RecordColumnOut>,
    /// Model outputs (`name[k]`), when the bundle has output reference statistics.
    pub outputs: Vec<RecordColumnOut>,
    /// Late-label performance in the interval (`None` without labels).
    pub performance: Option<PerformanceOut>,
    /// A shadow challenger's comparison with the serving bundle over the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<edge_wire::drift::ShadowSummary>,
}

impl DriftRecordOut {
    /// The API shape of record `seq` of a device's `drift` stream.
    pub fn of(seq: i64, r: &DriftRecord) -> DriftRecordOut {
        DriftRecordOut {
            seq,
            model: r.source.model.to_string(),
            bundle: r.source.bundle.to_string(),
            version: r.source.version.to_string(),
            version_number: r.source.version_number,
            sha256: r.source.sha256.to_string(),
            from: rfc3339(r.start_ns),
            to: rfc3339(r.end_ns),
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            windows: r.windows,
            metric: r.metric,
            dataset_drift: r.dataset_drift,
            drifting: r.drifting.clone(),
            columns: r.columns.iter().map(RecordColumnOut::of).collect(),
            outputs: r.outputs.iter().map(RecordColumnOut::of).collect(),
            performance: r.performance.as_ref().and_then(PerformanceOut::of),
            shadow: r.shadow.clone(),
        }
    }
}

/// One device's record as the JSON line `device drift ID` prints.
pub fn record_json(seq: i64, r: &DriftRecord) -> serde_json::Value {
    serde_json::to_value(DriftRecordOut::of(seq, r)).unwrap_or_default()
}
