//! The operator console and API end to end: the real `fleet-server` binary with three real
//! `edge-agent`s syncing (simulated plants; one with a bearing fault), operator accounts made
//! with the CLI, then the browser test (`tests/console/console.e2e.mjs`: Debian's chromium
//! driven by playwright-core, axe-core for accessibility) and, around it, the parts a browser
//! cannot show: the remote CLI through the API (same answers as on the data directory, roles
//! enforced), and device certificates and operator credentials kept apart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_wire::sync::{self, path};
use interop_tests::fleet::*;
use interop_tests::*;
use serde_json::Value;

const PASSWORD: &str = "console-test-password";

/// Where the browser test and its packages are; a missing install fails with the command.
fn node_setup() -> (PathBuf, PathBuf) {
    let dir = workspace().join("tests/console");
    assert!(
        dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/axe-core").exists(),
        "the console test's npm packages are missing: run tests/peers/setup.sh (npm ci in tests/console)"
    );
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "{} is missing: run tests/peers/setup.sh (apt-get install chromium)",
        chromium.display()
    );
    (dir, chromium)
}

/// Screenshots and the accessibility report: `<target>/test-artifacts/console/`.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    let dir = target.join("test-artifacts/console");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn agent_config(
    d: &Path,
    name: &str,
    port: u16,
    ca: &Path,
    token: &str,
    trusted: &[&Path],
    fault: bool,
) -> PathBuf {
    let data = d.join(name);
    std::fs::create_dir_all(&data).expect("agent dir");
    let bundle = data.join("pump-anomaly.bundle");
    std::fs::copy(
        workspace().join("examples/demo/pump-anomaly.bundle"),
        &bundle,
    )
    .expect("bundle");
    let keys: Vec<String> = trusted
        .iter()
        .map(|k| format!("\"{}\"", k.display()))
        .collect();
    let fault = if fault {
        "[[sources.simulated.faults]]\nasset = \"pump1\"\nkind = \"bearing_wear\"\nstart = \"5s\"\nramp = \"20s\"\nmagnitude = 4.0\n"
    } else {
        ""
    };
    let cfg = d.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "{name}"
data_dir = "{data}"

[[sources.simulated]]
name = "plant"
sample_interval = "100ms"
seed = 42
day_length = "10m"
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
load = 0.7
{fault}
[outbox]
commit_interval = "100ms"

[bundles]
trusted_keys = [{keys}]

[[models]]
name = "pump1-anomaly"
bundle = "{bundle}"
reload_check = "200ms"
drift_interval = "5s"

[sync]
server = "https://127.0.0.1:{port}"
server_ca = "{ca}"
enroll_token = "{token}"
interval = "1s"
batch_records = 200
request_timeout = "10s"

[sync.health]
windows = 3
timeout = "60s"
"#,
            data = data.display(),
            keys = keys.join(", "),
            bundle = bundle.display(),
            ca = ca.display(),
        ),
    )
    .expect("agent config");
    cfg
}

#[test]
fn console_in_a_real_browser_with_three_agents_and_the_remote_cli() {
    let (console_dir, chromium) = node_setup();
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start_with(d, &["--history-every", "2s"]);
    let ca = server.ca();
    // Accounts, made the way an operator bootstraps a server: the CLI on the data directory.
    for (name, role) in [
        ("ada", "admin"),
        ("olga", "operator"),
        ("vic", "viewer"),
        ("victim", "operator"),
    ] {
        let (ok, _, err) = server.cli_input(
            &["user", "add", name, "--role", role, "--password-stdin"],
            PASSWORD,
        );
        assert!(ok, "user add {name}: {err}");
    }
    let (ok, out, _) = server.cli_status(&["user", "add", "gen", "--role", "viewer"]);
    assert!(
        ok && out.trim().len() == 20,
        "a generated password is printed once: {out}"
    );
    // Bundles: the demo bundle (version 1), trusted; version 2 signed by another trusted key
    // (the browser uploads it); a file that is no bundle (the browser gets it refused).
    let demo_pub = workspace().join("examples/demo/demo.pub.pem");
    let (ml_key, ml_pub) = keygen(d, "ml");
    server.cli(&["model", "trust", &demo_pub.display().to_string()]);
    server.cli(&["model", "trust", &ml_pub.display().to_string()]);
    server.cli(&[
        "model",
        "push",
        &workspace()
            .join("examples/demo/pump-anomaly.bundle")
            .display()
            .to_string(),
    ]);
    let v2 = d.join("pump-anomaly-v2.bundle");
    std::fs::write(&v2, demo_bundle_version(&ml_key, 2, |_| {})).expect("v2");
    let bad = d.join("not-a-bundle.bin");
    std::fs::write(&bad, b"PK\x03\x04 this is a zip file, not a bundle").expect("bad");

    // Three agents: gw-1 (site=a, canary, a wearing bearing), gw-2 (site=a), gw-3 (site=b).
    let mut agents = Vec::new();
    for (name, labels, fault) in [
        ("gw-1", vec!["site=a", "canary"], true),
        ("gw-2", vec!["site=a"], false),
        ("gw-3", vec!["site=b"], false),
    ] {
        let mut args = vec!["device", "enroll"];
        for l in &labels {
            args.push("--label");
            args.push(l);
        }
        let token = server.cli(&args).trim().to_string();
        let cfg = agent_config(
            d,
            name,
            server.port,
            &ca,
            &token,
            &[&demo_pub, &ml_pub],
            fault,
        );
        agents.push(Peer::start(
            name,
            workspace_bin("edge-agent"),
            &["run", "--config", &cfg.display().to_string()],
            d,
            None,
        ));
    }
    let ids: Vec<(String, String)> =
        server.wait("three devices checked in", Duration::from_secs(120), || {
            let ds = server.devices();
            (ds.len() == 3 && ds.iter().all(|d| d["last_seen"].is_i64())).then(|| {
                ds.iter()
                    .map(|d| {
                        (
                            d["name"].as_str().unwrap_or("").to_string(),
                            d["id"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
        });
    let faulty = ids
        .iter()
        .find(|(n, _)| n == "gw-1")
        .map(|(_, id)| id.clone())
        .expect("gw-1");

    // ---- the remote CLI: API tokens from the CLI, the same answers as locally ----
    let token_of = |user: &str| {
        let (ok, out, err) = server.cli_status(&[
            "token", "create", "--name", "cli", "--user", user, "--ttl", "1h",
        ]);
        assert!(ok, "token create: {err}");
        let f = d.join(format!("{user}.token"));
        std::fs::write(&f, out.trim()).expect("token file");
        f
    };
    let olga = token_of("olga");
    let vic = token_of("vic");
    let (ok, out, err) = server.remote(&olga, &["device", "list", "--json"]);
    assert!(ok, "remote device list: {err}");
    let remote: Value = serde_json::from_str(&out).expect("remote JSON");
    let mut remote_ids: Vec<&str> = remote
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let mut local_ids: Vec<&str> = ids.iter().map(|(_, i)| i.as_str()).collect();
    remote_ids.sort();
    local_ids.sort();
    assert_eq!(remote_ids, local_ids);
    // Version 1 rolled out to every device, remotely, as olga (so a later rollback has
    // somewhere to go back to).
    let (ok, out, err) = server.remote(&olga, &["model", "rollout", "start", "pump-anomaly", "1"]);
    assert!(ok, "remote rollout start: {err}");
    let r1 = out.trim().to_string();
    let (ok, out, _) = server.remote(&vic, &["model", "rollout", "list"]);
    assert!(
        ok && out.contains(&r1) && out.contains("targeted=3"),
        "{out}"
    );
    // A viewer's token cannot act: the error names the role, the exit status says so.
    let (ok, _, err) = server.remote(&vic, &["model", "rollout", "halt", &r1]);
    assert!(!ok && err.contains("needs the operator role"), "{err}");
    let (ok, _, err) = server.remote(&vic, &["user", "list"]);
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    let (ok, _, err) = server.remote(&d.join("missing.token"), &["device", "list"]);
    assert!(!ok && err.contains("cannot read the token file"), "{err}");
    std::fs::write(d.join("wrong.token"), "fleet_000").expect("wrong token");
    let (ok, _, err) = server.remote(&d.join("wrong.token"), &["device", "list"]);
    assert!(!ok && err.contains("unknown, revoked or expired"), "{err}");
    let (ok, out, err) = server.remote(&olga, &["ca", "export"]);
    assert!(ok && out == std::fs::read_to_string(&ca).unwrap(), "{err}");

    // ---- the browser ----
    let art = artifacts();
    let out = Command::new("node")
        .arg(console_dir.join("console.e2e.mjs"))
        .current_dir(&console_dir)
        .env("CONSOLE_URL", format!("https://127.0.0.1:{}", server.port))
        .env("ARTIFACTS", &art)
        .env("PASSWORD", PASSWORD)
        .env("V2_BUNDLE", &v2)
        .env("BAD_BUNDLE", &bad)
        .env("FAULTY_DEVICE", &faulty)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if !out.status.success() {
        for a in &agents {
            eprintln!("--- {}", a.log_tail());
        }
        panic!(
            "the browser test failed:\n{stderr}\nserver log:\n{}\nscreenshots: {}",
            server.peer.log_tail(),
            art.display()
        );
    }
    for n in [
        "01-overview",
        "03-device",
        "05-rollouts",
        "07-drift",
        "10-admin",
    ] {
        assert!(art.join(format!("{n}.png")).exists(), "screenshot {n}");
    }
    // What the browser did is in the audit log under the signed-in users' names.
    let audit = server.audit();
    for (who, what) in [
        ("olga", "rollout.promote"),
        ("olga", "alarm.ack"),
        ("ada", "user.add"),
        ("ada", "token.revoke"),
    ] {
        assert!(
            audit.lines().any(|l| l.contains(who) && l.contains(what)),
            "{what} by {who} missing:\n{audit}"
        );
    }
    // ---- device certificates and operator credentials stay apart ----
    let t = server.cli(&["device", "enroll"]).trim().to_string();
    let (cert, key, _) = enroll_device(server.port, &ca, d, "probe", &t).expect("enroll probe");
    let (status, body) = https(
        server.port,
        &ca,
        Some((&cert, &key)),
        "GET",
        "/v1/operator/whoami",
        &[],
        b"",
    )
    .expect("operator call with a device certificate");
    assert_eq!(
        status,
        401,
        "a device certificate is no operator credential: {}",
        String::from_utf8_lossy(&body)
    );
    let bearer = format!("Bearer {}", std::fs::read_to_string(&olga).unwrap().trim());
    let (status, _) = https(
        server.port,
        &ca,
        None,
        "POST",
        path::CHECKIN,
        &[
            ("authorization", &bearer),
            ("content-type", sync::CONTENT_TYPE),
        ],
        &sync::encode(&sync::CheckIn {
            agent_version: "x".into(),
            models: vec![],
            streams: vec![],
            last_error: None,
            uptime_s: 0,
            config: None,
            agent: None,
        }),
    )
    .expect("device call with an operator token");
    assert_eq!(status, 401, "an operator token is no device credential");

    for a in &mut agents {
        assert!(a.terminate(Duration::from_secs(20)), "{}", a.log_tail());
    }
}
