//! Device operations: the overview, the device list, one device in full (status, history,
//! updates, alarms, rollouts, drift, predictions), labels, revocation, enrollment tokens.

use std::time::Duration;

use edge_wire::records::{self, Stream};

use super::views::{
    DeviceDetail, DeviceDriftQuery, DevicePage, DeviceQuery, DeviceRollout, DeviceSummary,
    EnrollmentToken, EnrollmentTokenRequest, History, HistoryQuery, Overview, PredictionOut,
    ProblemSelect,
};
use super::{check_labels, parse_ttl, random_hex, Acting, Result, ServiceError};
use crate::drift::DriftRecordOut;
use crate::store::{now_ms, AlarmQuery, Device, DeviceFilter, DeviceSort, ProblemFilter};
use crate::types::{DeviceSortKey, Role};

/// Points a history answer holds at most (a day of one-minute points is 1440).
const HISTORY_POINTS: i64 = 5000;

impl Acting {
    async fn device_row(&self, id: &str) -> Result<Device> {
        self.store()
            .device(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device `{id}`")))
    }

    /// The fleet at a glance: device counts by state, up to 20 problem devices (most recently
    /// seen first), label groups, and the state thresholds (viewer role).
    pub async fn overview(&self) -> Result<Overview> {
        self.require(Role::Viewer, "the fleet overview")?;
        let t = self.svc.thresholds();
        let counts = self.store().state_counts(&t).await?;
        let (problem, _) = self
            .store()
            .device_page(
                &DeviceFilter {
                    problem: Some(ProblemFilter::Any),
                    ..Default::default()
                },
                &DeviceSort {
                    key: DeviceSortKey::LastSeen,
                    descending: true,
                },
                0,
                20,
                &t,
            )
            .await?;
        let groups = self.store().label_groups(&t).await?;
        let s = self.svc.settings();
        Ok(Overview {
            counts,
            problem_devices: problem.iter().map(|d| DeviceSummary::of(d, &t)).collect(),
            groups,
            checkin_s: s.checkin_s,
            online_within_s: super::ms(s.online_within) / 1000,
            offline_after_s: super::ms(s.offline_after) / 1000,
        })
    }

    /// One page of devices matching the query, with the total (viewer role).
    pub async fn devices(&self, q: &DeviceQuery) -> Result<DevicePage> {
        self.require(Role::Viewer, "the device list")?;
        check_labels(&q.labels)?;
        let t = self.svc.thresholds();
        let filter = DeviceFilter {
            labels: q.labels.clone(),
            state: q.state,
            problem: q.problem.map(|p| match p {
                ProblemSelect::Any => ProblemFilter::Any,
                ProblemSelect::Only(p) => ProblemFilter::Only(p),
            }),
            bundle: q.bundle.clone(),
            agent_version: q.agent_version.clone(),
            text: q.text.clone(),
        };
        let sort = DeviceSort {
            key: q.sort,
            descending: q.descending,
        };
        let limit = q.limit.clamp(1, super::views::MAX_PAGE);
        let (rows, total) = self
            .store()
            .device_page(&filter, &sort, q.offset.max(0), limit, &t)
            .await?;
        Ok(DevicePage {
            total,
            offset: q.offset.max(0),
            limit,
            devices: rows.iter().map(|d| DeviceSummary::of(d, &t)).collect(),
        })
    }

    /// One device: summary, last reported status, stream marks, recent updates, errors, alarms
    /// and the rollouts that target it (viewer role).
    pub async fn device(&self, id: &str) -> Result<DeviceDetail> {
        self.require(Role::Viewer, "device details")?;
        let d = self.device_row(id).await?;
        let t = self.svc.thresholds();
        let status = d.status.as_deref().and_then(|s| {
            serde_json::from_str::<edge_wire::sync::CheckIn>(s)
                .map_err(|e| tracing::warn!(device = %d.id, "stored status does not parse: {e}"))
                .ok()
        });
        let streams = self.store().stream_marks(&d.id).await?;
        let updates = self.store().updates(&d.id, 20).await?;
        let errors = self
            .store()
            .device_errors(&d.id, 10)
            .await?
            .into_iter()
            .map(|(at, error)| super::views::ReportedError { at, error })
            .collect();
        let (alarms, _) = self
            .store()
            .alarms(&AlarmQuery {
                device: Some(d.id.clone()),
                limit: 20,
                ..Default::default()
            })
            .await?;
        let mut rollouts = Vec::new();
        for r in self.store().rollouts().await? {
            if rollouts.len() >= 10 {
                break;
            }
            if !crate::rollout::targets(&r, &d) {
                continue;
            }
            let report = self
                .store()
                .rollout_reports(&r.id)
                .await?
                .into_iter()
                .find(|x| x.device_id == d.id);
            rollouts.push(DeviceRollout {
                state: crate::rollout::device_state(&r, &d, report.as_ref()),
                rollout: r.id,
                bundle: r.bundle,
                version_number: r.version_number,
            });
        }
        Ok(DeviceDetail {
            device: DeviceSummary::of(&d, &t),
            status,
            streams,
            errors,
            updates,
            alarms,
            rollouts,
        })
    }

    /// The device's status history since `since_ms` (default: the last 24 hours), at most 1440
    /// points (viewer role).
    pub async fn device_history(&self, id: &str, q: &HistoryQuery) -> Result<History> {
        self.require(Role::Viewer, "device history")?;
        self.device_row(id).await?;
        let since = q.since_ms.unwrap_or_else(|| now_ms() - 24 * 3600 * 1000);
        Ok(self.store().history(id, since, HISTORY_POINTS).await?)
    }

    /// The device's drift records (newest `limit`, oldest first).
    pub async fn device_drift(
        &self,
        id: &str,
        q: &DeviceDriftQuery,
    ) -> Result<Vec<DriftRecordOut>> {
        self.require(Role::Viewer, "device drift")?;
        self.device_row(id).await?;
        let index = self
            .store()
            .device_drift_index(
                id,
                q.bundle.as_deref(),
                q.since_ns.unwrap_or(i64::MIN),
                q.limit,
            )
            .await?;
        let mut out = Vec::with_capacity(index.len());
        for ix in index {
            let Some(body) = self
                .store()
                .record(id, Stream::Drift.name(), ix.seq)
                .await?
            else {
                continue;
            };
            match crate::drift::decode(&body) {
                Ok(rec) => out.push(DriftRecordOut::of(ix.seq, &rec)),
                Err(e) => tracing::warn!(
                    device = id,
                    seq = ix.seq,
                    "drift record does not decode: {e}"
                ),
            }
        }
        Ok(out)
    }

    /// The device's newest predictions, newest first.
    pub async fn device_predictions(&self, id: &str, limit: i64) -> Result<Vec<PredictionOut>> {
        self.require(Role::Viewer, "device predictions")?;
        self.device_row(id).await?;
        let limit = limit.clamp(1, super::views::MAX_PAGE);
        let rows = self
            .store()
            .latest_records(id, Stream::Predictions.name(), limit)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, _, body)| match records::decode_prediction(&body) {
                Ok(p) => Some(PredictionOut {
                    seq,
                    model: p.source.model.to_string(),
                    bundle: p.source.bundle.to_string(),
                    version_number: p.source.version_number,
                    end: crate::drift::rfc3339(p.end_ns),
                    end_ns: p.end_ns,
                    score: p.score.filter(|s| s.is_finite()),
                    label: p.label,
                    over_threshold: p.over_threshold,
                    alarm: p.alarm,
                }),
                Err(e) => {
                    tracing::warn!(device = id, seq, "prediction record does not decode: {e}");
                    None
                }
            })
            .collect())
    }

    /// Replaces a device's labels (operator role); rollouts targeting labels see the change at
    /// once.
    pub async fn set_labels(&self, id: &str, labels: &[String]) -> Result<DeviceSummary> {
        self.require(Role::Operator, "labelling devices")?;
        check_labels(labels)?;
        if !self.store().set_labels(id, labels).await? {
            return Err(ServiceError::NotFound(format!("no device `{id}`")));
        }
        self.svc.rollout_cache().invalidate();
        self.audit("device.label", id, &labels.join(",")).await?;
        let d = self.device_row(id).await?;
        Ok(DeviceSummary::of(&d, &self.svc.thresholds()))
    }

    /// Revokes a device: its certificate is refused from now on (operator role);
    /// [`ServiceError::Conflict`] if it is revoked already.
    pub async fn revoke_device(&self, id: &str) -> Result<DeviceSummary> {
        self.require(Role::Operator, "revoking devices")?;
        let d = self.device_row(id).await?;
        if d.revoked_at.is_some() || !self.store().revoke(id).await? {
            return Err(ServiceError::Conflict(format!(
                "device `{id}` is revoked already"
            )));
        }
        self.audit("device.revoke", id, &d.name).await?;
        let d = self.device_row(id).await?;
        Ok(DeviceSummary::of(&d, &self.svc.thresholds()))
    }

    /// Creates a one-time enrollment token whose device gets `labels` (operator role). It
    /// expires after `ttl` (default 24 h, at most 30 days); the secret is returned only here.
    pub async fn create_enrollment_token(
        &self,
        req: &EnrollmentTokenRequest,
    ) -> Result<EnrollmentToken> {
        self.require(Role::Operator, "creating enrollment tokens")?;
        check_labels(&req.labels)?;
        let ttl = parse_ttl(
            req.ttl.as_deref().unwrap_or("24h"),
            "ttl",
            Duration::from_secs(60),
            Duration::from_secs(30 * 24 * 3600),
        )?;
        let token = format!("et-{}", random_hex(24)?);
        let expires_at = now_ms() + super::ms(ttl);
        self.store()
            .add_token(
                &crate::ca::sha256_hex(token.as_bytes()),
                &req.labels,
                &self.who.name,
                expires_at,
            )
            .await?;
        self.audit(
            "device.token",
            &format!("labels [{}]", req.labels.join(",")),
            &format!("expires {}", crate::drift::rfc3339(expires_at * 1_000_000)),
        )
        .await?;
        Ok(EnrollmentToken {
            token,
            labels: req.labels.clone(),
            expires_at,
        })
    }
}
