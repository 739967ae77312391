//! The `edge-agent` binary as operators use it: `check` on good and broken configs, `run` on
//! the simulated plant with a clean SIGTERM shutdown, and the metrics endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::bin;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "edge-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(v.starts_with("edge-agent 0.") && v.contains("(git "), "{v}");
}

/// The hidden self-check the cross smoke test runs on ARM binaries: a panic is caught.
#[test]
fn a_panic_unwinds_and_is_caught() {
    let out = Command::new(bin()).arg("__check-unwind").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(v.contains("a panic three frames deep was caught"), "{v}");
}

#[test]
fn every_example_config_checks_clean() {
    let mut n = 0;
    for e in std::fs::read_dir(examples()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // Relative paths in a config are relative to the working directory; the examples
            // are written to be run from the repository root.
            let out = Command::new(bin())
                .args(["check", "--config"])
                .arg(&p)
                .current_dir(examples().join(".."))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 5, "expected an example per source kind, found {n}");
}

/// The demo plant and model, plus `extra` in the model's table.
fn drift_case(extra: &str) -> String {
    let ex = examples();
    format!(
        "[agent]\nid = \"gw\"\n[[sources.simulated]]\nname = \"p\"\n[[sources.simulated.assets]]\nname = \"pump1\"\nkind = \"pump\"\n\
         [bundles]\ntrusted_keys = [\"{k}\"]\n[[models]]\nname = \"m\"\nbundle = \"{b}\"\n{extra}",
        k = ex.join("demo/demo.pub.pem").display(),
        b = ex.join("demo/pump-anomaly.bundle").display(),
    )
}

/// A drift interval shorter than the model's window is accepted with a warning that says how
/// few windows an interval can hold; the default interval gets none.
#[test]
fn a_drift_interval_shorter_than_the_window_is_a_warning() {
    let dir = tmp();
    let check = |name: &str, extra: &str| {
        let p = dir.join(name);
        std::fs::write(&p, drift_case(extra)).unwrap();
        Command::new(bin())
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap()
    };
    let out = check("short.toml", "drift_interval = \"3s\"\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: models[0].drift_interval: 3s is shorter than the model's 5s window (hop 1s): an interval holds at most 4 window(s)"),
        "{err}"
    );
    let out = check("default.toml", "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("warning"), "{err}");
}

#[test]
fn broken_configs_fail_with_key_line_and_fix() {
    let dir = tmp();
    let cases = [
        ("[agent]\nid = \"gw\"\nmystery = 1\n[[sources.simulated]]\nname = \"p\"\n", "unknown field `mystery`", "line 3"),
        (
            "[agent]\nid = \"gw\"\n[[sources.modbus]]\nname = \"m\"\ntcp = { address = \"10.0.0.1:502\" }\n\
             [[sources.modbus.tags]]\nname = \"t\"\ntable = \"holding\"\naddress = 1\ntype = \"f64\"\norder = \"cdab\"\nbit = 3\n",
            "sources.modbus[0].tags[0].bit",
            ":12:",
        ),
        (
            "[agent]\nid = \"gw\"\n[[sources.opcua]]\nname = \"o\"\nendpoint = \"http://plc\"\nsecurity_policy = \"basic256sha256\"\n\
             [[sources.opcua.tags]]\nname = \"t\"\nnode_id = \"ns=2;x=1\"\n",
            "sources.opcua[0].endpoint",
            "is not an opc.tcp:// URL",
        ),
        ("[agent]\nid = \"gw\"\n[[sources.simulated]]\nname = \"p\"\nsample_interval = \"fast\"\n", "sample_interval", "line 5"),
        ("[agent]\nid = \"gw\"\n", "no sources", "[[sources.simulated]]"),
        // Drift policy values and the ground-truth tag of a model.
        (
            &drift_case("[models.drift]\nthreshold = -1\nraise_after = 0\n"),
            "models[0].drift.threshold: threshold must be a positive number",
            "models[0].drift.raise_after: raise_after must be at least 1",
        ),
        (
            &drift_case("[models.labels]\ntag = \"pump1.failur\"\nhorizon = \"1h\"\n"),
            "models[0].labels.tag `pump1.failur`: no source provides this tag",
            "ground truth",
        ),
    ];
    for (i, (text, want1, want2)) in cases.iter().enumerate() {
        let p = dir.join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(want1) && err.contains(want2),
            "case {i}: missing `{want1}`/`{want2}` in:\n{err}"
        );
    }
    let out = Command::new(bin())
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config /nonexistent.toml"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn run_records_every_sample_and_stops_cleanly_on_sigterm() {
    let dir = tmp();
    let port = free_port();
    let csv = dir.join("samples.csv");
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"gw\"\ndata_dir = \"{d}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [[sources.simulated]]\nname = \"plant\"\nsample_interval = \"20ms\"\n\
             [[sources.simulated.faults]]\nasset = \"pump1\"\nkind = \"nan\"\nsignal = \"current\"\n\
             [[outputs.file]]\nname = \"rec\"\npath = \"{csv}\"\nformat = \"csv\"\n",
            d = dir.display(),
            csv = csv.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let mut metrics = String::new();
    while t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"");
            metrics = http_get(port, "/metrics");
            if metrics.contains("edge_source_samples_total{source=\"plant\",kind=\"simulated\"}") {
                break;
            }
        }
    }
    assert!(
        metrics.contains("edge_source_connected{source=\"plant\",kind=\"simulated\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edge_source_bad_samples_total{source=\"plant\",kind=\"simulated\"}"),
        "{metrics}"
    );
    // Run until the recording holds more than 100 samples, pump2's good ones among them.
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&csv).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if complete.lines().count() > 101
            && complete
                .lines()
                .any(|r| r.starts_with("pump2.current,") && r.ends_with(",good"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "too few samples recorded: {}",
            complete.lines().count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(6),
            "no exit within 6 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    // Everything the pipeline received is in the file: the count in the final log line
    // equals the recorded rows.
    let line = log
        .lines()
        .find(|l| l.contains("pipeline stopped"))
        .unwrap_or_else(|| panic!("{log}"));
    let samples: usize = line
        .split("samples=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        line.contains("dropped=0") && line.contains("clean=true"),
        "{line}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        samples,
        "rows in the recording vs samples the pipeline received"
    );
    assert!(samples > 100);
    // The NaN fault reached the file as bad quality, never as a good NaN.
    assert!(rows
        .iter()
        .filter(|r| r.starts_with("pump1.current,"))
        .all(|r| r.ends_with(",bad")));
    assert!(rows
        .iter()
        .any(|r| r.starts_with("pump2.current,") && r.ends_with(",good")));
}
