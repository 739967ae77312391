//! Rollout operations: lists with progress per device state, one rollout's devices, start,
//! and the operator actions (promote, halt, resume, roll back).

use std::collections::BTreeMap;

use super::views::{RolloutDetail, RolloutDevice, RolloutSummary};
use super::{Acting, Result, ServiceError};
use crate::rollout::{self, StartRollout};
use crate::store::{Device, Rollout, RolloutReport};
use crate::types::{DeviceRolloutState, Role, RolloutAction};

/// Progress of a rollout over the targeted (non-revoked) devices.
fn progress(
    r: &Rollout,
    devices: &[Device],
    reports: &[RolloutReport],
) -> (RolloutSummary, Vec<RolloutDevice>) {
    let by_device: BTreeMap<&str, &RolloutReport> =
        reports.iter().map(|x| (x.device_id.as_str(), x)).collect();
    let mut counts: BTreeMap<DeviceRolloutState, i64> =
        DeviceRolloutState::ALL.iter().map(|s| (*s, 0)).collect();
    let mut canaries = counts.clone();
    let mut list = Vec::new();
    for d in devices
        .iter()
        .filter(|d| d.revoked_at.is_none() && rollout::targets(r, d))
    {
        let rep = by_device.get(d.id.as_str()).copied();
        let state = rollout::device_state(r, d, rep);
        let canary = rollout::is_canary(r, d);
        *counts.entry(state).or_default() += 1;
        if canary {
            *canaries.entry(state).or_default() += 1;
        }
        list.push(RolloutDevice {
            id: d.id.clone(),
            name: d.name.clone(),
            canary,
            state,
            detail: rep.map(|x| x.detail.clone()),
            reported_at: rep.map(|x| x.at),
            last_seen: d.last_seen,
        });
    }
    (
        RolloutSummary {
            rollout: r.clone(),
            targeted: list.len() as i64,
            progress: counts,
            canaries,
        },
        list,
    )
}

impl Acting {
    /// Every rollout, newest first, with its progress.
    pub async fn rollouts(&self) -> Result<Vec<RolloutSummary>> {
        self.require(Role::Viewer, "the rollouts")?;
        let devices = self.store().devices_with_labels(&[]).await?;
        let mut out = Vec::new();
        for r in self.store().rollouts().await? {
            let targeted: Vec<Device> = devices
                .iter()
                .filter(|d| rollout::targets(&r, d))
                .cloned()
                .collect();
            let reports = self.store().rollout_reports(&r.id).await?;
            out.push(progress(&r, &targeted, &reports).0);
        }
        Ok(out)
    }

    /// The active rollouts with their progress (each reads only the devices it targets).
    pub async fn rollouts_in_flight(&self) -> Result<Vec<RolloutSummary>> {
        self.require(Role::Viewer, "the rollouts")?;
        let mut out = Vec::new();
        for r in self.store().rollouts().await? {
            if r.state != crate::types::RolloutState::Active {
                continue;
            }
            let devices = self.store().devices_with_labels(&r.selector).await?;
            let reports = self.store().rollout_reports(&r.id).await?;
            out.push(progress(&r, &devices, &reports).0);
        }
        Ok(out)
    }

    /// One rollout with every targeted device's state (viewer role).
    pub async fn rollout(&self, id: &str) -> Result<RolloutDetail> {
        self.require(Role::Viewer, "a rollout")?;
        let r = self
            .store()
            .rollout(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no rollout `{id}`")))?;
        let devices = self.store().devices_with_labels(&r.selector).await?;
        let reports = self.store().rollout_reports(&r.id).await?;
        let (summary, devices) = progress(&r, &devices, &reports);
        Ok(RolloutDetail { summary, devices })
    }

    /// Starts a rollout (operator role). Refused with [`ServiceError::Refused`] (and audited)
    /// when the version has not passed its name's validation gate, unless `force` is set (then
    /// audited as forced).
    pub async fn start_rollout(&self, s: &StartRollout) -> Result<RolloutSummary> {
        self.require(Role::Operator, "starting rollouts")?;
        // The validation gate (bundles): refused unless passed, or forced (audited as such).
        let gate = match s.kind {
            crate::types::RolloutKind::Bundle => {
                self.gate_refusal(&s.bundle, s.version_number).await?
            }
            crate::types::RolloutKind::Config | crate::types::RolloutKind::Agent => None,
        };
        let forced = match gate {
            None => None,
            Some(why) if s.force => Some(why),
            Some(why) => {
                self.audit(
                    "rollout.refused",
                    &format!("{}#{}", s.bundle, s.version_number),
                    &why,
                )
                .await?;
                return Err(ServiceError::Refused(format!(
                    "{why}; start it with force (`--force`) to roll it out anyway (audited)"
                )));
            }
        };
        let r = rollout::start(self.store(), s.clone(), &self.who.name).await?;
        self.svc.rollout_cache().invalidate();
        let mut detail = rollout::describe(&r);
        if let Some(why) = forced {
            detail.push_str(&format!("; FORCED past the validation gate: {why}"));
        }
        self.audit("rollout.start", &r.id, &detail).await?;
        Ok(self.rollout(&r.id).await?.summary)
    }

    /// Promotes, halts, resumes or rolls back a rollout (operator role).
    pub async fn rollout_action(&self, id: &str, action: RolloutAction) -> Result<RolloutSummary> {
        self.require(Role::Operator, "steering rollouts")?;
        let r = rollout::act(self.store(), id, action).await?;
        self.svc.rollout_cache().invalidate();
        self.audit(
            &format!("rollout.{action}"),
            id,
            &format!("{}#{}", r.bundle, r.version_number),
        )
        .await?;
        Ok(self.rollout(&r.id).await?.summary)
    }
}
