//! The systemd contract: the unit files verify and score well in `systemd-analyze security`,
//! and the agent speaks the notify protocol as `Type=notify` + `WatchdogSec=` expect — READY=1
//! once running, WATCHDOG=1 only while the pipeline makes progress (a stalled pipeline stops
//! the pings so systemd restarts it), STOPPING=1 on SIGTERM. The service manager's socket is
//! played by the test: a datagram socket in `NOTIFY_SOCKET`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interop_tests::*;

/// Every notification received within `d`, with its arrival time.
fn collect(sock: &UnixDatagram, d: Duration) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                out.push((Instant::now(), line.to_string()));
            }
        }
    }
    out
}

fn count(msgs: &[(Instant, String)], what: &str) -> usize {
    msgs.iter().filter(|m| m.1 == what).count()
}

#[test]
fn ready_then_watchdog_only_while_the_pipeline_moves_then_stopping() {
    let dir = tempdir();
    let d = dir.path();
    let sock_path = d.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // A file output into a FIFO that the test drains — or stops draining, which stalls the
    // pipeline (small queues and the `block` policy make the stall reach the hub quickly).
    let fifo = d.join("out.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let ws = workspace();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "svc"
data_dir = "{d}"
[pipeline]
channel_capacity = 2
output_capacity = 2
[[sources.simulated]]
name = "plant"
sample_interval = "10ms"
[bundles]
trusted_keys = ["{ws}/examples/demo/demo.pub.pem"]
[[models]]
name = "pump1-anomaly"
bundle = "{ws}/examples/demo/pump-anomaly.bundle"
[[outputs.file]]
name = "pipe"
path = "{fifo}"
format = "csv"
"#,
            d = d.display(),
            ws = ws.display(),
            fifo = fifo.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("agent.log")).unwrap();
    let mut agent = Command::new(workspace_bin("edge-agent"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The reader: drains the FIFO until told to stop, then keeps it open without reading.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let fifo2 = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&fifo2).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            if stop_rx.try_recv().is_ok() {
                let _ = resume_rx.recv();
            }
            match f.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });

    // Running: READY=1 first (once the bundle is loaded: slow in a debug build), then pings
    // every ~200 ms.
    let mut startup: Vec<(Instant, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !startup.iter().any(|m| m.1 == "READY=1") && Instant::now() < deadline {
        startup.extend(collect(&sock, Duration::from_millis(200)));
    }
    let log_text = || std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
    let first = startup.first().map(|m| m.1.clone()).unwrap_or_default();
    assert_eq!(first, "READY=1", "got {startup:?}\n{}", log_text());
    assert!(startup
        .iter()
        .any(|m| m.1.starts_with("STATUS=running: 1 source(s), 1 model(s)")));
    let running = collect(&sock, Duration::from_secs(4));
    let pings = count(&running, "WATCHDOG=1");
    assert!(
        pings >= 8,
        "{pings} watchdog pings in 4 s with a 400 ms watchdog: {running:?}\n{}",
        log_text()
    );

    // The output stops draining: the pipeline stalls and the pings stop.
    stop_tx.send(()).unwrap();
    let _settling = collect(&sock, Duration::from_secs(2)); // the pipe buffer and queues fill
    let stalled = collect(&sock, Duration::from_secs(2));
    assert_eq!(
        count(&stalled, "WATCHDOG=1"),
        0,
        "pinged while stalled: {stalled:?}"
    );
    let text = std::fs::read_to_string(d.join("agent.log")).unwrap();
    assert!(text.contains("pipeline stalled"), "{text}");

    // Draining again: the pings resume.
    resume_tx.send(()).unwrap();
    let resumed = collect(&sock, Duration::from_secs(2));
    assert!(count(&resumed, "WATCHDOG=1") >= 3, "{resumed:?}");

    // SIGTERM: STOPPING=1, and a clean exit.
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let stopping = collect(&sock, Duration::from_secs(2));
    assert!(count(&stopping, "STOPPING=1") == 1, "{stopping:?}");
    let deadline = Instant::now() + Duration::from_secs(6);
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let _ = reader.join();
}

/// The unit files with their binaries pointed at this build (verify checks they exist).
fn units(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    ["edge-agent", "fleet-server"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(workspace().join(format!("systemd/{name}.service")))
                .unwrap()
                .replace(
                    &format!("/usr/bin/{name}"),
                    workspace_bin(name).to_str().unwrap(),
                );
            let p = dir.join(format!("{name}.service"));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

fn systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn unit_files_verify_clean_and_are_hardened() {
    assert!(
        systemd_analyze(),
        "systemd-analyze is missing: run tests/peers/setup.sh (apt package systemd)"
    );
    let dir = tempdir();
    for unit in units(dir.path()) {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{}: {err}",
            unit.display()
        );
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|r| r.split(": ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no score in: {text}"));
        println!("{}: exposure {score}", unit.display());
        assert!(
            score <= 2.0,
            "{}: exposure {score} (want <= 2.0, \"OK\")\n{text}",
            unit.display()
        );
        let unit_text = std::fs::read_to_string(&unit).unwrap();
        for key in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "CapabilityBoundingSet=\n",
            "MemoryMax=",
            "StateDirectory=",
            "ConfigurationDirectory=",
            "Restart=",
        ] {
            assert!(
                unit_text.contains(key),
                "{}: missing {key:?}",
                unit.display()
            );
        }
    }
    let agent = std::fs::read_to_string(workspace().join("systemd/edge-agent.service")).unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "DevicePolicy=closed",
        "User=edge-agent",
        // Agent releases that exit at start must be started again and counted.
        "Restart=always",
        "RestartForceExitStatus=75",
    ] {
        assert!(agent.contains(key), "edge-agent.service: missing {key}");
    }
}
