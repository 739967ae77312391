//! The real `fleet-server` and `edge-agent` binaries on loopback with mutual TLS: enrollment,
//! authorization, idempotent ingest through a cut network, resumable downloads, delta
//! updates with hot reload, rollback on a failed health check, rollout auto-halt and an
//! operator rollback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_wire::sync::{self, path};
use interop_tests::fleet::*;
use interop_tests::*;
use serde_json::Value;

#[test]
fn enrollment_authz_ingest_through_cuts_and_resumed_download() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let (key, public) = keygen(d, "ml");
    server.cli(&["model", "trust", &public.display().to_string()]);
    // The device runs v1, which this server never stored: its update must be a full
    // download (nothing to diff against), slowed down so the test can cut it midway.
    let v1 = demo_bundle_version(&key, 1, |_| {});
    let v2 = demo_bundle_version(&key, 2, |_| {});
    let bundle = d.join("pump.bundle");
    std::fs::write(&bundle, &v1).expect("v1");
    let v2_path = d.join("v2.bundle");
    std::fs::write(&v2_path, &v2).expect("v2");
    server.cli(&["model", "push", &v2_path.display().to_string()]);
    // A 10 kB/s uplink: the compressed bundle download takes seconds, long enough to cut it
    // twice.
    let proxy = TcpProxy::start_throttled(server.port, 10_000);
    let tok = token(&server, &["site=a"]);
    let cfg = agent_config(
        d,
        AgentSetup {
            id: "gw1",
            server_port: proxy.port,
            ca: &server.ca(),
            token: &tok,
            bundle: &bundle,
            trusted: &public,
            extra_sync:
                "max_bytes_per_s = 100000\nstreams = [\"alarms\", \"drift\", \"predictions\", \"samples\"]",
        },
    );
    let mut agent = start_agent(d, "gw1", &cfg);

    // Enrolled, checked in with its status.
    let dev = server.wait("enrollment and check-in", Duration::from_secs(60), || {
        let ds = server.devices();
        let d0 = ds.first()?;
        d0["last_seen"].as_i64()?;
        Some(d0.clone())
    });
    let id = dev["id"].as_str().expect("id").to_string();
    assert_eq!(dev["name"], "gw1");
    assert_eq!(dev["labels"][0], "site=a");
    let show = server.device_show(&id);
    assert_eq!(show["status"]["models"][0]["version_number"], 1);

    // The token was one-time: replaying it is refused and stores nothing.
    let replay = enroll_device(server.port, &server.ca(), d, "thief", &tok);
    let (status, msg) = replay.expect_err("replayed token accepted");
    assert_eq!(status, 403, "{msg}");
    assert!(msg.contains("already used"), "{msg}");
    assert_eq!(server.devices().len(), 1);

    // Uploads flow: samples acked by the server.
    server.wait("samples ingested", Duration::from_secs(60), || {
        let s = server.device_show(&id);
        (stream(&s, "samples")?["acked_through"].as_i64()? >= 30).then_some(())
    });

    // A second device, enrolled by hand, cannot see the first one's artifacts.
    let tok_b = token(&server, &["site=b"]);
    let (cert_b, key_b, id_b) =
        enroll_device(server.port, &server.ca(), d, "gw2", &tok_b).expect("enroll gw2");
    assert_ne!(id_b, id);

    // Roll v2 out to site=a; the agent starts a full, rate-limited download.
    let rid = server
        .cli(&[
            "model",
            "rollout",
            "start",
            "pump-anomaly",
            "2",
            "--select",
            "site=a",
        ])
        .trim()
        .to_string();
    let v2_sha = sha_of(&v2_path);
    // Device B sees only its own state, and cannot halt a rollout that does not target it.
    let b_auth = Some((cert_b.as_path(), key_b.as_path()));
    let reply: sync::CheckInReply = call(
        server.port,
        &server.ca(),
        b_auth,
        path::CHECKIN,
        &sync::CheckIn {
            agent_version: "t".into(),
            models: vec![],
            streams: vec![],
            last_error: None,
            uptime_s: 0,
            config: None,
            agent: None,
        },
    )
    .expect("B checks in");
    assert_eq!(reply.device_id, id_b);
    assert!(reply.desired.is_empty(), "{:?}", reply.desired);
    let _: sync::Empty = call(
        server.port,
        &server.ca(),
        b_auth,
        path::REPORT,
        &sync::UpdateReport {
            model: "pump".into(),
            bundle: "pump-anomaly".into(),
            from_version_number: 1,
            to_version_number: 2,
            rollout: Some(rid.clone()),
            outcome: sync::UpdateOutcome::Failed,
            method: "full".into(),
            downloaded_bytes: 0,
            detail: "forged failure".into(),
        },
    )
    .expect("B reports");
    let rollouts = server.cli(&["model", "rollout", "list"]);
    assert!(
        rollouts
            .lines()
            .any(|l| l.starts_with(&rid) && l.contains("state=active") && l.contains("failed=0")),
        "{rollouts}"
    );
    let (st, body) = https(
        server.port,
        &server.ca(),
        Some((&cert_b, &key_b)),
        "GET",
        &format!("{}/{v2_sha}", path::ARTIFACTS),
        &[],
        b"",
    )
    .expect("request");
    assert_eq!(
        st,
        404,
        "device B read device A's artifact: {}",
        String::from_utf8_lossy(&body)
    );

    // Cut the network twice mid-transfer (and mid-upload).
    // Not a bundle the server knows: it serves the compressed full bundle (zstd-full).
    let downloads = d.join("gw1/sync/downloads");
    let part = server.wait("download started", Duration::from_secs(60), || {
        std::fs::read_dir(&downloads)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "part"))
    });
    let artifact_sha = part
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("artifact name")
        .to_string();
    let artifact_len = server
        .artifact_size(&artifact_sha)
        .expect("artifact on the server");
    assert!(artifact_len < v2.len() as u64 / 2, "{artifact_len}");
    server.wait("download in progress", Duration::from_secs(60), || {
        (std::fs::metadata(&part).ok()?.len() > 5_000).then_some(())
    });
    // Cut mid-download: the agent pauses the update (and resumes it at its next check-in).
    // Each cut: the agent logs one more pause than it had logged before the cut.
    let pauses = || {
        std::fs::read_to_string(agent.log_path())
            .unwrap_or_default()
            .matches("update paused")
            .count()
    };
    let cut_and_wait_for_the_pause = || {
        let before = pauses();
        proxy.cut();
        agent.wait_log(
            Duration::from_secs(60),
            "the agent to notice the cut",
            "update paused",
            before + 1,
        )
    };
    cut_and_wait_for_the_pause();
    let partial = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(
        partial > 0 && partial < artifact_len,
        "{partial} of {artifact_len}"
    );
    // Back, the download resumes from there; a second cut while it runs.
    proxy.restore();
    server.wait("the download resumed", Duration::from_secs(60), || {
        (std::fs::metadata(&part).ok()?.len() > partial).then_some(())
    });
    cut_and_wait_for_the_pause();
    proxy.restore();

    // Applied after resuming; reported; the model stage serves v2.
    server.wait("update applied", Duration::from_secs(90), || {
        server.audit().contains("update.applied").then_some(())
    });
    assert_eq!(sha_of(&bundle), v2_sha);
    let audit = server.audit();
    let line = audit
        .lines()
        .find(|l| l.contains("update.applied"))
        .expect("applied line");
    assert!(line.contains("via zstd-full"), "{line}");
    // Resumed, not restarted: exactly the artifact's bytes arrived in total.
    assert!(line.contains(&format!("({artifact_len} bytes)")), "{line}");
    server.wait("status shows v2", Duration::from_secs(30), || {
        let s = server.device_show(&id);
        (s["status"]["models"][0]["version_number"] == 2).then_some(())
    });
    let log = std::fs::read_to_string(d.join("gw1.log")).unwrap_or_default();
    assert!(
        log.contains("update paused"),
        "no interrupted download in the log:\n{log}"
    );

    // Revocation takes effect at once.
    server.cli(&["device", "revoke", &id_b]);
    let r: Result<sync::CheckInReply, _> = call(
        server.port,
        &server.ca(),
        Some((&cert_b, &key_b)),
        path::CHECKIN,
        &sync::CheckIn {
            agent_version: "t".into(),
            models: vec![],
            streams: vec![],
            last_error: None,
            uptime_s: 0,
            config: None,
            agent: None,
        },
    );
    let (st, msg) = r.expect_err("revoked device checked in");
    assert_eq!(st, 403);
    assert!(msg.contains("revoked"), "{msg}");

    // Drift summaries (every 5 s here) reach the server (ahead of raw samples).
    server.wait(
        "drift summaries at the server",
        Duration::from_secs(60),
        || {
            let s = server.device_show(&id);
            (stream(&s, "drift")?["acked_through"].as_i64()? >= 1).then_some(())
        },
    );
    // The operator's view: per interval and feature, scores against the bundle's reference.
    let lines = server.cli(&["device", "drift", &id]);
    let first: Value =
        serde_json::from_str(lines.lines().next().expect("a drift record")).expect("json");
    assert_eq!(first["bundle"], "pump-anomaly");
    let cols = first["columns"].as_array().expect("columns");
    assert_eq!(cols.len(), 8, "{first}");
    assert!(
        cols.iter()
            .all(|c| c["scores"]["psi"].as_f64().is_some() && c["count"].as_u64() > Some(0)),
        "{first}"
    );
    // Stop the agent; every sample record the server holds is contiguous from 1, none twice.
    assert!(agent.terminate(Duration::from_secs(20)));
    let s = server.device_show(&id);
    let samples = stream(&s, "samples").expect("samples stream");
    let acked = samples["acked_through"].as_i64().expect("acked");
    assert_eq!(samples["lost_on_device"], 0);
    assert_eq!(samples["records"].as_i64(), Some(acked), "{samples}");
    assert!(acked > 50, "{samples}");
    // The outbox cursor and the server agree after a restart: nothing re-sent as new.
    let mut agent = start_agent(d, "gw1", &cfg);
    server.wait(
        "uploads resume after restart",
        Duration::from_secs(60),
        || {
            let s = server.device_show(&id);
            (stream(&s, "samples")?["acked_through"].as_i64()? > acked + 20).then_some(())
        },
    );
    let s = server.device_show(&id);
    let samples = stream(&s, "samples").expect("samples stream");
    assert_eq!(samples["records"], samples["acked_through"], "{samples}");
    agent.terminate(Duration::from_secs(20));
}

#[test]
fn bad_requests_get_clear_errors_and_store_nothing() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let tok = token(&server, &[]);
    let ca = server.ca();
    let (cert, key, _) = enroll_device(server.port, &ca, d, "gw", &tok).expect("enroll");
    let auth = Some((cert.as_path(), key.as_path()));
    let post = |ct: &str, body: &[u8]| {
        https(
            server.port,
            &ca,
            auth,
            "POST",
            path::UPLOAD,
            &[("content-type", ct)],
            body,
        )
        .expect("request")
    };
    // Wrong content type.
    let (st, b) = post("application/json", b"{}");
    assert_eq!(st, 415, "{}", String::from_utf8_lossy(&b));
    // Not zstd.
    let (st, b) = post(sync::CONTENT_TYPE, b"garbage");
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&b).contains("zstd"));
    // Malformed CBOR inside valid zstd.
    let (st, b) = post(
        sync::CONTENT_TYPE,
        &zstd::bulk::compress(b"\xff\xff\xff", 1).expect("z"),
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    // An unknown message version.
    let mut cbor = Vec::new();
    ciborium::into_writer(&serde_json::json!({"v": 99, "msg": {}}), &mut cbor).expect("cbor");
    let (st, b) = post(
        sync::CONTENT_TYPE,
        &zstd::bulk::compress(&cbor, 1).expect("z"),
    );
    assert_eq!(st, 400);
    assert!(
        String::from_utf8_lossy(&b).contains("version 99"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    // Oversized: a decompression bomb.
    let bomb = zstd::bulk::compress(&vec![0u8; sync::MAX_BODY + 1], 3).expect("z");
    let (st, _) = post(sync::CONTENT_TYPE, &bomb);
    assert_eq!(st, 413);
    // Bad stream name and sequence 0.
    let bad: Result<sync::UploadAck, _> = call(
        server.port,
        &ca,
        auth,
        path::UPLOAD,
        &sync::UploadBatch {
            stream: "../etc".into(),
            first_available: 1,
            records: vec![],
        },
    );
    assert_eq!(bad.expect_err("bad stream").0, 400);
    // No client certificate.
    let r: Result<sync::CheckInReply, _> =
        call(server.port, &ca, None, path::CHECKIN, &sync::Empty {});
    assert_eq!(r.expect_err("anonymous check-in").0, 401);
    // Nothing was stored by any of it.
    let devs = server.devices();
    let show = server.device_show(devs[0]["id"].as_str().expect("id"));
    assert_eq!(show["streams"].as_array().map(Vec::len), Some(0), "{show}");
    // A good upload, replayed: stored once, acked contiguously.
    let batch = sync::UploadBatch {
        stream: "samples".into(),
        first_available: 1,
        records: (1..=3)
            .map(|seq| sync::UploadRecord {
                seq,
                ts_ms: 0,
                body: vec![seq as u8],
            })
            .collect(),
    };
    for expect_dups in [0, 3] {
        let ack: sync::UploadAck =
            call(server.port, &ca, auth, path::UPLOAD, &batch).expect("upload");
        assert_eq!((ack.acked_through, ack.duplicates), (3, expect_dups));
    }
    // Bundles: unsigned by a trusted key or a downgrade are refused.
    let (k, public) = keygen(d, "ml");
    let b3 = d.join("b3.bundle");
    std::fs::write(&b3, demo_bundle_version(&k, 3, |_| {})).expect("b3");
    let (ok, _, err) = server.cli_status(&["model", "push", &b3.display().to_string()]);
    assert!(!ok && err.contains("no trusted signing key"), "{err}");
    server.cli(&["model", "trust", &public.display().to_string()]);
    server.cli(&["model", "push", &b3.display().to_string()]);
    let b2 = d.join("b2.bundle");
    std::fs::write(&b2, demo_bundle_version(&k, 2, |_| {})).expect("b2");
    let (ok, _, err) = server.cli_status(&["model", "push", &b2.display().to_string()]);
    assert!(!ok && err.contains("downgrade"), "{err}");
    let (other, _) = keygen(d, "intruder");
    let b4 = d.join("b4.bundle");
    std::fs::write(&b4, demo_bundle_version(&other, 4, |_| {})).expect("b4");
    let (ok, _, err) = server.cli_status(&["model", "push", &b4.display().to_string()]);
    assert!(!ok && err.contains("not trusted"), "{err}");
    let list = server.cli(&["model", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    // A reader that goes away (`fleet-server … | head`): the command ends quietly.
    let mut child = server
        .cli_command()
        .args(["model", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fleet-server");
    drop(child.stdout.take()); // the read end closes before anything is written
    let out = child.wait_with_output().expect("exit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
    // Logs redirected to a file (journald, the test's log) are plain text, no colour codes.
    let log = std::fs::read_to_string(server.peer.log_path()).expect("server log");
    assert!(
        log.contains("listening") && !log.contains('\u{1b}'),
        "{log}"
    );
}

#[test]
fn delta_update_health_rollback_auto_halt_and_operator_rollback() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let (key, public) = keygen(d, "ml");
    server.cli(&["model", "trust", &public.display().to_string()]);
    let write = |name: &str, bytes: Vec<u8>| {
        let p = d.join(name);
        std::fs::write(&p, bytes).expect("bundle");
        p
    };
    let v1 = write("v1.bundle", demo_bundle_version(&key, 1, |_| {}));
    // v2 carries lineage (what `bundle pack` records): it must survive push, delta download
    // and install, and read the same on the device.
    let v2 = write(
        "v2.bundle",
        demo_bundle_version(&key, 2, |m| {
            m.lineage = Some(edge_wire::bundle::manifest::Lineage {
                training_data_sha256: "ab".repeat(32),
                training_data_name: "plant-2026-11.csv".into(),
                feature_spec_sha256: "cd".repeat(32),
                code_revision: Some("train@3f2c9e1".into()),
                params: [("seed".to_string(), "7".to_string())].into(),
                metrics: [("val_auc".to_string(), 0.93)].into(),
                packed_by: "edge-agent test".into(),
            })
        }),
    );
    // v3 loads but its outputs are outside its declared range: fails the health check.
    let v3 = write(
        "v3.bundle",
        demo_bundle_version(&key, 3, |m| {
            m.postprocess.ranges = vec![edge_wire::bundle::manifest::OutputRange {
                output: "scores".into(),
                min: 100.0,
                max: 200.0,
            }]
        }),
    );
    let v4 = write("v4.bundle", demo_bundle_version(&key, 4, |_| {}));
    for v in [&v1, &v2, &v3, &v4] {
        server.cli(&["model", "push", &v.display().to_string()]);
    }
    let bundle = d.join("pump.bundle");
    std::fs::copy(&v1, &bundle).expect("install v1");
    let tok = token(&server, &["site=a", "canary"]);
    let cfg = agent_config(
        d,
        AgentSetup {
            id: "gw",
            server_port: server.port,
            ca: &server.ca(),
            token: &tok,
            bundle: &bundle,
            trusted: &public,
            extra_sync: "",
        },
    );
    let mut agent = start_agent(d, "gw", &cfg);
    server.wait("check-in", Duration::from_secs(60), || {
        server.devices().first()?["last_seen"].as_i64()
    });
    let applied = |n: usize| {
        server.wait("update report", Duration::from_secs(90), || {
            let a = server.audit();
            (a.matches("update.").count() >= n).then_some(a)
        })
    };

    // v1 -> v2 as a delta (the server holds v1), hot-reloaded without a restart.
    server.cli(&[
        "model",
        "rollout",
        "start",
        "pump-anomaly",
        "2",
        "--select",
        "site=a",
    ]);
    let audit = applied(1);
    let line = audit
        .lines()
        .find(|l| l.contains("update.applied"))
        .expect("applied");
    assert!(
        !line.contains("via full") && !line.contains("via zstd-full"),
        "expected a delta: {line}"
    );
    assert_eq!(sha_of(&bundle), sha_of(&v2));
    // Lineage: in the registry, and in the bundle the device now runs.
    let list: Value =
        serde_json::from_str(&server.cli(&["model", "list", "--json"])).expect("json");
    let v2_row = list
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["version_number"] == 2)
        .expect("v2 listed");
    assert_eq!(
        v2_row["lineage"]["code_revision"], "train@3f2c9e1",
        "{v2_row}"
    );
    let inspect = std::process::Command::new(workspace_bin("edge-agent"))
        .args(["bundle", "inspect", "--json"])
        .arg(&bundle)
        .output()
        .expect("inspect");
    let on_device: Value = serde_json::from_slice(&inspect.stdout).expect("inspect json");
    assert_eq!(
        on_device["lineage"], v2_row["lineage"],
        "the device's copy carries the same lineage"
    );
    assert_eq!(on_device["lineage"]["metrics"]["val_auc"], 0.93);
    let delta = server.cli(&["model", "delta", "pump-anomaly", "1", "2"]);
    let delta: Value = serde_json::from_str(&delta).expect("delta json");
    assert!(
        delta["bytes"].as_u64().expect("bytes") < delta["all"]["full"].as_u64().expect("full") / 5,
        "{delta}"
    );

    // v3 to canaries: installed, fails its health check, rolled back to v2; the rollout halts.
    let rid3 = server
        .cli(&[
            "model",
            "rollout",
            "start",
            "pump-anomaly",
            "3",
            "--select",
            "site=a",
            "--canary-label",
            "canary",
        ])
        .trim()
        .to_string();
    applied(2);
    // The device's report and the halt it triggers are two writes on the server: wait for both.
    let audit = server.wait("rollout auto-halted", Duration::from_secs(30), || {
        let a = server.audit();
        a.contains("rollout.auto_halt").then_some(a)
    });
    assert!(audit.contains("update.rolled_back"), "{audit}");
    assert!(
        audit.contains("outside the manifest's output range"),
        "{audit}"
    );
    assert_eq!(sha_of(&bundle), sha_of(&v2), "v2 must be back in place");
    let rollouts = server.cli(&["model", "rollout", "list"]);
    assert!(
        rollouts
            .lines()
            .any(|l| l.starts_with(&rid3) && l.contains("state=halted")),
        "{rollouts}"
    );
    // It serves v2 again (metrics of the stage are reported in the check-in).
    server.wait("v2 serving again", Duration::from_secs(30), || {
        let id = server.devices()[0]["id"].as_str()?.to_string();
        (server.device_show(&id)["status"]["models"][0]["version_number"] == 2).then_some(())
    });

    // Operator: drop v3, roll v4 out, then roll v4 back: the device restores its own v2.
    server.cli(&["model", "rollout", "rollback", &rid3]);
    let rid4 = server
        .cli(&[
            "model",
            "rollout",
            "start",
            "pump-anomaly",
            "4",
            "--select",
            "site=a",
        ])
        .trim()
        .to_string();
    applied(3);
    assert_eq!(sha_of(&bundle), sha_of(&v4));
    server.cli(&["model", "rollout", "rollback", &rid4]);
    let audit = applied(4);
    assert!(audit.contains("restored the previous bundle"), "{audit}");
    assert_eq!(sha_of(&bundle), sha_of(&v2));
    // A tampered delta on the server: the device discards it and keeps serving v2; once the
    // artifact is intact again the update goes through.
    let v5 = write("v5.bundle", demo_bundle_version(&key, 5, |_| {}));
    server.cli(&["model", "push", &v5.display().to_string()]);
    let delta: Value =
        serde_json::from_str(&server.cli(&["model", "delta", "pump-anomaly", "2", "5"]))
            .expect("json");
    let art = delta["artifact"].as_str().expect("artifact").to_string();
    let good = server.artifact_first_chunk(&art);
    assert_eq!(
        Some(good.len() as u64),
        server.artifact_size(&art),
        "one chunk"
    );
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    server.set_artifact_first_chunk(&art, &bad);
    server.cli(&[
        "model",
        "rollout",
        "start",
        "pump-anomaly",
        "5",
        "--select",
        "site=a",
    ]);
    let log_path = d.join("gw.log");
    server.wait("tampered artifact refused", Duration::from_secs(60), || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains("does not match").then_some(())
    });
    assert_eq!(
        sha_of(&bundle),
        sha_of(&v2),
        "a tampered delta must never be installed"
    );
    server.set_artifact_first_chunk(&art, &good);
    let audit = applied(5);
    assert_eq!(sha_of(&bundle), sha_of(&v5), "{audit}");
    // v6 does not load here (its features read tags this gateway does not have): the stage
    // refuses it, keeps serving v5, and the updater puts v5's file back.
    let v6 = write(
        "v6.bundle",
        demo_bundle_version(&key, 6, |m| {
            for t in m.features.tags.iter_mut() {
                *t = t.replace("pump1", "pump9");
            }
            for f in m.features.features.iter_mut() {
                f.tag = f.tag.replace("pump1", "pump9");
            }
        }),
    );
    server.cli(&["model", "push", &v6.display().to_string()]);
    server.cli(&[
        "model",
        "rollout",
        "start",
        "pump-anomaly",
        "6",
        "--select",
        "site=a",
    ]);
    let audit = applied(6);
    assert!(audit.contains("failed to load"), "{audit}");
    assert_eq!(sha_of(&bundle), sha_of(&v5));
    // Who did what.
    for action in [
        "model.push",
        "rollout.start",
        "rollout.rollback",
        "device.enroll",
    ] {
        assert!(audit.contains(action), "{action} missing:\n{audit}");
    }
    assert!(audit.contains("test-operator"), "{audit}");
    agent.terminate(Duration::from_secs(20));
}
