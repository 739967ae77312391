//! OPC-UA against the asyncua server (an independent implementation): subscriptions and polled
//! reads on security None, Basic256Sha256 SignAndEncrypt with user/password, certificate trust
//! (trust list, trust on first use), wrong credentials, unknown nodes, and recovery after the
//! server is killed and restarted (the failure Telegraf never recovers from).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_sources::opcua::{OpcUaSource, OpcUaSourceConfig};
use edge_wire::{Quality, Value};
use interop_tests::*;

fn config(port: u16, extra: &str) -> OpcUaSourceConfig {
    toml_config(&format!(
        r#"
name = "line1"
endpoint = "opc.tcp://127.0.0.1:{port}"
publishing_interval = "100ms"
poll_interval = "200ms"
request_timeout = "2s"
reconnect = {{ initial = "200ms", max = "1s" }}
{extra}
[[tags]]
name = "temperature"
node_id = "ns=2;s=Pump1.Temperature"
[[tags]]
name = "counter"
node_id = "ns=2;s=Pump1.Counter"
[[tags]]
name = "running"
node_id = "ns=2;s=Pump1.Running"
"#
    ))
}

const SECURE: &str = r#"
security_policy = "basic256sha256"
security_mode = "sign_and_encrypt"
username = "edge"
strict_certificate_checks = false
"#;

async fn wait_counter_moving(h: &mut Harness) {
    let first = h
        .wait_for(Duration::from_secs(30), "a good counter", |s| {
            &*s.tag == "counter" && s.quality == Quality::Good
        })
        .await;
    let Value::UInt(c0) = first.value else {
        panic!("counter is UInt32, got {first:?}")
    };
    h.wait_for(Duration::from_secs(10), "the counter moving", |s| {
        &*s.tag == "counter" && matches!(s.value, Value::UInt(c) if c > c0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_over_security_none_delivers_typed_values() {
    let dir = tempdir();
    let port = free_port();
    let _server = opcua_server(dir.path(), port, false);
    let src = OpcUaSource::new(config(port, ""), dir.path().join("pki")).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    wait_counter_moving(&mut h).await;
    let t = h
        .wait_for(Duration::from_secs(5), "temperature", |s| {
            &*s.tag == "temperature" && s.quality == Quality::Good
        })
        .await;
    let v = t.usable_f64().unwrap();
    assert!((55.0..=65.0).contains(&v), "temperature {v}");
    // Source timestamps come from the server and are recent.
    let age = edge_wire::now_ns() - t.ts_ns;
    assert!(
        (-5_000_000_000..10_000_000_000).contains(&age),
        "timestamp age {age} ns"
    );
    // The boolean changes every 10 s; its initial value came with the subscription.
    let r = match h.seen.iter().find(|s| &*s.tag == "running").cloned() {
        Some(r) => r,
        None => {
            h.wait_for(Duration::from_secs(15), "running", |s| &*s.tag == "running")
                .await
        }
    };
    assert!(matches!(r.value, Value::Bool(_)), "{r:?}");
    assert!(h.stats.is_connected());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_mode_and_unknown_nodes() {
    let dir = tempdir();
    let port = free_port();
    let _server = opcua_server(dir.path(), port, false);
    let mut cfg = config(port, "mode = \"poll\"");
    cfg.tags.push(toml_config(
        "name = \"ghost\"\nnode_id = \"ns=2;s=Pump1.DoesNotExist\"",
    ));
    let src = OpcUaSource::new(cfg, dir.path().join("pki")).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    wait_counter_moving(&mut h).await;
    // Reported once, maybe already while the counter was awaited.
    let g = match h.seen.iter().find(|s| &*s.tag == "ghost").cloned() {
        Some(g) => g,
        None => {
            h.wait_for(Duration::from_secs(5), "ghost", |s| &*s.tag == "ghost")
                .await
        }
    };
    assert_eq!(
        g.quality,
        Quality::Bad,
        "a node the server does not know is bad quality"
    );
    ghost_reported_once(&mut h).await;
    h.stop().await.unwrap();
}

/// An unknown node is a configuration error: counted, one bad sample, and not read again
/// (it was polled every interval forever, a bad sample each time, with no error counted).
async fn ghost_reported_once(h: &mut Harness) {
    assert!(
        h.stats.errors.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the unknown node is counted in edge_source_errors_total"
    );
    // Ten more polls of the good tags (200 ms apart) go by...
    for _ in 0..10 {
        wait_counter_moving(h).await;
    }
    // ...and the ghost was never read again.
    let ghosts = h.seen.iter().filter(|s| &*s.tag == "ghost").count();
    assert_eq!(ghosts, 1, "the unknown node was read again");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_node_in_a_subscription_is_a_configuration_error_reported_once() {
    let dir = tempdir();
    let port = free_port();
    let _server = opcua_server(dir.path(), port, false);
    let mut cfg = config(port, "");
    cfg.tags.push(toml_config(
        "name = \"ghost\"\nnode_id = \"ns=2;s=Pump1.DoesNotExist\"",
    ));
    let src = OpcUaSource::new(cfg, dir.path().join("pki")).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    wait_counter_moving(&mut h).await;
    let g = match h.seen.iter().find(|s| &*s.tag == "ghost").cloned() {
        Some(g) => g,
        None => {
            h.wait_for(Duration::from_secs(5), "ghost", |s| &*s.tag == "ghost")
                .await
        }
    };
    assert_eq!(g.quality, Quality::Bad, "{g:?}");
    ghost_reported_once(&mut h).await;
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn secure_endpoint_with_password_and_trust_on_first_use() {
    let dir = tempdir();
    let port = free_port();
    let _server = opcua_server(dir.path(), port, true);
    let pki = dir.path().join("pki");
    let cfg = config(
        port,
        &format!("{SECURE}password = \"edge-pass\"\nserver_trust = \"trust_on_first_use\""),
    );
    let src = OpcUaSource::new(cfg, pki.clone()).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    wait_counter_moving(&mut h).await;
    assert!(
        pki.join("tofu/line1.der").exists(),
        "the server certificate was pinned"
    );
    assert!(
        pki.join("own/cert.der").exists(),
        "a client certificate was generated"
    );
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_an_error_and_the_source_keeps_trying() {
    let dir = tempdir();
    let port = free_port();
    let _server = opcua_server(dir.path(), port, true);
    let cfg = config(
        port,
        &format!("{SECURE}password = \"wrong\"\nserver_trust = \"trust_on_first_use\""),
    );
    let src = OpcUaSource::new(cfg, dir.path().join("pki")).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    let s = h
        .wait_for(Duration::from_secs(30), "bad quality", |s| {
            s.quality == Quality::Bad
        })
        .await;
    assert_eq!(s.value, Value::Null);
    let later = h.collect_for(Duration::from_secs(3)).await;
    assert!(
        later.iter().all(|s| s.quality == Quality::Bad),
        "no value without a session"
    );
    assert!(h.stat(|s| &s.errors) >= 1);
    assert!(!h.stats.is_connected());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_server_certificate_is_refused_until_an_operator_trusts_it() {
    let dir = tempdir();
    let port = free_port();
    let _server = opcua_server(dir.path(), port, true);
    let pki = dir.path().join("pki");
    let cfg = config(
        port,
        &format!("{SECURE}password = \"edge-pass\"\nserver_trust = \"trust_list\""),
    );
    let src = OpcUaSource::new(cfg, pki.clone()).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    h.wait_for(Duration::from_secs(30), "bad quality", |s| {
        s.quality == Quality::Bad
    })
    .await;
    // The refused certificate lands in rejected/ for the operator to inspect.
    let rejected = pki.join("rejected");
    let t0 = std::time::Instant::now();
    let cert = loop {
        let found = std::fs::read_dir(&rejected)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok());
        if let Some(e) = found {
            break e.path();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no certificate in {}",
            rejected.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(h
        .collect_for(Duration::from_secs(1))
        .await
        .iter()
        .all(|s| s.quality == Quality::Bad));
    // Operator action: move it to trusted/. No restart needed.
    let trusted = pki.join("trusted").join(cert.file_name().unwrap());
    std::fs::rename(&cert, &trusted).unwrap();
    wait_counter_moving(&mut h).await;
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn session_recovers_after_the_server_is_killed_and_restarted() {
    let dir = tempdir();
    let port = free_port();
    let mut server = opcua_server(dir.path(), port, false);
    let src = OpcUaSource::new(config(port, ""), dir.path().join("pki")).unwrap();
    let mut h = Harness::start("line1", Box::new(src));
    wait_counter_moving(&mut h).await;
    server.kill();
    h.wait_for(
        Duration::from_secs(20),
        "bad quality while the server is down",
        |s| &*s.tag == "counter" && s.quality == Quality::Bad,
    )
    .await;
    assert!(!h.stats.is_connected());
    // The server stays down for 2 s (the fault schedule): reconnect attempts fail meanwhile.
    tokio::task::spawn_blocking(|| hold_fault(Duration::from_secs(2), "OPC-UA server down"))
        .await
        .unwrap();
    server.restart();
    // The restarted server counts from 0 again: any good counter after the bad one proves
    // that notifications resumed.
    h.wait_for(
        Duration::from_secs(40),
        "good values after the restart",
        |s| &*s.tag == "counter" && s.quality == Quality::Good,
    )
    .await;
    wait_counter_moving(&mut h).await;
    assert!(h.stat(|s| &s.reconnects) >= 1);
    h.stop().await.unwrap();
}
