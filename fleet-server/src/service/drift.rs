//! Drift operations: merged views, the heatmap, retrain policies and their events.

use std::time::Duration;

use super::views::{EventOut, Params, PolicyOut, PolicyRequest};
use super::{Acting, FleetService, Result, ServiceError};
use crate::drift::{self, DriftQuery, DriftView, Heatmap, HeatmapGroup, HeatmapQuery, NewPolicy};
use crate::store::{DriftEventRow, DriftPolicyRow};
use crate::types::Role;

/// Rows a heatmap shows by default.
pub const HEATMAP_ROWS: usize = 100;

/// How long a label-group heatmap is reused. Grouping merges the newest drift record of
/// every device (1.7 s for 10 000 devices, BENCHMARKS.md), and drift records arrive once per
/// drift interval (minutes), so viewers within this share one computation.
pub const HEATMAP_GROUP_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Recent label-group heatmaps by query.
#[derive(Debug, Default)]
pub(super) struct HeatmapCache(
    std::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, std::sync::Arc<Heatmap>)>,
    >,
);

impl HeatmapCache {
    fn key(q: &HeatmapQuery) -> String {
        // `since` moves with the clock: a minute's worth of requests share an entry.
        format!(
            "{}|{:?}|{:?}|{:?}|{}|{}",
            q.bundle,
            q.version_number,
            q.group_by,
            q.select,
            q.since_ns.div_euclid(60_000_000_000),
            q.limit
        )
    }

    fn get(&self, q: &HeatmapQuery) -> Option<Heatmap> {
        let g = self.0.lock().ok()?;
        let (at, h) = g.get(&Self::key(q))?;
        (at.elapsed() < HEATMAP_GROUP_TTL).then(|| (**h).clone())
    }

    fn put(&self, q: &HeatmapQuery, h: &Heatmap) {
        if let Ok(mut g) = self.0.lock() {
            g.retain(|_, (at, _)| at.elapsed() < HEATMAP_GROUP_TTL);
            g.insert(
                Self::key(q),
                (std::time::Instant::now(), std::sync::Arc::new(h.clone())),
            );
        }
    }
}

impl HeatmapQuery {
    /// `bundle`, `version_number`, `group_by` (`device` | `label:KEY`), `select` (repeat),
    /// `since` (RFC 3339 or a duration ago; default 24h), `limit`.
    pub fn from_pairs(pairs: &[(String, String)], now_ns: i64) -> Result<HeatmapQuery> {
        let mut p = Params::new(pairs);
        let bundle = p.one("bundle").unwrap_or_default();
        let version_number = p.parse::<u64>("version_number")?;
        let group_by = match p.one("group_by") {
            Some(g) => HeatmapGroup::parse(&g)?,
            None => HeatmapGroup::Device,
        };
        let select = p.all("select");
        let since_ns = match p.one("since") {
            Some(s) => drift::parse_time(&s, now_ns)
                .map_err(|e| ServiceError::Invalid(format!("since: {e}")))?,
            None => now_ns - 24 * 3600 * 1_000_000_000,
        };
        let limit = p.int("limit")?.unwrap_or(HEATMAP_ROWS as i64);
        p.finish()?;
        if !(1..=1000).contains(&limit) {
            return Err(ServiceError::Invalid(
                "limit must be between 1 and 1000".into(),
            ));
        }
        Ok(HeatmapQuery {
            bundle,
            version_number,
            group_by,
            select,
            since_ns,
            limit: limit as usize,
        })
    }

    /// The query as URL parameters, the inverse of [`HeatmapQuery::from_pairs`] (`since` as RFC
    /// 3339).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = vec![("bundle".to_string(), self.bundle.clone())];
        if let Some(v) = self.version_number {
            out.push(("version_number".into(), v.to_string()));
        }
        out.push(("group_by".into(), self.group_by.as_param()));
        for s in &self.select {
            out.push(("select".into(), s.clone()));
        }
        out.push(("since".into(), drift::rfc3339(self.since_ns)));
        out.push(("limit".into(), self.limit.to_string()));
        out
    }
}

fn policy_out(p: &DriftPolicyRow) -> PolicyOut {
    PolicyOut {
        name: p.name.clone(),
        bundle: p.bundle.clone(),
        select: p.selector.clone(),
        every: humantime::format_duration(Duration::from_millis(p.every_ms.max(0) as u64))
            .to_string(),
        intervals: p.intervals,
        rule: serde_json::from_str(&p.rule).unwrap_or_default(),
        hook: serde_json::from_str(&p.hook).unwrap_or_else(|_| drift::Hook::Command(String::new())),
        state: serde_json::from_str(&p.state).unwrap_or_default(),
        created_by: p.created_by.clone(),
        updated_at: p.updated_at,
    }
}

pub fn event_out(e: &DriftEventRow) -> EventOut {
    EventOut {
        id: e.id.clone(),
        policy: e.policy.clone(),
        bundle: e.bundle.clone(),
        version_number: e.version_number,
        from: drift::rfc3339(e.from_ns),
        to: drift::rfc3339(e.to_ns),
        created_at: e.created_at,
        hook_status: e.hook_status.clone(),
        hook_detail: e.hook_detail.clone(),
        body: serde_json::from_str(&e.body).unwrap_or_default(),
    }
}

impl Acting {
    /// Fleet drift views: per bundle version, the merged drift of the devices that run it
    /// (viewer role).
    pub async fn drift_views(&self, q: &DriftQuery) -> Result<Vec<DriftView>> {
        self.require(Role::Viewer, "drift views")?;
        Ok(drift::show(self.store(), self.svc.registry(), q).await?)
    }

    /// The drift heatmap of one bundle (viewer role). Label-group heatmaps are cached briefly;
    /// per-device ones are always fresh.
    pub async fn drift_heatmap(&self, q: &HeatmapQuery) -> Result<Heatmap> {
        self.require(Role::Viewer, "the drift heatmap")?;
        if q.group_by == HeatmapGroup::Device {
            return Ok(drift::build_heatmap(self.store(), self.svc.registry(), q).await?);
        }
        let cache = &self.svc.inner.heatmaps;
        if let Some(h) = cache.get(q) {
            return Ok(h);
        }
        let h = drift::build_heatmap(self.store(), self.svc.registry(), q).await?;
        cache.put(q, &h);
        Ok(h)
    }

    /// Every drift retrain policy (viewer role).
    pub async fn drift_policies(&self) -> Result<Vec<PolicyOut>> {
        self.require(Role::Viewer, "drift policies")?;
        Ok(self
            .store()
            .drift_policies()
            .await?
            .iter()
            .map(policy_out)
            .collect())
    }

    /// Creates or replaces the drift policy `name` (admin role: its hook runs on the server).
    pub async fn set_drift_policy(&self, name: &str, p: &PolicyRequest) -> Result<PolicyOut> {
        // A policy's hook runs a command or calls a URL as the server: admins only.
        self.require(
            Role::Admin,
            "setting drift policies (their hooks run on the server)",
        )?;
        let every = humantime::parse_duration(&p.every).map_err(|e| {
            ServiceError::Invalid(format!("every `{}`: {e} (e.g. 10m, 1h)", p.every))
        })?;
        let row = drift::set_policy(
            self.store(),
            NewPolicy {
                name: name.to_string(),
                bundle: p.bundle.clone(),
                select: p.select.clone(),
                every,
                intervals: p.intervals,
                rule: p.rule.clone(),
                hook: p.hook.clone(),
            },
            &self.who.name,
        )
        .await?;
        self.audit("drift.policy.set", &row.name, &drift::describe_policy(&row))
            .await?;
        Ok(policy_out(&row))
    }

    /// Removes a drift policy (operator role); [`ServiceError::NotFound`] if there is none.
    pub async fn remove_drift_policy(&self, name: &str) -> Result<()> {
        self.require(Role::Operator, "removing drift policies")?;
        drift::remove_policy(self.store(), name)
            .await
            .map_err(|e| match e {
                drift::DriftError::Invalid(m) if m.starts_with("no drift policy") => {
                    ServiceError::NotFound(m)
                }
                other => ServiceError::from(other),
            })?;
        self.audit("drift.policy.remove", name, "").await
    }

    /// The newest drift events, of one policy or all, newest first (viewer role; `limit` is
    /// clamped to 1..=500).
    pub async fn drift_events(&self, policy: Option<&str>, limit: i64) -> Result<Vec<EventOut>> {
        self.require(Role::Viewer, "drift events")?;
        let limit = limit.clamp(1, super::views::MAX_PAGE);
        Ok(self
            .store()
            .drift_events(policy, limit)
            .await?
            .iter()
            .map(event_out)
            .collect())
    }

    /// Evaluates every policy now and runs the hooks of new events.
    pub async fn evaluate_drift(&self) -> Result<Vec<EventOut>> {
        self.require(Role::Operator, "evaluating drift policies")?;
        let events = drift::evaluate_all(
            self.store(),
            self.svc.registry(),
            self.svc.data_dir(),
            drift::now_ns(),
        )
        .await?;
        self.svc.mark_drift_evaluated(crate::store::now_ms());
        self.audit("drift.evaluate", "", &format!("{} event(s)", events.len()))
            .await?;
        Ok(events.iter().map(event_out).collect())
    }
}

/// The evaluation task of `serve`: every `every` until `stop`.
pub async fn drift_evaluation_task(
    svc: FleetService,
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
        match drift::evaluate_all(svc.store(), svc.registry(), svc.data_dir(), drift::now_ns())
            .await
        {
            Ok(_) => svc.mark_drift_evaluated(crate::store::now_ms()),
            Err(e) => tracing::error!("drift policy evaluation failed: {e}"),
        }
    }
}
