//! The operator API's handlers: parse the request, call the service as the authenticated
//! principal, answer JSON. No decisions are made here.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::{auth, error_response, json_response, OperatorState};
use crate::drift::{DriftQuery, HeatmapQuery};
use crate::rollout::StartRollout;
use crate::service::views::*;
use crate::service::{Principal, ServiceError};
use crate::tls::PeerAddr;
use crate::types::RolloutAction;

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;
type Who = Extension<Principal>;

fn pairs(q: Pairs) -> Result<Vec<(String, String)>, ServiceError> {
    q.map(|Query(p)| p)
        .map_err(|e| ServiceError::Invalid(e.body_text()))
}

fn respond<T: serde::Serialize>(r: Result<T, ServiceError>) -> Response {
    match r {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

fn created<T: serde::Serialize>(r: Result<T, ServiceError>) -> Response {
    match r {
        Ok(v) => json_response(StatusCode::CREATED, &v),
        Err(e) => error_response(&e),
    }
}

fn no_content(r: Result<(), ServiceError>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(&e),
    }
}

/// A JSON request body (`Content-Type: application/json`).
fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ServiceError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(ServiceError::Invalid(format!(
            "the body must be JSON (Content-Type: application/json; got `{ct}`)"
        )));
    }
    serde_json::from_slice(body).map_err(|e| ServiceError::Invalid(format!("request body: {e}")))
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

// ---- sessions ----

pub(super) async fn login(
    State(st): State<OperatorState>,
    addr: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        if !auth::same_origin(&headers) {
            return Err(ServiceError::Forbidden("cross-site sign-in refused".into()));
        }
        let req: LoginRequest = json_body(&headers, &body)?;
        let client = addr.map_or_else(|| "unknown".to_string(), |a| a.0 .0.ip().to_string());
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        st.service
            .login(&req.user, &req.password, &client, ua)
            .await
    }
    .await;
    match r {
        Ok((reply, id)) => {
            let mut resp = json_response(StatusCode::OK, &reply);
            let ttl = (reply.expires_at - crate::store::now_ms()) / 1000;
            if let Some(c) = auth::session_cookie(&id, ttl) {
                resp.headers_mut().insert(header::SET_COOKIE, c);
            }
            resp
        }
        Err(e) => error_response(&e),
    }
}

pub(super) async fn logout(State(st): State<OperatorState>, headers: HeaderMap) -> Response {
    let r = async {
        let s = auth::session(&st.service, &headers)
            .await
            .map_err(|_| ServiceError::Invalid("no console session to end".into()))?;
        st.service.logout(&s).await
    }
    .await;
    match r {
        Ok(()) => (
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, auth::clear_session_cookie())],
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn whoami(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).whoami().await)
}

pub(super) async fn health(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).health().await)
}

// ---- devices ----

pub(super) async fn overview(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).overview().await)
}

pub(super) async fn devices(
    State(st): State<OperatorState>,
    Extension(p): Who,
    q: Pairs,
) -> Response {
    let q = match pairs(q).and_then(|p| DeviceQuery::from_pairs(&p)) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    respond(st.service.acting(p).devices(&q).await)
}

pub(super) async fn device(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).device(&id).await)
}

pub(super) async fn device_history(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
    q: Pairs,
) -> Response {
    match pairs(q).and_then(|p| HistoryQuery::from_pairs(&p)) {
        Ok(q) => respond(st.service.acting(p).device_history(&id, &q).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn device_drift(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
    q: Pairs,
) -> Response {
    match pairs(q).and_then(|p| DeviceDriftQuery::from_pairs(&p)) {
        Ok(q) => respond(st.service.acting(p).device_drift(&id, &q).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn device_predictions(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
    q: Pairs,
) -> Response {
    let limit = pairs(q).and_then(|pairs| {
        let mut ps = Params::new(&pairs);
        let l = ps.int("limit")?.unwrap_or(20);
        ps.finish()?;
        Ok(l)
    });
    match limit {
        Ok(l) => respond(st.service.acting(p).device_predictions(&id, l).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn set_labels(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<LabelsRequest>(&headers, &body) {
        Ok(r) => respond(st.service.acting(p).set_labels(&id, &r.labels).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn revoke_device(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).revoke_device(&id).await)
}

pub(super) async fn enrollment_token(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<EnrollmentTokenRequest>(&headers, &body) {
        Ok(r) => created(st.service.acting(p).create_enrollment_token(&r).await),
        Err(e) => error_response(&e),
    }
}

// ---- models ----

pub(super) async fn keys(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).keys().await)
}

pub(super) async fn trust_key(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<TrustKeyRequest>(&headers, &body) {
        Ok(r) => created(st.service.acting(p).trust_key(&r.public_pem).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn bundles(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).bundles().await)
}

pub(super) async fn push_bundle(
    State(st): State<OperatorState>,
    Extension(p): Who,
    body: Bytes,
) -> Response {
    created(st.service.acting(p).push_bundle(body.to_vec()).await)
}

pub(super) async fn bundle_deltas(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
) -> Response {
    respond(st.service.acting(p).bundle_deltas(&name).await)
}

pub(super) async fn compute_delta(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<DeltaRequest>(&headers, &body) {
        Ok(r) => respond(
            st.service
                .acting(p)
                .compute_delta(&name, r.from, r.to)
                .await,
        ),
        Err(e) => error_response(&e),
    }
}

// ---- configurations ----

pub(super) async fn configs(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).configs().await)
}

pub(super) async fn config(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path((name, version)): Path<(String, i64)>,
) -> Response {
    respond(st.service.acting(p).config(&name, version).await)
}

pub(super) async fn push_config(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<crate::service::configs::ConfigPush>(&headers, &body) {
        Ok(c) => created(st.service.acting(p).push_config(&name, &c).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn device_config(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).device_config(&id).await)
}

// ---- agent releases ----

pub(super) async fn releases(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).releases().await)
}

pub(super) async fn push_release(
    State(st): State<OperatorState>,
    Extension(p): Who,
    body: Bytes,
) -> Response {
    created(st.service.acting(p).push_release(body.to_vec()).await)
}

pub(super) async fn release_keys(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).release_keys().await)
}

pub(super) async fn trust_release_key(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<TrustKeyRequest>(&headers, &body) {
        Ok(r) => created(st.service.acting(p).trust_release_key(&r.public_pem).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn device_agent(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).device_agent(&id).await)
}

// ---- the fleet CA ----

pub(super) async fn ca_status(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).ca_status().await)
}

pub(super) async fn ca_rotate(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).rotate_ca().await)
}

pub(super) async fn ca_finish(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = if body.is_empty() {
        Ok(FinishRotation::default())
    } else {
        json_body::<FinishRotation>(&headers, &body)
    };
    match f {
        Ok(f) => respond(st.service.acting(p).finish_ca_rotation(f.force).await),
        Err(e) => error_response(&e),
    }
}

// ---- commands ----

pub(super) async fn send_command(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<crate::service::commands::CommandRequest>(&headers, &body) {
        Ok(c) => created(st.service.acting(p).send_command(&id, &c).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn device_commands(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).device_commands(&id).await)
}

pub(super) async fn command(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).command(&id).await)
}

// ---- rollouts ----

pub(super) async fn rollouts(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).rollouts().await)
}

pub(super) async fn rollout(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).rollout(&id).await)
}

pub(super) async fn start_rollout(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<StartRollout>(&headers, &body) {
        Ok(r) => created(st.service.acting(p).start_rollout(&r).await),
        Err(e) => error_response(&e),
    }
}

async fn act(st: OperatorState, p: Principal, id: String, a: RolloutAction) -> Response {
    respond(st.service.acting(p).rollout_action(&id, a).await)
}

pub(super) async fn promote(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    act(st, p, id, RolloutAction::Promote).await
}

pub(super) async fn halt(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    act(st, p, id, RolloutAction::Halt).await
}

pub(super) async fn resume(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    act(st, p, id, RolloutAction::Resume).await
}

pub(super) async fn rollback(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    act(st, p, id, RolloutAction::Rollback).await
}

// ---- drift ----

pub(super) async fn drift_views(
    State(st): State<OperatorState>,
    Extension(p): Who,
    q: Pairs,
) -> Response {
    let q = pairs(q).and_then(|pairs| {
        DriftQuery::from_pairs(&pairs, crate::drift::now_ns()).map_err(ServiceError::from)
    });
    match q {
        Ok(q) => respond(st.service.acting(p).drift_views(&q).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn drift_heatmap(
    State(st): State<OperatorState>,
    Extension(p): Who,
    q: Pairs,
) -> Response {
    match pairs(q).and_then(|pairs| HeatmapQuery::from_pairs(&pairs, crate::drift::now_ns())) {
        Ok(q) => respond(st.service.acting(p).drift_heatmap(&q).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn drift_policies(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).drift_policies().await)
}

pub(super) async fn set_drift_policy(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<PolicyRequest>(&headers, &body) {
        Ok(r) => respond(st.service.acting(p).set_drift_policy(&name, &r).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn remove_drift_policy(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
) -> Response {
    no_content(st.service.acting(p).remove_drift_policy(&name).await)
}

pub(super) async fn drift_events(
    State(st): State<OperatorState>,
    Extension(p): Who,
    q: Pairs,
) -> Response {
    let q = pairs(q).and_then(|pairs| {
        let mut ps = Params::new(&pairs);
        let policy = ps.one("policy");
        let limit = ps.int("limit")?.unwrap_or(50);
        ps.finish()?;
        Ok((policy, limit))
    });
    match q {
        Ok((policy, limit)) => respond(
            st.service
                .acting(p)
                .drift_events(policy.as_deref(), limit)
                .await,
        ),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn evaluate_drift(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).evaluate_drift().await)
}

// ---- alarms and audit ----

pub(super) async fn alarms(
    State(st): State<OperatorState>,
    Extension(p): Who,
    q: Pairs,
) -> Response {
    match pairs(q).and_then(|p| AlarmListQuery::from_pairs(&p)) {
        Ok(q) => respond(st.service.acting(p).alarms(&q).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn ack_alarm(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).ack_alarm(&id).await)
}

pub(super) async fn audit(
    State(st): State<OperatorState>,
    Extension(p): Who,
    q: Pairs,
) -> Response {
    match pairs(q).and_then(|p| AuditListQuery::from_pairs(&p)) {
        Ok(q) => respond(st.service.acting(p).audit_log(&q).await),
        Err(e) => error_response(&e),
    }
}

// ---- accounts ----

pub(super) async fn users(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).users().await)
}

pub(super) async fn add_user(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<NewUser>(&headers, &body) {
        Ok(u) => created(st.service.acting(p).add_user(&u).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn update_user(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<UserUpdate>(&headers, &body) {
        Ok(u) => respond(st.service.acting(p).update_user(&name, &u).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn remove_user(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(name): Path<String>,
) -> Response {
    no_content(st.service.acting(p).remove_user(&name).await)
}

pub(super) async fn tokens(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).tokens().await)
}

pub(super) async fn create_token(
    State(st): State<OperatorState>,
    Extension(p): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match json_body::<NewToken>(&headers, &body) {
        Ok(t) => created(st.service.acting(p).create_token(&t).await),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn revoke_token(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(id): Path<String>,
) -> Response {
    respond(st.service.acting(p).revoke_token(&id).await)
}

pub(super) async fn ca(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    match st.service.acting(p).ca_pem().await {
        Ok(pem) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn gates(State(st): State<OperatorState>, Extension(p): Who) -> Response {
    respond(st.service.acting(p).gates().await)
}

/// The query holds the holdout's name and the limits; the body is the recording.
pub(super) async fn set_gate(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(bundle): Path<String>,
    q: Pairs,
    body: Bytes,
) -> Response {
    let req = pairs(q).and_then(|pairs| {
        let mut ps = Params::new(&pairs);
        let req = GateRequest {
            holdout_name: ps.one("holdout_name").unwrap_or_default(),
            rules: crate::validation::GateRules {
                label_tag: ps.one("label_tag"),
                label_kind: ps.one("label_kind"),
                label_horizon: ps.one("label_horizon"),
                min_accuracy: ps.parse("min_accuracy")?,
                min_recall: ps.parse("min_recall")?,
                max_mae: ps.parse("max_mae")?,
                max_alarm_rate: ps.parse("max_alarm_rate")?,
                min_predictions: ps.parse("min_predictions")?.unwrap_or(1),
            },
        };
        ps.finish()?;
        Ok(req)
    });
    match req {
        Ok(r) => respond(
            st.service
                .acting(p)
                .set_gate(&bundle, &r, body.to_vec())
                .await,
        ),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn remove_gate(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path(bundle): Path<String>,
) -> Response {
    no_content(st.service.acting(p).remove_gate(&bundle).await)
}

pub(super) async fn validate_bundle(
    State(st): State<OperatorState>,
    Extension(p): Who,
    Path((name, version_number)): Path<(String, i64)>,
) -> Response {
    respond(
        st.service
            .acting(p)
            .validate_bundle(&name, version_number)
            .await,
    )
}
