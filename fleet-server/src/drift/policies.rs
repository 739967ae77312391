//! Retrain policies: a group's drift records bucketed by time, a bucket's verdict, the
//! evaluator's cursor (compare-and-set, so an event is recorded once), and the evaluation
//! task of `serve`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edge_wire::drift::{DriftPolicy, DriftRules};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::hooks::{parse_http_url, run_hook};
use super::views::{collect, Acc, ColumnOut, References, Scope};
use super::*;
use crate::registry::Registry;
use crate::store::{now_ms, DriftEventRow, DriftPolicyRow, FleetStore};

/// When a bucket counts as drifting (either criterion given suffices).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// Share of the reporting devices whose records in the bucket, merged and scored
    /// against the reference, have dataset drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// Merged accuracy (late labels) below this makes the bucket drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_accuracy: Option<f64>,
    /// Merged recall below this makes the bucket drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_recall: Option<f64>,
    /// Merged mean absolute error above this makes the bucket drift.
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
    /// End of the buckets complete at the last evaluation (data time, Unix ns): buckets from
    /// here on are evaluated next time, as wall time completes them.
    cursor_ns: Option<i64>,
    /// Drift records ingested up to this wall time (ms) were looked at: what arrives later
    /// (a device's backlog after an outage, a replayed history) is evaluated over its own
    /// data time, however old.
    #[serde(default)]
    ingested_ms: Option<i64>,
}

/// Records ingested within this much before the last look are looked at again (an insert
/// that committed late with an earlier timestamp is not missed; events are never doubled,
/// see `evaluate_policy`).
const INGEST_OVERLAP_MS: i64 = 10_000;

/// `fleet-server drift policy set`.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    /// Policy name: 1-64 characters of `A-Z a-z 0-9 - _ .`.
    pub name: String,
    /// The bundle name it watches.
    pub bundle: String,
    /// `key=value` labels a device must all carry to count (empty: every device).
    pub select: Vec<String>,
    /// Bucket length.
    pub every: Duration,
    /// Consecutive drifting buckets that make an event (at least 1).
    pub intervals: u32,
    /// When a bucket drifts.
    pub rule: PolicyRule,
    /// What runs on an event.
    pub hook: Hook,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Creates or replaces a policy (evaluation starts over). The caller audits it
/// ([`describe_policy`] says what to write).
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
    Ok(row)
}

/// JSON of one of our own small values (maps with string keys, finite or null floats:
/// serializing cannot fail).
fn enc<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Removes policy `name`; [`DriftError::Invalid`] (`no drift policy …`) if there is none.
pub async fn remove_policy(store: &FleetStore, name: &str) -> Result<(), DriftError> {
    if !store.remove_drift_policy(name).await? {
        return Err(invalid(format!("no drift policy `{name}`")));
    }
    Ok(())
}

/// A policy in one line, for the audit log.
pub fn describe_policy(row: &DriftPolicyRow) -> String {
    format!(
        "bundle {} select [{}] every {} intervals {} rule {} hook {}",
        row.bundle,
        row.selector.join(","),
        fmt_duration(row.every_ms.saturating_mul(1_000_000)),
        row.intervals,
        row.rule,
        row.hook
    )
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
    // A device drifts in the bucket when its records there, merged and scored together,
    // have dataset drift; without the bundle's reference (unscored), when at least half of
    // its records there were flagged by the device.
    let drifting_devices = acc
        .per_device
        .iter()
        .filter(|(d, (n, k))| match acc.device_drift.get(*d) {
            Some(x) => *x,
            None => *n > 0 && 2 * k >= *n,
        })
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
    /// The event as recorded (hook status `pending`).
    pub event: DriftEventRow,
    /// The policy's hook, to run for it.
    pub hook: Hook,
}

/// Evaluates one policy up to `now_ns`. The buckets looked at are those wall time completed
/// since the last evaluation and those holding drift records ingested since then (history
/// replayed or uploaded late counts by its data time), each extended back by `intervals - 1`
/// buckets for context. Per bundle version, every run of at least `intervals` consecutive
/// drifting buckets (adjacent buckets, each with records: a gap breaks a run) is one episode
/// and gets one event, unless an event of this policy and version already overlaps it.
/// A bucket drifts when at least `share` of its reporting devices have dataset drift in
/// their records of the bucket merged and scored together (a device's one noisy interval
/// among calm ones does not count), or the merged performance breaches a limit.
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
    let intervals = i64::from(u32::try_from(p.intervals.max(1)).unwrap_or(u32::MAX));
    let span = every.saturating_mul(intervals);
    // Buckets [k·every, (k+1)·every) are evaluated once their end is `grace` in the past,
    // so records uploaded shortly after an interval closes still count.
    let grace = every.min(SETTLE_NS);
    let done_until = now_ns.saturating_sub(grace).div_euclid(every) * every;
    let floor = |t: i64| t.div_euclid(every) * every;
    // Where this evaluation starts: a new policy looks back `intervals` buckets (drift going
    // on now, not all history); afterwards, where wall time left off, or earlier where newly
    // ingested records lie.
    let mut from = st
        .cursor_ns
        .unwrap_or_else(|| done_until.saturating_sub(span));
    let ingested = match st.ingested_ms {
        Some(seen) => {
            store
                .drift_ingested_since(&p.bundle, seen.saturating_sub(INGEST_OVERLAP_MS))
                .await?
        }
        None => None,
    };
    if let Some((lo, _, _)) = ingested {
        from = from.min(floor(lo));
    }
    let ingested_ms = match (ingested, st.ingested_ms) {
        (Some((_, _, at)), Some(seen)) => Some(at.max(seen)),
        (None, Some(seen)) => Some(seen),
        // First evaluation: everything ingested so far is covered by the look-back.
        (_, None) => Some(now_ms()),
    };
    let mut events = Vec::new();
    if from < done_until {
        let devices = select_devices(store, None, &p.selector).await?;
        let names: BTreeMap<&str, &str> = devices
            .iter()
            .map(|d| (d.id.as_str(), d.name.as_str()))
            .collect();
        let look_from = from.saturating_sub(span - every);
        let scope = Scope {
            bundle: &p.bundle,
            version_number: None,
            since_ns: look_from,
            until_ns: done_until,
        };
        let mut refs = References::new(registry, &p.bundle);
        let groups = collect(store, &devices, Some(every), scope, Some(&mut refs)).await?;
        // Runs of consecutive drifting buckets per version, in order.
        let mut runs: Vec<(u64, Vec<i64>)> = Vec::new();
        for ((v, b), acc) in &groups {
            if !verdict(acc, &rule, *b, b + every).drifting {
                continue;
            }
            match runs.last_mut() {
                Some((rv, bs)) if rv == v && bs.last() == Some(&(b - every)) => bs.push(*b),
                _ => runs.push((*v, vec![*b])),
            }
        }
        for (v, buckets) in runs {
            if (buckets.len() as i64) < intervals {
                continue;
            }
            let (run_from, run_to) = (buckets[0], buckets[buckets.len() - 1] + every);
            if run_to <= from {
                continue; // wholly before what this evaluation is about
            }
            let vn = i64::try_from(v).unwrap_or(i64::MAX);
            if store
                .drift_event_overlaps(&p.name, vn, run_from, run_to)
                .await?
            {
                continue; // this episode has its event
            }
            // The event covers the episode's first `intervals` buckets.
            let ev_to = run_from + span;
            let mut merged = Acc::default();
            let mut verdicts = Vec::new();
            for ((_, b), a) in groups.range((v, run_from)..(v, ev_to)) {
                verdicts.push(verdict(a, &rule, *b, b + every));
                if let Err(e) = merged.absorb(a) {
                    tracing::warn!(policy = %p.name, bucket = b, "bucket not merged: {e}");
                }
            }
            events.push(
                event_of(
                    p,
                    &mut refs,
                    &merged,
                    (run_from, ev_to, every),
                    &verdicts,
                    &names,
                )
                .await,
            );
        }
    }
    st.cursor_ns = Some(st.cursor_ns.map_or(done_until, |c| c.max(done_until)));
    st.ingested_ms = ingested_ms;
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
