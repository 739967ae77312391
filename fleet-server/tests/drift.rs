//! Fleet drift end to end inside the fleet-server crate: real `DriftRecord`s built from
//! known distributions for several fake devices and intervals, stored through
//! `FleetStore::ingest` (the upload path), then the merged views, version separation, time
//! filters and buckets, the retrain trigger with a hook command, and the operator API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use edge_wire::drift::fleet::MergedDrift;
use edge_wire::drift::DriftRecord;
use fleet_server::drift::{self, DriftQuery, Hook, NewPolicy, PolicyRule};

mod common;
use common::*;

fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn fleet_merge_equals_direct_merge_and_union() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(11);
    let t0 = base();
    let mut direct = MergedDrift::default();
    let (mut all_a, mut all_b) = (Vec::new(), Vec::new());
    // Devices in name order (gw-d0..gw-d3), as the store lists them.
    for d in 0..4 {
        let id = format!("d{d}");
        f.device(&id, &["site=a"]).await;
        let mut recs = Vec::new();
        for k in 0..5 {
            let a = uniform(&mut rng, 300 + 10 * k, d as f64, 6.0 + d as f64);
            let b = uniform(&mut rng, 300, 0.0, 10.0);
            all_a.extend(&a);
            all_b.extend(&b);
            recs.push(record(1, &a, &b, t0 + k as i64 * 10 * MIN));
        }
        for r in &recs {
            direct.add(&id, r).unwrap();
        }
        f.upload(&id, &recs).await;
    }
    let q = DriftQuery {
        bundle: BUNDLE.into(),
        ..Default::default()
    };
    let merged = drift::merged(&f.store, &q).await.unwrap();
    assert_eq!(merged.len(), 1, "one version, no buckets");
    let m = &merged[0].1;
    for name in ["a", "b"] {
        let (x, y) = (&m.columns[name], &direct.columns[name]);
        assert_eq!(x.bins, y.bins, "{name}: histogram bins");
        assert_eq!(x.moments, y.moments, "{name}: moments");
        assert_eq!(x.missing, y.missing);
    }
    assert_eq!(
        (m.records, m.windows, m.devices.len()),
        (direct.records, direct.windows, 4)
    );
    assert_eq!(m.records, 20);
    // The view: moments of the union, quantiles within 1 % of the exact union quantiles.
    let views = drift::show(&f.store, &f.registry, &q).await.unwrap();
    assert_eq!(views.len(), 1);
    let v = &views[0];
    assert!(v.scored, "version 1 is in the registry: {:?}", v.note);
    for (name, all) in [("a", &mut all_a), ("b", &mut all_b)] {
        all.sort_by(f64::total_cmp);
        let c = v.columns.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.count as usize, all.len());
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        assert!((c.mean.unwrap() - mean).abs() < 1e-9, "{name} mean");
        assert_eq!(
            (c.min.unwrap(), c.max.unwrap()),
            (all[0], all[all.len() - 1])
        );
        for (got, q) in [(c.p50.unwrap(), 0.5), (c.p99.unwrap(), 0.99)] {
            let exact = exact_quantile(all, q);
            assert!(
                (got - exact).abs() <= 0.01 * exact.abs(),
                "{name} q{q}: {got} vs exact {exact}"
            );
        }
        assert!(c.psi.is_some() && c.ks.is_some());
    }
    // `a` spans 0..9 shifted per device (drifts against 0..10 uniform), `b` is the reference.
    let a = v.columns.iter().find(|c| c.name == "a").unwrap();
    let b = v.columns.iter().find(|c| c.name == "b").unwrap();
    assert!(a.psi.unwrap() > b.psi.unwrap(), "{a:?} {b:?}");
    assert!(!b.drifting, "{b:?}");
}

#[tokio::test]
async fn versions_are_never_merged_and_unknown_versions_are_unscored() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(12);
    let t0 = base();
    f.device("d1", &[]).await;
    f.device("d2", &[]).await;
    let v1: Vec<_> = (0..3)
        .map(|k| {
            let a = uniform(&mut rng, 200, 0.0, 10.0);
            record(1, &a, &a, t0 + k * 10 * MIN)
        })
        .collect();
    let v2: Vec<_> = (3..5)
        .map(|k| {
            let a = uniform(&mut rng, 200, 5.0, 10.0);
            record(2, &a, &a, t0 + k * 10 * MIN)
        })
        .collect();
    f.upload("d1", &v1).await;
    f.upload("d1", &v2[..1]).await;
    f.upload("d2", &v2[1..]).await;
    let q = DriftQuery {
        bundle: BUNDLE.into(),
        ..Default::default()
    };
    let views = drift::show(&f.store, &f.registry, &q).await.unwrap();
    let got: Vec<_> = views
        .iter()
        .map(|v| (v.version_number, v.records, v.devices.clone(), v.scored))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 3, vec!["d1".to_string()], true),
            (2, 2, vec!["d1".to_string(), "d2".to_string()], false),
        ]
    );
    assert!(
        views[1].note.as_deref().unwrap().contains("#2"),
        "{:?}",
        views[1].note
    );
    assert!(views[1]
        .columns
        .iter()
        .all(|c| c.psi.is_none() && c.count == 400));
    assert!(views[0]
        .columns
        .iter()
        .all(|c| c.psi.is_some() && c.count == 600));
    // One version only; another bundle name shows nothing.
    let q2 = DriftQuery {
        version_number: Some(2),
        device: Some("d2".into()),
        ..q.clone()
    };
    let only = drift::show(&f.store, &f.registry, &q2).await.unwrap();
    assert_eq!((only.len(), only[0].records), (1, 1));
    let other = DriftQuery {
        bundle: "other".into(),
        ..Default::default()
    };
    assert!(drift::show(&f.store, &f.registry, &other)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn time_ranges_and_buckets_filter_on_record_end() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(13);
    let t0 = base(); // aligned to the hour
    f.device("d1", &["site=a"]).await;
    f.device("d2", &["site=b"]).await;
    // 12 records each: ends at t0 + 10 min … t0 + 120 min.
    for d in ["d1", "d2"] {
        let recs: Vec<_> = (0..12)
            .map(|k| {
                let a = uniform(&mut rng, 100, 0.0, 10.0);
                record(1, &a, &a, t0 + k * 10 * MIN)
            })
            .collect();
        f.upload(d, &recs).await;
    }
    let q = DriftQuery {
        bundle: BUNDLE.into(),
        select: vec!["site=a".into()],
        since_ns: Some(t0 + 30 * MIN),
        until_ns: Some(t0 + 90 * MIN),
        ..Default::default()
    };
    // Ends 30, 40, …, 80: six records of d1 only.
    let v = drift::show(&f.store, &f.registry, &q).await.unwrap();
    assert_eq!((v.len(), v[0].records), (1, 6));
    assert_eq!(v[0].devices, vec!["d1".to_string()]);
    assert_eq!(v[0].from, drift::rfc3339(t0 + 20 * MIN));
    assert_eq!(v[0].to, drift::rfc3339(t0 + 80 * MIN));
    // Whole fleet, 30-minute buckets by end time: [t0, +30) holds ends 10, 20 (×2 devices).
    let q = DriftQuery {
        bundle: BUNDLE.into(),
        every_ns: Some(30 * MIN),
        ..Default::default()
    };
    let v = drift::show(&f.store, &f.registry, &q).await.unwrap();
    let counts: Vec<u64> = v.iter().map(|x| x.records).collect();
    assert_eq!(
        counts,
        vec![4, 6, 6, 6, 2],
        "ends 10..=120 min in 30 min buckets"
    );
    assert_eq!(
        v[0].bucket_from.as_deref(),
        Some(drift::rfc3339(t0).as_str())
    );
    assert_eq!(
        v[1].bucket_to.as_deref(),
        Some(drift::rfc3339(t0 + 60 * MIN).as_str())
    );
    // Relative times parse; bad ones are refused with the parameter named.
    let now = drift::now_ns();
    assert_eq!(drift::parse_time("2h", now).unwrap(), now - 120 * MIN);
    let e = DriftQuery::from_pairs(
        &[
            ("bundle".into(), "x".into()),
            ("since".into(), "yesterday-ish".into()),
        ],
        now,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("since:"), "{e}");
}

/// Drifting data for `a` (values only in 8..10 against a uniform 0..10 reference) or calm.
fn interval(rng: &mut fastrand::Rng, drifting: bool, start: i64) -> DriftRecord {
    let a = if drifting {
        uniform(rng, 200, 8.0, 10.0)
    } else {
        uniform(rng, 200, 0.0, 10.0)
    };
    let b = uniform(rng, 200, 0.0, 10.0);
    record(1, &a, &b, start)
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("hook wrote the event JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_hook_fires_once_per_episode() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(14);
    let t0 = base();
    let every = 10 * MIN;
    for d in ["d1", "d2", "d3"] {
        f.device(d, &["site=a"]).await;
    }
    f.device("d9", &["site=b"]).await;
    // Buckets 0..=9 of 10 minutes; a device's record of bucket k ends inside it.
    // site=a: 0, 1 calm; 2..=5 drifting (d1, d2; d3 calm); 6 calm; 7..=9 drifting.
    // site=b: always calm.
    let drifting = |k: i64| (2..=5).contains(&k) || (7..=9).contains(&k);
    for k in 0..10 {
        let start = t0 + k * every - 5 * MIN; // ends at +5 min into bucket k
        for d in ["d1", "d2"] {
            let r = interval(&mut rng, drifting(k), start);
            assert_eq!(r.dataset_drift, drifting(k), "fixture");
            f.upload(d, &[r]).await;
        }
        let r = interval(&mut rng, false, start);
        f.upload("d3", &[r]).await;
        let r = interval(&mut rng, false, start);
        f.upload("d9", &[r]).await;
    }
    let out = f.dir.join("hook-events.jsonl");
    let calm_out = f.dir.join("calm-events.jsonl");
    for (name, select, file) in [
        ("retrain-a", "site=a", &out),
        ("calm-b", "site=b", &calm_out),
    ] {
        drift::set_policy(
            &f.store,
            NewPolicy {
                name: name.into(),
                bundle: BUNDLE.into(),
                select: vec![select.into()],
                every: std::time::Duration::from_secs(600),
                intervals: 3,
                rule: PolicyRule {
                    share: Some(0.5),
                    ..Default::default()
                },
                hook: Hook::Command(format!(
                    "cat >> '{}' && echo >> '{}' && test -s \"$FLEET_DRIFT_EVENT_FILE\"",
                    file.display(),
                    file.display()
                )),
            },
            "tester",
        )
        .await
        .unwrap();
    }
    // Evaluate as time passes: right after each bucket's end (plus the settle delay).
    let at = |k: i64| t0 + (k + 1) * every + drift::SETTLE_NS;
    let mut fired_after = Vec::new();
    // A second replica on the same database (its own pool and registry) evaluates at the
    // same moments: each event is recorded, and its hook run, by exactly one of them.
    let other = f.store.another_pool().await.unwrap();
    let other_registry = fleet_server::registry::Registry::new(other.clone(), &f.dir).unwrap();
    for k in [1, 2, 3, 4, 5, 6, 8, 9] {
        let (mine, theirs) = tokio::join!(
            drift::evaluate_all(&f.store, &f.registry, &f.dir, at(k)),
            drift::evaluate_all(&other, &other_registry, &f.dir, at(k)),
        );
        let ev: Vec<_> = mine.unwrap().into_iter().chain(theirs.unwrap()).collect();
        // Evaluating again at the same time records nothing new.
        let again = drift::evaluate_all(&f.store, &f.registry, &f.dir, at(k))
            .await
            .unwrap();
        assert!(again.is_empty());
        for e in ev {
            assert_eq!(e.hook_status, "ok", "{}", e.hook_detail);
            fired_after.push((k, e.policy.clone()));
        }
    }
    // Bucket 4 completes the first 3 drifting buckets (2, 3, 4); 5 continues the episode;
    // 6 is calm and ends it; 7, 8, 9 make the second event.
    assert_eq!(
        fired_after,
        vec![(4, "retrain-a".to_string()), (9, "retrain-a".to_string())]
    );
    assert!(lines(&calm_out).is_empty(), "calm data never fires");
    let events = lines(&out);
    assert_eq!(events.len(), 2, "the hook ran once per episode");
    let e = &events[0];
    assert_eq!(e["policy"], "retrain-a");
    assert_eq!(e["bundle"]["name"], BUNDLE);
    assert_eq!(e["bundle"]["version_number"], 1);
    assert_eq!(e["from"], drift::rfc3339(t0 + 2 * every).as_str());
    assert_eq!(e["to"], drift::rfc3339(t0 + 5 * every).as_str());
    let ids: Vec<&str> = e["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["d1", "d2", "d3"],
        "the reporting devices of site=a only"
    );
    assert_eq!(e["devices"][0]["name"], "gw-d1");
    let cols: Vec<&str> = e["drifting_columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["a"], "{e}");
    assert!(e["drifting_columns"][0]["psi"].as_f64().unwrap() > 0.25);
    let api = e["more"]["api"].as_str().unwrap();
    assert!(
        api.starts_with("/v1/operator/drift?bundle=pump&version_number=1&select=site%3Da"),
        "{api}"
    );
    assert!(e["more"]["cli"]
        .as_str()
        .unwrap()
        .starts_with("fleet-server drift show --bundle pump"));
    // Recorded in the store (the service layer audits policy changes: operator_api.rs).
    let stored = f.store.drift_events(Some("retrain-a"), 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|s| s.hook_status == "ok"));
}

// ---- operator API ----

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", "fleet");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = send
        .send_request(req.body(Empty::<hyper::body::Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn operator_api_needs_the_token_and_checks_parameters() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(15);
    f.device("d1", &["site=a"]).await;
    let t0 = base();
    let recs: Vec<_> = (0..3)
        .map(|k| interval(&mut rng, false, t0 + k * 10 * MIN))
        .collect();
    f.upload("d1", &recs).await;
    // An operator account and an API token of a viewer (the drift views need no more).
    let svc = fleet_server::service::FleetService::new(
        f.store.clone(),
        f.registry.clone(),
        &f.dir,
        fleet_server::service::Settings::with_checkin(10),
    );
    let admin = svc.acting(fleet_server::service::Principal::local("test"));
    admin
        .add_user(&fleet_server::service::views::NewUser {
            name: "vera".into(),
            role: fleet_server::types::Role::Viewer,
            password: "a long enough password".into(),
        })
        .await
        .unwrap();
    let token = admin
        .create_token(&fleet_server::service::views::NewToken {
            name: "drift-script".into(),
            role: None,
            ttl: None,
            user: Some("vera".into()),
        })
        .await
        .unwrap()
        .token;
    let app = fleet_server::operator::router(fleet_server::operator::OperatorState {
        service: svc,
        max_bundle: 1 << 20,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let path_ok = "/v1/operator/drift?bundle=pump&select=site%3Da&every=10m";
    assert_eq!(get(addr, path_ok, None).await.0, 401);
    assert_eq!(get(addr, path_ok, Some("fleet_wrong")).await.0, 401);
    let (st, body) = get(addr, path_ok, Some(&token)).await;
    assert_eq!(st, 200, "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    let q = DriftQuery {
        bundle: BUNDLE.into(),
        select: vec!["site=a".into()],
        every_ns: Some(10 * MIN),
        ..Default::default()
    };
    let want = serde_json::to_value(drift::show(&f.store, &f.registry, &q).await.unwrap()).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.as_array().unwrap().len(), 3, "three 10 min buckets");
    let (st, body) = get(
        addr,
        "/v1/operator/drift?bundle=pump&since=notatime",
        Some(&token),
    )
    .await;
    assert_eq!(st, 400);
    assert!(body.contains("since"), "{body}");
    let (st, body) = get(addr, "/v1/operator/drift?since=2h", Some(&token)).await;
    assert_eq!(st, 400);
    assert!(body.contains("bundle"), "{body}");
}

#[tokio::test]
async fn url_hook_posts_the_event_and_failures_are_recorded() {
    use axum::routing::post;
    let got = Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let g2 = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let g = g2.clone();
            async move {
                g.lock().await.push(body);
                "thanks"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let event = fleet_server::store::DriftEventRow {
        id: "de1".into(),
        policy: "p".into(),
        bundle: BUNDLE.into(),
        version_number: 1,
        from_ns: 0,
        to_ns: 1,
        devices: "[]".into(),
        columns: "[]".into(),
        body: r#"{"event":"de1"}"#.into(),
        created_at: 0,
        hook_status: "pending".into(),
        hook_detail: String::new(),
    };
    let dir = std::env::temp_dir();
    let (status, detail) =
        drift::run_hook(&Hook::Url(format!("http://{addr}/hook")), &event, &dir).await;
    assert_eq!(status, "ok", "{detail}");
    assert!(
        detail.contains("200") && detail.contains("thanks"),
        "{detail}"
    );
    assert_eq!(*got.lock().await, vec![event.body.clone()]);
    let (status, detail) =
        drift::run_hook(&Hook::Url(format!("http://{addr}/nope")), &event, &dir).await;
    assert_eq!(status, "failed", "{detail}");
    assert!(detail.contains("404"), "{detail}");
    // A failing command: its exit status and stderr tail are what gets recorded.
    let (status, detail) = drift::run_hook(
        &Hook::Command("echo broken >&2; exit 3".into()),
        &event,
        &dir,
    )
    .await;
    assert_eq!(status, "failed");
    assert!(
        detail.contains('3') && detail.contains("broken"),
        "{detail}"
    );
    std::fs::remove_file(dir.join("drift-events").join("de1.json")).ok();
}

/// A policy on site=a, 3 buckets of `every`, share 0.5, writing events to `file`.
async fn policy(f: &Fleet, name: &str, every_min: u64, file: &Path) {
    drift::set_policy(
        &f.store,
        NewPolicy {
            name: name.into(),
            bundle: BUNDLE.into(),
            select: vec!["site=a".into()],
            every: std::time::Duration::from_secs(every_min * 60),
            intervals: 3,
            rule: PolicyRule {
                share: Some(0.5),
                ..Default::default()
            },
            hook: Hook::Command(format!(
                "cat >> '{}' && echo >> '{}'",
                file.display(),
                file.display()
            )),
        },
        "tester",
    )
    .await
    .unwrap();
}

/// History that arrives after the policy exists (a replayed recording, a device's backlog
/// after months offline) is evaluated by its data time; a gap between drifting buckets
/// breaks the streak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_history_triggers_a_policy_by_its_data_time() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(21);
    for d in ["d1", "d2"] {
        f.device(d, &["site=a"]).await;
    }
    let out = f.dir.join("replayed-events.jsonl");
    policy(&f, "replayed", 10, &out).await;
    let every = 10 * MIN;
    let now = base() + 48 * 60 * MIN;
    // The policy starts with nothing to say.
    assert!(drift::evaluate_all(&f.store, &f.registry, &f.dir, now)
        .await
        .unwrap()
        .is_empty());
    // Then 90 days old history arrives: buckets 0, 1 drifting, 2 missing (the device was
    // off), 3 drifting, 4..=6 drifting, 7 calm.
    let old = base() - 90 * 24 * 60 * MIN;
    let drifting = |k: i64| k != 2 && k != 7;
    for k in (0..8).filter(|k| *k != 2) {
        let start = old + k * every - 5 * MIN;
        for d in ["d1", "d2"] {
            let r = interval(&mut rng, drifting(k), start);
            f.upload(d, &[r]).await;
        }
    }
    let ev = drift::evaluate_all(&f.store, &f.registry, &f.dir, now + MIN)
        .await
        .unwrap();
    assert_eq!(
        ev.len(),
        1,
        "one episode: buckets 3..=6 (0, 1 are cut off by the gap)"
    );
    assert_eq!(ev[0].from_ns, old + 3 * every);
    assert_eq!(ev[0].to_ns, old + 6 * every);
    // Nothing new arrived (the look-back overlaps what was seen): no second event.
    assert!(
        drift::evaluate_all(&f.store, &f.registry, &f.dir, now + 2 * MIN)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(lines(&out).len(), 1);
}

/// Two 10-minute records per device ending in the 20-minute bucket starting at `bucket`,
/// feature `a` uniform on each range (each record on its own has dataset drift).
async fn two_records(f: &mut Fleet, rng: &mut fastrand::Rng, bucket: i64, ranges: [(f64, f64); 2]) {
    let recs: Vec<DriftRecord> = ranges
        .iter()
        .enumerate()
        .map(|(i, (lo, hi))| {
            let a = uniform(rng, 200, *lo, *hi);
            let b = uniform(rng, 200, 0.0, 10.0);
            let r = record(1, &a, &b, bucket - 5 * MIN + i as i64 * 10 * MIN);
            assert!(r.dataset_drift, "fixture: each record on its own drifts");
            r
        })
        .collect();
    for d in ["d1", "d2"] {
        f.upload(d, &recs).await;
    }
}

/// A bucket's verdict per device comes from its records there merged and scored together:
/// two intervals flagged in opposite directions (values only high, then only low) merge
/// into a calm bucket, which no longer counts as drifting; the same number of records all
/// high still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_is_judged_on_its_merged_records_not_their_flags() {
    let mut f = fleet().await;
    let mut rng = fastrand::Rng::with_seed(22);
    for d in ["d1", "d2"] {
        f.device(d, &["site=a"]).await;
    }
    let out = f.dir.join("noisy-events.jsonl");
    let t0 = base();
    let every = 20 * MIN;
    // Buckets 0..=3 of 20 minutes, two 10-minute records each per device.
    for k in 0..4 {
        two_records(&mut f, &mut rng, t0 + k * every, [(5.0, 10.0), (0.0, 5.0)]).await;
    }
    policy(&f, "noisy", 20, &out).await;
    let now = t0 + 4 * every + drift::SETTLE_NS;
    // Created after the upload: looks back 3 buckets (1..=3).
    assert!(
        drift::evaluate_all(&f.store, &f.registry, &f.dir, now)
            .await
            .unwrap()
            .is_empty(),
        "high then low merges into the reference's spread: calm"
    );
    for k in 4..7 {
        two_records(&mut f, &mut rng, t0 + k * every, [(7.0, 10.0), (8.0, 10.0)]).await;
    }
    let ev = drift::evaluate_all(
        &f.store,
        &f.registry,
        &f.dir,
        t0 + 7 * every + drift::SETTLE_NS,
    )
    .await
    .unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].from_ns, t0 + 4 * every);
    let e = &lines(&out)[0];
    let buckets = e["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    assert!(buckets.iter().all(|b| b["drifting_devices"] == 2), "{e}");
    assert_eq!(lines(&out).len(), 1, "the calm buckets fired nothing");
}
