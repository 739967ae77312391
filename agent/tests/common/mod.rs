//! Helpers shared by the binary-level tests: the binary, temp dirs, recordings of the
//! simulated plant, and a running agent whose log can be waited on.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge-agent")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn model(name: &str) -> PathBuf {
    repo().join("tests/models").join(format!("{name}.onnx"))
}

/// A fresh directory per test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edge-agent-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `edge-agent bundle pack` with the given spec, model, training recording, key and output,
/// plus `extra` arguments (lineage flags).
pub fn pack(
    spec: &Path,
    model: &Path,
    train: &Path,
    key: &Path,
    out: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "bundle",
        "pack",
        "--spec",
        spec.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Records the simulated plant (pump1 only) at `time_scale`x into CSV until the recording
/// spans `plant` of measurement time.
pub fn record(dir: &Path, plant: Duration, time_scale: f64, extra: &str) -> PathBuf {
    let csv = dir.join("recording.csv");
    let cfg = dir.join("record.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"rec\"\ndata_dir = \"{d}\"\n[[sources.simulated]]\nname = \"plant\"\nseed = 3\n\
             time_scale = {time_scale}\n[[sources.simulated.assets]]\nname = \"pump1\"\n{extra}\n\
             [[outputs.file]]\nname = \"rec\"\npath = \"{csv}\"\nformat = \"csv\"\n",
            d = dir.display(),
            csv = csv.display()
        ),
    )
    .unwrap();
    let mut a = Agent::start(&cfg);
    let ts = |l: &str| l.split(',').nth(1).and_then(|t| t.parse::<i64>().ok());
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&csv).unwrap_or_default();
        let first = text.lines().nth(1).and_then(ts);
        let last = text.lines().rev().find_map(ts);
        if let (Some(first), Some(last)) = (first, last) {
            if (last - first) as u128 >= plant.as_nanos() {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the recording did not reach {plant:?} of plant time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.stop();
    csv
}

/// A running `edge-agent run` with its stderr collected.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Reads the agent's stderr into `log` until the pipe closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(cfg: &Path) -> Agent {
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(cfg)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let l = log.clone();
        let err = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Agent {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self.log().contains(text) {
            assert!(
                t0.elapsed() < timeout,
                "no `{text}` in the log within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait (6 s max); returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // The pipe closed with the process: the reader has every line then.
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return s.success();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(6),
                "agent did not exit within 6 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
