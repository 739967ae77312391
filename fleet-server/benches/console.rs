//! Operator console and API at fleet scale: a store with 10 000 devices (labels, check-ins,
//! status history), 1 000 000 ingested records (samples, predictions, alarms, drift records),
//! two bundle versions and a rollout; then the server time of each console page and API list
//! call (the whole router in process: authentication, the service layer, rendering), p50 and
//! p99 over repeated requests, against the same data read directly from the store (the
//! queries the page needs, no authentication or rendering) as the baseline.
//!
//! Run: `cargo bench -p fleet-server --bench console`
//! (`CONSOLE_BENCH_DEVICES=10000`, `CONSOLE_BENCH_RECORDS=1000000`, `CONSOLE_BENCH_N=200`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Instant;

use edge_wire::bundle::manifest::{ColumnStats, Manifest};
use edge_wire::bundle::BundleRef;
use edge_wire::drift::{ColumnDrift, DriftRecord, DriftRules, DriftSummary};
use edge_wire::records::{self, AlarmEvent, DriftAlarm, DriftAlarmKind};
use fleet_server::service::views::{NewToken, NewUser};
use fleet_server::service::{FleetService, Principal, Settings};
use fleet_server::store::{AlarmQuery, DeviceFilter, DeviceSort, FleetStore, ProblemFilter};
use fleet_server::types::{DeviceSortKey, Role};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn reference(name: &str) -> ColumnStats {
    ColumnStats {
        name: name.into(),
        count: 10_000,
        mean: 5.0,
        std: 2.89,
        min: 0.0,
        max: 10.0,
        quantiles: vec![0.1, 0.5, 2.5, 5.0, 7.5, 9.5, 9.9],
        bin_edges: (0..=10).map(f64::from).collect(),
        bin_freqs: vec![0.1; 10],
    }
}

const COLUMNS: [&str; 8] = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"];

fn manifest(v: u64) -> Manifest {
    let feats: Vec<_> = COLUMNS.iter().map(|c| reference(c)).collect();
    serde_json::from_value(serde_json::json!({
        "format": 1, "name": "pump", "version": format!("1.0.{v}"), "version_number": v,
        "created": "2025-01-01T00:00:00Z",
        "features": {"tags": ["p.a"], "rate_hz": 1.0,
            "features": COLUMNS.iter().map(|_| serde_json::json!({"tag": "p.a", "fn": "mean"})).collect::<Vec<_>>()},
        "model": {"sha256": "", "size": 0, "input": {"name": "x", "shape": [1, 8], "dtype": "f32"},
            "outputs": [{"name": "y", "shape": [1, 1], "dtype": "f32"}]},
        "reference": {"windows": 10000, "features": feats},
    }))
    .expect("bench manifest")
}

fn source() -> Arc<BundleRef> {
    Arc::new(BundleRef {
        model: "m".into(),
        bundle: "pump".into(),
        version: "1.0.1".into(),
        version_number: 1,
        sha256: "s".into(),
    })
}

fn drift_record(rng: &mut fastrand::Rng, start_ns: i64, shift: f64) -> Vec<u8> {
    let rules = DriftRules::default();
    let cols = COLUMNS
        .iter()
        .map(|c| {
            let r = reference(c);
            let mut s = DriftSummary::new(c, &r.bin_edges, start_ns / 1_000_000);
            for _ in 0..300 {
                s.add((rng.f64() * 10.0 + shift).min(9.99));
            }
            ColumnDrift::scored(s, &r, &rules)
        })
        .collect();
    let mut rec = DriftRecord {
        source: source(),
        start_ns,
        end_ns: start_ns + 600_000_000_000,
        windows: 300,
        columns: cols,
        outputs: vec![],
        drifting: vec![],
        dataset_drift: false,
        metric: Default::default(),
        performance: None,
        shadow: None,
    };
    rec.evaluate(&rules);
    records::encode_drift(&rec)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// (p50, p99) in ms of `n` runs of `f`.
async fn time<F, Fut>(n: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..3 {
        f().await; // warm-up
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        f().await;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    (pct(&mut t, 0.5), pct(&mut t, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let devices = env_usize("CONSOLE_BENCH_DEVICES", 10_000);
    let total = env_usize("CONSOLE_BENCH_RECORDS", 1_000_000);
    let n = env_usize("CONSOLE_BENCH_N", 200);
    let dir = std::env::temp_dir().join(format!("console-bench-{}", std::process::id()));
    let store = FleetStore::open_dir(&dir).await?;
    let registry = fleet_server::registry::Registry::new(store.clone(), &dir)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    {
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
        let pem = key.verifying_key().to_public_key_pem(LineEnding::LF)?;
        store.trust_key("k", &pem, "bench").await?;
    }
    for v in [1, 2] {
        registry
            .push(
                edge_wire::bundle::file::pack(&manifest(v), b"model", &key)?,
                "bench",
            )
            .await?;
    }
    let t0 = Instant::now();
    eprintln!(
        "seeding {devices} devices and {total} records in {}",
        dir.display()
    );
    let status = |backlog: u64, err: bool| edge_wire::sync::CheckIn {
        agent_version: "0.1.0".into(),
        models: vec![edge_wire::sync::ModelStatus {
            model: "m".into(),
            bundle: "pump".into(),
            version: "1.0.1".into(),
            version_number: 1,
            sha256: "s".into(),
        }],
        streams: ["samples", "features", "predictions", "alarms", "drift"]
            .iter()
            .map(|s| edge_wire::sync::StreamStatus {
                stream: s.to_string(),
                backlog,
                bytes: backlog * 100,
                dropped: 0,
            })
            .collect(),
        last_error: err.then(|| "fleet server unreachable".to_string()),
        uptime_s: 3600,
        config: None,
        agent: None,
    };
    for i in 0..devices {
        let labels = vec![format!("site=s{:02}", i % 20), format!("line=l{}", i % 5)];
        let tok = format!("t{i}");
        store
            .add_token(
                &tok,
                &labels,
                "bench",
                fleet_server::store::now_ms() + 3_600_000,
            )
            .await?;
        let d = store
            .enroll(
                &tok,
                &format!("d{i:05}"),
                &format!("gw-{i:05}"),
                &fleet_server::store::IssuedCert::test(format!("c{i}")),
            )
            .await?;
        let st = status((i % 97) as u64, i % 50 == 0);
        store
            .check_in(&d, &st, &serde_json::to_string(&st)?, 0)
            .await?;
    }
    eprintln!("  devices in {:.0} s", t0.elapsed().as_secs_f64());
    // Records: per device 2 drift records and an alarm for 1 in 10, predictions and samples
    // for the rest of the total, in upload batches of up to 500.
    let mut rng = fastrand::Rng::with_seed(1);
    let base_ns = fleet_server::drift::now_ns() - 3 * 3_600_000_000_000;
    let mut stored = 0usize;
    let per_device = total / devices;
    let sample_body = vec![0x85u8; 96];
    for i in 0..devices {
        let id = format!("d{i:05}");
        let mut drift = Vec::new();
        for k in 0..2 {
            let shift = if i % 10 == 0 { 3.0 } else { 0.0 };
            drift.push(drift_record(&mut rng, base_ns + k * 600_000_000_000, shift));
        }
        let b: Vec<(i64, i64, &[u8])> = drift
            .iter()
            .enumerate()
            .map(|(k, d)| (k as i64 + 1, 0, d.as_slice()))
            .collect();
        store.ingest(&id, "drift", 1, &b).await?;
        stored += 2;
        if i % 10 == 0 {
            let a = records::encode_alarm(&AlarmEvent {
                source: source(),
                ts_ns: base_ns,
                active: true,
                score: 0.4,
                threshold: Some(0.25),
                drift: Some(DriftAlarm {
                    subject: "c0".into(),
                    kind: DriftAlarmKind::Column,
                    metric: "psi".into(),
                    intervals: 2,
                }),
            });
            store
                .ingest(&id, "alarms", 1, &[(1, 0, a.as_slice())])
                .await?;
            stored += 1;
        }
        let rest = per_device.saturating_sub(3);
        let mut seq = 1i64;
        for stream in ["predictions", "samples"] {
            let count = if stream == "predictions" {
                rest / 10
            } else {
                rest - rest / 10
            };
            let mut left = count;
            while left > 0 {
                let m = left.min(500);
                let batch: Vec<(i64, i64, &[u8])> = (0..m)
                    .map(|k| (seq + k as i64, 0, sample_body.as_slice()))
                    .collect();
                store.ingest(&id, stream, 1, &batch).await?;
                seq += m as i64;
                left -= m;
                stored += m;
            }
            seq = 1;
        }
        if i % 1000 == 999 {
            eprintln!(
                "  {} devices' records ({stored}) in {:.0} s",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let svc = FleetService::new(
        store.clone(),
        registry.clone(),
        &dir,
        Settings::with_checkin(10),
    );
    let boot = svc.acting(Principal::local("bench"));
    boot.add_user(&NewUser {
        name: "olga".into(),
        role: Role::Operator,
        password: "bench password 1".into(),
    })
    .await?;
    let token = boot
        .create_token(&NewToken {
            name: "bench".into(),
            role: None,
            ttl: None,
            user: Some("olga".into()),
        })
        .await?
        .token;
    let (_, cookie) = svc
        .login("olga", "bench password 1", "127.0.0.1", "bench")
        .await?;
    boot.start_rollout(&fleet_server::rollout::StartRollout {
        kind: fleet_server::types::RolloutKind::Bundle,
        bundle: "pump".into(),
        version_number: 2,
        selector: vec!["site=s03".into()],
        canary_percent: None,
        canary_label: None,
        max_failures: 1,
        force: false,
    })
    .await?;
    let rollout = store.rollouts().await?[0].id.clone();
    eprintln!(
        "seeded {stored} records in {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    let ca = Arc::new(fleet_server::ca::FleetCa::open(&dir, svc.store()).await?);
    let app = fleet_server::router(&svc, ca, 1 << 20);
    let get = |path: String, console: bool| {
        let app = app.clone();
        let auth = if console {
            ("cookie", format!("fleet_session={cookie}"))
        } else {
            ("authorization", format!("Bearer {token}"))
        };
        async move {
            let req = axum::http::Request::get(&path)
                .header(auth.0, auth.1)
                .body(axum::body::Body::empty())
                .expect("request");
            let resp = app.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert!(
                status.is_success(),
                "{path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    };
    let t = svc.settings().thresholds(fleet_server::store::now_ms());
    println!("| call | server p50 (ms) | p99 | store baseline p50 | p99 | ratio p50 |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, s: (f64, f64), b: (f64, f64)| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}x |",
            s.0,
            s.1,
            b.0,
            b.1,
            s.0 / b.0.max(1e-6)
        );
    };
    // The device list, default order (problems first), first page.
    let base_list = || {
        let store = store.clone();
        async move {
            store
                .device_page(&DeviceFilter::default(), &DeviceSort::default(), 0, 50, &t)
                .await
                .expect("page");
        }
    };
    let b = time(n, base_list).await;
    row(
        "API `GET /devices` (50, problems first)",
        time(n, || get("/v1/operator/devices".into(), false)).await,
        b,
    );
    row(
        "console `/console/devices`",
        time(n, || get("/console/devices".into(), true)).await,
        b,
    );
    let base_label = || {
        let store = store.clone();
        async move {
            store
                .device_page(
                    &DeviceFilter {
                        labels: vec!["site=s07".into()],
                        ..Default::default()
                    },
                    &DeviceSort {
                        key: DeviceSortKey::LastSeen,
                        descending: true,
                    },
                    0,
                    50,
                    &t,
                )
                .await
                .expect("page");
        }
    };
    let b = time(n, base_label).await;
    row(
        "API `GET /devices?label=site=s07&sort=last_seen`",
        time(n, || {
            get(
                "/v1/operator/devices?label=site%3Ds07&sort=last_seen&order=desc".into(),
                false,
            )
        })
        .await,
        b,
    );
    let base_search = || {
        let store = store.clone();
        async move {
            store
                .device_page(
                    &DeviceFilter {
                        text: Some("gw-0123".into()),
                        ..Default::default()
                    },
                    &DeviceSort::default(),
                    0,
                    50,
                    &t,
                )
                .await
                .expect("page");
        }
    };
    let b = time(n, base_search).await;
    row(
        "API `GET /devices?q=gw-0123` (search)",
        time(n, || get("/v1/operator/devices?q=gw-0123".into(), false)).await,
        b,
    );
    let base_overview = || {
        let store = store.clone();
        async move {
            store.state_counts(&t).await.expect("counts");
            store
                .device_page(
                    &DeviceFilter {
                        problem: Some(ProblemFilter::Any),
                        ..Default::default()
                    },
                    &DeviceSort::default(),
                    0,
                    20,
                    &t,
                )
                .await
                .expect("problems");
            store.label_groups(&t).await.expect("groups");
        }
    };
    let b = time(n, base_overview).await;
    row(
        "API `GET /overview`",
        time(n, || get("/v1/operator/overview".into(), false)).await,
        b,
    );
    let base_alarms = || {
        let store = store.clone();
        async move {
            store
                .alarms(&AlarmQuery {
                    limit: 50,
                    ..Default::default()
                })
                .await
                .expect("alarms");
        }
    };
    let b = time(n, base_alarms).await;
    row(
        "API `GET /alarms`",
        time(n, || get("/v1/operator/alarms".into(), false)).await,
        b,
    );
    row(
        "console `/console/alarms`",
        time(n, || get("/console/alarms".into(), true)).await,
        b,
    );
    // Everything the device page reads, straight from the store.
    let base_device = || {
        let store = store.clone();
        async move {
            let d = store
                .device("d00123")
                .await
                .expect("device")
                .expect("d00123");
            store.stream_marks("d00123").await.expect("marks");
            store.updates("d00123", 20).await.expect("updates");
            store.device_errors("d00123", 10).await.expect("errors");
            store
                .alarms(&AlarmQuery {
                    device: Some("d00123".into()),
                    limit: 20,
                    ..Default::default()
                })
                .await
                .expect("alarms");
            for r in store.rollouts().await.expect("rollouts") {
                if fleet_server::rollout::targets(&r, &d) {
                    store.rollout_reports(&r.id).await.expect("reports");
                }
            }
            store.history("d00123", 0, 5000).await.expect("history");
            store
                .latest_records("d00123", "predictions", 10)
                .await
                .expect("predictions");
            for ix in store
                .device_drift_index("d00123", Some("pump"), i64::MIN, 200)
                .await
                .expect("drift")
            {
                store
                    .record("d00123", "drift", ix.seq)
                    .await
                    .expect("record");
            }
        }
    };
    let b = time(n, base_device).await;
    row(
        "console `/console/devices/{id}`",
        time(n, || get("/console/devices/d00123".into(), true)).await,
        b,
    );
    let base_rollout = || {
        let store = store.clone();
        let rollout = rollout.clone();
        async move {
            store.rollout(&rollout).await.expect("rollout");
            store
                .devices_with_labels(&["site=s03".into()])
                .await
                .expect("devices");
            store.rollout_reports(&rollout).await.expect("reports");
        }
    };
    let b = time(n, base_rollout).await;
    row(
        "API `GET /rollouts/{id}` (500 devices)",
        time(n, || get(format!("/v1/operator/rollouts/{rollout}"), false)).await,
        b,
    );
    let base_rollouts = || {
        let store = store.clone();
        async move {
            store.rollouts().await.expect("rollouts");
            store.devices_with_labels(&[]).await.expect("devices");
        }
    };
    let b = time(n.min(50), base_rollouts).await;
    row(
        "console `/console/rollouts`",
        time(n.min(50), || get("/console/rollouts".into(), true)).await,
        b,
    );
    row(
        "console `/console/` (overview)",
        time(n.min(50), || get("/console/".into(), true)).await,
        time(n.min(50), base_overview).await,
    );
    let since = fleet_server::drift::now_ns() - 24 * 3_600_000_000_000;
    let base_heat = || {
        let store = store.clone();
        async move {
            store.latest_drift("pump", 1, since).await.expect("latest");
        }
    };
    let b = time(n.min(20), base_heat).await;
    let hq = fleet_server::drift::HeatmapQuery {
        bundle: "pump".into(),
        version_number: None,
        group_by: fleet_server::drift::HeatmapGroup::Label("site".into()),
        select: vec![],
        since_ns: since,
        limit: 100,
    };
    row(
        "heatmap by label `site`, computed (every device's newest record merged)",
        time(n.min(10), || {
            let (store, registry, hq) = (store.clone(), registry.clone(), hq.clone());
            async move {
                fleet_server::drift::build_heatmap(&store, &registry, &hq)
                    .await
                    .expect("heatmap");
            }
        })
        .await,
        b,
    );
    row(
        "API `GET /drift/heatmap?group_by=label:site` (reused for 15 s)",
        time(n.min(20), || {
            get(
                "/v1/operator/drift/heatmap?bundle=pump&group_by=label:site".into(),
                false,
            )
        })
        .await,
        b,
    );
    row(
        "API `GET /drift/heatmap` (100 most drifting devices)",
        time(n.min(20), || {
            get("/v1/operator/drift/heatmap?bundle=pump".into(), false)
        })
        .await,
        b,
    );
    drop(app);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
