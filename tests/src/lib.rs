//! Test harness for interop and end-to-end tests: starts independent peers (Mosquitto,
//! the asyncua OPC-UA server, pymodbus over TCP and over a socat pty pair) on free ports,
//! runs sources against them and collects what they produce.
//!
//! The peers are installed by `tests/peers/setup.sh` (called by `tests/run.sh`) into
//! `$EDGE_PEERS_DIR` (default `tests/.peers`). A missing install is a test failure with the
//! command to run, never a silent skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

pub mod faults;
pub mod fleet;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sources::{
    BackpressurePolicy, SampleBatch, SampleSender, Source, SourceContext, SourceStats,
};
use edge_wire::Sample;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
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
            if !wait_port(port, Duration::from_secs(20)) {
                panic!(
                    "{} did not listen on {port} within 20 s; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
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

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits (up to `timeout`) until the log has `needle` at least `times` times.
    pub fn wait_log(&self, timeout: Duration, needle: &str, times: usize) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.matches(needle).count() >= times {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Mosquitto with three listeners: anonymous, user/password (`edge`/`edge-pass`), and mTLS.
#[derive(Debug)]
pub struct Broker {
    pub anon: u16,
    pub userpass: u16,
    pub mtls: u16,
    pub certs: PathBuf,
    pub peer: Peer,
}

pub fn mosquitto(dir: &Path) -> Broker {
    let certs = peers_dir().join("certs");
    let (anon, userpass, mtls) = (free_port(), free_port(), free_port());
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").expect("passwd file");
    let st = Command::new("mosquitto_passwd")
        .args([
            "-b",
            passwd.to_str().unwrap_or_default(),
            "edge",
            "edge-pass",
        ])
        .status()
        .expect("mosquitto_passwd (apt mosquitto)");
    assert!(st.success());
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let conf = format!(
        "per_listener_settings true\npersistence false\nlog_dest stderr\nlog_type all\nmax_queued_messages 100000\n{}\n\
         listener {anon} 127.0.0.1\nallow_anonymous true\n\n\
         listener {userpass} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n\n\
         listener {mtls} 127.0.0.1\ncafile {c}/ca.crt\ncertfile {c}/server.crt\nkeyfile {c}/server.key\n\
         require_certificate true\nuse_identity_as_username true\nallow_anonymous true\n",
        if root { "user root" } else { "" },
        passwd = passwd.display(),
        c = certs.display()
    );
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).expect("mosquitto.conf");
    let peer = Peer::start(
        "mosquitto",
        "mosquitto",
        &["-c", conf_path.to_str().unwrap_or_default()],
        dir,
        Some(mtls),
    );
    assert!(wait_port(anon, Duration::from_secs(5)) && wait_port(userpass, Duration::from_secs(5)));
    Broker {
        anon,
        userpass,
        mtls,
        certs,
        peer,
    }
}

/// Publishes one message with mosquitto_pub (an independent client).
pub fn mqtt_publish(port: u16, topic: &str, payload: &str, extra: &[&str]) {
    mosquitto_pub(port, topic, &["-m", payload], extra);
}

/// Publishes a file's bytes with mosquitto_pub (binary payloads such as Sparkplug NCMD).
pub fn mqtt_publish_file(port: u16, topic: &str, file: &Path) {
    mosquitto_pub(port, topic, &["-f", file.to_str().unwrap_or_default()], &[]);
}

/// Publishes each line of `lines` as one message (QoS 1, in order) with `mosquitto_pub -l`.
pub fn mqtt_publish_lines(port: u16, topic: &str, lines: &str) {
    use std::io::Write;
    let mut child = mosquitto_pub_cmd(port, topic)
        .arg("-l")
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.as_bytes())
            .expect("write to mosquitto_pub");
    }
    let st = child.wait().expect("mosquitto_pub");
    assert!(st.success(), "mosquitto_pub -l to {topic} failed");
}

fn mosquitto_pub_cmd(port: u16, topic: &str) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ]);
    c
}

fn mosquitto_pub(port: u16, topic: &str, payload: &[&str], extra: &[&str]) {
    let st = mosquitto_pub_cmd(port, topic)
        .args(payload)
        .args(extra)
        .status()
        .expect("mosquitto_pub");
    assert!(st.success(), "mosquitto_pub to {topic} failed");
}

/// The asyncua test server (`tests/peers/opcua_server.py`): None, or Basic256Sha256
/// SignAndEncrypt with user `edge`/`edge-pass`.
pub fn opcua_server(dir: &Path, port: u16, secure: bool) -> Peer {
    let endpoint = format!("opc.tcp://127.0.0.1:{port}");
    let pki = dir.join(format!("server-pki-{port}"));
    let script = peer_script("opcua_server.py");
    let args = [
        script.to_str().unwrap_or_default(),
        "--endpoint",
        &endpoint,
        "--security",
        if secure { "secure" } else { "none" },
        "--rate",
        "20",
        "--user",
        "edge:edge-pass",
        "--pki",
        pki.to_str().unwrap_or_default(),
    ];
    Peer::start(&format!("opcua-{port}"), python(), &args, dir, Some(port))
}

/// The pymodbus test server over TCP.
pub fn modbus_tcp(dir: &Path, port: u16) -> Peer {
    modbus_tcp_with(dir, port, &[])
}

/// The pymodbus test server over TCP with extra arguments (e.g. `--extra 1000`).
pub fn modbus_tcp_with(dir: &Path, port: u16, extra: &[&str]) -> Peer {
    let script = peer_script("modbus_server.py");
    let p = port.to_string();
    let mut args = vec![
        script.to_str().unwrap_or_default(),
        "--host",
        "127.0.0.1",
        "--port",
        &p,
    ];
    args.extend_from_slice(extra);
    Peer::start(
        &format!("modbus-tcp-{port}"),
        python(),
        &args,
        dir,
        Some(port),
    )
}

/// A serial line made of a socat pty pair, with the pymodbus RTU server on one end.
#[derive(Debug)]
pub struct RtuLine {
    pub client_tty: PathBuf,
    pub socat: Peer,
    pub server: Peer,
}

pub fn modbus_rtu(dir: &Path, baud: u32) -> RtuLine {
    let srv = dir.join("ttyS_srv");
    let cli = dir.join("ttyS_cli");
    let a = format!("pty,raw,echo=0,link={}", srv.display());
    let b = format!("pty,raw,echo=0,link={}", cli.display());
    let socat = Peer::start("socat", "socat", &[&a, &b], dir, None);
    let t0 = Instant::now();
    while !(srv.exists() && cli.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "socat pty pair not ready:\n{}",
            socat.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = peer_script("modbus_server.py");
    let baud = baud.to_string();
    let args = [
        script.to_str().unwrap_or_default(),
        "--rtu",
        srv.to_str().unwrap_or_default(),
        "--baud",
        &baud,
    ];
    let server = Peer::start("modbus-rtu", python(), &args, dir, None);
    // pymodbus prints READY once it serves.
    let log = dir.join("modbus-rtu.log");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("READY")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "RTU server not ready:\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    RtuLine {
        client_tty: cli,
        socat,
        server,
    }
}

/// Runs one source in-process and collects its samples.
#[derive(Debug)]
pub struct Harness {
    rx: mpsc::Receiver<SampleBatch>,
    pub stop: CancellationToken,
    pub stats: Arc<SourceStats>,
    task: tokio::task::JoinHandle<Result<(), edge_sources::SourceError>>,
    /// Everything consumed so far.
    pub seen: Vec<Sample>,
    pending: std::collections::VecDeque<Sample>,
}

impl Harness {
    pub fn start(name: &str, source: Box<dyn Source>) -> Harness {
        let (tx, rx) = mpsc::channel(4096);
        let stats = Arc::new(SourceStats::default());
        let stop = CancellationToken::new();
        let ctx = SourceContext {
            name: Arc::from(name),
            out: SampleSender::new(
                tx,
                BackpressurePolicy::Block,
                stats.clone(),
                CancellationToken::new(),
            ),
            shutdown: stop.clone(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(source.run(ctx));
        Harness {
            rx,
            stop,
            stats,
            task,
            seen: Vec::new(),
            pending: Default::default(),
        }
    }

    /// Consumes samples in arrival order until `pred` holds; returns that sample (later
    /// samples of the same batch stay queued for the next call). Panics with what was seen on
    /// timeout.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Sample) -> bool,
    ) -> Sample {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(s) = self.pending.pop_front() {
                self.seen.push(s.clone());
                if pred(&s) {
                    return s;
                }
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => self.pending.extend(batch),
                Ok(None) => panic!(
                    "source ended while waiting for {what}; result {:?}",
                    self.task.is_finished()
                ),
                Err(_) => {
                    let tail: Vec<String> = self
                        .seen
                        .iter()
                        .rev()
                        .take(12)
                        .map(|s| format!("{s:?}"))
                        .collect();
                    panic!(
                        "timeout ({timeout:?}) waiting for {what}; last samples:\n{}",
                        tail.join("\n")
                    );
                }
            }
        }
    }

    /// Receives everything for `d` (plus anything still queued).
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Sample> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out: Vec<Sample> = self.pending.drain(..).collect();
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.extend(batch);
        }
        self.seen.extend(out.iter().cloned());
        out
    }

    /// Stops the source; returns its result. Panics if it does not stop within 5 s.
    /// The next batch the source sent, as it came (`None` once the source stopped).
    pub async fn next_batch(&mut self) -> Option<SampleBatch> {
        self.rx.recv().await
    }

    pub async fn stop(self) -> Result<(), edge_sources::SourceError> {
        self.stop.cancel();
        let mut rx = self.rx;
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let r = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("source did not stop within 5 s of shutdown")
            .expect("source task panicked");
        drain.abort();
        r
    }

    pub fn stat(&self, f: impl Fn(&SourceStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.stats).load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Latest usable value of `tag` among samples.
pub fn last_value(samples: &[Sample], tag: &str) -> Option<f64> {
    samples
        .iter()
        .rev()
        .find(|s| &*s.tag == tag)
        .and_then(|s| s.usable_f64())
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

/// The sequence numbers of every JSON sample message of agent `agent` the listener received
/// (`edge/<agent>/samples/...`), in arrival order.
pub fn sample_seqs(l: &MqttListener, agent: &str) -> Vec<u64> {
    let prefix = format!("edge/{agent}/samples/");
    l.messages()
        .iter()
        .filter(|m| m["topic"].as_str().is_some_and(|t| t.starts_with(&prefix)))
        .filter_map(|m| {
            let body: serde_json::Value = serde_json::from_str(m["text"].as_str()?).ok()?;
            body["seq"].as_u64()
        })
        .collect()
}

/// The ranges an agent's log announced as skipped for the samples stream
/// (`seq_skipped_from`/`seq_skipped_to`).
pub fn skipped_ranges(log: &str) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(name)? + name.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("stream=\"samples\""))
        .filter_map(|l| Some((field(l, "seq_skipped_from=")?, field(l, "seq_skipped_to=")?)))
        .collect()
}

/// The highest number seen, and the numbers in 1..=it that never arrived and that no
/// announced skip covers.
pub fn unannounced_gaps(seqs: &[u64], skipped: &[(u64, u64)]) -> (u64, Vec<u64>) {
    let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let max = set.last().copied().unwrap_or(0);
    let missing = (1..=max)
        .filter(|s| !set.contains(s))
        .filter(|s| !skipped.iter().any(|(a, b)| (a..=b).contains(&s)))
        .collect();
    (max, missing)
}

/// The Sparkplug/JSON listener peer (`tests/peers/spb_peer.py listen`): paho-mqtt subscribed
/// to `spBv1.0/#` and `edge/#`, decoding Sparkplug payloads with the Tahu schema. Its output
/// is one JSON object per message, in arrival order.
#[derive(Debug)]
pub struct MqttListener {
    pub peer: Peer,
}

impl MqttListener {
    pub fn start(dir: &Path, port: u16) -> MqttListener {
        let script = workspace().join("tests/peers/spb_peer.py");
        let peer = Peer::start(
            "mqtt-listener",
            python(),
            &[
                script.to_str().unwrap_or_default(),
                "listen",
                &format!("127.0.0.1:{port}"),
            ],
            dir,
            None,
        );
        let l = MqttListener { peer };
        assert!(
            l.wait_for(Duration::from_secs(20), |m| m
                .iter()
                .any(|x| x["subscribed"] == true)),
            "the listener did not subscribe: {}",
            l.peer.log_tail()
        );
        l
    }

    /// Every message received so far (lines that are not JSON are skipped).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.peer.log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pred` holds for the messages so far.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if pred(&self.messages()) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A TCP proxy in front of a peer whose link can be cut and restored: a pulled network cable
/// between the agent and a broker or server, while the peer itself keeps running.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    down: std::sync::atomic::AtomicBool,
    /// Bytes forwarded, both directions.
    bytes: std::sync::atomic::AtomicU64,
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl TcpProxy {
    pub fn start(target_port: u16) -> TcpProxy {
        Self::start_with_rate(target_port, None)
    }

    /// A proxy whose link carries at most `bytes_per_s` in each direction: a slow uplink,
    /// so a transfer is really in flight (not sitting in socket buffers) when it is cut.
    pub fn start_throttled(target_port: u16, bytes_per_s: u64) -> TcpProxy {
        Self::start_with_rate(target_port, Some(bytes_per_s))
    }

    fn start_with_rate(target_port: u16, rate: Option<u64>) -> TcpProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if st.down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let st2 = st.clone();
                let pipe = move |mut from: TcpStream, mut to: TcpStream| {
                    let st = st2.clone();
                    std::thread::spawn(move || {
                        match rate {
                            None => {
                                let _ = std::io::copy(&mut from, &mut to);
                            }
                            Some(r) => {
                                use std::io::{Read, Write};
                                let mut buf = vec![0u8; 4096];
                                // The link is free again at `free`; an idle connection
                                // earns no credit (a kept-alive connection reused for a
                                // download must not burst through at loopback speed).
                                let mut free = Instant::now();
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    st.bytes.fetch_add(n as u64, Ordering::Relaxed);
                                    free = free.max(Instant::now())
                                        + Duration::from_secs_f64(n as f64 / r as f64);
                                    std::thread::sleep(
                                        free.saturating_duration_since(Instant::now()),
                                    );
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                if let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) {
                    if let Ok(mut conns) = st.conns.lock() {
                        conns.push(c2);
                        conns.push(u2);
                    }
                    if let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) {
                        pipe(c3, upstream);
                        pipe(u3, client);
                    }
                }
            }
        });
        TcpProxy { port, state }
    }

    /// Bytes forwarded so far in both directions (counted on throttled proxies only).
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cuts every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut conns) = self.state.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.state
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
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

/// The grid start of [`pump_recording`]: 2026-01-01T00:00:00Z (on every grid).
pub const RECORDING_T0: i64 = 1_767_225_600_000_000_000;

/// `points` grid points at 10 Hz from [`RECORDING_T0`] of a pump's temperature (a 10-minute
/// cycle), vibration and current with deterministic noise, in the agent's recording format;
/// with `label = Some((tag, every, value))` also a ground-truth sample every `every` points.
/// Returns the number of sensor samples.
pub fn pump_recording(path: &Path, points: i64, label: Option<(&str, i64, f64)>) -> u64 {
    use std::fmt::Write as _;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let mut s = String::from("tag,ts_ns,value,quality\n");
    for i in 0..points {
        let ts = RECORDING_T0 + i * 100_000_000;
        let t = i as f64 / 10.0;
        let v = [
            55.0 + 2.0 * (t / 600.0 * std::f64::consts::TAU).sin() + 0.5 * noise(),
            1.8 + 0.3 * noise(),
            38.0 + 2.0 * noise(),
        ];
        for (tag, x) in ["pump1.temperature", "pump1.vibration", "pump1.current"]
            .iter()
            .zip(v)
        {
            let _ = writeln!(s, "{tag},{ts},{x:?},good");
        }
        if let Some((tag, every, value)) = label {
            if i % every == 0 {
                let _ = writeln!(s, "{tag},{ts},{value:?},good");
            }
        }
    }
    std::fs::write(path, s).expect("write the recording");
    (points * 3) as u64
}

/// The 1-D conv net (`tests/models/conv1d.onnx`, spec `agent/tests/fixtures/raw_pack.toml`)
/// packed as version `n` (`0.n.0`) with its score rule's `threshold = …` text replaced by
/// `threshold` (e.g. `"0.5, raise_after = 1"`), trained on `train`, signed with `key`.
pub fn pack_conv_net(dir: &Path, key: &Path, train: &Path, n: u64, threshold: &str) -> PathBuf {
    let spec = dir.join(format!("conv-{n}.toml"));
    let text = std::fs::read_to_string(workspace().join("agent/tests/fixtures/raw_pack.toml"))
        .expect("raw_pack.toml")
        .replace("version_number = 1", &format!("version_number = {n}"))
        .replace("\"0.1.0\"", &format!("\"0.{n}.0\""))
        .replace("threshold = 0.9", &format!("threshold = {threshold}"));
    std::fs::write(&spec, text).expect("spec");
    let out = dir.join(format!("conv-{n}.bundle"));
    let o = Command::new(workspace_bin("edge-agent"))
        .args(["bundle", "pack", "--spec"])
        .arg(&spec)
        .arg("--model")
        .arg(workspace().join("tests/models/conv1d.onnx"))
        .arg("--train")
        .arg(train)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("edge-agent bundle pack");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}
