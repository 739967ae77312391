//! Scale-out: two real `fleet-server` replicas on one PostgreSQL database behind HAProxy in
//! TCP mode (TLS passes through, so device mutual TLS ends at the replicas). Devices spread
//! over both replicas; they enroll, upload and download updates through whichever replica
//! HAProxy picks (artifacts, the CA and every device row live in the database); a rollout
//! started through one replica's operator API is halted through the other's; the same
//! upload batch posted to both replicas at once is stored once; one replica killed while
//! devices upload and another is mid-way through a large upload to it, and they carry on
//! through the other with no record lost or stored twice; a replica with `--retain` deletes
//! old records only.
//!
//! Needs PostgreSQL (`FLEET_TEST_POSTGRES`, started by tests/run.sh) and HAProxy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_wire::sync::{self, path};
use interop_tests::fleet::*;
use interop_tests::*;

/// Per (device, stream): (records stored, lowest seq, highest seq).
fn stored(server: &FleetServer, device: &str) -> Vec<(String, i64, i64, i64)> {
    server
        .sql(&format!(
            "SELECT stream, COUNT(*), MIN(seq), MAX(seq) FROM records \
             WHERE device_id = '{device}' GROUP BY stream ORDER BY stream;"
        ))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let n = |i: usize| f[i].parse::<i64>().expect("number");
            (f[0].to_string(), n(1), n(2), n(3))
        })
        .collect()
}

/// Posts `batch` as the manually enrolled device to the server at `port`.
fn upload(
    port: u16,
    ca: &std::path::Path,
    device: &(std::path::PathBuf, std::path::PathBuf),
    batch: &sync::UploadBatch,
) -> Result<sync::UploadAck, (u16, String)> {
    call(
        port,
        ca,
        Some((device.0.as_path(), device.1.as_path())),
        path::UPLOAD,
        batch,
    )
}

#[test]
fn two_replicas_behind_haproxy_share_devices_rollouts_uploads_and_survive_a_kill() {
    let dir = tempdir();
    let d = dir.path();
    let db = postgres_database();
    // Both replicas on the same database, each with its own data directory (what a second
    // machine would have): the second finds the CA the first created.
    let mut r1 = FleetServer::start_on(d, "r1", Some(db.clone()), &[]);
    let r2 = FleetServer::start_on(d, "r2", Some(db.clone()), &[]);
    let ca = std::fs::read_to_string(r1.ca()).expect("r1 CA");
    assert_eq!(
        ca,
        std::fs::read_to_string(r2.ca()).expect("r2 CA"),
        "one fleet CA for every replica"
    );
    let lb = Haproxy::start(d, &[r1.port, r2.port]);

    let (key, public) = keygen(d, "ml");
    r1.cli(&["model", "trust", &public.display().to_string()]);
    let write = |name: &str, bytes: Vec<u8>| {
        let p = d.join(name);
        std::fs::write(&p, bytes).expect("bundle");
        p
    };
    let v1 = write("v1.bundle", demo_bundle_version(&key, 1, |_| {}));
    let v2 = write("v2.bundle", demo_bundle_version(&key, 2, |_| {}));
    let v3 = write("v3.bundle", demo_bundle_version(&key, 3, |_| {}));
    for v in [&v1, &v2, &v3] {
        r1.cli(&["model", "push", &v.display().to_string()]);
    }

    // Two agents through the load balancer.
    let mut agents = Vec::new();
    let mut bundles = Vec::new();
    for id in ["gw1", "gw2"] {
        let bundle = d.join(format!("{id}.bundle"));
        std::fs::copy(&v1, &bundle).expect("v1");
        let tok = token(&r1, &["site=a"]);
        let cfg = agent_config(
            d,
            AgentSetup {
                id,
                server_port: lb.port,
                ca: &r1.ca(),
                token: &tok,
                bundle: &bundle,
                trusted: &public,
                extra_sync: "",
            },
        );
        agents.push(start_agent(d, id, &cfg));
        bundles.push(bundle);
    }
    let ids: Vec<String> = r2.wait("both agents enrolled", Duration::from_secs(90), || {
        let ds = r2.devices();
        (ds.len() == 2 && ds.iter().all(|d| d["last_seen"].is_i64())).then(|| {
            ds.iter()
                .map(|d| d["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
    });
    for id in &ids {
        r1.wait("samples stored", Duration::from_secs(60), || {
            (r1.acked_through(id, "samples") >= 30).then_some(())
        });
    }
    // Devices spread over both replicas: HAProxy sent connections to each.
    r1.wait(
        "connections to both replicas",
        Duration::from_secs(30),
        || (lb.connections_to(1) > 0 && lb.connections_to(2) > 0).then_some(()),
    );

    // Operators: tokens work on every replica (sessions and tokens are in the database).
    let token_file = |user: &str, role: &str| {
        let (ok, _, err) = r1.cli_input(
            &["user", "add", user, "--role", role, "--password-stdin"],
            "a long enough password 1",
        );
        assert!(ok, "user add: {err}");
        let out = r1.cli(&[
            "token", "create", "--name", "cli", "--user", user, "--ttl", "1h",
        ]);
        let f = d.join(format!("{user}.token"));
        std::fs::write(&f, out.trim()).expect("token file");
        f
    };
    let olga = token_file("olga", "operator");
    let remote = |server: &FleetServer, args: &[&str]| {
        let (ok, out, err) = server.remote(&olga, args);
        assert!(ok, "remote {args:?} on {}: {err}", server.port);
        out
    };
    // v2 rolled out through replica 1: both devices download it through the load balancer
    // (whichever replica serves it, from the database) and apply it.
    let rid2 = remote(
        &r1,
        &[
            "model",
            "rollout",
            "start",
            "pump-anomaly",
            "2",
            "--select",
            "site=a",
        ],
    )
    .trim()
    .to_string();
    for b in &bundles {
        r2.wait("v2 applied", Duration::from_secs(120), || {
            (sha_of(b) == sha_of(&v2)).then_some(())
        });
    }
    for id in &ids {
        r2.wait("v2 reported", Duration::from_secs(60), || {
            let show = r2.device_show(id);
            (show["status"]["models"][0]["version_number"] == 2).then_some(())
        });
    }
    // v3 started through replica 1, halted through replica 2.
    let rid3 = remote(
        &r1,
        &[
            "model",
            "rollout",
            "start",
            "pump-anomaly",
            "3",
            "--select",
            "site=a",
        ],
    )
    .trim()
    .to_string();
    assert_ne!(rid2, rid3);
    remote(&r2, &["model", "rollout", "halt", &rid3]);
    let r3: serde_json::Value =
        serde_json::from_str(&remote(&r1, &["model", "rollout", "show", &rid3]))
            .expect("rollout show JSON");
    assert_eq!(r3["state"], "halted", "{r3}");
    let audit = r1.audit();
    for action in ["rollout.start", "rollout.halt"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(action) && l.contains("olga") && l.contains(&rid3)),
            "{action} by olga on {rid3}:\n{audit}"
        );
    }

    // The same batch posted to both replicas at once: stored once, acked by both.
    let tok = token(&r1, &["site=b"]);
    let (cert, key_file, manual) =
        enroll_device(lb.port, &r1.ca(), d, "manual", &tok).expect("enroll through HAProxy");
    let creds = (cert, key_file);
    let batch = sync::UploadBatch {
        stream: "samples".into(),
        first_available: 1,
        records: (1..=40)
            .map(|seq| sync::UploadRecord {
                seq,
                ts_ms: 1_700_000_000_000 + seq,
                body: vec![seq as u8; 32],
            })
            .collect(),
    };
    let acks: Vec<sync::UploadAck> = std::thread::scope(|s| {
        let posts: Vec<_> = [r1.port, r2.port]
            .into_iter()
            .map(|port| {
                let (batch, ca, creds) = (&batch, r1.ca(), &creds);
                s.spawn(move || upload(port, &ca, creds, batch).expect("upload"))
            })
            .collect();
        posts
            .into_iter()
            .map(|p| p.join().expect("upload thread"))
            .collect()
    });
    assert!(acks.iter().all(|a| a.acked_through == 40), "{acks:?}");
    assert_eq!(
        acks.iter().map(|a| a.duplicates).sum::<u64>(),
        40,
        "each record stored by exactly one replica: {acks:?}"
    );
    assert_eq!(
        stored(&r2, &manual),
        vec![("samples".to_string(), 40, 1, 40)]
    );

    // Replica 1 dies (SIGKILL) while both agents upload and while the manual device is in
    // the middle of a large upload to it over a slow link: the agents carry on through
    // replica 2; the manual device re-sends its batch through the load balancer, and it is
    // stored once, whole (nothing of the cut request was stored).
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let big = sync::UploadBatch {
        stream: "samples".into(),
        first_available: 1,
        records: (41..=2040)
            .map(|seq| sync::UploadRecord {
                seq,
                ts_ms: 1_700_000_000_000 + seq,
                body: (0..100)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng as u8
                    })
                    .collect(),
            })
            .collect(),
    };
    let slow = TcpProxy::start_throttled(r1.port, 20_000);
    let before: Vec<i64> = ids
        .iter()
        .map(|id| r2.acked_through(id, "samples"))
        .collect();
    let r1_ca = r1.ca();
    std::thread::scope(|s| {
        let cut = s.spawn(|| upload(slow.port, &r1_ca, &creds, &big));
        r2.wait(
            "the large upload in flight",
            Duration::from_secs(30),
            || (slow.bytes() > 40_000).then_some(()),
        );
        r1.peer.kill();
        let r = cut.join().expect("upload thread");
        assert!(
            r.is_err(),
            "the upload to the killed replica cannot succeed: {r:?}"
        );
    });
    assert_eq!(
        stored(&r2, &manual),
        vec![("samples".to_string(), 40, 1, 40)]
    );
    let ack = upload(lb.port, &r2.ca(), &creds, &big).expect("re-sent through the load balancer");
    assert_eq!((ack.acked_through, ack.duplicates), (2040, 0));
    assert_eq!(
        stored(&r2, &manual),
        vec![("samples".to_string(), 2040, 1, 2040)]
    );
    for (id, was) in ids.iter().zip(&before) {
        r2.wait(
            "uploads carry on through the surviving replica",
            Duration::from_secs(90),
            || (r2.acked_through(id, "samples") >= was + 200).then_some(()),
        );
    }
    // Stop the agents cleanly, then check every stream: contiguous from 1, nothing lost
    // (no gap) or stored twice (the count matches the range), through the last ack.
    for a in agents.iter_mut() {
        assert!(a.terminate(Duration::from_secs(30)), "agent stops cleanly");
    }
    for id in &ids {
        let rows = stored(&r2, id);
        assert!(rows.iter().any(|r| r.0 == "samples"), "{rows:?}");
        for (stream_name, n, lo, hi) in rows {
            assert_eq!(lo, 1, "{id}/{stream_name} starts at 1");
            assert_eq!(
                n,
                hi - lo + 1,
                "{id}/{stream_name}: {n} records for 1..={hi}"
            );
            assert!(r2.acked_through(id, &stream_name) <= hi);
        }
    }
    // Retention: a replica started with `--retain samples=30d` deletes the manual device's
    // samples (measured in 2023) and keeps the agents' (measured now).
    let agent_samples: Vec<i64> = ids
        .iter()
        .map(|id| {
            stored(&r2, id)
                .iter()
                .find(|r| r.0 == "samples")
                .map_or(0, |r| r.1)
        })
        .collect();
    let r3 = FleetServer::start_on(d, "r3", Some(db.clone()), &["--retain", "samples=30d"]);
    r3.wait("old samples deleted", Duration::from_secs(30), || {
        stored(&r3, &manual).is_empty().then_some(())
    });
    for (id, n) in ids.iter().zip(&agent_samples) {
        let now = stored(&r3, id)
            .iter()
            .find(|r| r.0 == "samples")
            .map_or(0, |r| r.1);
        assert!(
            now >= *n,
            "{id}: {now} samples, had {n}: young records are kept"
        );
    }
    let log = std::fs::read_to_string(r2.peer.log_path()).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    if std::env::var_os("KEEP_TEST_DIR").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
}
