//! Remote configuration with the real `fleet-server` and `edge-agent` binaries: a file with an
//! unknown key is refused on the device (errors with key and line shown through the fleet);
//! a good one is applied in the process (same PID) and reported; one that points a source at
//! a dead address, and one that cuts the device off from the fleet, are rolled back by the
//! agent itself with the reason; one that changes `[log]` makes the agent exit with code 75
//! and is applied when it is started again (the test plays systemd's
//! `RestartForceExitStatus=75`). Samples keep arriving contiguous throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use interop_tests::fleet::*;
use interop_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// The agent's configuration: a simulated plant, the outbox, sync to `server_port`, and
/// `extra` appended. No inline secret (the fleet refuses those): once enrolled, the token
/// is not needed.
fn config_text(d: &Path, server_port: u16, ca: &Path, sync_extra: &str, extra: &str) -> String {
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
interval = "1s"
request_timeout = "3s"
retry = {{ initial = "200ms", max = "1s" }}
{sync_extra}
{extra}
"#,
        data = d.join("gw1").display(),
        ca = ca.display(),
    )
}

/// Pushes `text` as the next version of configuration `gw` and rolls it out to site=a.
fn push_and_roll_out(server: &FleetServer, d: &Path, text: &str) -> (i64, String) {
    let f = d.join("push.toml");
    std::fs::write(&f, text).unwrap();
    let version: i64 = server
        .cli(&["config", "push", "gw", &f.display().to_string()])
        .trim()
        .parse()
        .unwrap();
    let rid = server
        .cli(&[
            "config",
            "rollout",
            "gw",
            &version.to_string(),
            "--select",
            "site=a",
        ])
        .trim()
        .to_string();
    (version, rid)
}

/// Waits for the device's report on `version` of `gw` and returns it.
fn report_on(server: &FleetServer, id: &str, version: i64) -> Value {
    server.wait(
        &format!("a configuration report on gw#{version}"),
        WAIT,
        || {
            let s: Value = serde_json::from_str(&server.cli(&["config", "status", id])).ok()?;
            s["reports"]
                .as_array()?
                .iter()
                .find(|r| r["version_number"] == version)
                .cloned()
        },
    )
}

fn status(server: &FleetServer, id: &str) -> Value {
    serde_json::from_str(&server.cli(&["config", "status", id])).unwrap()
}

#[test]
fn refused_applied_rolled_back_and_restarted_through_the_fleet() {
    let dir = tempdir();
    let d = dir.path();
    let server = FleetServer::start(d);
    let ca = server.ca();
    let tok = token(&server, &["site=a"]);
    let cfg = d.join("gw1.toml");
    std::fs::create_dir_all(d.join("gw1")).unwrap();
    let base = config_text(d, server.port, &ca, "", "");
    // The local file enrolls with the token; fleet versions never carry it.
    std::fs::write(
        &cfg,
        config_text(
            d,
            server.port,
            &ca,
            &format!("enroll_token = \"{tok}\""),
            "",
        ),
    )
    .unwrap();
    let mut agent = start_agent(d, "gw1", &cfg);
    let id = server.wait("enrollment and check-in", WAIT, || {
        let ds = server.devices();
        ds.first()?["last_seen"].as_i64()?;
        Some(ds[0]["id"].as_str()?.to_string())
    });
    let s = status(&server, &id);
    assert_eq!(s["state"], "unmanaged", "{s}");
    assert_eq!(s["reported_sha256"], sha_of(&cfg), "{s}");
    let pid = agent.pid().unwrap();

    // 1. An unknown key: refused on the device, nothing applied, the errors name key and line.
    let before = std::fs::read_to_string(&cfg).unwrap();
    let typo = format!("{base}\n[pipeline]\nshutdown_timout = \"5s\"\n");
    let (v1, r1) = push_and_roll_out(&server, d, &typo);
    let rep = report_on(&server, &id, v1);
    assert_eq!(rep["outcome"], "refused", "{rep}");
    let errors = rep["errors"].to_string();
    assert!(errors.contains("shutdown_timout"), "{errors}");
    assert!(errors.contains("line"), "{errors}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before);
    assert_eq!(agent.pid(), Some(pid));
    // The refusal counts as a failure: the rollout halted itself (max_failures 1).
    let r: Value = serde_json::from_str(&server.cli(&["model", "rollout", "show", &r1])).unwrap();
    assert_eq!(r["state"], "halted", "{r}");
    assert!(server.audit().contains("config.refused"));

    // 2. A good one (a second simulated source): applied in the process, reported.
    let acked_before = server.acked_through(&id, "samples");
    let good = format!(
        "{base}\n[[sources.simulated]]\nname = \"plant2\"\nsample_interval = \"200ms\"\nseed = 8\n[[sources.simulated.assets]]\nname = \"pump2\"\nkind = \"pump\"\nload = 0.5\n"
    );
    let (v2, _) = push_and_roll_out(&server, d, &good);
    let rep = report_on(&server, &id, v2);
    assert_eq!(rep["outcome"], "applied", "{rep}");
    assert_eq!(rep["applied_by"], "in_process", "{rep}");
    assert_eq!(agent.pid(), Some(pid), "applied without a restart");
    assert!(agent.exit_code().is_none());
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), good);
    let last_good = d.join("gw1.toml.last-good");
    assert_eq!(std::fs::read_to_string(&last_good).unwrap(), good);
    // Reported as in sync once the health check committed it (while it runs: `applying`).
    let s = server.wait("the device reports the new file", WAIT, || {
        let s = status(&server, &id);
        (s["state"] == "in_sync").then_some(s)
    });
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(s["applied"], serde_json::json!(["gw", v2]), "{s}");
    // The new source's samples arrive, and the stream stays contiguous past the restart
    // (acked_through is the highest contiguous sequence stored).
    server.wait("samples keep arriving after the apply", WAIT, || {
        (server.acked_through(&id, "samples") > acked_before + 50).then_some(())
    });

    // 3. A source at a dead address: rolled back by the agent with the reason.
    let dead = free_port();
    let bad_source = format!(
        "{good}\n[[sources.modbus]]\nname = \"plc-dead\"\ntcp = {{ address = \"127.0.0.1:{dead}\" }}\npoll_interval = \"1s\"\n[[sources.modbus.tags]]\nname = \"t1\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n"
    )
    .replace("[sync]\n", "[sync]\nconfig_health_timeout = \"4s\"\n");
    let (v3, _) = push_and_roll_out(&server, d, &bad_source);
    let rep = report_on(&server, &id, v3);
    assert_eq!(rep["outcome"], "rolled_back", "{rep}");
    let detail = rep["detail"].as_str().unwrap();
    assert!(detail.contains("source plc-dead not connected"), "{detail}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), good);
    assert_eq!(agent.pid(), Some(pid));

    // 4. A file that cuts the device off from the fleet: rolled back, reported once back.
    let gone = free_port();
    let cut_off = good
        .replace(
            &format!("127.0.0.1:{}", server.port),
            &format!("127.0.0.1:{gone}"),
        )
        .replace("[sync]\n", "[sync]\nconfig_health_timeout = \"4s\"\n");
    let (v4, _) = push_and_roll_out(&server, d, &cut_off);
    let rep = report_on(&server, &id, v4);
    assert_eq!(rep["outcome"], "rolled_back", "{rep}");
    let detail = rep["detail"].as_str().unwrap();
    assert!(detail.contains("no successful fleet check-in"), "{detail}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), good);

    // 5. A [log] change needs a new process: exit code 75, then (as systemd would) started
    // again, health-checked, reported as applied by restart.
    let verbose = format!("{good}\n[log]\nlevel = \"debug\"\n");
    let (v5, _) = push_and_roll_out(&server, d, &verbose);
    let code = poll_until(WAIT, Duration::from_millis(50), || agent.exit_code());
    assert_eq!(code, Some(75), "log:\n{}", agent.log_tail());
    agent.restart();
    let rep = report_on(&server, &id, v5);
    assert_eq!(rep["outcome"], "applied", "{rep}");
    assert_eq!(rep["applied_by"], "restart", "{rep}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), verbose);

    // Nothing lost: the samples stream stays contiguous (acked_through is the highest
    // contiguous sequence stored) and moves on, and the device dropped nothing.
    let acked = server.acked_through(&id, "samples");
    server.wait("samples keep arriving after the restart", WAIT, || {
        let show = server.device_show(&id);
        let lost = stream(&show, "samples")?["lost_on_device"].as_i64()?;
        (lost == 0 && server.acked_through(&id, "samples") > acked + 20).then_some(())
    });
    assert!(agent.terminate(Duration::from_secs(20)));
}
