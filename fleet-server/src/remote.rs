//! [`RemoteFleet`]: the operator operations over the HTTPS operator API, for the CLI's
//! `--server URL --token-file F`. Same types in and out as the service, so a remote
//! command prints exactly what the local one does; errors come back with their kind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::drift::{percent_encode, DriftQuery, DriftRecordOut, DriftView, Heatmap, HeatmapQuery};
use crate::operator::ErrorBody;
use crate::rollout::StartRollout;
use crate::service::commands::{CommandOut, CommandRequest};
use crate::service::configs::{ConfigOut, ConfigPush, DeviceConfig};
use crate::service::releases::{DeviceAgent, ReleaseOut};
use crate::service::views::*;
use crate::service::{ErrorKind, FleetOps, Result, ServiceError};
use crate::store::{AlarmRow, ApiTokenRow, AuditEntry, ConfigRow, ReleaseRow, TrustedKey};
use crate::types::RolloutAction;

/// Where the server is and how to reach it.
pub struct RemoteFleet {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    timeout: Duration,
}

impl std::fmt::Debug for RemoteFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFleet")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// The largest answer the remote CLI reads (a page of devices or audit entries is far less).
const MAX_ANSWER: usize = 64 << 20;

/// `https://host[:port]` → (host, port).
fn parse_url(url: &str) -> Result<(String, u16)> {
    let bad = || {
        ServiceError::Invalid(format!(
            "--server `{url}` must be https://host[:port] (the operator API is TLS only)"
        ))
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(bad)?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 443,
        };
        return Ok((h.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        None => Ok((rest.to_string(), 443)),
    }
}

fn query_string(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    format!("?{}", q.join("&"))
}

enum Body {
    None,
    Json(Vec<u8>),
    Octets(Vec<u8>),
}

impl RemoteFleet {
    /// `ca`: the PEM file to trust for the server (the fleet CA, `fleet-server ca export`);
    /// `None` uses the operating system's trust store.
    pub fn new(url: &str, token: String, ca: Option<&Path>) -> Result<RemoteFleet> {
        let (host, port) = parse_url(url)?;
        let tls = edge_wire::tls::client_config(ca, None)
            .map_err(|e| ServiceError::Invalid(format!("TLS setup: {e}")))?;
        Ok(RemoteFleet {
            host,
            port,
            tls,
            token,
            timeout: Duration::from_secs(300),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let target = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let conn = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ServiceError::Internal(format!("cannot reach {target}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(self.host.clone()).map_err(internal)?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ServiceError::Internal(format!("TLS with {target}: {e}")))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(internal)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", &target)
                .header("authorization", format!("Bearer {}", self.token))
                .header(
                    "user-agent",
                    concat!("fleet-server-cli/", env!("CARGO_PKG_VERSION")),
                );
            let bytes = match body {
                Body::None => Vec::new(),
                Body::Json(b) => {
                    req = req.header("content-type", "application/json");
                    b
                }
                Body::Octets(b) => {
                    req = req.header("content-type", "application/octet-stream");
                    b
                }
            };
            let req = req.body(Full::new(Bytes::from(bytes))).map_err(internal)?;
            let resp = send.send_request(req).await.map_err(internal)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    ServiceError::Internal(format!(
                        "{target}{path}: answer unreadable or over {} MiB: {e}",
                        MAX_ANSWER >> 20
                    ))
                })?
                .to_bytes();
            Ok((status, headers, body))
        };
        tokio::time::timeout(self.timeout, conn)
            .await
            .map_err(|_| ServiceError::Internal(format!("{target}{path}: no answer in time")))?
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Body) -> Result<T> {
        let bytes = self.raw(method, path, body).await?;
        if bytes.is_empty() {
            // 204: `()` and friends deserialize from null.
            return serde_json::from_slice(b"null").map_err(internal);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Internal(format!("{path}: unexpected answer: {e}")))
    }

    async fn raw(&self, method: Method, path: &str, body: Body) -> Result<Bytes> {
        let (status, headers, bytes) = self.send(method, path, body).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        let retry = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ServiceError::of_kind(e.kind, e.error, retry)),
            Err(_) => Err(ServiceError::of_kind(
                match status {
                    StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
                    StatusCode::FORBIDDEN => ErrorKind::Forbidden,
                    StatusCode::NOT_FOUND => ErrorKind::NotFound,
                    s if s.is_client_error() => ErrorKind::Invalid,
                    _ => ErrorKind::Internal,
                },
                format!("{path}: {status}: {}", String::from_utf8_lossy(&bytes)),
                retry,
            )),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, q: &[(String, String)]) -> Result<T> {
        self.call(
            Method::GET,
            &format!("{path}{}", query_string(q)),
            Body::None,
        )
        .await
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        b: &B,
    ) -> Result<T> {
        let body = serde_json::to_vec(b).map_err(internal)?;
        self.call(method, path, Body::Json(body)).await
    }
}

const P: &str = crate::operator::PREFIX;

fn seg(s: &str) -> String {
    percent_encode(s)
}

impl FleetOps for RemoteFleet {
    async fn whoami(&self) -> Result<WhoAmI> {
        self.get(&format!("{P}/whoami"), &[]).await
    }
    async fn health(&self) -> Result<Health> {
        self.get(&format!("{P}/health"), &[]).await
    }
    async fn overview(&self) -> Result<Overview> {
        self.get(&format!("{P}/overview"), &[]).await
    }
    async fn devices(&self, q: &DeviceQuery) -> Result<DevicePage> {
        self.get(&format!("{P}/devices"), &q.to_pairs()).await
    }
    async fn device(&self, id: &str) -> Result<DeviceDetail> {
        self.get(&format!("{P}/devices/{}", seg(id)), &[]).await
    }
    async fn device_history(&self, id: &str, q: &HistoryQuery) -> Result<History> {
        self.get(&format!("{P}/devices/{}/history", seg(id)), &q.to_pairs())
            .await
    }
    async fn device_drift(&self, id: &str, q: &DeviceDriftQuery) -> Result<Vec<DriftRecordOut>> {
        self.get(&format!("{P}/devices/{}/drift", seg(id)), &q.to_pairs())
            .await
    }
    async fn device_predictions(&self, id: &str, limit: i64) -> Result<Vec<PredictionOut>> {
        self.get(
            &format!("{P}/devices/{}/predictions", seg(id)),
            &[("limit".into(), limit.to_string())],
        )
        .await
    }
    async fn set_labels(&self, id: &str, labels: &[String]) -> Result<DeviceSummary> {
        let body = LabelsRequest {
            labels: labels.to_vec(),
        };
        self.json(
            Method::PUT,
            &format!("{P}/devices/{}/labels", seg(id)),
            &body,
        )
        .await
    }
    async fn revoke_device(&self, id: &str) -> Result<DeviceSummary> {
        self.call(
            Method::POST,
            &format!("{P}/devices/{}/revoke", seg(id)),
            Body::None,
        )
        .await
    }
    async fn create_enrollment_token(&self, r: &EnrollmentTokenRequest) -> Result<EnrollmentToken> {
        self.json(Method::POST, &format!("{P}/enrollment-tokens"), r)
            .await
    }
    async fn keys(&self) -> Result<Vec<TrustedKey>> {
        self.get(&format!("{P}/keys"), &[]).await
    }
    async fn trust_key(&self, pem: &str) -> Result<TrustedKey> {
        let body = TrustKeyRequest {
            public_pem: pem.to_string(),
        };
        self.json(Method::POST, &format!("{P}/keys"), &body).await
    }
    async fn releases(&self) -> Result<Vec<ReleaseRow>> {
        self.get(&format!("{P}/agent/releases"), &[]).await
    }
    async fn push_release(&self, bytes: Vec<u8>) -> Result<ReleaseOut> {
        self.call(
            Method::POST,
            &format!("{P}/agent/releases"),
            Body::Octets(bytes),
        )
        .await
    }
    async fn release_keys(&self) -> Result<Vec<TrustedKey>> {
        self.get(&format!("{P}/agent/keys"), &[]).await
    }
    async fn trust_release_key(&self, pem: &str) -> Result<TrustedKey> {
        let body = TrustKeyRequest {
            public_pem: pem.to_string(),
        };
        self.json(Method::POST, &format!("{P}/agent/keys"), &body)
            .await
    }
    async fn device_agent(&self, id: &str) -> Result<DeviceAgent> {
        self.get(&format!("{P}/devices/{}/agent", seg(id)), &[])
            .await
    }
    async fn device_config(&self, id: &str) -> Result<DeviceConfig> {
        self.get(&format!("{P}/devices/{}/config", seg(id)), &[])
            .await
    }
    async fn send_command(&self, device: &str, r: &CommandRequest) -> Result<CommandOut> {
        self.json(
            Method::POST,
            &format!("{P}/devices/{}/commands", seg(device)),
            r,
        )
        .await
    }
    async fn device_commands(&self, device: &str) -> Result<Vec<CommandOut>> {
        self.get(&format!("{P}/devices/{}/commands", seg(device)), &[])
            .await
    }
    async fn command(&self, id: &str) -> Result<CommandOut> {
        self.get(&format!("{P}/commands/{}", seg(id)), &[]).await
    }
    async fn ca_status(&self) -> Result<CaStatus> {
        self.get(&format!("{P}/ca/status"), &[]).await
    }
    async fn rotate_ca(&self) -> Result<CaStatus> {
        self.call(Method::POST, &format!("{P}/ca/rotate"), Body::None)
            .await
    }
    async fn finish_ca_rotation(&self, force: bool) -> Result<CaStatus> {
        self.json(
            Method::POST,
            &format!("{P}/ca/finish"),
            &FinishRotation { force },
        )
        .await
    }
    async fn configs(&self) -> Result<Vec<ConfigRow>> {
        self.get(&format!("{P}/configs"), &[]).await
    }
    async fn config(&self, name: &str, version_number: i64) -> Result<ConfigRow> {
        self.get(&format!("{P}/configs/{}/{version_number}", seg(name)), &[])
            .await
    }
    async fn push_config(&self, name: &str, p: &ConfigPush) -> Result<ConfigOut> {
        self.json(Method::POST, &format!("{P}/configs/{}", seg(name)), p)
            .await
    }
    async fn bundles(&self) -> Result<Vec<BundleOut>> {
        self.get(&format!("{P}/bundles"), &[]).await
    }
    async fn push_bundle(&self, bytes: Vec<u8>) -> Result<BundleOut> {
        self.call(Method::POST, &format!("{P}/bundles"), Body::Octets(bytes))
            .await
    }
    async fn bundle_deltas(&self, name: &str) -> Result<Vec<DeltaOut>> {
        self.get(&format!("{P}/bundles/{}/deltas", seg(name)), &[])
            .await
    }
    async fn compute_delta(&self, name: &str, from: i64, to: i64) -> Result<DeltaOut> {
        self.json(
            Method::POST,
            &format!("{P}/bundles/{}/deltas", seg(name)),
            &DeltaRequest { from, to },
        )
        .await
    }
    async fn gates(&self) -> Result<Vec<GateOut>> {
        self.get(&format!("{P}/gates"), &[]).await
    }
    async fn set_gate(&self, bundle: &str, g: &GateRequest, holdout: Vec<u8>) -> Result<GateOut> {
        let r = &g.rules;
        let mut q = vec![
            ("holdout_name".to_string(), g.holdout_name.clone()),
            ("min_predictions".to_string(), r.min_predictions.to_string()),
        ];
        let text = [
            ("label_tag", r.label_tag.clone()),
            ("label_kind", r.label_kind.clone()),
            ("label_horizon", r.label_horizon.clone()),
        ];
        let nums = [
            ("min_accuracy", r.min_accuracy),
            ("min_recall", r.min_recall),
            ("max_mae", r.max_mae),
            ("max_alarm_rate", r.max_alarm_rate),
        ];
        q.extend(
            text.into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?))),
        );
        q.extend(
            nums.into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?.to_string()))),
        );
        self.call(
            Method::PUT,
            &format!("{P}/gates/{}{}", seg(bundle), query_string(&q)),
            Body::Octets(holdout),
        )
        .await
    }
    async fn remove_gate(&self, bundle: &str) -> Result<()> {
        self.raw(
            Method::DELETE,
            &format!("{P}/gates/{}", seg(bundle)),
            Body::None,
        )
        .await
        .map(|_| ())
    }
    async fn validate_bundle(&self, name: &str, version_number: i64) -> Result<ValidationOut> {
        self.call(
            Method::POST,
            &format!("{P}/bundles/{}/{version_number}/validate", seg(name)),
            Body::None,
        )
        .await
    }
    async fn rollouts(&self) -> Result<Vec<RolloutSummary>> {
        self.get(&format!("{P}/rollouts"), &[]).await
    }
    async fn rollout(&self, id: &str) -> Result<RolloutDetail> {
        self.get(&format!("{P}/rollouts/{}", seg(id)), &[]).await
    }
    async fn start_rollout(&self, s: &StartRollout) -> Result<RolloutSummary> {
        self.json(Method::POST, &format!("{P}/rollouts"), s).await
    }
    async fn rollout_action(&self, id: &str, action: RolloutAction) -> Result<RolloutSummary> {
        self.call(
            Method::POST,
            &format!("{P}/rollouts/{}/{action}", seg(id)),
            Body::None,
        )
        .await
    }
    async fn drift_views(&self, q: &DriftQuery) -> Result<Vec<DriftView>> {
        self.get(&format!("{P}/drift"), &q.to_pairs()).await
    }
    async fn drift_heatmap(&self, q: &HeatmapQuery) -> Result<Heatmap> {
        self.get(&format!("{P}/drift/heatmap"), &q.to_pairs()).await
    }
    async fn drift_policies(&self) -> Result<Vec<PolicyOut>> {
        self.get(&format!("{P}/drift/policies"), &[]).await
    }
    async fn set_drift_policy(&self, name: &str, p: &PolicyRequest) -> Result<PolicyOut> {
        self.json(Method::PUT, &format!("{P}/drift/policies/{}", seg(name)), p)
            .await
    }
    async fn remove_drift_policy(&self, name: &str) -> Result<()> {
        self.raw(
            Method::DELETE,
            &format!("{P}/drift/policies/{}", seg(name)),
            Body::None,
        )
        .await
        .map(|_| ())
    }
    async fn drift_events(&self, policy: Option<&str>, limit: i64) -> Result<Vec<EventOut>> {
        let mut q = vec![("limit".to_string(), limit.to_string())];
        if let Some(p) = policy {
            q.push(("policy".into(), p.into()));
        }
        self.get(&format!("{P}/drift/events"), &q).await
    }
    async fn evaluate_drift(&self) -> Result<Vec<EventOut>> {
        self.call(Method::POST, &format!("{P}/drift/evaluate"), Body::None)
            .await
    }
    async fn alarms(&self, q: &AlarmListQuery) -> Result<AlarmPage> {
        self.get(&format!("{P}/alarms"), &q.to_pairs()).await
    }
    async fn ack_alarm(&self, id: &str) -> Result<AlarmRow> {
        self.call(
            Method::POST,
            &format!("{P}/alarms/{}/ack", seg(id)),
            Body::None,
        )
        .await
    }
    async fn audit_log(&self, q: &AuditListQuery) -> Result<Vec<AuditEntry>> {
        self.get(&format!("{P}/audit"), &q.to_pairs()).await
    }
    async fn users(&self) -> Result<Vec<UserOut>> {
        self.get(&format!("{P}/users"), &[]).await
    }
    async fn add_user(&self, u: &NewUser) -> Result<UserOut> {
        self.json(Method::POST, &format!("{P}/users"), u).await
    }
    async fn update_user(&self, name: &str, u: &UserUpdate) -> Result<UserOut> {
        self.json(Method::PUT, &format!("{P}/users/{}", seg(name)), u)
            .await
    }
    async fn remove_user(&self, name: &str) -> Result<()> {
        self.raw(
            Method::DELETE,
            &format!("{P}/users/{}", seg(name)),
            Body::None,
        )
        .await
        .map(|_| ())
    }
    async fn tokens(&self) -> Result<Vec<ApiTokenRow>> {
        self.get(&format!("{P}/tokens"), &[]).await
    }
    async fn create_token(&self, t: &NewToken) -> Result<CreatedToken> {
        self.json(Method::POST, &format!("{P}/tokens"), t).await
    }
    async fn revoke_token(&self, id: &str) -> Result<ApiTokenRow> {
        self.call(
            Method::DELETE,
            &format!("{P}/tokens/{}", seg(id)),
            Body::None,
        )
        .await
    }
    async fn ca_pem(&self) -> Result<String> {
        let b = self
            .raw(Method::GET, &format!("{P}/ca"), Body::None)
            .await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse() {
        assert_eq!(
            parse_url("https://fleet:8443").unwrap(),
            ("fleet".into(), 8443)
        );
        assert_eq!(parse_url("https://fleet/").unwrap(), ("fleet".into(), 443));
        assert_eq!(parse_url("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(parse_url("http://fleet").is_err());
        assert!(parse_url("https://fleet/v1").is_err());
        assert_eq!(
            query_string(&[("label".into(), "site=a b".into())]),
            "?label=site%3Da%20b"
        );
    }
}
