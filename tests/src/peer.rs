//! Processes the tests start and the basics every peer needs: where the workspace and the
//! installed peers are, free ports, a peer process with its log, and waiting for conditions.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Root of the workspace.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where `tests/peers/setup.sh` installed the peers.
pub fn peers_dir() -> PathBuf {
    let dir = std::env::var_os("EDGE_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("tests/.peers"));
    assert!(
        dir.join("venv/bin/python").exists() && dir.join("certs/ca.crt").exists(),
        "test peers are not installed in {}: run tests/peers/setup.sh (or tests/run.sh)",
        dir.display()
    );
    dir
}

pub fn python() -> PathBuf {
    peers_dir().join("venv/bin/python")
}

/// A peer script shipped in `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    workspace().join("tests/peers").join(name)
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `f` every `every` until it gives `Some` (returned) or `timeout` passes (`None`).
/// The one way these tests wait for something they are not told about directly (a port, a
/// log line, a message, a row): callers assert on the outcome with their own context, or use
/// [`wait_until`], which fails the test itself. Never a fixed sleep followed by an assert.
///
/// Every waiting helper of the harness follows the same contract: a `poll_*` helper returns
/// the outcome (`None` on timeout) for the caller to judge; a `wait_*` helper
/// ([`wait_until`], [`wait_port`], [`Peer::wait_log`], [`crate::MqttListener::wait_for`],
/// [`crate::Harness::wait_for`]) fails the test itself on timeout, with [`timed_out`]'s
/// message.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_until`] that fails the test on timeout, naming `what` and adding `context()` (a
/// log tail, the messages so far).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    context: impl FnOnce() -> String,
    f: impl FnMut() -> Option<T>,
) -> T {
    match poll_until(timeout, Duration::from_millis(50), f) {
        Some(v) => v,
        None => timed_out(what, timeout, &context()),
    }
}

/// Fails the test for a wait that timed out: the one message every `wait_*` helper gives
/// (`timed out (…) waiting for <what>`, then the context that explains it).
pub fn timed_out(what: &str, timeout: Duration, context: &str) -> ! {
    panic!("timed out ({timeout:?}) waiting for {what}\n{context}")
}

/// Keeps a fault in place (a cut link, a stopped peer) for `d`: the scenario's schedule, how
/// long the plant runs without its peer. Not a wait for a result: what the test then asserts
/// is waited for with [`poll_until`] / [`wait_until`].
pub fn hold_fault(d: Duration, fault: &str) {
    eprintln!("holding the fault ({fault}) for {d:?}");
    std::thread::sleep(d);
}

/// `Some` when something accepts TCP connections on `port` now.
fn accepts(port: u16) -> Option<()> {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .ok()
        .map(drop)
}

/// Waits until something accepts TCP connections on `port`; fails the test after `timeout`.
pub fn wait_port(port: u16, timeout: Duration) {
    wait_until(
        &format!("127.0.0.1:{port} to accept connections"),
        timeout,
        String::new,
        || accepts(port),
    )
}

/// A peer process, killed when dropped. Keeps its command so it can be restarted.
#[derive(Debug)]
pub struct Peer {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    ready_port: Option<u16>,
}

impl Peer {
    /// Starts `program args`; if `ready_port` is given, waits (20 s max) for it to listen.
    pub fn start(
        name: &str,
        program: impl Into<PathBuf>,
        args: &[&str],
        log_dir: &Path,
        ready_port: Option<u16>,
    ) -> Peer {
        let mut p = Peer {
            name: name.to_string(),
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            ready_port,
        };
        p.restart();
        p
    }

    /// (Re)starts the process and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("peer log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            });
        self.child = Some(child);
        if let Some(port) = self.ready_port {
            wait_until(
                &format!("{} to listen on {port}", self.name),
                Duration::from_secs(20),
                || format!("log:\n{}", self.log_tail()),
                || accepts(port),
            );
        }
    }

    /// Kills the process hard (SIGKILL): a crash, a pulled cable.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM (a clean shutdown) and waits up to `timeout`;
    /// returns whether it exited in time (if not, it is killed).
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit code once the process has ended by itself (`None` while it runs, or when a
    /// signal ended it). Does not wait.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .and_then(|s| s.code())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until the log has `needle` at least `times` times; fails the test after
    /// `timeout`, naming `what` (what the line means) and showing the log's tail.
    pub fn wait_log(&self, timeout: Duration, what: &str, needle: &str, times: usize) {
        wait_until(
            &format!("{what} (`{needle}` {times}× in the {} log)", self.name),
            timeout,
            || format!("log:\n{}", self.log_tail()),
            || {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                (text.matches(needle).count() >= times).then_some(())
            },
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("edge-it-")
        .tempdir()
        .expect("tempdir")
}

/// Builds a source config from TOML text, the way the agent does.
pub fn toml_config<T: serde::de::DeserializeOwned>(text: &str) -> T {
    toml::from_str(text).unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
}

/// A binary of this workspace, built by `cargo build --workspace --bins` (tests/run.sh does).
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --workspace --bins` (tests/run.sh does)",
        bin.display()
    );
    bin
}

/// A plain HTTP/1.1 GET on loopback (the agent's metrics endpoint); the whole response.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}
