//! The operator API over HTTP against a real store: the OpenAPI description against the
//! route table, authentication and roles before anything else, every answer against its
//! documented schema, sessions with CSRF, login throttling, API token lifetimes, the audit
//! trail, and the accounts rules (the last admin stays).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use edge_wire::records::{self, AlarmEvent, BundleRef, DriftAlarm, DriftAlarmKind};
use fleet_server::operator::{routes, OPENAPI};
use fleet_server::service::views::{NewToken, NewUser};
use fleet_server::service::{FleetService, Principal, Settings};
use fleet_server::store::{ApiTokenRow, AuditQuery};
use fleet_server::types::Role;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

mod common;
use common::*;

// ---- a minimal JSON Schema check (the subset openapi.json uses) ----

fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => s,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Problems of `v` against `schema`, with JSON paths.
fn check(doc: &Value, schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let s = resolve(doc, schema);
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        // allOf members are checked for their own properties; extra properties are fine
        // only if another member declares them.
        for sub in all {
            let mut sub = resolve(doc, sub).clone();
            sub.as_object_mut()
                .map(|o| o.remove("additionalProperties"));
            check(doc, &sub, v, path, out);
        }
        return;
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let ok = one
            .iter()
            .filter(|sub| {
                let mut e = Vec::new();
                check(doc, sub, v, path, &mut e);
                e.is_empty()
            })
            .count();
        if ok != 1 {
            out.push(format!(
                "{path}: matches {ok} of the oneOf alternatives: {v}"
            ));
        }
        return;
    }
    if let Some(c) = s.get("const") {
        if c != v {
            out.push(format!("{path}: {v} is not {c}"));
        }
        return;
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => {
            out.push(format!("{path}: {v} is not {t}"));
            return;
        }
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)) => {
            out.push(format!("{path}: {v} is none of {ts:?}"));
            return;
        }
        _ => {}
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!("{path}: {v} is not one of {e:?}"));
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{path}[{i}]"), out);
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or("");
            if !o.contains_key(r) {
                out.push(format!("{path}: required `{r}` is missing"));
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(doc, ps, x, &format!("{path}.{k}"), out),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{path}: `{k}` is not documented"))
                    }
                    Some(a @ Value::Object(_)) => check(doc, a, x, &format!("{path}.{k}"), out),
                    _ => {}
                },
            }
        }
    }
}

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

/// Checks an answer against the documented response of (method, path, status).
fn assert_documented(method: &str, path: &str, status: u16, body: &[u8]) {
    let d = doc();
    let op = &d["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path}: status {status} is not documented: {}",
        String::from_utf8_lossy(body)
    );
    let Some(schema) = resp["content"]["application/json"].get("schema") else {
        return;
    };
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let mut errs = Vec::new();
    check(&d, schema, &v, "$", &mut errs);
    assert!(
        errs.is_empty(),
        "{method} {path} {status} does not match its schema:\n{}\n{v:#}",
        errs.join("\n")
    );
}

// ---- a server on loopback ----

struct Api {
    addr: SocketAddr,
    svc: FleetService,
    f: Fleet,
    tokens: std::collections::HashMap<&'static str, String>,
}

const PASSWORD: &str = "a long enough password";

/// The service over the fixture's store (check-ins every 10 s) and its fleet CA.
async fn service_and_ca(f: &Fleet) -> (FleetService, Arc<fleet_server::ca::FleetCa>) {
    let svc = FleetService::new(
        f.store.clone(),
        f.registry.clone(),
        &f.dir,
        Settings::with_checkin(10),
    );
    let ca = Arc::new(
        fleet_server::ca::FleetCa::open(&f.dir, svc.store())
            .await
            .unwrap(),
    );
    (svc, ca)
}

async fn api() -> Api {
    let f = fleet().await;
    let (svc, ca) = service_and_ca(&f).await;
    let app = fleet_server::router(&svc, ca, 8 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let boot = svc.acting(Principal::local("bootstrap"));
    let mut tokens = std::collections::HashMap::new();
    for (name, role) in [
        ("ada", Role::Admin),
        ("olga", Role::Operator),
        ("vic", Role::Viewer),
    ] {
        boot.add_user(&NewUser {
            name: name.into(),
            role,
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
        let t = boot
            .create_token(&NewToken {
                name: format!("{name}-script"),
                role: None,
                ttl: None,
                user: Some(name.into()),
            })
            .await
            .unwrap();
        tokens.insert(name, t.token);
    }
    Api {
        addr,
        svc,
        f,
        tokens,
    }
}

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        call_at(self.addr, method, path, headers, body).await
    }

    /// A call with a user's API token (JSON body when given).
    async fn as_(&self, user: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {}", self.tokens[user]);
        let mut h = vec![("authorization", auth.as_str())];
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        let b = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.call(method, path, &h, b).await
    }

    async fn login(&self, user: &str, password: &str) -> Reply {
        self.call(
            "POST",
            "/v1/operator/session",
            &[("content-type", "application/json")],
            json!({"user": user, "password": password})
                .to_string()
                .into_bytes(),
        )
        .await
    }
}

/// One HTTP/1.1 request to the server at `addr`.
async fn call_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "fleet.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn cookie_of(r: &Reply) -> String {
    let c = r.headers["set-cookie"].to_str().unwrap();
    c.split(';').next().unwrap().to_string()
}

fn alarm(active: bool, ts: i64) -> Vec<u8> {
    records::encode_alarm(&AlarmEvent {
        source: Arc::new(BundleRef {
            model: "m".into(),
            bundle: BUNDLE.into(),
            version: "1.0.1".into(),
            version_number: 1,
            sha256: "s".into(),
        }),
        ts_ns: ts,
        active,
        score: 0.4,
        threshold: Some(0.25),
        drift: Some(DriftAlarm {
            subject: "a".into(),
            kind: DriftAlarmKind::Column,
            metric: "psi".into(),
            intervals: 2,
        }),
    })
}

/// Two devices with check-ins, drift records, an alarm and a prediction; version 2 of the
/// bundle; a rollout; a drift policy.
async fn seed(a: &mut Api) {
    a.f.device("d1", &["site=a", "canary"]).await;
    a.f.device("d2", &["site=a"]).await;
    let status = edge_wire::sync::CheckIn {
        agent_version: "0.1.0".into(),
        models: vec![edge_wire::sync::ModelStatus {
            model: "m".into(),
            bundle: BUNDLE.into(),
            version: "1.0.1".into(),
            version_number: 1,
            sha256: "s".into(),
        }],
        streams: vec![edge_wire::sync::StreamStatus {
            stream: "samples".into(),
            backlog: 10,
            bytes: 100,
            dropped: 0,
        }],
        last_error: Some("upload refused once".into()),
        uptime_s: 60,
        config: Some(edge_wire::sync::ConfigStatus {
            sha256: "ab".repeat(32),
            applied: None,
            pending: None,
        }),
        agent: None,
    };
    for id in ["d1", "d2"] {
        let d = a.f.store.device(id).await.unwrap().unwrap();
        a.f.store
            .check_in(&d, &status, &serde_json::to_string(&status).unwrap(), 0)
            .await
            .unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(3);
    let t0 = base();
    let recs: Vec<_> = (0..3)
        .map(|k| {
            record(
                1,
                &uniform(&mut rng, 300, 0.0, 10.0),
                &uniform(&mut rng, 300, 5.0, 10.0),
                t0 + k * 10 * MIN,
            )
        })
        .collect();
    a.f.upload("d1", &recs).await;
    let al = alarm(true, 5);
    a.f.store
        .ingest("d1", "alarms", 1, &[(1, 0, al.as_slice())])
        .await
        .unwrap();
    let p = records::encode_prediction(&records::Prediction {
        source: Arc::new(BundleRef {
            model: "m".into(),
            bundle: BUNDLE.into(),
            version: "1.0.1".into(),
            version_number: 1,
            sha256: "s".into(),
        }),
        start_ns: 0,
        end_ns: 1_000,
        outputs: vec![("y".into(), vec![0.5])],
        score: Some(0.5),
        label: Some("normal".into()),
        over_threshold: Some(false),
        alarm: Some(false),
    });
    a.f.store
        .ingest("d1", "predictions", 1, &[(1, 0, p.as_slice())])
        .await
        .unwrap();
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/configs/line-a",
            Some(json!({"fragments": [["base.toml", "[agent]\nid = \"gw\"\n"], ["site.toml", "[[sources.simulated]]\nname = \"plant\"\n"]]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_documented("POST", "/v1/operator/configs/{name}", 201, &r.body);
    assert_eq!(r.json()["version_number"], 1);
    assert!(r.json()["toml"]
        .as_str()
        .unwrap()
        .contains("[[sources.simulated]]"));
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/devices/d1/commands",
            Some(json!({"action": {"kind": "logs", "since_ms": 0, "level": "warn", "max_bytes": 65536}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_documented("POST", "/v1/operator/devices/{id}/commands", 201, &r.body);
    assert_eq!(r.json()["state"], "queued");
    use ed25519_dalek::SigningKey;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let v2 = edge_wire::bundle::file::pack(&manifest(2), b"model", &key).unwrap();
    let r = a
        .call(
            "POST",
            "/v1/operator/bundles",
            &[
                ("authorization", &format!("Bearer {}", a.tokens["olga"])),
                ("content-type", "application/octet-stream"),
            ],
            v2,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_documented("POST", "/v1/operator/bundles", 201, &r.body);
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/rollouts",
            Some(json!({"bundle": BUNDLE, "version_number": 2, "selector": ["site=a"], "canary_label": "canary"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_documented("POST", "/v1/operator/rollouts", 201, &r.body);
    let r = a
        .as_(
            "ada",
            "PUT",
            "/v1/operator/drift/policies/retrain-a",
            Some(
                json!({"bundle": BUNDLE, "select": ["site=a"], "every": "10m", "intervals": 2,
                "rule": {"share": 0.5}, "hook": {"command": "true"}}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("PUT", "/v1/operator/drift/policies/{name}", 200, &r.body);
}

/// A concrete path for a route pattern.
fn concrete(path: &str, rollout: &str, alarm: &str, token: &str, command: &str) -> String {
    path.replace("/devices/{id}", "/devices/d1")
        .replace(
            "/operator/commands/{id}",
            &format!("/operator/commands/{command}"),
        )
        .replace("/rollouts/{id}", &format!("/rollouts/{rollout}"))
        .replace("/alarms/{id}", &format!("/alarms/{alarm}"))
        .replace("/tokens/{id}", &format!("/tokens/{token}"))
        .replace("/bundles/{name}", &format!("/bundles/{BUNDLE}"))
        .replace("/policies/{name}", "/policies/retrain-a")
        .replace("/configs/{name}/{version}", "/configs/line-a/1")
        .replace("/configs/{name}", "/configs/line-a")
        .replace("/users/{name}", "/users/vic")
}

#[test]
fn openapi_describes_exactly_the_routes_with_their_roles() {
    let d = doc();
    let mut documented: Vec<(String, String, Option<String>)> = Vec::new();
    for (path, ops) in d["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.push((
                method.to_uppercase(),
                path.clone(),
                op["x-role"].as_str().map(str::to_string),
            ));
            // Every operation documents its success and its error answers.
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path} has no success answer"
            );
        }
    }
    let mut served: Vec<(String, String, Option<String>)> = routes(1)
        .into_iter()
        .map(|(s, _)| {
            (
                s.method.to_string(),
                s.path.to_string(),
                s.role.map(|r| r.as_str().to_string()),
            )
        })
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    // Every $ref resolves.
    let text = OPENAPI;
    for r in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            d["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
}

#[tokio::test]
async fn credentials_and_roles_are_checked_before_anything_else() {
    let a = api().await;
    for (spec, _) in routes(1) {
        let path = concrete(spec.path, "r-x", "al-x", "tok-x", "c-x");
        let Some(role) = spec.role else { continue };
        // No credentials: 401, whatever the body.
        let r = a.call(spec.method, &path, &[], b"{not json".to_vec()).await;
        assert_eq!(r.status, 401, "{} {path}: {}", spec.method, r.text());
        assert_eq!(r.json()["kind"], "unauthorized");
        assert!(r.headers.contains_key("www-authenticate"));
        // A wrong token: 401.
        let r = a
            .call(
                spec.method,
                &path,
                &[("authorization", "Bearer fleet_nope")],
                vec![],
            )
            .await;
        assert_eq!(r.status, 401, "{} {path}", spec.method);
        // A role below the route's: 403 before the body is read.
        for (user, has) in [("vic", Role::Viewer), ("olga", Role::Operator)] {
            if has < role {
                let auth = format!("Bearer {}", a.tokens[user]);
                let r = a
                    .call(
                        spec.method,
                        &path,
                        &[("authorization", &auth)],
                        b"{not json".to_vec(),
                    )
                    .await;
                assert_eq!(r.status, 403, "{user} {} {path}: {}", spec.method, r.text());
                assert!(
                    r.text().contains(&format!("needs the {role} role")),
                    "{}",
                    r.text()
                );
                assert_documented(spec.method, spec.path, 403, &r.body);
            }
        }
    }
    // Public routes answer without credentials.
    let r = a
        .call("GET", "/v1/operator/openapi.json", &[], vec![])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["openapi"], "3.1.0");
}

#[tokio::test]
async fn every_answer_matches_its_documented_schema() {
    let mut a = api().await;
    seed(&mut a).await;
    let rollout = a.svc.store().rollouts().await.unwrap()[0].id.clone();
    let (alarms, _) = a
        .svc
        .store()
        .alarms(&fleet_server::store::AlarmQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let token = a.svc.store().api_tokens(Some("vic")).await.unwrap()[0]
        .id
        .clone();
    let command = a.svc.store().commands("d1", 1).await.unwrap()[0].id.clone();
    // Every GET, as an admin, with its query parameters where they matter.
    for (spec, _) in routes(1) {
        if spec.method != "GET" || spec.path.ends_with("openapi.json") || spec.path.ends_with("/ca")
        {
            continue;
        }
        let mut path = concrete(spec.path, &rollout, &alarms[0].id, &token, &command);
        if path.ends_with("/drift") || path.ends_with("/drift/heatmap") {
            path.push_str(&format!("?bundle={BUNDLE}"));
        }
        let r = a.as_("ada", "GET", &path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_documented("GET", spec.path, 200, &r.body);
    }
    // The interesting contents.
    let r = a
        .as_(
            "vic",
            "GET",
            "/v1/operator/devices?label=canary&sort=name",
            None,
        )
        .await;
    let page = r.json();
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(
        page["devices"][0]["problems"],
        json!(["error", "drift_alarm"])
    );
    let r = a
        .as_(
            "vic",
            "GET",
            &format!("/v1/operator/rollouts/{rollout}"),
            None,
        )
        .await;
    let detail = r.json();
    assert_eq!(detail["targeted"], 2);
    assert_eq!(detail["progress"]["waiting"], 1, "{detail}");
    // d1 carries the canary label: the canary results count it alone.
    let canaries: i64 = detail["canaries"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(canaries, 1, "{detail}");
    assert_eq!(detail["canaries"]["waiting"], 0);
    let states: Vec<&str> = detail["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"waiting"), "{states:?}");
    let r = a
        .as_(
            "vic",
            "GET",
            &format!("/v1/operator/drift/heatmap?bundle={BUNDLE}&group_by=label:site&since=30days"),
            None,
        )
        .await;
    let h = r.json();
    assert_eq!(h["rows"][0]["name"], "site=a", "{h}");
    assert_eq!(h["columns"], json!(["a", "b"]));
    assert_eq!(
        h["rows"][0]["cells"][1]["band"], "drift",
        "b is uniform on 5..10, not 0..10: {h}"
    );
    let r = a
        .as_("vic", "GET", "/v1/operator/devices/d1/drift?limit=2", None)
        .await;
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    // Error answers have their documented shape too.
    let r = a.as_("vic", "GET", "/v1/operator/devices/nope", None).await;
    assert_eq!(r.status, 404);
    assert_documented("GET", "/v1/operator/devices/{id}", 404, &r.body);
    let r = a
        .as_("vic", "GET", "/v1/operator/devices?state=asleep", None)
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("asleep"), "{}", r.text());
    let r = a
        .as_("vic", "GET", "/v1/operator/devices?colour=red", None)
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("unknown parameter `colour`"));
    // State changes answer with their documented shapes.
    let r = a
        .as_(
            "olga",
            "POST",
            &format!("/v1/operator/rollouts/{rollout}/halt"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("POST", "/v1/operator/rollouts/{id}/halt", 200, &r.body);
    assert_eq!(r.json()["state"], "halted");
    let r = a
        .as_(
            "olga",
            "POST",
            &format!("/v1/operator/rollouts/{rollout}/halt"),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "halting twice: {}", r.text());
    assert_documented("POST", "/v1/operator/rollouts/{id}/halt", 409, &r.body);
    let r = a
        .as_(
            "olga",
            "POST",
            &format!("/v1/operator/alarms/{}/ack", alarms[0].id),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("POST", "/v1/operator/alarms/{id}/ack", 200, &r.body);
    assert_eq!(r.json()["acked_by"], "olga");
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/enrollment-tokens",
            Some(json!({"labels": ["site=b"], "ttl": "2h"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_documented("POST", "/v1/operator/enrollment-tokens", 201, &r.body);
    let r = a
        .as_(
            "olga",
            "PUT",
            "/v1/operator/devices/d2/labels",
            Some(json!({"labels": ["site=b"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("PUT", "/v1/operator/devices/{id}/labels", 200, &r.body);
    let r = a
        .as_(
            "olga",
            "POST",
            &format!("/v1/operator/bundles/{BUNDLE}/deltas"),
            Some(json!({"from": 1, "to": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("POST", "/v1/operator/bundles/{name}/deltas", 200, &r.body);
    // A refused bundle: why, and nothing stored.
    let r = a
        .call(
            "POST",
            "/v1/operator/bundles",
            &[("authorization", &format!("Bearer {}", a.tokens["olga"]))],
            b"not a bundle at all".to_vec(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_documented("POST", "/v1/operator/bundles", 422, &r.body);
    assert_eq!(a.svc.store().bundles().await.unwrap().len(), 2);
    // A configuration with an inline secret: refused with the key, nothing stored.
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/configs/line-a",
            Some(json!({"fragments": [["all.toml", "[agent]\nid = \"gw\"\n[[outputs.mqtt]]\nname = \"o\"\n[outputs.mqtt.broker]\nurl = \"mqtt://b\"\npassword = \"hunter2\"\n"]]})),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_documented("POST", "/v1/operator/configs/{name}", 422, &r.body);
    assert!(
        r.text().contains("outputs.mqtt[0].broker.password"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("hunter2"));
    assert_eq!(a.svc.store().configs().await.unwrap().len(), 1);
    // A viewer reads configurations but cannot push them.
    let r = a
        .as_(
            "vic",
            "POST",
            "/v1/operator/configs/line-a",
            Some(json!({"fragments": [["a", "[agent]\n"]]})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = a
        .as_("vic", "GET", "/v1/operator/devices/d1/config", None)
        .await;
    assert_eq!(r.json()["state"], "unmanaged", "{}", r.text());
}

#[tokio::test]
async fn sessions_need_the_csrf_token_and_logins_are_throttled() {
    let a = api().await;
    // Five wrong passwords for olga; the sixth attempt is refused even with the right one.
    for i in 0..5 {
        let r = a.login("olga", "wrong password!").await;
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
        assert_eq!(r.json()["error"], "wrong user name or password");
    }
    let r = a.login("olga", PASSWORD).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_documented("POST", "/v1/operator/session", 429, &r.body);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((25..=30).contains(&wait), "{wait}");
    assert!(r.text().contains("try again in"), "{}", r.text());
    // An unknown user is told the same as a wrong password.
    let r = a.login("nobody", PASSWORD).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "wrong user name or password");
    // Another user is not locked out by olga's failures.
    let r = a.login("ada", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("POST", "/v1/operator/session", 200, &r.body);
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    let csrf = r.json()["csrf"].as_str().unwrap().to_string();
    let cookie = cookie_of(&r);
    let r = a
        .call("GET", "/v1/operator/whoami", &[("cookie", &cookie)], vec![])
        .await;
    assert_eq!(
        r.json(),
        json!({"user": "ada", "role": "admin", "via": "session"})
    );
    // A state change with the cookie but without the CSRF token, with a wrong one, or from
    // another site: refused before anything happens.
    let body = json!({"labels": ["x=1"], "ttl": "1h"})
        .to_string()
        .into_bytes();
    let post = |extra: Vec<(&'static str, String)>| {
        let mut h: Vec<(&str, String)> = vec![
            ("cookie", cookie.clone()),
            ("content-type", "application/json".into()),
        ];
        h.extend(extra);
        let body = body.clone();
        let a = &a;
        async move {
            let hv: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            a.call("POST", "/v1/operator/enrollment-tokens", &hv, body)
                .await
        }
    };
    let r = post(vec![]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("CSRF"), "{}", r.text());
    let r = post(vec![("x-csrf-token", "0".repeat(64))]).await;
    assert_eq!(r.status, 403);
    let r = post(vec![
        ("x-csrf-token", csrf.clone()),
        ("origin", "https://evil.example".into()),
    ])
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("cross-site"), "{}", r.text());
    let r = post(vec![
        ("x-csrf-token", csrf.clone()),
        ("origin", "https://fleet.test".into()),
    ])
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Reads need no CSRF token; tokens never need one.
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/enrollment-tokens",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Sign out: the cookie stops working.
    let r = a
        .call(
            "DELETE",
            "/v1/operator/session",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            vec![],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = a
        .call("GET", "/v1/operator/whoami", &[("cookie", &cookie)], vec![])
        .await;
    assert_eq!(r.status, 401);
    // The failures and the sign-ins are in the audit log.
    let audit = a.svc.store().audit_log(100).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "user.login_failed")
            .count(),
        6,
        "five for olga, one for nobody; a throttled attempt is refused unchecked"
    );
    assert!(audit
        .iter()
        .any(|e| e.action == "user.login" && e.actor == "ada"));
    assert!(audit
        .iter()
        .any(|e| e.action == "user.logout" && e.actor == "ada"));
}

#[tokio::test]
async fn api_tokens_are_capped_by_their_user_and_stop_when_revoked_expired_or_orphaned() {
    let a = api().await;
    // A viewer cannot mint an operator token, nor tokens for others.
    let r = a
        .as_(
            "vic",
            "POST",
            "/v1/operator/tokens",
            Some(json!({"name": "x", "role": "operator"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = a
        .as_(
            "vic",
            "POST",
            "/v1/operator/tokens",
            Some(json!({"name": "x", "user": "olga"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // An operator's viewer token reads but cannot act.
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/tokens",
            Some(json!({"name": "ro", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_documented("POST", "/v1/operator/tokens", 201, &r.body);
    let created = r.json();
    let ro = created["token"].as_str().unwrap().to_string();
    assert!(ro.starts_with("fleet_"));
    let auth = format!("Bearer {ro}");
    let r = a
        .call(
            "GET",
            "/v1/operator/whoami",
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(r.json()["role"], "viewer");
    let r = a
        .call(
            "POST",
            "/v1/operator/enrollment-tokens",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 403);
    // Only the token's hash is stored.
    let rows = a.svc.store().api_tokens(Some("olga")).await.unwrap();
    assert!(rows.iter().all(|t| !t.token_sha256.contains(&ro[6..])));
    // Revoked: refused from the next request on. Revoking someone else's needs an admin.
    let id = created["id"].as_str().unwrap();
    let r = a
        .as_("vic", "DELETE", &format!("/v1/operator/tokens/{id}"), None)
        .await;
    assert_eq!(r.status, 403);
    let r = a
        .as_("olga", "DELETE", &format!("/v1/operator/tokens/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("DELETE", "/v1/operator/tokens/{id}", 200, &r.body);
    let r = a
        .call(
            "GET",
            "/v1/operator/whoami",
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(r.status, 401);
    // Expired.
    let now = fleet_server::store::now_ms();
    let old = "fleet_expired_token_for_the_test";
    a.svc
        .store()
        .add_api_token(&ApiTokenRow {
            id: "tok-old".into(),
            name: "old".into(),
            user_name: "olga".into(),
            role: Role::Operator,
            token_sha256: edge_wire::bundle::file::sha256_hex(old.as_bytes()),
            created_at: now - 10_000,
            expires_at: now - 1,
            last_used_at: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    let r = a
        .call(
            "GET",
            "/v1/operator/whoami",
            &[("authorization", &format!("Bearer {old}"))],
            vec![],
        )
        .await;
    assert_eq!(r.status, 401);
    // A demoted user's tokens lose the role at once; a removed user's stop working.
    let r = a
        .as_(
            "ada",
            "PUT",
            "/v1/operator/users/olga",
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_documented("PUT", "/v1/operator/users/{name}", 200, &r.body);
    let r = a.as_("olga", "GET", "/v1/operator/whoami", None).await;
    assert_eq!(r.json()["role"], "viewer");
    let r = a
        .as_("ada", "DELETE", "/v1/operator/users/olga", None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = a.as_("olga", "GET", "/v1/operator/whoami", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn accounts_keep_an_admin_and_users_change_their_own_password_only() {
    let a = api().await;
    // The only admin cannot be removed or demoted.
    let r = a.as_("ada", "DELETE", "/v1/operator/users/ada", None).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("last admin"), "{}", r.text());
    let r = a
        .as_(
            "ada",
            "PUT",
            "/v1/operator/users/ada",
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(r.status, 409);
    // Users and passwords: validation, duplicates.
    let r = a
        .as_(
            "ada",
            "POST",
            "/v1/operator/users",
            Some(json!({"name": "eve", "role": "viewer", "password": "short"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("at least 10"), "{}", r.text());
    let r = a
        .as_(
            "ada",
            "POST",
            "/v1/operator/users",
            Some(json!({"name": "vic", "role": "viewer", "password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 409);
    // vic changes his own password with the current one; not with a wrong one; not olga's.
    let r = a
        .as_(
            "vic",
            "PUT",
            "/v1/operator/users/vic",
            Some(json!({"password": "a brand new password", "current_password": "nope"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = a
        .as_(
            "vic",
            "PUT",
            "/v1/operator/users/olga",
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = a
        .as_(
            "vic",
            "PUT",
            "/v1/operator/users/vic",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, 403, "no self-promotion: {}", r.text());
    let r = a
        .as_(
            "vic",
            "PUT",
            "/v1/operator/users/vic",
            Some(json!({"password": "a brand new password", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.login("vic", PASSWORD).await.status, 401);
    assert_eq!(a.login("vic", "a brand new password").await.status, 200);
    // Stored as argon2id, never in clear.
    let u = a.svc.store().user("vic").await.unwrap().unwrap();
    assert!(
        u.password_hash.starts_with("$argon2id$"),
        "{}",
        u.password_hash
    );
}

#[tokio::test]
async fn every_state_change_is_audited_under_the_operator() {
    let mut a = api().await;
    seed(&mut a).await;
    let rollout = a.svc.store().rollouts().await.unwrap()[0].id.clone();
    let r = a
        .as_(
            "olga",
            "POST",
            &format!("/v1/operator/rollouts/{rollout}/promote"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a
        .as_("olga", "POST", "/v1/operator/devices/d2/revoke", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a
        .as_("olga", "POST", "/v1/operator/devices/d2/revoke", None)
        .await;
    assert_eq!(r.status, 409);
    let r = a
        .as_(
            "olga",
            "DELETE",
            "/v1/operator/drift/policies/retrain-a",
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let audit = a
        .svc
        .store()
        .audit_query(&AuditQuery {
            actor: Some("olga".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for want in [
        "model.push",
        "config.push",
        "command.logs",
        "rollout.start",
        "rollout.promote",
        "device.revoke",
        "drift.policy.remove",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    // Policies (their hooks run on the server) are set by admins.
    let by_ada = a
        .svc
        .store()
        .audit_query(&AuditQuery {
            actor: Some("ada".into()),
            action: Some("drift.policy.set".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_ada.len(), 1, "{by_ada:?}");
    // Through the API too, filtered by action prefix.
    let r = a
        .as_(
            "vic",
            "GET",
            "/v1/operator/audit?action=rollout.&actor=olga",
            None,
        )
        .await;
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(
        list[0]["detail"]
            .as_str()
            .unwrap()
            .contains("via token tok-"),
        "{list}"
    );
}

/// Regressions from the security review of the accounts code.
#[tokio::test]
async fn a_token_cannot_mint_a_stronger_or_longer_lived_token() {
    let a = api().await;
    // olga (operator) makes a viewer token that expires in an hour.
    let r = a
        .as_(
            "olga",
            "POST",
            "/v1/operator/tokens",
            Some(json!({"name": "read-only", "role": "viewer", "ttl": "1h"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let weak = r.json()["token"].as_str().unwrap().to_string();
    let parent_expiry = r.json()["expires_at"].as_i64().unwrap();
    let auth = format!("Bearer {weak}");
    let post = |body: Value| {
        let auth = auth.clone();
        let a = &a;
        async move {
            a.call(
                "POST",
                "/v1/operator/tokens",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    // Through the viewer token: an operator token is refused...
    let r = post(json!({"name": "escalate", "role": "operator", "ttl": "90d"})).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("at most the role viewer"), "{}", r.text());
    // ...and a token without a role is a viewer token that dies with its parent.
    let r = post(json!({"name": "child", "ttl": "90d"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["role"], "viewer");
    assert!(r.json()["expires_at"].as_i64().unwrap() <= parent_expiry);
    // A token cannot change its user's password without the current one.
    let r = a
        .as_(
            "ada",
            "PUT",
            "/v1/operator/users/ada",
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("current password"), "{}", r.text());
    let r = a.login("ada", PASSWORD).await;
    assert_eq!(
        r.status,
        200,
        "the password must be unchanged: {}",
        r.text()
    );
}

#[tokio::test]
async fn parallel_guesses_cannot_pass_the_throttle() {
    let a = api().await;
    // Twelve wrong passwords for olga at once: at most five are checked, the rest refused.
    let body = json!({"user": "olga", "password": "wrong password!"}).to_string();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (addr, body) = (a.addr, body.clone());
            tokio::spawn(async move {
                call_at(
                    addr,
                    "POST",
                    "/v1/operator/session",
                    &[("content-type", "application/json")],
                    body.into_bytes(),
                )
                .await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let checked = replies.iter().filter(|r| r.status == 401).count();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(checked + refused, 12);
    assert!(checked <= 5, "{checked} guesses were checked");
    assert!(refused >= 7);
    // Names that are not user names share one count: five of them lock the sixth.
    for i in 0..5 {
        let r = a.login(&format!("no such {i}"), PASSWORD).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = a.login("no such 5", PASSWORD).await;
    assert_eq!(r.status, 429, "{}", r.text());
    // Control characters in a failed name do not reach the audit log.
    let r = a.login("ada\nuser.login ada", "wrong password!").await;
    assert_eq!(r.status, 429, "invalid names share the locked count");
    let audit = a
        .svc
        .store()
        .audit_query(&AuditQuery {
            action: Some("user.login_failed".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!audit.is_empty());
    assert!(audit
        .iter()
        .all(|e| !e.actor.chars().any(char::is_control) && !e.subject.contains('\n')));
}

#[tokio::test]
async fn a_success_clears_the_name_but_not_the_address() {
    let a = api().await;
    for _ in 0..3 {
        assert_eq!(a.login("vic", "wrong password!").await.status, 401);
    }
    let ip = a.svc.store().login_failure("ip:unknown").await.unwrap();
    let ip = match ip {
        Some(f) => f,
        None => a
            .svc
            .store()
            .login_failure("ip:127.0.0.1")
            .await
            .unwrap()
            .expect("the address's failures are counted"),
    };
    assert_eq!(ip.failures, 3);
    assert_eq!(a.login("vic", PASSWORD).await.status, 200);
    let user = a.svc.store().login_failure("user:vic").await.unwrap();
    assert!(user.is_none(), "{user:?}");
    let ip_after = match a.svc.store().login_failure("ip:unknown").await.unwrap() {
        Some(f) => f,
        None => a
            .svc
            .store()
            .login_failure("ip:127.0.0.1")
            .await
            .unwrap()
            .unwrap(),
    };
    assert_eq!(
        ip_after.failures, 3,
        "the success takes back only its own attempt"
    );
    // The current-password check is throttled like a sign-in.
    for i in 0..5 {
        let r = a
            .as_(
                "vic",
                "PUT",
                "/v1/operator/users/vic",
                Some(json!({"password": "a brand new password", "current_password": "nope nope nope"})),
            )
            .await;
        assert_eq!(r.status, 403, "attempt {i}: {}", r.text());
    }
    let r = a
        .as_(
            "vic",
            "PUT",
            "/v1/operator/users/vic",
            Some(json!({"password": "a brand new password", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
}

#[tokio::test]
async fn user_changes_apply_whole_or_not_at_all_and_keep_an_admin() {
    let a = api().await;
    // A role change with a password that breaks the rules: refused, the role unchanged.
    let r = a
        .as_(
            "ada",
            "PUT",
            "/v1/operator/users/vic",
            Some(json!({"role": "operator", "password": "short"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let vic = a.svc.store().user("vic").await.unwrap().unwrap();
    assert_eq!(vic.role, Role::Viewer);
    // Two admins demoting each other at the same moment: exactly one demotion happens.
    let r = a
        .as_(
            "ada",
            "PUT",
            "/v1/operator/users/olga",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (x, y) = tokio::join!(
        a.as_(
            "ada",
            "PUT",
            "/v1/operator/users/olga",
            Some(json!({"role": "viewer"}))
        ),
        a.as_(
            "olga",
            "PUT",
            "/v1/operator/users/ada",
            Some(json!({"role": "viewer"}))
        ),
    );
    let mut statuses = [x.status, y.status];
    statuses.sort_unstable();
    // The loser is refused either as the last admin (409) or, demoted already, as no
    // longer an admin (403).
    assert_eq!(statuses[0], 200, "{} / {}", x.text(), y.text());
    assert!(
        statuses[1] == 409 || statuses[1] == 403,
        "{} / {}",
        x.text(),
        y.text()
    );
    let admins = a
        .svc
        .store()
        .users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == Role::Admin)
        .count();
    assert_eq!(admins, 1);
}

// ---- memory budget for request bodies ----

/// Sends a request head announcing `len` body bytes and `sent` of them; the connection stays
/// open (the rest never comes) until the stream is dropped.
async fn partial_post(addr: SocketAddr, len: usize, sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/cbor\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![0u8; sent]).await.unwrap();
    s
}

/// A whole POST; the status code and headers of the answer.
async fn whole_post(addr: SocketAddr, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = partial_post(addr, len, len).await;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    s.shutdown().await.ok();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn request_bodies_past_the_memory_budget_wait_then_get_503_with_retry_after() {
    use fleet_server::budget::BodyBudget;
    let f = fleet().await;
    let (svc, ca) = service_and_ca(&f).await;
    // 16 MiB for bodies in flight (14 for large requests, 2 for small ones); a request
    // waits 300 ms for room.
    let budget = BodyBudget::new(16 << 20, std::time::Duration::from_millis(300));
    let app =
        fleet_server::with_body_budget(fleet_server::router(&svc, ca, 8 << 20), budget.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let wait_for = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };

    // A slow client announces 4 MiB (charged 12 MiB: body, decoded copy, ×3) and stalls.
    let slow = partial_post(addr, 4 << 20, 1024).await;
    let b = budget.clone();
    wait_for(
        "the slow request was never charged",
        Box::new(move || b.in_use() >= 12 << 20),
    )
    .await;
    // Another large body does not fit: it waits, then is refused with Retry-After.
    let answer = whole_post(addr, 1 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 2"),
        "{answer}"
    );
    // Small requests have their own lane: served while the large lane is full.
    let answer = whole_post(addr, 2048).await;
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a refusal of the body itself: {answer}"
    );
    // Requests without a body are not charged.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The slow client goes away: its charge is returned and the next body is served.
    drop(slow);
    let b = budget.clone();
    wait_for(
        "the charge was never returned",
        Box::new(move || b.in_use() == 0),
    )
    .await;
    let answer = whole_post(addr, 1 << 20).await;
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a refusal of the body itself: {answer}"
    );
    // A body costing more than the whole large lane is charged all of it: it runs alone.
    let answer = whole_post(addr, 6 << 20).await;
    assert!(!answer.starts_with("HTTP/1.1 503"), "{answer}");
}
