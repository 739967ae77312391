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
        agent: None,
    }
}

#[test]
fn short_lived_certificates_are_renewed_in_a_row_without_a_gap() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start_with(d, &["--device-cert-validity", "15s"]);
    let (mut agent, _) = start_demo_agent(&server, d, &server.ca());
    let id = first_device_checked_in(&server, WAIT);
    let first_expiry = server.devices()[0]["cert_expires_at"].as_i64().unwrap();
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

#[test]
fn ca_rotation_with_devices_on_the_old_and_the_new_ca() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    // The agent trusts the CA as exported before the rotation.
    let old_ca = d.join("old-ca.pem");
    std::fs::copy(server.ca(), &old_ca).unwrap();
    let (mut agent, _) = start_demo_agent(&server, d, &old_ca);
    let id1 = first_device_checked_in(&server, WAIT);
    // A second device that never renews: its certificate stays on the old CA.
    let tok2 = token(&server, &["site=b"]);
    let (cert2, key2, id2) = enroll_device(server.port, &old_ca, d, "gw2", &tok2).unwrap();
    let auth2 = Some((cert2.as_path(), key2.as_path()));

    let st: serde_json::Value = serde_json::from_str(&server.cli(&["ca", "rotate"])).unwrap();
    assert_eq!(
        st["devices_on_other_ca"].as_array().unwrap().len(),
        2,
        "{st}"
    );
    assert!(st["previous_sha256"].is_string());
    // The agent renews onto the new CA at its next check-in; gw2 does not.
    server.wait("gw1 renewed onto the new CA", WAIT, || {
        let st: serde_json::Value = serde_json::from_str(&server.cli(&["ca", "status"])).ok()?;
        (st["devices_on_other_ca"] == serde_json::json!([id2.clone()])).then_some(())
    });
    // During the overlap both work: gw2 on the old CA, gw1 on the new one.
    let r: Result<sync::CheckInReply, _> =
        call(server.port, &old_ca, auth2, path::CHECKIN, &status());
    let reply = r.expect("the old CA's device works during the overlap");
    assert!(reply.renew, "the server asks it to renew");
    let before = server.acked_through(&id1, "samples");
    server.wait("gw1 uploads on its new certificate", WAIT, || {
        (server.acked_through(&id1, "samples") > before + 10).then_some(())
    });

    // Finishing is refused while gw2 would be cut off; --force finishes anyway.
    let (ok, _, err) = server.cli_status(&["ca", "finish"]);
    assert!(!ok && err.contains(&id2), "{err}");
    let st: serde_json::Value =
        serde_json::from_str(&server.cli(&["ca", "finish", "--force"])).unwrap();
    assert!(st["previous_sha256"].is_null(), "{st}");
    assert!(server.audit().contains("ca.finish"));
    // The running server picks the change up (new server certificate, new trust): gw2 is
    // refused, gw1 goes on (it trusts the new CA from its renewal).
    server.wait("gw2 refused after the rotation", WAIT, || {
        let r: Result<sync::CheckInReply, _> =
            call(server.port, &server.ca(), auth2, path::CHECKIN, &status());
        r.is_err().then_some(())
    });
    // A fresh start makes new TLS connections: the server's certificate now comes from the
    // new CA, which the agent trusts since its renewal (its configured server_ca is the old
    // one).
    assert!(agent.terminate(Duration::from_secs(20)));
    agent.restart();
    let before = server.acked_through(&id1, "samples");
    server.wait("gw1 uploads after the rotation", WAIT, || {
        (server.acked_through(&id1, "samples") > before + 10).then_some(())
    });
    let log = std::fs::read_to_string(agent.log_path()).unwrap();
    assert!(!log.contains("fleet sync:"), "a sync failed:\n{log}");
    assert!(agent.terminate(Duration::from_secs(20)));
}
