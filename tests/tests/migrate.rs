//! `fleet-server migrate --to postgres://…`: a fleet that ran on the embedded SQLite moves
//! to PostgreSQL. The running agent notices nothing but a short outage: it keeps its
//! certificate and identity, its upload cursor continues where it was (nothing lost,
//! nothing re-sent as new), bundles and deltas moved (a rollout after the move updates
//! it), and operator accounts moved (an API token made afterwards works remotely).
//!
//! Needs PostgreSQL (`FLEET_TEST_POSTGRES`, started by tests/run.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use interop_tests::fleet::*;
use interop_tests::*;

#[test]
fn a_sqlite_fleet_moves_to_postgresql_and_its_devices_carry_on() {
    let dir = tempdir();
    let d = dir.path();
    let mut server = FleetServer::start_on(d, "fleet", None, &[]);
    let port = server.port;
    let (key, public) = keygen(d, "ml");
    server.cli(&["model", "trust", &public.display().to_string()]);
    let v1 = d.join("v1.bundle");
    let v2 = d.join("v2.bundle");
    std::fs::write(&v1, demo_bundle_version(&key, 1, |_| {})).expect("v1");
    std::fs::write(&v2, demo_bundle_version(&key, 2, |_| {})).expect("v2");
    server.cli(&["model", "push", &v1.display().to_string()]);
    server.cli(&["model", "push", &v2.display().to_string()]);
    let (ok, _, err) = server.cli_input(
        &[
            "user",
            "add",
            "olga",
            "--role",
            "operator",
            "--password-stdin",
        ],
        "a long enough password 1",
    );
    assert!(ok, "{err}");
    let bundle = d.join("gw1.bundle");
    std::fs::copy(&v1, &bundle).expect("bundle");
    let tok = token(&server, &["site=a"]);
    let cfg = agent_config(
        d,
        AgentSetup {
            id: "gw1",
            server_port: port,
            ca: &server.ca(),
            token: &tok,
            bundle: &bundle,
            trusted: &public,
            extra_sync: "",
        },
    );
    let _agent = start_agent(d, "gw1", &cfg);
    let id = server.wait("enrolled", Duration::from_secs(60), || {
        let ds = server.devices();
        Some(ds.first()?["id"].as_str()?.to_string())
    });
    server.wait("samples stored", Duration::from_secs(60), || {
        (server.acked_through(&id, "samples") >= 50).then_some(())
    });

    // Stop the server, move the data, start a server on PostgreSQL on the same address.
    assert!(
        server.peer.terminate(Duration::from_secs(30)),
        "server stops"
    );
    let before = server.acked_through(&id, "samples");
    let before_duplicates = stream(&server.device_show(&id), "samples")
        .and_then(|s| s["duplicates"].as_i64())
        .unwrap_or(0);
    let db = postgres_database();
    let (ok, out, err) = server.cli_status(&["migrate", "--to", &db]);
    assert!(ok, "migrate: {err}");
    assert!(out.contains("copied"), "{out}");
    assert!(
        err.contains("records:") && err.contains("devices: 1 rows"),
        "{err}"
    );
    // Into a database that is not empty: refused, and it says why.
    let (ok, _, err) = server.cli_status(&["migrate", "--to", &db]);
    assert!(!ok && err.contains("not empty"), "{err}");

    let server = FleetServer::start_at(d, "fleet", Some(db.clone()), port, &[]);
    assert_eq!(server.database_url.as_deref(), Some(db.as_str()));
    server.wait("uploads continue", Duration::from_secs(90), || {
        (server.acked_through(&id, "samples") >= before + 100).then_some(())
    });
    let devices = server.devices();
    assert_eq!(devices.len(), 1, "the same device, not a new enrollment");
    assert_eq!(devices[0]["id"], id.as_str());
    let show = server.device_show(&id);
    let samples = stream(&show, "samples").expect("samples");
    // The cursor continued: the device did not start over (a restart from 1 would show as
    // `before` duplicates).
    let duplicates = samples["duplicates"].as_i64().unwrap_or(0);
    assert!(
        duplicates - before_duplicates < 100,
        "{duplicates} duplicates after the move (was {before_duplicates})"
    );
    let counts = server.sql(&format!(
        "SELECT COUNT(*), MIN(seq), MAX(seq) FROM records WHERE device_id = '{id}' AND stream = 'samples';"
    ));
    let f: Vec<i64> = counts
        .split('|')
        .map(|x| x.parse().expect("number"))
        .collect();
    assert_eq!(f[1], 1);
    assert_eq!(
        f[0], f[2],
        "samples 1..={} stored exactly once: {counts}",
        f[2]
    );

    // Bundles moved: a rollout updates the device (from the artifacts in PostgreSQL).
    server.cli(&[
        "model",
        "rollout",
        "start",
        "pump-anomaly",
        "2",
        "--select",
        "site=a",
    ]);
    server.wait("v2 applied", Duration::from_secs(90), || {
        (sha_of(&bundle) == sha_of(&v2)).then_some(())
    });
    // Accounts moved: a token made now for the migrated user works remotely.
    let out = server.cli(&[
        "token", "create", "--name", "cli", "--user", "olga", "--ttl", "1h",
    ]);
    let tf = d.join("olga.token");
    std::fs::write(&tf, out.trim()).expect("token");
    let (ok, out, err) = server.remote(&tf, &["device", "list", "--json"]);
    assert!(ok && out.contains(&id), "{err}");
    assert!(server.audit().contains("store.migrate"));
}
