//! Device certificates with the real binaries: certificates issued for 15 seconds are renewed
//! five times in a row by the agent (new key on the device, the old certificate valid until
//! the server confirmed the new one) with no failed sync and no lost record; the old
//! certificate is refused once the new one is in use; expiry is visible per device.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_wire::sync::{self, path};
use interop_tests::fleet::*;
use interop_tests::*;

const WAIT: Duration = Duration::from_secs(90);

fn status() -> sync::CheckIn {
    sync::CheckIn {
        agent_version: "test".into(),
        models: vec![],
        streams: vec![],
        last_error: None,
        uptime_s: 1,
        config: None,
    }
}

#[test]
fn short_lived_certificates_are_renewed_in_a_row_without_a_gap() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start_with(d, &["--device-cert-validity", "15s"]);
    let (key, public) = keygen(d, "ml");
    let bundle = d.join("pump.bundle");
    std::fs::write(&bundle, demo_bundle_version(&key, 1, |_| {})).unwrap();
    let tok = token(&server, &["site=a"]);
    let cfg = agent_config(
        d,
        AgentSetup {
            id: "gw1",
            server_port: server.port,
            ca: &server.ca(),
            token: &tok,
            bundle: &bundle,
            trusted: &public,
            extra_sync: "",
        },
    );
    let mut agent = start_agent(d, "gw1", &cfg);
    let (id, first_expiry) = server.wait("enrollment and check-in", WAIT, || {
        let ds = server.devices();
        ds.first()?["last_seen"].as_i64()?;
        Some((
            ds[0]["id"].as_str()?.to_string(),
            ds[0]["cert_expires_at"].as_i64()?,
        ))
    });
    // Keep the first identity to show it is refused once replaced.
    let sync_dir = d.join("gw1").join("sync");
    let (old_cert, old_key) = (d.join("old.pem"), d.join("old.key"));
    std::fs::copy(sync_dir.join("device.pem"), &old_cert).unwrap();
    std::fs::copy(sync_dir.join("device.key"), &old_key).unwrap();
    let old_auth = Some((old_cert.as_path(), old_key.as_path()));
    let r: Result<sync::CheckInReply, _> = call(
        server.port,
        &server.ca(),
        old_auth,
        path::CHECKIN,
        &status(),
    );
    assert!(
        r.is_ok(),
        "the first certificate works before renewal: {r:?}"
    );

    let mut expiries = vec![first_expiry];
    let mut keys = vec![std::fs::read_to_string(sync_dir.join("device.key")).unwrap()];
    for n in 1..=5 {
        server.wait(&format!("renewal {n}"), WAIT, || {
            (server.audit().matches("device.cert_renewed").count() >= n).then_some(())
        });
        let e = server.wait("the new expiry", WAIT, || {
            let e = server.devices()[0]["cert_expires_at"].as_i64()?;
            (e > *expiries.last()?).then_some(e)
        });
        expiries.push(e);
        let k = std::fs::read_to_string(sync_dir.join("device.key")).unwrap();
        assert!(
            !keys.contains(&k),
            "renewal {n} made a new key on the device"
        );
        keys.push(k);
    }
    // The replaced certificate is refused (by the TLS layer or the registry).
    let r: Result<sync::CheckInReply, _> = call(
        server.port,
        &server.ca(),
        old_auth,
        path::CHECKIN,
        &status(),
    );
    let (code, msg) = r.expect_err("the replaced certificate still works");
    assert!(code == 0 || code == 401 || code == 403, "{code}: {msg}");

    // No failed sync at any point, and every sample record arrived: the stream is
    // contiguous (records stored == highest contiguous sequence) and nothing was lost.
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(!log.contains("fleet sync:"), "a sync failed:\n{log}");
    assert_eq!(log.matches("the new one is in use").count(), 5, "{log}");
    let before = server.acked_through(&id, "samples");
    server.wait("uploads go on after the renewals", WAIT, || {
        let show = server.device_show(&id);
        let s = stream(&show, "samples")?;
        let acked = s["acked_through"].as_i64()?;
        (acked > before + 20 && s["records"].as_i64()? == acked && s["lost_on_device"] == 0)
            .then_some(())
    });
    assert!(agent.terminate(Duration::from_secs(20)));
}
