//! The operator read API on the device listener: `GET /v1/operator/drift` (the drift views
//! of [`crate::drift`], the same JSON as `fleet-server drift show`, as one array).
//!
//! Operators authenticate with `Authorization: Bearer <token>`; the SHA-256 of the
//! presented token is compared in constant time with the SHA-256 of the configured token
//! (`serve --operator-token-file FILE`, or `operator.token` in the data directory, created
//! with mode 0600 at the first start). No client certificate is involved: a device
//! certificate gives no operator access, and the token gives no device access.

use std::path::{Path, PathBuf};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::drift::{self, DriftError, DriftQuery};
use crate::registry::Registry;
use crate::store::FleetStore;

/// The name of the generated token file in the data directory.
pub const TOKEN_FILE: &str = "operator.token";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("operator token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("operator token file {0} is empty")]
    Empty(PathBuf),
    #[error("no OS randomness for the operator token: {0}")]
    Random(String),
}

/// What the operator handlers share.
#[derive(Debug, Clone)]
pub struct OperatorState {
    pub store: FleetStore,
    pub registry: Registry,
    /// SHA-256 of the operator token.
    pub token_sha256: [u8; 32],
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Equal in time independent of where the bytes differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SHA-256 of the operator token: from `file` (its content, trimmed), else from
/// `<data_dir>/operator.token`, created (mode 0600) with a new random token when missing.
/// Returns the hash and the file it came from; the token itself is never logged.
pub fn load_token(
    data_dir: &Path,
    file: Option<&Path>,
) -> Result<([u8; 32], PathBuf, bool), OperatorError> {
    let (path, created) = match file {
        Some(f) => (f.to_path_buf(), false),
        None => {
            let p = data_dir.join(TOKEN_FILE);
            let created = !p.exists();
            if created {
                let mut raw = [0u8; 24];
                getrandom::getrandom(&mut raw).map_err(|e| OperatorError::Random(e.to_string()))?;
                let token = format!("op-{}\n", edge_protocols::bundle::file::hex(&raw));
                write_private(&p, token.as_bytes()).map_err(|source| OperatorError::Io {
                    path: p.clone(),
                    source,
                })?;
            }
            (p, created)
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| OperatorError::Io {
        path: path.clone(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(OperatorError::Empty(path));
    }
    Ok((sha256(token.as_bytes()), path, created))
}

/// Creates `path` readable by the owner only (never replacing an existing file).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub fn router(state: OperatorState) -> Router {
    Router::new()
        .route(drift::API_PATH, get(drift_views))
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    tracing::debug!(%status, "operator API: {msg}");
    json_response(status, &serde_json::json!({ "error": msg }))
}

fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn authorized(headers: &HeaderMap, want: &[u8; 32]) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ct_eq(&sha256(t.trim().as_bytes()), want))
}

async fn drift_views(
    State(st): State<OperatorState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !authorized(&headers, &st.token_sha256) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "operator token required: Authorization: Bearer <token>",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let pairs = match query {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let q = match DriftQuery::from_pairs(&pairs, drift::now_ns()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match drift::show(&st.store, &st.registry, &q).await {
        Ok(views) => json_response(StatusCode::OK, &views),
        Err(DriftError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => {
            tracing::error!("operator drift view failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
