//! The operator API: JSON over HTTPS under `/v1/operator/…`, on the device listener, for
//! the console and for scripts (and the remote CLI). Every route is declared once in
//! [`routes`] with the least role it needs; `openapi.json` describes the same routes (a
//! test holds the two together) and is served at `/v1/operator/openapi.json`.
//!
//! Authentication ([`auth`]): an API token (`Authorization: Bearer fleet_…`) or the
//! console's session cookie (`fleet_session`, HttpOnly, Secure, SameSite=Strict) — never a
//! device certificate. State changes made with the cookie need the session's CSRF token in
//! `X-CSRF-Token`. The role is checked here before the request body is read, and again by
//! the service layer, which also writes the audit log.
//!
//! Errors are `{"error": "…", "kind": "…"}` with the status of [`ErrorKind`]
//! (429 carries `Retry-After`, 401 `WWW-Authenticate`).

pub mod auth;
mod handlers;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::service::{ErrorKind, FleetService, ServiceError};
use crate::types::Role;

/// Where the operator API lives.
pub const PREFIX: &str = "/v1/operator";

/// The machine-readable description of the API (OpenAPI 3.1).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Request bodies other than bundles are JSON of at most this many bytes.
pub const MAX_JSON: usize = 1 << 20;

/// What the operator handlers share.
#[derive(Debug, Clone)]
pub struct OperatorState {
    /// The service the handlers call, acting for the authenticated caller.
    pub service: FleetService,
    /// Largest bundle upload accepted (bytes).
    pub max_bundle: usize,
}

/// One route: method, path (axum syntax, `{id}`), the least role it needs (`None`: no
/// sign-in), and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path, axum syntax (`/v1/operator/devices/{id}`).
    pub path: &'static str,
    /// The least role it needs; `None`: no authentication (sign-in, the OpenAPI document).
    pub role: Option<Role>,
}

/// Every route of the operator API with its handler.
pub fn routes(max_bundle: usize) -> Vec<(RouteSpec, MethodRouter<OperatorState>)> {
    use handlers as h;
    use Role::{Admin, Operator, Viewer};
    let r = |method, path, role, mr| (RouteSpec { method, path, role }, mr);
    vec![
        r("GET", "/v1/operator/openapi.json", None, get(h::openapi)),
        r("POST", "/v1/operator/session", None, post(h::login)),
        r(
            "DELETE",
            "/v1/operator/session",
            Some(Viewer),
            delete(h::logout),
        ),
        r("GET", "/v1/operator/whoami", Some(Viewer), get(h::whoami)),
        r("GET", "/v1/operator/health", Some(Viewer), get(h::health)),
        r(
            "GET",
            "/v1/operator/overview",
            Some(Viewer),
            get(h::overview),
        ),
        r("GET", "/v1/operator/devices", Some(Viewer), get(h::devices)),
        r(
            "GET",
            "/v1/operator/devices/{id}",
            Some(Viewer),
            get(h::device),
        ),
        r(
            "GET",
            "/v1/operator/devices/{id}/history",
            Some(Viewer),
            get(h::device_history),
        ),
        r(
            "GET",
            "/v1/operator/devices/{id}/drift",
            Some(Viewer),
            get(h::device_drift),
        ),
        r(
            "GET",
            "/v1/operator/devices/{id}/predictions",
            Some(Viewer),
            get(h::device_predictions),
        ),
        r(
            "PUT",
            "/v1/operator/devices/{id}/labels",
            Some(Operator),
            put(h::set_labels),
        ),
        r(
            "POST",
            "/v1/operator/devices/{id}/revoke",
            Some(Operator),
            post(h::revoke_device),
        ),
        r(
            "POST",
            "/v1/operator/enrollment-tokens",
            Some(Operator),
            post(h::enrollment_token),
        ),
        r(
            "GET",
            "/v1/operator/devices/{id}/config",
            Some(Viewer),
            get(h::device_config),
        ),
        r(
            "POST",
            "/v1/operator/devices/{id}/commands",
            Some(Operator),
            post(h::send_command),
        ),
        r(
            "GET",
            "/v1/operator/devices/{id}/commands",
            Some(Viewer),
            get(h::device_commands),
        ),
        r(
            "GET",
            "/v1/operator/commands/{id}",
            Some(Viewer),
            get(h::command),
        ),
        r("GET", "/v1/operator/configs", Some(Viewer), get(h::configs)),
        r(
            "POST",
            "/v1/operator/configs/{name}",
            Some(Operator),
            post(h::push_config),
        ),
        r(
            "GET",
            "/v1/operator/configs/{name}/{version}",
            Some(Viewer),
            get(h::config),
        ),
        r(
            "GET",
            "/v1/operator/devices/{id}/agent",
            Some(Viewer),
            get(h::device_agent),
        ),
        r(
            "GET",
            "/v1/operator/agent/releases",
            Some(Viewer),
            get(h::releases),
        ),
        r(
            "POST",
            "/v1/operator/agent/releases",
            Some(Operator),
            post(h::push_release).layer(axum::extract::DefaultBodyLimit::max(
                crate::service::releases::MAX_RELEASE_BYTES,
            )),
        ),
        r(
            "GET",
            "/v1/operator/agent/keys",
            Some(Viewer),
            get(h::release_keys),
        ),
        r(
            "POST",
            "/v1/operator/agent/keys",
            Some(Admin),
            post(h::trust_release_key),
        ),
        r("GET", "/v1/operator/keys", Some(Viewer), get(h::keys)),
        r("POST", "/v1/operator/keys", Some(Admin), post(h::trust_key)),
        r("GET", "/v1/operator/bundles", Some(Viewer), get(h::bundles)),
        r(
            "POST",
            "/v1/operator/bundles",
            Some(Operator),
            post(h::push_bundle).layer(axum::extract::DefaultBodyLimit::max(max_bundle)),
        ),
        r(
            "GET",
            "/v1/operator/bundles/{name}/deltas",
            Some(Viewer),
            get(h::bundle_deltas),
        ),
        r(
            "POST",
            "/v1/operator/bundles/{name}/deltas",
            Some(Operator),
            post(h::compute_delta),
        ),
        r(
            "POST",
            "/v1/operator/bundles/{name}/{version_number}/validate",
            Some(Operator),
            post(h::validate_bundle),
        ),
        r("GET", "/v1/operator/gates", Some(Viewer), get(h::gates)),
        r(
            "PUT",
            "/v1/operator/gates/{bundle}",
            Some(Operator),
            put(h::set_gate).layer(axum::extract::DefaultBodyLimit::max(
                crate::service::MAX_HOLDOUT_BYTES,
            )),
        ),
        r(
            "DELETE",
            "/v1/operator/gates/{bundle}",
            Some(Operator),
            delete(h::remove_gate),
        ),
        r(
            "GET",
            "/v1/operator/rollouts",
            Some(Viewer),
            get(h::rollouts),
        ),
        r(
            "POST",
            "/v1/operator/rollouts",
            Some(Operator),
            post(h::start_rollout),
        ),
        r(
            "GET",
            "/v1/operator/rollouts/{id}",
            Some(Viewer),
            get(h::rollout),
        ),
        r(
            "POST",
            "/v1/operator/rollouts/{id}/promote",
            Some(Operator),
            post(h::promote),
        ),
        r(
            "POST",
            "/v1/operator/rollouts/{id}/halt",
            Some(Operator),
            post(h::halt),
        ),
        r(
            "POST",
            "/v1/operator/rollouts/{id}/resume",
            Some(Operator),
            post(h::resume),
        ),
        r(
            "POST",
            "/v1/operator/rollouts/{id}/rollback",
            Some(Operator),
            post(h::rollback),
        ),
        r(
            "GET",
            "/v1/operator/drift",
            Some(Viewer),
            get(h::drift_views),
        ),
        r(
            "GET",
            "/v1/operator/drift/heatmap",
            Some(Viewer),
            get(h::drift_heatmap),
        ),
        r(
            "GET",
            "/v1/operator/drift/policies",
            Some(Viewer),
            get(h::drift_policies),
        ),
        r(
            "PUT",
            "/v1/operator/drift/policies/{name}",
            Some(Admin),
            put(h::set_drift_policy),
        ),
        r(
            "DELETE",
            "/v1/operator/drift/policies/{name}",
            Some(Operator),
            delete(h::remove_drift_policy),
        ),
        r(
            "GET",
            "/v1/operator/drift/events",
            Some(Viewer),
            get(h::drift_events),
        ),
        r(
            "POST",
            "/v1/operator/drift/evaluate",
            Some(Operator),
            post(h::evaluate_drift),
        ),
        r("GET", "/v1/operator/alarms", Some(Viewer), get(h::alarms)),
        r(
            "POST",
            "/v1/operator/alarms/{id}/ack",
            Some(Operator),
            post(h::ack_alarm),
        ),
        r("GET", "/v1/operator/audit", Some(Viewer), get(h::audit)),
        r("GET", "/v1/operator/users", Some(Admin), get(h::users)),
        r("POST", "/v1/operator/users", Some(Admin), post(h::add_user)),
        r(
            "PUT",
            "/v1/operator/users/{name}",
            Some(Viewer),
            put(h::update_user),
        ),
        r(
            "DELETE",
            "/v1/operator/users/{name}",
            Some(Admin),
            delete(h::remove_user),
        ),
        r("GET", "/v1/operator/tokens", Some(Viewer), get(h::tokens)),
        r(
            "POST",
            "/v1/operator/tokens",
            Some(Viewer),
            post(h::create_token),
        ),
        r(
            "DELETE",
            "/v1/operator/tokens/{id}",
            Some(Viewer),
            delete(h::revoke_token),
        ),
        r("GET", "/v1/operator/ca", Some(Viewer), get(h::ca)),
        r(
            "GET",
            "/v1/operator/ca/status",
            Some(Viewer),
            get(h::ca_status),
        ),
        r(
            "POST",
            "/v1/operator/ca/rotate",
            Some(Admin),
            post(h::ca_rotate),
        ),
        r(
            "POST",
            "/v1/operator/ca/finish",
            Some(Admin),
            post(h::ca_finish),
        ),
    ]
}

/// The operator API's router.
pub fn router(state: OperatorState) -> Router {
    let mut app: Router<OperatorState> = Router::new();
    for (spec, mr) in routes(state.max_bundle) {
        let mr = match spec.role {
            Some(role) => mr.route_layer(axum::middleware::from_fn_with_state(
                (state.clone(), role),
                authorize,
            )),
            None => mr,
        };
        app = app.route(spec.path, mr);
    }
    app.layer(axum::extract::DefaultBodyLimit::max(MAX_JSON))
        .with_state(state)
}

/// Authenticates the caller (token or session + CSRF), checks the route's role, and hands
/// the [`crate::service::Principal`] to the handler.
async fn authorize(
    State((st, role)): State<(OperatorState, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let p = match auth::authenticate(&st.service, req.headers(), req.method()).await {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    if p.role < role {
        return error_response(&ServiceError::Forbidden(format!(
            "{} {} needs the {role} role; {} has {}",
            req.method(),
            req.uri().path(),
            p.name,
            p.role
        )));
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

/// The status of an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// The error message.
    pub error: String,
    /// Its kind (which decides the status).
    pub kind: ErrorKind,
}

/// The answer for a service error: its status, an [`ErrorBody`], `Retry-After` when
/// throttled, `WWW-Authenticate` when unauthorized. Server errors are logged.
pub fn error_response(e: &ServiceError) -> Response {
    let kind = e.kind();
    let status = status_of(kind);
    if status.is_server_error() {
        tracing::error!(%status, "operator API: {e}");
    } else {
        tracing::debug!(%status, "operator API: {e}");
    }
    let mut r = json_response(
        status,
        &ErrorBody {
            error: e.to_string(),
            kind,
        },
    );
    match e {
        ServiceError::Throttled { retry_after_s, .. } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        ServiceError::Unauthorized(_) => {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fleet-server\""),
            );
        }
        _ => {}
    }
    r
}

/// `v` as a JSON answer with `status` (not cached). A value that fails to serialize is a 500.
pub fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Body::from(body),
        )
            .into_response(),
        Err(e) => error_response(&ServiceError::Internal(format!("JSON encoding: {e}"))),
    }
}

/// Whether a method changes state (needs the CSRF token with a session).
pub fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}
