//! Remote operations through the fleet with the real binaries: recent logs and a diagnostic
//! bundle fetched from a device; reload, resync and restart commands run once, answered and
//! audited (the restart: exit code 75, then started again as systemd would); a viewer cannot
//! send commands.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use interop_tests::fleet::*;
use interop_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn logs_diagnostics_and_commands_through_the_fleet() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let (mut agent, cfg) = start_demo_agent(&server, d, &server.ca());
    let id = first_device_checked_in(&server, WAIT);

    // Recent logs, filtered by level: the startup lines at info, none of them at error.
    let logs = server.cli(&["device", "logs", &id, "--since", "10m", "--level", "info"]);
    assert!(logs.contains("edge-agent running"), "{logs}");
    assert!(logs.contains("enrolled with the fleet server"), "{logs}");
    assert!(
        logs.lines().all(|l| l.contains("Z ")),
        "timestamped: {logs}"
    );
    let errors = server.cli(&["device", "logs", &id, "--since", "10m", "--level", "error"]);
    assert!(!errors.contains("edge-agent running"), "{errors}");
    // The cap keeps the newest lines.
    let capped = server.cli(&[
        "device",
        "logs",
        &id,
        "--since",
        "10m",
        "--level",
        "trace",
        "--max-bytes",
        "1024",
    ]);
    assert!(capped.len() <= 1024, "{} bytes", capped.len());

    // The diagnostic bundle: versions, the file's hash, sources, outbox, sync, metrics.
    let diag: Value =
        serde_json::from_str(&server.cli(&["device", "diagnostics", &id])).expect("JSON");
    assert_eq!(diag["agent"]["id"], "gw1", "{diag}");
    assert!(diag["agent"]["version"].as_str().is_some());
    assert_eq!(diag["config"]["sha256"], sha_of(&cfg), "{diag}");
    assert_eq!(diag["sources"][0]["name"], "plant");
    assert_eq!(diag["sources"][0]["connected"], true);
    let streams: Vec<&str> = diag["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["stream"].as_str())
        .collect();
    assert!(streams.contains(&"samples"), "{streams:?}");
    assert!(diag["sync"]["checkins"].as_u64().unwrap() >= 1);
    assert!(diag["metrics"]
        .as_str()
        .unwrap()
        .contains("edge_source_samples_total"));

    // Reload and resync: run once, answered.
    let (ok, _, err) = server.cli_status(&["device", "command", &id, "reload-bundles", "--wait"]);
    assert!(ok, "{err}");
    assert!(err.contains("done: pump: serves pump-anomaly"), "{err}");
    let (ok, _, err) = server.cli_status(&["device", "command", &id, "resync", "--wait"]);
    assert!(ok && err.contains("done"), "{err}");
    // Rebirth without a Sparkplug output: failed, with the reason, exit 1.
    let (ok, _, err) = server.cli_status(&["device", "command", &id, "rebirth", "--wait"]);
    assert!(!ok && err.contains("no Sparkplug output"), "{err}");

    // A viewer cannot send commands (403 names the role), but sees them.
    server.cli_input(
        &["user", "add", "vic", "--role", "viewer", "--password-stdin"],
        "a-long-viewer-password\n",
    );
    let vt = server.cli(&[
        "token", "create", "--name", "cli", "--user", "vic", "--ttl", "1h",
    ]);
    let tf = d.join("vic.token");
    std::fs::write(&tf, vt.trim()).unwrap();
    let (ok, _, err) = server.remote(&tf, &["device", "command", &id, "restart"]);
    assert!(!ok && err.contains("operator"), "{err}");
    let (ok, out, err) = server.remote(&tf, &["device", "commands", &id]);
    assert!(ok, "{err}");
    // Three logs, diagnostics, reload, resync, rebirth.
    assert_eq!(out.lines().count(), 7, "{out}");
    let done: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(done.iter().all(|c| c["attachment"].is_null()));

    // Restart: answered first, then the agent exits 75 for systemd; started again (as
    // systemd would), it does not run the same command twice.
    let pid = agent.pid();
    let (ok, _, err) = server.cli_status(&["device", "command", &id, "restart", "--wait"]);
    assert!(ok && err.contains("restarting"), "{err}");
    let code = poll_until(WAIT, Duration::from_millis(50), || agent.exit_code());
    assert_eq!(code, Some(75), "{}", agent.log_tail());
    agent.restart();
    assert_ne!(agent.pid(), pid);
    agent.wait_log(WAIT, "the agent running again", "edge-agent running", 2);
    let audit = server.audit();
    for want in [
        "command.restart",
        "command.logs",
        "command.diagnostics",
        "command.done",
    ] {
        assert!(audit.contains(want), "{want} not audited:\n{audit}");
    }
    assert!(agent.terminate(Duration::from_secs(20)));
}
