//! Fleet-server test helpers: start the real `fleet-server` binary, run its CLI, make signed
//! bundle versions, and a small blocking HTTPS client (rustls, optional client certificate)
//! to talk to the device API directly — as a second device, or as an attacker.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edge_wire::bundle::file as bundle_file;

use crate::{free_port, workspace_bin, Peer};

#[derive(Debug)]
pub struct FleetServer {
    pub peer: Peer,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The PostgreSQL database of this server (`FLEET_TEST_BACKEND=postgres`); `None`:
    /// SQLite in the data directory.
    pub database_url: Option<String>,
}

/// A new, empty database on the test run's PostgreSQL server when the run asks for that
/// backend (`FLEET_TEST_BACKEND=postgres`, server at `FLEET_TEST_POSTGRES`, both set by
/// tests/run.sh); `None` for the embedded SQLite default.
pub fn test_database_url() -> Option<String> {
    match std::env::var("FLEET_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => None,
        Ok("postgres") => Some(postgres_database()),
        Ok(other) => panic!("FLEET_TEST_BACKEND `{other}`: sqlite or postgres"),
    }
}

/// A new, empty database on the test run's PostgreSQL server (`FLEET_TEST_POSTGRES`, set by
/// tests/run.sh), whatever backend the run tests otherwise: for tests that need PostgreSQL
/// itself (replicas, migration).
pub fn postgres_database() -> String {
    let base = std::env::var("FLEET_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "this test needs PostgreSQL: run it through tests/run.sh, or start one with \
             `tests/peers/postgres.sh start DIR` and set FLEET_TEST_POSTGRES to the URL it prints"
        )
    });
    let base = base.trim_end_matches('/');
    let name = format!("fleet_e2e_{}_{}", std::process::id(), crate::free_port());
    let out = Command::new(psql())
        .arg(format!("{base}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{base}/{name}")
}

/// Runs `cmd` with `input` on its standard input; its output (stdout and stderr captured).
pub fn run_with_input(cmd: &mut Command, input: &str, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("{what} stdin: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what} output: {e}"))
}

/// PostgreSQL's client (Debian: `/usr/bin/psql`, or the server's own bin directory).
pub fn psql() -> PathBuf {
    if let Ok(p) = std::env::var("PSQL") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin/psql"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from("psql"))
}

impl FleetServer {
    pub fn start(dir: &Path) -> FleetServer {
        Self::start_with(dir, &[])
    }

    /// A server with more `serve` options.
    pub fn start_with(dir: &Path, extra: &[&str]) -> FleetServer {
        Self::start_on(dir, "fleet", test_database_url(), extra)
    }

    /// A server with its data directory `dir/<name>` on `database_url` (SQLite in the data
    /// directory when `None`); several servers on one PostgreSQL database are replicas.
    pub fn start_on(
        dir: &Path,
        name: &str,
        database_url: Option<String>,
        extra: &[&str],
    ) -> FleetServer {
        Self::start_at(dir, name, database_url, free_port(), extra)
    }

    /// [`FleetServer::start_on`] on a given port (a server that replaces another).
    pub fn start_at(
        dir: &Path,
        name: &str,
        database_url: Option<String>,
        port: u16,
        extra: &[&str],
    ) -> FleetServer {
        Self::start_bound(dir, name, database_url, "127.0.0.1", port, extra)
    }

    /// A server listening on every address, its certificate also naming `host` (the address
    /// a device behind a [`crate::faults::Wire`] reaches it at), on `port` (so that a
    /// restarted server comes back where the devices look for it).
    pub fn start_everywhere(dir: &Path, host: &str, port: u16) -> FleetServer {
        let names = ["--name", host, "--name", "127.0.0.1", "--name", "localhost"];
        Self::start_bound(dir, "fleet", test_database_url(), "0.0.0.0", port, &names)
    }

    fn start_bound(
        dir: &Path,
        name: &str,
        database_url: Option<String>,
        bind: &str,
        port: u16,
        extra: &[&str],
    ) -> FleetServer {
        let data_dir = dir.join(name);
        let data = data_dir.display().to_string();
        let listen = format!("{bind}:{port}");
        let mut args = vec![
            "serve",
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--checkin-s",
            "1",
        ];
        if let Some(u) = &database_url {
            args.extend_from_slice(&["--database-url", u]);
        }
        args.extend_from_slice(extra);
        let peer = Peer::start(
            &if name == "fleet" {
                "fleet-server".to_string()
            } else {
                format!("fleet-server-{name}")
            },
            workspace_bin("fleet-server"),
            &args,
            dir,
            Some(port),
        );
        FleetServer {
            peer,
            port,
            data_dir,
            database_url,
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("ca/ca.pem")
    }

    /// Runs a CLI command on the data dir; stdout on success, panics with stderr otherwise.
    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli_status(args);
        assert!(ok, "fleet-server {args:?} failed:\n{err}");
        out
    }

    /// Runs a CLI command: (success, stdout, stderr).
    pub fn cli_status(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_input(args, "")
    }

    /// Runs a CLI command with `input` on its standard input: (success, stdout, stderr).
    pub fn cli_input(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let mut cmd = self.cli_command();
        cmd.args(["--by", "test-operator"]).args(args);
        let out = run_with_input(&mut cmd, input, "fleet-server CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The `fleet-server` command on this server's data directory and database (add the
    /// subcommand and its arguments).
    pub fn cli_command(&self) -> Command {
        let mut cmd = Command::new(workspace_bin("fleet-server"));
        if let Some(u) = &self.database_url {
            cmd.env("FLEET_DATABASE_URL", u);
        }
        cmd.arg("--data-dir").arg(&self.data_dir);
        cmd
    }

    pub fn devices(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli(&["device", "list", "--json"])).expect("device list JSON")
    }

    pub fn device_show(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["device", "show", id])).expect("device show JSON")
    }

    pub fn audit(&self) -> String {
        self.cli(&["audit", "--limit", "500"])
    }

    /// Runs a CLI command against this server through its operator API
    /// (`--server … --token-file …`): (success, stdout, stderr).
    pub fn remote(&self, token_file: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(workspace_bin("fleet-server"))
            .args(["--server", &format!("https://127.0.0.1:{}", self.port)])
            .arg("--token-file")
            .arg(token_file)
            .arg("--server-ca")
            .arg(self.ca())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run fleet-server CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The highest contiguous sequence of `device`'s `stream` the server acknowledged (0
    /// before the first upload).
    pub fn acked_through(&self, device: &str, stream_name: &str) -> i64 {
        stream(&self.device_show(device), stream_name)
            .and_then(|s| s["acked_through"].as_i64())
            .unwrap_or(0)
    }

    /// Runs SQL on this server's database (the `sqlite3` or `psql` client, statements on
    /// standard input) and returns what it printed: one row per line, columns split by `|`.
    /// For tests that inspect or alter what the server stored.
    pub fn sql(&self, statements: &str) -> String {
        let mut cmd = match &self.database_url {
            Some(u) => {
                let mut c = Command::new(psql());
                c.arg(u).args(["-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"]);
                c
            }
            None => {
                let mut c = Command::new("sqlite3");
                c.arg(self.data_dir.join("fleet.db"))
                    .args(["-bail", "-cmd", ".timeout 10000"]);
                c
            }
        };
        let out = run_with_input(&mut cmd, statements, "the database client (sqlite3 / psql)");
        assert!(
            out.status.success(),
            "SQL failed: {statements}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The size of a stored artifact (bundle or delta) on this server.
    pub fn artifact_size(&self, sha256: &str) -> Option<u64> {
        assert!(sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{sha256}");
        let out = self.sql(&format!(
            "SELECT size FROM artifacts WHERE sha256 = '{sha256}';"
        ));
        (!out.is_empty()).then(|| out.parse().expect("artifact size"))
    }

    /// The first stored chunk of an artifact, as bytes.
    pub fn artifact_first_chunk(&self, sha256: &str) -> Vec<u8> {
        assert!(sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{sha256}");
        let hex_of = if self.database_url.is_some() {
            "encode(data, 'hex')"
        } else {
            "hex(data)"
        };
        let hex = self.sql(&format!(
            "SELECT {hex_of} FROM artifact_chunks WHERE sha256 = '{sha256}' AND idx = 0;"
        ));
        (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    }

    /// Overwrites the first stored chunk of an artifact (to tamper with it, or repair it).
    pub fn set_artifact_first_chunk(&self, sha256: &str, bytes: &[u8]) {
        assert!(sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{sha256}");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let lit = if self.database_url.is_some() {
            format!("decode('{hex}', 'hex')")
        } else {
            format!("X'{hex}'")
        };
        self.sql(&format!(
            "UPDATE artifact_chunks SET data = {lit} WHERE sha256 = '{sha256}' AND idx = 0;"
        ));
    }

    /// Polls `f` until it returns `Some`, failing with the server log after `timeout`.
    pub fn wait<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        crate::wait_until(
            what,
            timeout,
            || format!("server log:\n{}", self.peer.log_tail()),
            f,
        )
    }
}

/// A signing key pair made by `edge-agent bundle keygen`: (private PEM path, public PEM path).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let base = dir.join(name);
    let st = Command::new(workspace_bin("edge-agent"))
        .args(["bundle", "keygen", "--out"])
        .arg(&base)
        .stdout(Stdio::null())
        .status()
        .expect("keygen");
    assert!(st.success());
    (
        PathBuf::from(format!("{}.key.pem", base.display())),
        PathBuf::from(format!("{}.pub.pem", base.display())),
    )
}

/// A new version of the demo bundle: same model and features, `version_number`, signed by
/// `key`; `edit` may change the manifest (e.g. impossible output ranges).
pub fn demo_bundle_version(
    key: &Path,
    version_number: u64,
    edit: impl FnOnce(&mut edge_wire::bundle::manifest::Manifest),
) -> Vec<u8> {
    let demo = std::fs::read(crate::workspace().join("examples/demo/pump-anomaly.bundle"))
        .expect("demo bundle");
    let u = bundle_file::parse(&demo).expect("demo bundle parses");
    let mut m = u.manifest.clone();
    m.version_number = version_number;
    m.version = format!("1.{version_number}.0");
    m.description = Some(format!("test version {version_number}"));
    edit(&mut m);
    let k = bundle_file::read_signing_key(key).expect("signing key");
    bundle_file::pack(&m, &u.model, &k).expect("pack")
}

/// A blocking HTTPS/1.1 request with `Connection: close`: (status, body).
pub fn https(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let cfg = edge_wire::tls::client_config(Some(ca), client).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    tls.write_all(body).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        // Servers may close without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let start = p + 2;
        out.extend_from_slice(&b[start..(start + n).min(b.len())]);
        b = &b[(start + n + 2).min(b.len())..];
    }
    out
}

/// POSTs a sync message (CBOR + zstd) and decodes the reply, or returns (status, text).
pub fn call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    path: &str,
    msg: &Req,
) -> Result<Rep, (u16, String)> {
    let (status, body) = https(
        port,
        ca,
        client,
        "POST",
        path,
        &[
            ("content-type", edge_wire::sync::CONTENT_TYPE),
            ("content-encoding", "zstd"),
        ],
        &edge_wire::sync::encode(msg),
    )
    .map_err(|e| (0, e))?;
    if status != 200 {
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    edge_wire::sync::decode(&body).map_err(|e| (status, e.to_string()))
}

/// Enrolls a device directly (key and CSR made here); returns (cert path, key path, id).
pub fn enroll_device(
    port: u16,
    ca: &Path,
    dir: &Path,
    name: &str,
    token: &str,
) -> Result<(PathBuf, PathBuf, String), (u16, String)> {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .expect("csr");
    let reply: edge_wire::sync::EnrollReply = call(
        port,
        ca,
        None,
        edge_wire::sync::path::ENROLL,
        &edge_wire::sync::EnrollRequest {
            token: token.into(),
            csr_pem: csr,
            name: name.into(),
            agent_version: "test".into(),
        },
    )?;
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, reply.cert_pem).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    Ok((c, k, reply.device_id))
}

/// An agent of the end-to-end fleet tests: a simulated pump, one model, sync to a server.
#[derive(Debug)]
pub struct AgentSetup<'a> {
    pub id: &'a str,
    pub server_port: u16,
    pub ca: &'a Path,
    pub token: &'a str,
    pub bundle: &'a Path,
    pub trusted: &'a Path,
    pub extra_sync: &'a str,
}

/// Writes the agent's configuration into `d`.
pub fn agent_config(d: &Path, a: AgentSetup) -> PathBuf {
    let AgentSetup {
        id,
        server_port,
        ca,
        token,
        bundle,
        trusted,
        extra_sync,
    } = a;
    let cfg = d.join(format!("{id}.toml"));
    let data = d.join(id);
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "{id}"
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

[bundles]
trusted_keys = ["{trusted}"]

[[models]]
name = "pump"
bundle = "{bundle}"
reload_check = "200ms"
drift_interval = "5s"

[sync]
server = "https://127.0.0.1:{server_port}"
server_ca = "{ca}"
enroll_token = "{token}"
interval = "1s"
batch_records = 50
request_timeout = "5s"
{extra_sync}
[sync.health]
windows = 3
timeout = "60s"
"#,
            data = data.display(),
            trusted = trusted.display(),
            bundle = bundle.display(),
            ca = ca.display(),
        ),
    )
    .expect("write config");
    cfg
}

/// Agent `gw1` serving the demo bundle (version 1, signed by a key made here and trusted by
/// the agent), enrolled with a one-time token for `site=a`, trusting `ca` for the server, started
/// in `d`: the agent and its configuration file.
pub fn start_demo_agent(server: &FleetServer, d: &Path, ca: &Path) -> (Peer, PathBuf) {
    let (key, public) = keygen(d, "ml");
    let bundle = d.join("pump.bundle");
    std::fs::write(&bundle, demo_bundle_version(&key, 1, |_| {})).expect("bundle");
    let tok = token(server, &["site=a"]);
    let cfg = agent_config(
        d,
        AgentSetup {
            id: "gw1",
            server_port: server.port,
            ca,
            token: &tok,
            bundle: &bundle,
            trusted: &public,
            extra_sync: "",
        },
    );
    (start_agent(d, "gw1", &cfg), cfg)
}

/// The id of the first device, once it enrolled and checked in.
pub fn first_device_checked_in(server: &FleetServer, timeout: Duration) -> String {
    server.wait("enrollment and check-in", timeout, || {
        let ds = server.devices();
        ds.first()?["last_seen"].as_i64()?;
        Some(ds[0]["id"].as_str()?.to_string())
    })
}

pub fn start_agent(d: &Path, name: &str, cfg: &Path) -> Peer {
    Peer::start(
        name,
        workspace_bin("edge-agent"),
        &["run", "--config", &cfg.display().to_string()],
        d,
        None,
    )
}

/// A one-time enrollment token with these labels.
pub fn token(server: &FleetServer, labels: &[&str]) -> String {
    let mut args = vec!["device", "enroll"];
    for l in labels {
        args.push("--label");
        args.push(l);
    }
    server.cli(&args).trim().to_string()
}

/// A stream of `device show`.
pub fn stream<'a>(show: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    show["streams"]
        .as_array()?
        .iter()
        .find(|s| s["stream"] == name)
}

pub fn sha_of(path: &Path) -> String {
    edge_wire::bundle::file::sha256_hex(&std::fs::read(path).expect("bundle file"))
}

/// HAProxy in TCP mode (TLS passes through: device mTLS ends at the fleet servers) in
/// front of fleet-server replicas, round robin, with health checks so a dead replica is
/// taken out and connections go to the others. Logs each connection's replica as soon as
/// it is chosen (`option logasap`) to `haproxy.log`.
#[derive(Debug)]
pub struct Haproxy {
    pub peer: Peer,
    pub port: u16,
}

impl Haproxy {
    pub fn start(dir: &Path, replicas: &[u16]) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "HAProxy is not installed: run tests/peers/setup.sh (apt-get install haproxy)"
                )
            });
        let port = free_port();
        let servers: String = replicas
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "  server r{} 127.0.0.1:{p} check inter 300ms fall 2 rise 1\n",
                    i + 1
                )
            })
            .collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  log stdout format raw local0\n\
                 defaults\n  mode tcp\n  log global\n  option tcplog\n  option logasap\n  \
                 timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  \
                 option redispatch\n\
                 frontend fleet\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
                 backend replicas\n  balance roundrobin\n{servers}"
            ),
        )
        .expect("haproxy.cfg");
        let peer = Peer::start(
            "haproxy",
            bin,
            &["-db", "-f", &cfg.display().to_string()],
            dir,
            Some(port),
        );
        Haproxy { peer, port }
    }

    /// Connections HAProxy sent to replica `n` (1-based, in the order given to `start`).
    pub fn connections_to(&self, n: usize) -> usize {
        let log = std::fs::read_to_string(self.peer.log_path()).unwrap_or_default();
        let needle = format!(" replicas/r{n} ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }
}
