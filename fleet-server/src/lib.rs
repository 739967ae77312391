//! Fleet server library: device registry and enrollment ([`ca`], [`store`]), model registry,
//! deltas and rollouts ([`registry`], [`rollout`]), ingest and the device API ([`api`]) over
//! mutual TLS ([`tls`]), fleet drift views and retrain triggers ([`drift`]); for operators,
//! the typed service layer ([`service`]) under the operator API ([`operator`]), the web
//! console ([`console`]) and the CLI (local, or remote through [`remote`]). The
//! `fleet-server` binary (`main.rs`) is a thin CLI over this.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod budget;
pub mod ca;
pub mod console;
pub mod drift;
pub mod group_commit;
pub mod operator;
pub mod registry;
pub mod remote;
pub mod retention;
pub mod rollout;
pub mod service;
pub mod store;
pub mod tls;
pub mod types;
pub mod validation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Version and git commit (`--version`, the health endpoint).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("EDGE_GIT_HASH"),
    ")"
);

/// `fleet-server serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data directory: the SQLite database (unless `database_url`), CA files, and files of
    /// earlier releases to import.
    pub data_dir: PathBuf,
    /// `postgres://…`; `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// DNS names / IP addresses in the server certificate.
    pub names: Vec<String>,
    /// Check-in interval, state thresholds, history and session lifetimes.
    pub settings: service::Settings,
    /// How often drift retrain policies are evaluated.
    pub drift_check: Duration,
    /// Largest bundle upload accepted through the operator API (bytes).
    pub max_bundle: usize,
    /// Memory for request bodies in flight, all requests together (bytes; [`budget`]).
    pub body_memory: u64,
    /// How long uploaded records are kept, per stream.
    pub retention: retention::Retention,
    /// Device writes (check-ins, uploads) stored per transaction at most ([`group_commit`]).
    pub group_commit: usize,
}

/// Opens storage, the CA and the registry, binds, and serves until `stop`. `on_bound` gets
/// the actual address (useful with port 0).
pub async fn serve(
    opts: ServeOptions,
    stop: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let store = store::FleetStore::open(&opts.data_dir, opts.database_url.as_deref()).await?;
    tracing::info!(database = store.describe(), "fleet database open");
    let ca = Arc::new(ca::FleetCa::open(&opts.data_dir, &store).await?);
    let registry = registry::Registry::new(store.clone(), &opts.data_dir)?;
    registry.import_files().await?;
    opts.settings.publish(&store).await?;
    let service = service::FleetService::new(store, registry, &opts.data_dir, opts.settings);
    let (cert, key) = ca.server_cert(&opts.names)?;
    let tls_cfg = tls::server_config(&ca.trust_pem(), &cert, &key)?;
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(Arc::new(tls_cfg));
    let ca = ca::CaHandle::new(ca);
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    if service.store().users().await?.is_empty() {
        tracing::warn!(
            "no operator accounts yet: add one with `fleet-server --data-dir {} user add NAME --role admin`",
            opts.data_dir.display()
        );
    }
    // PostgreSQL: this week's and the next weeks' record partitions exist before any
    // device uploads (housekeeping keeps them ahead).
    service
        .store()
        .ensure_record_partitions(store::now_ms())
        .await?;
    let addr = listener.local_addr()?;
    on_bound(addr);
    let evaluator = tokio::spawn(service::drift_evaluation_task(
        service.clone(),
        opts.drift_check,
        stop.clone(),
    ));
    if !opts.retention.keep.is_empty() {
        tracing::info!(retain = %opts.retention, "record retention");
    }
    let housekeeping = tokio::spawn(housekeeping(
        service.clone(),
        opts.retention.clone(),
        stop.clone(),
    ));
    let ca_watch = tokio::spawn(watch_ca(
        ca.clone(),
        service.store().clone(),
        opts.data_dir.clone(),
        opts.names.clone(),
        tls_tx,
        stop.clone(),
    ));
    let app = with_body_budget(
        router_with(
            &service,
            ca,
            opts.max_bundle,
            group_commit::GroupLimits::with_requests(opts.group_commit),
        ),
        budget::BodyBudget::new(opts.body_memory, Duration::from_secs(5)),
    );
    tls::serve(listener, tls_rx, app, stop).await;
    for (what, task) in [
        ("drift evaluation", evaluator),
        ("housekeeping", housekeeping),
        ("fleet CA watch", ca_watch),
    ] {
        if let Err(e) = task.await {
            tracing::error!(task = what, "background task ended abnormally: {e}");
        }
    }
    Ok(())
}

/// How often a server looks for a CA change (a rotation started or finished elsewhere).
pub const CA_CHECK_EVERY: Duration = Duration::from_secs(3);

/// Reloads the fleet CA when the database's changed: the new CA signs device certificates,
/// the server certificate is reissued when its issuer changed, and new TLS connections use
/// the new trust (connections already open keep theirs).
async fn watch_ca(
    ca: ca::CaHandle,
    store: store::FleetStore,
    data_dir: std::path::PathBuf,
    names: Vec<String>,
    tls: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(CA_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match ca::FleetCa::stored_generation(&store).await {
            Ok(g) if g == ca.current().generation() => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot read the fleet CA: {e}");
                continue;
            }
        }
        let fresh = match ca::FleetCa::open(&data_dir, &store).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot re-read the fleet CA: {e}");
                continue;
            }
        };
        let built = fresh
            .server_cert(&names)
            .map_err(anyhow::Error::from)
            .and_then(|(c, k)| tls::server_config(&fresh.trust_pem(), &c, &k));
        match built {
            Ok(cfg) => {
                tracing::info!(
                    ca = %fresh.ca_sha256,
                    previous = fresh.previous_sha256().as_deref().unwrap_or("none"),
                    "fleet CA changed: new certificates and TLS trust in use"
                );
                ca.replace(Arc::new(fresh));
                let _ = tls.send(Arc::new(cfg));
            }
            Err(e) => tracing::error!("fleet CA changed but the server cannot use it: {e:#}"),
        }
    }
}

/// Everything `serve` answers: the device API, the operator API, the console, `/healthz`.
pub fn router(
    service: &service::FleetService,
    ca: Arc<ca::FleetCa>,
    max_bundle: usize,
) -> axum::Router {
    router_with(
        service,
        ca::CaHandle::new(ca),
        max_bundle,
        group_commit::GroupLimits::with_requests(DEFAULT_GROUP_COMMIT),
    )
}

/// Device writes per transaction by default (`serve --group-commit`).
pub const DEFAULT_GROUP_COMMIT: usize = 256;

/// [`router`] with the device API's group-commit limits.
pub fn router_with(
    service: &service::FleetService,
    ca: ca::CaHandle,
    max_bundle: usize,
    group: group_commit::GroupLimits,
) -> axum::Router {
    api::router(api::AppState::new(service, ca, group))
        .merge(operator::router(operator::OperatorState {
            service: service.clone(),
            max_bundle,
        }))
        .merge(console::router(service.clone()))
        .route(
            "/healthz",
            axum::routing::get({
                let svc = service.clone();
                move || healthz(svc.clone())
            }),
        )
}

/// `app` with every request body charged to `budget` ([`budget::charge`]).
pub fn with_body_budget(app: axum::Router, budget: budget::BodyBudget) -> axum::Router {
    app.layer(axum::middleware::from_fn_with_state(budget, budget::charge))
}

/// Unauthenticated liveness for load balancers: 200 when the database answers.
async fn healthz(svc: service::FleetService) -> (axum::http::StatusCode, &'static str) {
    match svc.store().ping().await {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::error!("health check: database: {e}");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable\n",
            )
        }
    }
}

/// Every 10 minutes: record partitions created ahead (PostgreSQL), records, status history
/// past their retention and ended sessions deleted.
async fn housekeeping(
    svc: service::FleetService,
    retention: retention::Retention,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = store::now_ms();
        match svc.store().ensure_record_partitions(now).await {
            Ok(created) => {
                for p in created {
                    tracing::info!(partition = p, "created a week of record storage");
                }
            }
            Err(e) => tracing::error!("record partitions: {e}"),
        }
        match retention.apply(svc.store(), now).await {
            Ok(done) => {
                for (stream, n) in done.into_iter().filter(|(_, n)| *n > 0) {
                    tracing::info!(
                        stream = stream.name(),
                        records = n,
                        "retention: deleted old records"
                    );
                }
            }
            Err(e) => tracing::error!("retention: {e}"),
        }
        let s = svc.settings();
        match svc
            .store()
            .prune_history(now - service::ms(s.history_keep))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(points = n, "pruned device status history"),
            Ok(_) => {}
            Err(e) => tracing::error!("pruning status history: {e}"),
        }
        if let Err(e) = svc
            .store()
            .prune_sessions(now, now - service::ms(s.session_idle))
            .await
        {
            tracing::error!("pruning sessions: {e}");
        }
        // Sign-in failure counts whose window closed and whose lock is over.
        if let Err(e) = svc
            .store()
            .prune_login_failures(now - 15 * 60 * 1000, now)
            .await
        {
            tracing::error!("pruning sign-in failure counts: {e}");
        }
    }
}
