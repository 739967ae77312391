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

use sha2::{Digest, Sha256};

use crate::store::{now_ms, Device, FleetStore, Rollout, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
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

pub fn targets(r: &Rollout, d: &Device) -> bool {
    selects(&r.selector, d)
}

pub fn is_canary(r: &Rollout, d: &Device) -> bool {
    r.canary_label
        .as_ref()
        .is_some_and(|l| d.labels.iter().any(|dl| dl == l))
        || r.canary_percent
            .is_some_and(|p| in_percent(&r.id, &d.id, p))
}

/// What a device should run: (bundle name, version number, rollout id) per bundle name.
/// `rollouts` newest first (as [`FleetStore::rollouts`] returns them).
pub fn desired(rollouts: &[Rollout], d: &Device) -> Vec<(String, i64, String)> {
    let mut decided: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for r in rollouts {
        if decided.contains(&r.bundle) || !targets(r, d) {
            continue;
        }
        match r.state.as_str() {
            "active" if r.phase == "full" || is_canary(r, d) => {
                decided.push(r.bundle.clone());
                out.push((r.bundle.clone(), r.version_number, r.id.clone()));
            }
            "halted" => decided.push(r.bundle.clone()),
            _ => {}
        }
    }
    out
}

pub struct StartRollout {
    pub bundle: String,
    pub version_number: i64,
    pub selector: Vec<String>,
    pub canary_percent: Option<i64>,
    pub canary_label: Option<String>,
    pub max_failures: i64,
}

pub async fn start(
    store: &FleetStore,
    s: StartRollout,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    if store.bundle(&s.bundle, s.version_number).await?.is_none() {
        return Err(RolloutError::Invalid(format!(
            "no bundle {} with version number {} in the registry (push it first)",
            s.bundle, s.version_number
        )));
    }
    if let Some(p) = s.canary_percent {
        if !(1..=100).contains(&p) {
            return Err(RolloutError::Invalid(
                "canary percent must be between 1 and 100".into(),
            ));
        }
    }
    for l in s.selector.iter().chain(&s.canary_label) {
        if l.is_empty() || l.contains(',') {
            return Err(RolloutError::Invalid(format!(
                "label `{l}` must be non-empty without commas"
            )));
        }
    }
    let now = now_ms();
    let canary = s.canary_percent.is_some() || s.canary_label.is_some();
    let r = Rollout {
        id: format!("r{now:x}{:04x}", fastrand::u16(..)),
        bundle: s.bundle,
        version_number: s.version_number,
        selector: s.selector,
        canary_percent: s.canary_percent,
        canary_label: s.canary_label,
        phase: if canary { "canary" } else { "full" }.into(),
        state: "active".into(),
        max_failures: s.max_failures.max(1),
        created_by: actor.into(),
        created_at: now,
        updated_at: now,
    };
    store.add_rollout(&r).await?;
    store
        .audit(
            actor,
            "rollout.start",
            &r.id,
            &format!(
                "{}#{} to [{}] phase {} canary {:?}/{:?}% max_failures {}",
                r.bundle,
                r.version_number,
                r.selector.join(","),
                r.phase,
                r.canary_label,
                r.canary_percent,
                r.max_failures
            ),
        )
        .await?;
    Ok(r)
}

/// `promote` | `halt` | `resume` | `rollback`.
pub async fn act(
    store: &FleetStore,
    id: &str,
    action: &str,
    actor: &str,
) -> Result<Rollout, RolloutError> {
    let ok = match action {
        "promote" => {
            store
                .set_rollout(id, &["active"], "active", Some("full"))
                .await?
        }
        "halt" => store.set_rollout(id, &["active"], "halted", None).await?,
        "resume" => store.set_rollout(id, &["halted"], "active", None).await?,
        "rollback" => {
            store
                .set_rollout(id, &["active", "halted"], "rolled_back", None)
                .await?
        }
        other => return Err(RolloutError::Invalid(format!("unknown action `{other}`"))),
    };
    let r = store
        .rollout(id)
        .await?
        .ok_or_else(|| RolloutError::Invalid(format!("no rollout `{id}`")))?;
    if !ok {
        return Err(RolloutError::Invalid(format!(
            "cannot {action} rollout {id}: it is {} (phase {})",
            r.state, r.phase
        )));
    }
    store
        .audit(
            actor,
            &format!("rollout.{action}"),
            id,
            &format!("{}#{}", r.bundle, r.version_number),
        )
        .await?;
    Ok(r)
}

/// Records a device's update outcome; halts the rollout when failures reach its limit.
pub async fn report(
    store: &FleetStore,
    rollout: &str,
    device: &str,
    outcome: &str,
    detail: &str,
) -> Result<(), RolloutError> {
    let failures = store
        .rollout_report(rollout, device, outcome, detail)
        .await?;
    if let Some(r) = store.rollout(rollout).await? {
        if outcome != "applied"
            && failures >= r.max_failures
            && r.state == "active"
            && store
                .set_rollout(rollout, &["active"], "halted", None)
                .await?
        {
            {
                tracing::warn!(
                    rollout,
                    failures,
                    "rollout halted: devices report failed updates"
                );
                store
                    .audit(
                        "fleet-server",
                        "rollout.auto_halt",
                        rollout,
                        &format!("{failures} device(s) failed; last: {device}: {detail}"),
                    )
                    .await?;
            }
        }
    }
    Ok(())
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
        }
    }

    fn ro(id: &str, v: i64, state: &str, phase: &str, canary: Option<&str>) -> Rollout {
        Rollout {
            id: id.into(),
            bundle: "m".into(),
            version_number: v,
            selector: vec!["site=a".into()],
            canary_percent: None,
            canary_label: canary.map(str::to_string),
            phase: phase.into(),
            state: state.into(),
            max_failures: 1,
            created_by: "t".into(),
            created_at: 0,
            updated_at: 0,
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
    fn percentage_is_stable_and_roughly_right() {
        let n = (0..1000)
            .filter(|i| in_percent("r1", &format!("dev-{i}"), 10))
            .count();
        assert!((60..=140).contains(&n), "{n}");
        assert_eq!(in_percent("r1", "dev-7", 10), in_percent("r1", "dev-7", 10));
    }
}
