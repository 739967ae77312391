//! Agent software updates with the real binaries: the agent (v1, the normal build, playing
//! the Debian package's /usr/bin/edge-agent) is updated through the fleet to v2 (a build
//! that differs only in its version string), installed beside it, started by "systemd" (the
//! test restarts the process whenever it exits, as `Restart=always` does), health-checked
//! and reported; then to v3 (a build that exits at the start of `run`), which dies before it
//! can report anything and is rolled back to v2 by the launcher after three starts, without
//! an operator. v2 → v3 travels as a delta. Samples stay contiguous throughout.
//! Built by tests/agent-variants.sh (tests/run.sh runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use interop_tests::fleet::*;
use interop_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

fn variant(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("agent-variants")
        .join(name);
    assert!(
        p.exists(),
        "{} is not built: run tests/agent-variants.sh (tests/run.sh does)",
        p.display()
    );
    p
}

fn config_text(d: &Path, server_port: u16, ca: &Path, release_pub: &Path, tok: &str) -> String {
    format!(
        r#"[agent]
id = "gw1"
data_dir = "{data}"

[[sources.simulated]]
name = "plant"
sample_interval = "100ms"
seed = 7
[[sources.simulated.assets]]
name = "pump1"
kind = "pump"
load = 0.7

[outbox]
commit_interval = "100ms"

[sync]
server = "https://127.0.0.1:{server_port}"
server_ca = "{ca}"
enroll_token = "{tok}"
interval = "1s"
request_timeout = "10s"
retry = {{ initial = "200ms", max = "1s" }}

[sync.agent_update]
trusted_keys = ["{key}"]
health_timeout = "30s"
"#,
        data = d.join("gw1").display(),
        ca = ca.display(),
        key = release_pub.display(),
    )
}

fn status(server: &FleetServer, id: &str) -> Value {
    serde_json::from_str(&server.cli(&["agent", "status", id])).unwrap()
}

/// The version a binary reports (`edge-agent --version` → its second word).
fn version_of(bin: &Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// Signs `bin` as release `vn` for `target` and pushes it; returns the release file.
fn release(server: &FleetServer, d: &Path, key: &Path, bin: &Path, target: &str, vn: u64) {
    let out = d.join(format!("edge-agent-{vn}.release"));
    server.cli(&[
        "agent",
        "pack",
        "--binary",
        &bin.display().to_string(),
        "--target",
        target,
        "--version",
        &version_of(bin),
        "--version-number",
        &vn.to_string(),
        "--key",
        &key.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    let pushed = server.cli(&["agent", "push", &out.display().to_string()]);
    assert_eq!(pushed.trim(), vn.to_string());
}

/// Waits for `f` while playing systemd for `agent`; on a timeout the test fails with the
/// device's agent status and the agent's log.
fn wait_supervised<T>(
    server: &FleetServer,
    id: &str,
    agent: &mut Peer,
    exits: &mut Vec<i32>,
    what: &str,
    mut f: impl FnMut(&Value) -> Option<T>,
) -> T {
    let got = poll_until(WAIT, Duration::from_millis(200), || {
        supervise(agent, exits);
        f(&status(server, id))
    });
    match got {
        Some(t) => t,
        None => panic!(
            "timed out waiting for {what}\nstatus: {}\nexits: {exits:?}\nagent log:\n{}",
            status(server, id),
            agent.log_tail()
        ),
    }
}

/// Plays systemd (`Restart=always`): starts the agent again whenever it exited; the exit
/// codes seen so far are in `exits`.
fn supervise(agent: &mut Peer, exits: &mut Vec<i32>) {
    if let Some(code) = agent.exit_code() {
        exits.push(code);
        agent.restart();
    }
}

#[test]
fn updated_to_v2_then_v3_that_dies_at_start_is_rolled_back_to_v2() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let ca = server.ca();
    let (release_key, release_pub) = keygen(d, "release");
    let key_id = server.cli(&["agent", "trust", &release_pub.display().to_string()]);
    assert_eq!(key_id.trim().len(), 16, "{key_id}");
    let tok = token(&server, &["site=a"]);
    let cfg = d.join("gw1.toml");
    std::fs::create_dir_all(d.join("gw1")).unwrap();
    std::fs::write(&cfg, config_text(d, server.port, &ca, &release_pub, &tok)).unwrap();
    let v1 = version_of(&workspace_bin("edge-agent"));
    let v2_bin = variant("edge-agent-v2");
    let v3_bin = variant("edge-agent-v3");
    let (v2, v3) = (version_of(&v2_bin), version_of(&v3_bin));
    assert!(v1 != v2 && v2 != v3, "{v1} {v2} {v3}");

    let mut agent = start_agent(d, "gw1", &cfg);
    let id = first_device_checked_in(&server, WAIT);
    let s = server.wait("the agent's status in a check-in", WAIT, || {
        let s = status(&server, &id);
        (s["state"] == "unmanaged").then_some(s)
    });
    assert_eq!(s["version"], v1.as_str(), "{s}");
    assert!(s["release"].is_null(), "runs its installed binary: {s}");
    let target = s["target"].as_str().unwrap().to_string();

    // A release signed by a key the server does not trust is refused at push.
    let (other_key, _) = keygen(d, "other");
    let stray = d.join("stray.release");
    server.cli(&[
        "agent",
        "pack",
        "--binary",
        &v2_bin.display().to_string(),
        "--target",
        &target,
        "--version",
        &v2,
        "--version-number",
        "2",
        "--key",
        &other_key.display().to_string(),
        "--out",
        &stray.display().to_string(),
    ]);
    let (ok, _, err) = server.cli_status(&["agent", "push", &stray.display().to_string()]);
    assert!(!ok);
    assert!(err.contains("not trusted"), "{err}");

    // v1 → v2: downloaded in full (the device runs no fleet release yet), installed beside
    // the running binary, the agent exits 75, "systemd" starts it, the launcher executes
    // v2, v2 passes its health check and reports.
    let acked_before = server.acked_through(&id, "samples");
    release(&server, d, &release_key, &v2_bin, &target, 2);
    server.cli(&["agent", "rollout", "2", "--select", "site=a"]);
    let mut exits = Vec::new();
    let s = wait_supervised(&server, &id, &mut agent, &mut exits, "v2 applied", |s| {
        (s["state"] == "in_sync"
            && s["reports"]
                .as_array()?
                .iter()
                .any(|r| r["version_number"] == 2 && r["outcome"] == "applied"))
        .then(|| s.clone())
    });
    assert_eq!(s["version"], v2.as_str(), "{s}");
    assert_eq!(s["release"], 2, "{s}");
    let rep = &s["reports"][0];
    // No base on the device: the whole release, zstd-compressed.
    assert_eq!(rep["method"], "zstd-full", "{rep}");
    assert_eq!(rep["from_version"], v1.as_str(), "{rep}");
    assert!(rep["downloaded_bytes"].as_i64().unwrap() > 0, "{rep}");
    assert!(rep["detail"].as_str().unwrap().contains("healthy"), "{rep}");
    assert_eq!(exits, vec![75], "one restart into v2: {}", agent.log_tail());
    let installed = d.join("gw1/agent/releases");
    assert_eq!(std::fs::read_dir(&installed).unwrap().count(), 1);
    assert!(server.audit().contains("agent.applied"));

    // v2 → v3, which exits at start: switched to, it dies three times before it can say
    // anything; the launcher rolls it back to v2, which reports.
    release(&server, d, &release_key, &v3_bin, &target, 3);
    let rid = server.cli(&["agent", "rollout", "3", "--select", "site=a"]);
    exits.clear();
    let rep = wait_supervised(&server, &id, &mut agent, &mut exits, "v3 reported", |s| {
        s["reports"]
            .as_array()?
            .iter()
            .find(|r| r["version_number"] == 3)
            .cloned()
    });
    assert_eq!(rep["outcome"], "rolled_back", "{rep}");
    let detail = rep["detail"].as_str().unwrap();
    assert!(detail.contains("started 3 times"), "{detail}");
    assert_eq!(rep["from_version"], v2.as_str(), "{rep}");
    // v2 → v3 travelled as a delta of the release files, far smaller than v3.
    assert_ne!(rep["method"], "full", "{rep}");
    let v3_size = std::fs::metadata(d.join("edge-agent-3.release"))
        .unwrap()
        .len();
    let got = rep["downloaded_bytes"].as_u64().unwrap();
    assert!(got > 0 && got < v3_size / 4, "{got} of {v3_size}: {rep}");
    eprintln!(
        "v2 -> v3 as {}: {got} bytes downloaded for a {v3_size}-byte release file",
        rep["method"]
    );
    // 75 (into v3), then v3's own exits (3) until the launcher gave up on it.
    assert_eq!(exits[0], 75, "{exits:?}");
    assert_eq!(exits.iter().filter(|c| **c == 3).count(), 3, "{exits:?}");
    assert_eq!(
        std::fs::read_to_string(agent.log_path())
            .unwrap()
            .matches("EDGE_AGENT_FAULT_EXIT_AT_START: exiting at start")
            .count(),
        3
    );
    let s = wait_supervised(&server, &id, &mut agent, &mut exits, "v2 again", |s| {
        (s["version"] == v2.as_str() && s["release"] == 2 && s["pending"].is_null())
            .then(|| s.clone())
    });
    assert!(s["desired"].is_null(), "the rollout halted itself: {s}");
    let r: Value =
        serde_json::from_str(&server.cli(&["model", "rollout", "show", rid.trim()])).unwrap();
    assert_eq!(r["state"], "halted", "{r}");

    // Nothing lost through four process starts: the samples stream is contiguous and moves
    // on, and the device dropped nothing.
    server.wait("samples keep arriving on v2", WAIT, || {
        supervise(&mut agent, &mut exits);
        let show = server.device_show(&id);
        let lost = stream(&show, "samples")?["lost_on_device"].as_i64()?;
        (lost == 0 && server.acked_through(&id, "samples") > acked_before + 100).then_some(())
    });
    assert!(agent.terminate(Duration::from_secs(20)));
}
