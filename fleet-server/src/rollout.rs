//! Rollouts: which bundle version each device should run, and the operator actions that
//! change it (start, promote, halt, rollback) — each recorded in the audit log.
//!
//! A rollout targets the devices whose labels include all of its selector labels. While it
//! is in phase `canary`, only its canaries (devices carrying the canary label, or a stable
//! hash-chosen percentage) get it; `promote` moves it to phase `full`. For a device, the
//! newest rollout of a bundle that targets it decides, walking back in time:
//!
//! | rollout state | device is a canary / phase full | otherwise |
//! |---|---|---|
//! | `active` | run its version | look at the previous rollout |
//! | `halted` | stay on what it runs (no new instruction) | stay |
//! | `rolled_back` | look at the previous rollout | look at the previous rollout |
//!
//! A rollout halts itself when `max_failures` devices report a failed or rolled-back update.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::store::{now_ms, Device, FleetStore, Rollout, RolloutReport, StoreError};
use crate::types::{
    DeviceRolloutState, RolloutAction, RolloutKind, RolloutPhase, RolloutState, UpdateOutcome,
};

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A bad parameter (unknown bundle version, canary settings, labels, max failures).
    #[error("{0}")]
    Invalid(String),
    /// No such rollout.
    #[error("{0}")]
    NotFound(String),
    /// The action does not apply to the rollout's current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stable per (rollout, device) choice of canaries for a percentage.
fn in_percent(rollout: &str, device: &str, percent: i64) -> bool {
    let h = Sha256::digest(format!("{rollout}/{device}").as_bytes());
    let bucket = u16::from_le_bytes([h[0], h[1]]) % 100;
    i64::from(bucket) < percent
}

/// Whether `d` carries every `key=value` label of `selector` (an empty selector selects
/// every device). Rollouts and drift views select devices with this.
pub fn selects(selector: &[String], d: &Device) -> bool {
    selector.iter().all(|l| d.labels.contains(l))
}

/// Whether rollout `r` targets device `d` (carries every label of its selector).
pub fn targets(r: &Rollout, d: &Device) -> bool {
    selects(&r.selector, d)
}

/// Whether `d` is one of `r`'s canaries: it carries the canary label, or falls in the
/// canary percentage (a stable choice per rollout and device).
pub fn is_canary(r: &Rollout, d: &Device) -> bool {
    r.canary_label
        .as_ref()
        .is_some_and(|l| d.labels.iter().any(|dl| dl == l))
        || r.canary_percent
            .is_some_and(|p| in_percent(&r.id, &d.id, p))
}

/// Whether the rollout's current phase includes `d` (a targeted device).
pub fn in_phase(r: &Rollout, d: &Device) -> bool {
    r.phase == RolloutPhase::Full || is_canary(r, d)
}

/// What a device should run: (bundle name, version number, rollout id) per bundle name.
/// `rollouts` newest first (as [`FleetStore::rollouts`] returns them).
pub fn desired(rollouts: &[Rollout], d: &Device) -> Vec<(String, i64, String)> {
    let mut decided: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for r in rollouts {
        if r.kind != RolloutKind::Bundle || decided.contains(&r.bundle) || !targets(r, d) {
            continue;
        }
        match r.state {
            RolloutState::Active if in_phase(r, d) => {
                decided.push(r.bundle.clone());
                out.push((r.bundle.clone(), r.version_number, r.id.clone()));
            }
            RolloutState::Halted => decided.push(r.bundle.clone()),
            RolloutState::Active | RolloutState::RolledBack => {}
        }
    }
    out
}

/// The configuration a device should run: (configuration name, version number, rollout
/// id). A device runs one configuration file, so every configuration rollout competes: the
/// newest that reaches it decides, with the same walk back in time as bundles (a halted one
/// keeps what the device runs: no instruction).
pub fn desired_config(rollouts: &[Rollout], d: &Device) -> Option<(String, i64, String)> {
    for r in rollouts {
        if r.kind != RolloutKind::Config || !targets(r, d) {
            continue;
        }
        match r.state {
            RolloutState::Active if in_phase(r, d) => {
                return Some((r.bundle.clone(), r.version_number, r.id.clone()))
            }
            RolloutState::Halted => return None,
            RolloutState::Active | RolloutState::RolledBack => {}
        }
    }
    None
}

/// The agent release a device should run: (release number, rollout id). Like
/// configurations, every agent rollout competes and the newest that reaches the device
/// decides (a halted one: no instruction).
pub fn desired_agent(rollouts: &[Rollout], d: &Device) -> Option<(i64, String)> {
    for r in rollouts {
        if r.kind != RolloutKind::Agent || !targets(r, d) {
            continue;
        }
        match r.state {
            RolloutState::Active if in_phase(r, d) => {
                return Some((r.version_number, r.id.clone()))
            }
            RolloutState::Halted => return None,
            RolloutState::Active | RolloutState::RolledBack => {}
        }
    }
    None
}

/// Whether the device's last check-in says it runs agent release `version_number`.
fn runs_release(d: &Device, version_number: i64) -> bool {
    d.checkin()
        .and_then(|c| c.agent)
        .and_then(|a| a.release)
        .is_some_and(|(v, _)| i64::try_from(v).ok() == Some(version_number))
}

/// Whether the device's last check-in says it runs fleet configuration `name#version`.
fn runs_config(d: &Device, name: &str, version_number: i64) -> bool {
    d.checkin()
        .and_then(|c| c.config)
        .and_then(|c| c.applied)
        .is_some_and(|(n, v)| n == name && i64::try_from(v).ok() == Some(version_number))
}

/// Where a targeted device is in a rollout: its report decides; otherwise whether it runs
/// the version (`bundle#version_number` at its last check-in), whether it checked in since
/// its phase began (so it was told), or neither.
pub fn device_state(r: &Rollout, d: &Device, report: Option<&RolloutReport>) -> DeviceRolloutState {
    if let Some(rep) = report {
        return rep.outcome.rollout_state();
    }
    if !in_phase(r, d) {
        return DeviceRolloutState::Waiting;
    }
    let applied = match r.kind {
        RolloutKind::Bundle => d
            .models
            .contains(&format!("{}#{}", r.bundle, r.version_number)),
        RolloutKind::Config => runs_config(d, &r.bundle, r.version_number),
        RolloutKind::Agent => runs_release(d, r.version_number),
    };
    if applied {
        return DeviceRolloutState::Applied;
    }
    let phase_began = if is_canary(r, d) {
        r.created_at
    } else {
        r.full_since()
    };
    if d.last_seen.is_some_and(|s| s > phase_began) {
        DeviceRolloutState::Downloading
    } else {
        DeviceRolloutState::Pending
    }
}

/// A new rollout (the caller audits it): `bundle` at `version_number` to the devices carrying all `selector`
/// labels, canaries first when a canary label or percentage is given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StartRollout {
    /// What it hands out (default: a bundle).
    #[serde(default = "bundle_kind")]
    pub kind: RolloutKind,
    /// The bundle name, or the fleet configuration's name.
    pub bundle: String,
    /// The version number to roll out (must be stored).
    pub version_number: i64,
    /// `key=value` labels a device must all carry (empty: every device).
    #[serde(default)]
    pub selector: Vec<String>,
    /// Canaries: this percentage (1-100) of the targeted devices, a stable choice per device.
    #[serde(default)]
    pub canary_percent: Option<i64>,
    /// Canaries: the targeted devices carrying this label (not with a percentage).
    #[serde(default)]
    pub canary_label: Option<String>,
    /// Halt automatically once this many devices report a failed update (default 1).
    #[serde(default = "one")]
    pub max_failures: i64,
    /// Start it although the version has not passed its name's validation gate (audited).
    #[serde(default)]
    pub force: bool,
}

fn one() -> i64 {
    1
}

fn bundle_kind() -> RolloutKind {
    RolloutKind::Bundle
}

/// Checks and stores a new rollout by `actor`: active, in its canary phase if canaries are
/// given, else full. [`RolloutError::Invalid`] names a bad parameter.
pub async fn start(
    store: &FleetStore,
    s: StartRollout,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    match s.kind {
        RolloutKind::Bundle => {
            if store.bundle(&s.bundle, s.version_number).await?.is_none() {
                return Err(RolloutError::Invalid(format!(
                    "no bundle {} with version number {} in the registry (push it first)",
                    s.bundle, s.version_number
                )));
            }
        }
        RolloutKind::Config => {
            if store.config(&s.bundle, s.version_number).await?.is_none() {
                return Err(RolloutError::Invalid(format!(
                    "no configuration {} with version number {} (push it first: fleet-server config push)",
                    s.bundle, s.version_number
                )));
            }
        }
        RolloutKind::Agent => {
            if s.bundle != edge_wire::release::RELEASE_NAME {
                return Err(RolloutError::Invalid(format!(
                    "an agent rollout hands out `{}`, not `{}`",
                    edge_wire::release::RELEASE_NAME,
                    s.bundle
                )));
            }
            if store.release_targets(s.version_number).await?.is_empty() {
                return Err(RolloutError::Invalid(format!(
                    "no agent release number {} (push it first: fleet-server agent push)",
                    s.version_number
                )));
            }
        }
    }
    if let Some(p) = s.canary_percent {
        if !(1..=100).contains(&p) {
            return Err(RolloutError::Invalid(
                "canary percent must be between 1 and 100".into(),
            ));
        }
    }
    if s.canary_percent.is_some() && s.canary_label.is_some() {
        return Err(RolloutError::Invalid(
            "give a canary label or a canary percentage, not both".into(),
        ));
    }
    for l in s.selector.iter().chain(&s.canary_label) {
        if l.is_empty() || l.contains(',') || l.len() > 64 {
            return Err(RolloutError::Invalid(format!(
                "label `{l}` must be 1-64 characters without commas"
            )));
        }
    }
    if s.max_failures < 1 {
        return Err(RolloutError::Invalid(
            "max failures must be at least 1".into(),
        ));
    }
    let now = now_ms();
    let canary = s.canary_percent.is_some() || s.canary_label.is_some();
    let r = Rollout {
        id: format!("r{now:x}{:04x}", fastrand::u16(..)),
        kind: s.kind,
        bundle: s.bundle,
        version_number: s.version_number,
        selector: s.selector,
        canary_percent: s.canary_percent,
        canary_label: s.canary_label,
        phase: if canary {
            RolloutPhase::Canary
        } else {
            RolloutPhase::Full
        },
        state: RolloutState::Active,
        max_failures: s.max_failures,
        created_by: actor.into(),
        created_at: now,
        updated_at: now,
        promoted_at: None,
    };
    store.add_rollout(&r).await?;
    Ok(r)
}

/// A new rollout in one line, for the audit log.
pub fn describe(r: &Rollout) -> String {
    let canary = match (&r.canary_label, r.canary_percent) {
        (Some(l), _) => format!(" canary label {l}"),
        (None, Some(p)) => format!(" canary {p}%"),
        (None, None) => String::new(),
    };
    format!(
        "{} {}#{} to [{}] phase {}{canary} max_failures {}",
        r.kind,
        r.bundle,
        r.version_number,
        r.selector.join(","),
        r.phase,
        r.max_failures
    )
}

/// An operator's action on a rollout (the caller audits it).
pub async fn act(
    store: &FleetStore,
    id: &str,
    action: RolloutAction,
) -> Result<Rollout, RolloutError> {
    let r = match store.act_on_rollout(id, action).await? {
        None => return Err(RolloutError::NotFound(format!("no rollout `{id}`"))),
        Some(Err(cur)) => {
            return Err(RolloutError::Conflict(format!(
                "cannot {action} rollout {id}: it is {} (phase {})",
                cur.state, cur.phase
            )))
        }
        Some(Ok(r)) => r,
    };
    Ok(r)
}

/// Records a device's update outcome; halts the rollout when failures reach its limit
/// (in the same transaction as the report, so exactly one report halts it, whichever
/// replica each report lands on). Returns whether this report halted it.
pub async fn report(
    store: &FleetStore,
    rollout: &str,
    device: &str,
    outcome: UpdateOutcome,
    detail: &str,
) -> Result<bool, RolloutError> {
    let (failures, halted) = store
        .rollout_report(rollout, device, outcome, detail)
        .await?;
    if halted.is_some() {
        tracing::warn!(
            rollout,
            failures,
            "rollout halted: devices report failed updates"
        );
    }
    Ok(halted.is_some())
}

/// The rollout table, cached for a second.
#[derive(Debug, Default)]
pub struct RolloutCache(std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<Rollout>>)>>);

impl RolloutCache {
    const TTL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The rollout table, newest first: at most a second old, else read again.
    pub async fn get(&self, store: &FleetStore) -> Result<Arc<Vec<Rollout>>, StoreError> {
        if let Ok(g) = self.0.lock() {
            if let Some((at, list)) = g.as_ref() {
                if at.elapsed() < Self::TTL {
                    return Ok(list.clone());
                }
            }
        }
        let list = Arc::new(store.rollouts().await?);
        if let Ok(mut g) = self.0.lock() {
            *g = Some((std::time::Instant::now(), list.clone()));
        }
        Ok(list)
    }

    /// Forgets the cached table (after any change to rollouts or device labels).
    pub fn invalidate(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, labels: &[&str]) -> Device {
        Device {
            id: id.into(),
            name: id.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            enrolled_at: 0,
            revoked_at: None,
            last_seen: None,
            status: None,
            agent_version: None,
            models: vec![],
            backlog: 0,
            backlog_rises: 0,
            dropped: 0,
            drops_at: None,
            last_error: None,
            update_failed_at: None,
            drift_alarms: 0,
            history_at: None,
            cert_issued_at: None,
            cert_expires_at: None,
            cert_ca_sha256: None,
        }
    }

    fn ro(id: &str, v: i64, state: &str, phase: &str, canary: Option<&str>) -> Rollout {
        Rollout {
            id: id.into(),
            kind: RolloutKind::Bundle,
            bundle: "m".into(),
            version_number: v,
            selector: vec!["site=a".into()],
            canary_percent: None,
            canary_label: canary.map(str::to_string),
            phase: phase.parse().unwrap(),
            state: state.parse().unwrap(),
            max_failures: 1,
            created_by: "t".into(),
            created_at: 10,
            updated_at: 10,
            promoted_at: None,
        }
    }

    #[test]
    fn newest_matching_rollout_decides() {
        let canary = dev("c", &["site=a", "canary"]);
        let other = dev("o", &["site=a"]);
        let elsewhere = dev("e", &["site=b"]);
        let v1 = ro("r1", 1, "active", "full", None);
        let v2 = ro("r2", 2, "active", "canary", Some("canary"));
        let list = vec![v2.clone(), v1.clone()];
        assert_eq!(desired(&list, &canary)[0].1, 2);
        assert_eq!(desired(&list, &other)[0].1, 1);
        assert!(desired(&list, &elsewhere).is_empty());
        // Halted: nobody gets a new instruction for this bundle.
        let halted = vec![ro("r2", 2, "halted", "canary", Some("canary")), v1.clone()];
        assert!(desired(&halted, &canary).is_empty());
        assert!(desired(&halted, &other).is_empty());
        // Rolled back: everyone goes to the previous rollout's version.
        let back = vec![ro("r2", 2, "rolled_back", "full", None), v1];
        assert_eq!(desired(&back, &canary)[0].1, 1);
    }

    #[test]
    fn device_states_follow_phase_check_ins_and_reports() {
        use DeviceRolloutState::*;
        let mut canary = dev("c", &["site=a", "canary"]);
        let mut other = dev("o", &["site=a"]);
        let mut r = ro("r2", 2, "active", "canary", Some("canary"));
        assert_eq!(device_state(&r, &canary, None), Pending);
        assert_eq!(device_state(&r, &other, None), Waiting);
        canary.last_seen = Some(11);
        assert_eq!(device_state(&r, &canary, None), Downloading);
        canary.models = vec!["m#2".into()];
        assert_eq!(device_state(&r, &canary, None), Applied);
        let rep = RolloutReport {
            device_id: "c".into(),
            outcome: UpdateOutcome::Applied,
            detail: String::new(),
            at: 12,
        };
        assert_eq!(device_state(&r, &canary, Some(&rep)), Healthy);
        // Promoted at 20: the other device was seen at 15, before it joined.
        r.phase = RolloutPhase::Full;
        r.promoted_at = Some(20);
        other.last_seen = Some(15);
        assert_eq!(device_state(&r, &other, None), Pending);
        other.last_seen = Some(21);
        assert_eq!(device_state(&r, &other, None), Downloading);
        let failed = RolloutReport {
            outcome: UpdateOutcome::RolledBack,
            ..rep
        };
        assert_eq!(device_state(&r, &other, Some(&failed)), RolledBack);
    }

    #[test]
    fn percentage_is_stable_and_roughly_right() {
        let n = (0..1000)
            .filter(|i| in_percent("r1", &format!("dev-{i}"), 10))
            .count();
        assert!((60..=140).contains(&n), "{n}");
        assert_eq!(in_percent("r1", "dev-7", 10), in_percent("r1", "dev-7", 10));
    }

    #[test]
    fn one_configuration_per_device_newest_rollout_decides() {
        let d = dev("d1", &["site=a", "canary"]);
        let cfg = |id: &str, name: &str, v: i64, state: &str| Rollout {
            kind: RolloutKind::Config,
            bundle: name.into(),
            ..ro(id, v, state, "full", None)
        };
        // Newest first: a configuration rollout of another name still decides, and bundle
        // rollouts never count as configurations (nor the reverse).
        let list = vec![
            cfg("r3", "line-b", 1, "active"),
            ro("r2", 5, "active", "full", None),
            cfg("r1", "line-a", 4, "active"),
        ];
        assert_eq!(
            desired_config(&list, &d),
            Some(("line-b".into(), 1, "r3".into()))
        );
        assert_eq!(desired(&list, &d), vec![("m".into(), 5, "r2".into())]);
        // Rolled back: the previous one again; halted: no instruction.
        let list = vec![
            cfg("r3", "line-b", 1, "rolled_back"),
            cfg("r1", "line-a", 4, "active"),
        ];
        assert_eq!(
            desired_config(&list, &d),
            Some(("line-a".into(), 4, "r1".into()))
        );
        let list = vec![
            cfg("r3", "line-b", 1, "halted"),
            cfg("r1", "line-a", 4, "active"),
        ];
        assert_eq!(desired_config(&list, &d), None);
    }
}
