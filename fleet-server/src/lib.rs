//! Fleet server library: device registry and enrollment ([`ca`], [`store`]), model registry,
//! deltas and rollouts ([`registry`], [`rollout`]), ingest and the device API ([`api`]) over
//! mutual TLS ([`tls`]), fleet drift views and retrain triggers ([`drift`]) and the operator
//! read API ([`operator`]). The `fleet-server` binary (`main.rs`) is a thin CLI over this.

#![forbid(unsafe_code)]

pub mod api;
pub mod ca;
pub mod drift;
pub mod operator;
pub mod registry;
pub mod rollout;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// `fleet-server serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    /// DNS names / IP addresses in the server certificate.
    pub names: Vec<String>,
    pub checkin_s: u64,
    /// File holding the operator API token; default `<data_dir>/operator.token` (created).
    pub operator_token_file: Option<PathBuf>,
    /// How often drift retrain policies are evaluated.
    pub drift_check: std::time::Duration,
}

/// Opens storage, the CA and the registry, binds, and serves until `stop`. `on_bound` gets
/// the actual address (useful with port 0).
pub async fn serve(
    opts: ServeOptions,
    stop: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let store = store::FleetStore::open_dir(&opts.data_dir).await?;
    let ca = Arc::new(ca::FleetCa::open(&opts.data_dir)?);
    let registry = registry::Registry::new(store.clone(), &opts.data_dir)?;
    let (cert, key) = ca.server_cert(&opts.names)?;
    let tls_cfg = tls::server_config(&ca.ca_pem, &cert, &key)?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    let (token_sha256, token_path, created) =
        operator::load_token(&opts.data_dir, opts.operator_token_file.as_deref())?;
    if created {
        tracing::info!(file = %token_path.display(), "created the operator API token (mode 0600)");
    } else {
        tracing::info!(file = %token_path.display(), "operator API token");
    }
    let addr = listener.local_addr()?;
    on_bound(addr);
    let evaluator = tokio::spawn(drift::evaluation_task(
        store.clone(),
        registry.clone(),
        opts.data_dir.clone(),
        opts.drift_check,
        stop.clone(),
    ));
    let app = api::router(api::AppState {
        store: store.clone(),
        registry: registry.clone(),
        ca,
        checkin_s: opts.checkin_s,
        rollouts: Default::default(),
    })
    .merge(operator::router(operator::OperatorState {
        store,
        registry,
        token_sha256,
    }));
    tls::serve(listener, tls_cfg, app, stop).await;
    let _ = evaluator.await;
    Ok(())
}
