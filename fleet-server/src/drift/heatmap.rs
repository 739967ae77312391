//! The drift heatmap: for one bundle version, the newest drift record of each device (or
//! the newest records of a label group's devices, merged), per feature column, the drift
//! metric's value and a band. Found through the drift index: one record decoded per device.
//!
//! Bands: `drift` when the column drifts under the bundle's rules (the metric at or past the
//! column's threshold on enough values), `watch` at half the threshold or more, `calm`
//! below, `no_data` when the column was not scored (too few values, or no reference).

use std::collections::BTreeMap;

use edge_wire::drift::fleet::MergedDrift;
use edge_wire::drift::record::metric_value;
use edge_wire::drift::{DriftMetric, DriftRules, DriftScores};
use serde::{Deserialize, Serialize};

use super::*;
use crate::registry::Registry;
use crate::store::FleetStore;

/// How the heatmap's rows are formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeatmapGroup {
    /// One row per device (and model, when a device runs the bundle twice).
    Device,
    /// One row per value of this label key (`site` groups `site=a`, `site=b`, …).
    Label(String),
}

impl HeatmapGroup {
    /// `device` or `label:KEY`.
    pub fn parse(s: &str) -> Result<HeatmapGroup, DriftError> {
        match s {
            "device" => Ok(HeatmapGroup::Device),
            _ => match s.strip_prefix("label:") {
                Some(k) if !k.is_empty() && !k.contains(['=', ',']) => {
                    Ok(HeatmapGroup::Label(k.to_string()))
                }
                _ => Err(invalid(format!(
                    "group_by `{s}` must be `device` or `label:KEY` (e.g. label:site)"
                ))),
            },
        }
    }

    /// The query parameter form: `device` or `label:KEY` ([`HeatmapGroup::parse`] reads it).
    pub fn as_param(&self) -> String {
        match self {
            HeatmapGroup::Device => "device".into(),
            HeatmapGroup::Label(k) => format!("label:{k}"),
        }
    }
}

/// What a heatmap shows: one bundle version, rows by device or label group.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapQuery {
    /// Bundle name (required).
    pub bundle: String,
    /// Default: the newest version with drift records.
    pub version_number: Option<u64>,
    /// How rows are formed.
    pub group_by: HeatmapGroup,
    /// `key=value` labels the devices must carry.
    pub select: Vec<String>,
    /// Only records ending at or after this (Unix ns).
    pub since_ns: i64,
    /// At most this many rows (the most drifting first).
    pub limit: usize,
}

/// How far a cell is from drifting (module doc). Ordered `no_data` < `calm` < `watch` <
/// `drift`: a row's band is its worst cell's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// Not scored: too few values, or no reference.
    NoData,
    /// Below half the column's threshold.
    Calm,
    /// At least half the threshold, not drifting.
    Watch,
    /// Drifting under the bundle's rules.
    Drift,
}

impl Band {
    /// The band's word in the API and the console (`no_data`, `calm`, `watch`, `drift`).
    pub fn as_str(self) -> &'static str {
        match self {
            Band::NoData => "no_data",
            Band::Calm => "calm",
            Band::Watch => "watch",
            Band::Drift => "drift",
        }
    }

    fn of(
        scores: Option<&DriftScores>,
        drifting: bool,
        rules: &DriftRules,
        column: &str,
    ) -> (Option<f64>, Band) {
        let Some(s) = scores else {
            return (None, Band::NoData);
        };
        let v = metric_value(rules.metric, s);
        let band = if drifting {
            Band::Drift
        } else if s.count < rules.min_count {
            Band::NoData
        } else if v >= rules.threshold_for(column) / 2.0 {
            Band::Watch
        } else {
            Band::Calm
        };
        (v.is_finite().then_some(v), band)
    }
}

/// One column of one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatCell {
    /// The metric's value (absent when not scored).
    pub value: Option<f64>,
    /// Its band.
    pub band: Band,
}

/// One row: a device (and model), or a label group's devices merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatRow {
    /// Device id (`id/model` when a device runs the bundle in two models) or label value.
    pub key: String,
    /// Device name, or `key=value` of the group.
    pub name: String,
    /// Ids of the devices the row merges (one for a device row).
    pub devices: Vec<String>,
    /// End of the newest record merged (RFC 3339).
    pub to: String,
    /// Whether the row's records, merged, have dataset drift.
    pub dataset_drift: bool,
    /// The worst band of the row.
    pub band: Band,
    /// One per column of [`Heatmap::columns`].
    pub cells: Vec<HeatCell>,
}

/// The heatmap of one bundle version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// Bundle name.
    pub bundle: String,
    /// The version shown: the one asked for, else the newest with drift records (`None`: none has).
    pub version_number: Option<u64>,
    /// Every version with drift records: (version number, records, devices).
    pub versions: Vec<(u64, i64, i64)>,
    /// The metric the cells show (the bundle's drift rules).
    pub metric: DriftMetric,
    /// How rows are formed.
    pub group_by: HeatmapGroup,
    /// Start of the records' range (RFC 3339).
    pub since: String,
    /// Feature column names, in the bundle's order.
    pub columns: Vec<String>,
    /// Per column, the threshold of `metric` that makes it drift.
    pub thresholds: Vec<f64>,
    /// The rows, most drifting first, at most `limit`.
    pub rows: Vec<HeatRow>,
    /// Rows before `limit` cut them.
    pub total_rows: usize,
    /// Why cells are unscored, when they are.
    pub note: Option<String>,
}

/// Builds the heatmap of a query.
pub async fn build_heatmap(
    store: &FleetStore,
    registry: &Registry,
    q: &HeatmapQuery,
) -> Result<Heatmap, DriftError> {
    if q.bundle.is_empty() {
        return Err(invalid("a bundle name is required (bundle=NAME)"));
    }
    check_selector(&q.select)?;
    let versions: Vec<(u64, i64, i64)> = store
        .drift_versions()
        .await?
        .into_iter()
        .filter(|(b, ..)| *b == q.bundle)
        .filter_map(|(_, v, n, d)| Some((u64::try_from(v).ok()?, n, d)))
        .collect();
    let version = q
        .version_number
        .or_else(|| versions.iter().map(|v| v.0).max());
    let mut out = Heatmap {
        bundle: q.bundle.clone(),
        version_number: version,
        versions,
        metric: DriftMetric::default(),
        group_by: q.group_by.clone(),
        since: rfc3339(q.since_ns),
        columns: Vec::new(),
        thresholds: Vec::new(),
        rows: Vec::new(),
        total_rows: 0,
        note: None,
    };
    let Some(version) = version else {
        out.note = Some(format!("no drift records of {} yet", q.bundle));
        return Ok(out);
    };
    let vn = i64::try_from(version).map_err(|_| invalid("version number out of range"))?;
    let manifest = match registry.manifest(&q.bundle, vn).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(bundle = %q.bundle, version, "drift heatmap without reference: {e}");
            None
        }
    };
    let (reference, rules) = match &manifest {
        Some(m) => (m.reference.clone(), m.drift.resolve()),
        None => {
            out.note = Some(format!(
                "the registry has no {} #{version}: group rows are unscored",
                q.bundle
            ));
            (Default::default(), DriftRules::default())
        }
    };
    out.metric = rules.metric;
    // Device rows: only the most drifting `limit` records are read (ranked by the index).
    // Label groups: every device's newest record is merged into its group.
    let (devices, latest, total_device_rows) = match &q.group_by {
        HeatmapGroup::Device => {
            let (latest, total) = store
                .latest_drift_ranked(&q.bundle, vn, q.since_ns, &q.select, q.limit as i64)
                .await?;
            let mut devices = Vec::new();
            for id in latest.iter().map(|r| r.device_id.as_str()) {
                if let Some(d) = store.device(id).await? {
                    devices.push(d);
                }
            }
            (devices, latest, Some(total))
        }
        HeatmapGroup::Label(_) => {
            let devices = store.devices_with_labels(&q.select).await?;
            let latest = store.latest_drift(&q.bundle, vn, q.since_ns).await?;
            (devices, latest, None)
        }
    };
    let by_id: BTreeMap<&str, &crate::store::Device> =
        devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let latest: Vec<_> = latest
        .into_iter()
        .filter(|r| by_id.contains_key(r.device_id.as_str()))
        .collect();
    let models_per_device = {
        let mut m = BTreeMap::<&str, usize>::new();
        for r in &latest {
            *m.entry(r.device_id.as_str()).or_default() += 1;
        }
        m
    };
    // Column order: the reference's, else as the first record lists them.
    let mut columns: Vec<String> = reference.features.iter().map(|c| c.name.clone()).collect();
    let mut rows: Vec<HeatRow> = Vec::new();
    let mut groups: BTreeMap<String, (MergedDrift, Vec<String>, i64, bool)> = BTreeMap::new();
    for ix in &latest {
        let Some(body) = store.record(&ix.device_id, STREAM, ix.seq).await? else {
            continue;
        };
        let rec = match decode(&body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device = %ix.device_id, seq = ix.seq, "drift record does not decode: {e}");
                continue;
            }
        };
        if columns.is_empty() {
            columns = rec.columns.iter().map(|c| c.summary.name.clone()).collect();
        }
        let Some(d) = by_id.get(ix.device_id.as_str()) else {
            continue;
        };
        match &q.group_by {
            HeatmapGroup::Device => {
                let cells = columns
                    .iter()
                    .map(|name| {
                        let c = rec.columns.iter().find(|c| &c.summary.name == name);
                        let (value, band) = Band::of(
                            c.and_then(|c| c.scores.as_ref()),
                            c.is_some_and(|c| c.drifting),
                            &rules,
                            name,
                        );
                        HeatCell { value, band }
                    })
                    .collect::<Vec<_>>();
                let two = models_per_device.get(d.id.as_str()).copied().unwrap_or(1) > 1;
                rows.push(HeatRow {
                    key: if two {
                        format!("{}/{}", d.id, ix.model)
                    } else {
                        d.id.clone()
                    },
                    name: if two {
                        format!("{} ({})", d.name, ix.model)
                    } else {
                        d.name.clone()
                    },
                    devices: vec![d.id.clone()],
                    to: rfc3339(rec.end_ns),
                    dataset_drift: rec.dataset_drift,
                    band: cells.iter().map(|c| c.band).max().unwrap_or(Band::NoData),
                    cells,
                });
            }
            HeatmapGroup::Label(key) => {
                let prefix = format!("{key}=");
                let value = d
                    .labels
                    .iter()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map_or_else(|| "(none)".to_string(), str::to_string);
                let g = groups
                    .entry(value)
                    .or_insert_with(|| (MergedDrift::default(), Vec::new(), i64::MIN, false));
                if let Err(e) = g.0.add(&d.id, &rec) {
                    tracing::warn!(device = %d.id, "drift record not merged: {e}");
                    continue;
                }
                if !g.1.contains(&d.id) {
                    g.1.push(d.id.clone());
                }
                g.2 = g.2.max(rec.end_ns);
                g.3 |= rec.dataset_drift;
            }
        }
    }
    if let HeatmapGroup::Label(key) = &q.group_by {
        for (value, (merged, devs, to, dataset)) in groups {
            let (views, _) = merged.scored(&reference, &rules);
            let cells = columns
                .iter()
                .map(|name| {
                    let v = views.iter().find(|v| &v.name == name);
                    let (value, band) = Band::of(
                        v.and_then(|v| v.scores.as_ref()),
                        v.is_some_and(|v| v.drifting),
                        &rules,
                        name,
                    );
                    HeatCell { value, band }
                })
                .collect::<Vec<_>>();
            rows.push(HeatRow {
                key: value.clone(),
                name: format!("{key}={value}"),
                devices: devs,
                to: rfc3339(to),
                dataset_drift: dataset,
                band: cells.iter().map(|c| c.band).max().unwrap_or(Band::NoData),
                cells,
            });
        }
    }
    // The most drifting rows first: worst band, then how many cells drift, then name.
    rows.sort_by(|a, b| {
        let drifting = |r: &HeatRow| r.cells.iter().filter(|c| c.band == Band::Drift).count();
        b.band
            .cmp(&a.band)
            .then(drifting(b).cmp(&drifting(a)))
            .then(a.name.cmp(&b.name))
    });
    out.total_rows = total_device_rows.map_or(rows.len(), |n| n as usize);
    rows.truncate(q.limit.max(1));
    out.thresholds = columns.iter().map(|c| rules.threshold_for(c)).collect();
    out.columns = columns;
    out.rows = rows;
    Ok(out)
}
