//! Fleet-server load: N simulated devices, each enrolled with its own certificate and keeping
//! its own mutual-TLS connection, syncing every 10 s (a check-in, then an upload of 10
//! records). Reports request latency p50/p99 and the server process's CPU and RSS, measured
//! over a window after every device has synced once.
//!
//! Run: `cargo bench -p fleet-server --bench fleet_load`
//! (`FLEET_LOAD_DEVICES=1000,10000`, `FLEET_LOAD_SECONDS=60` to change the defaults).
//! `FLEET_LOAD_MODE=abuse`: memory under 16 parallel 15 MB uploads (see [`abuse`]), with
//! the shipped body budget and without one. `FLEET_LOAD_MODE=replicas` with
//! `FLEET_LOAD_POSTGRES=postgres://USER@HOST:PORT`: two replicas on that PostgreSQL, behind
//! HAProxy and without it. `FLEET_LOAD_GROUP=256,1`: the `--group-commit` values to compare.
//! `FLEET_LOAD_RECORDS=10`: records per upload. `FLEET_LOAD_LAYOUTS=haproxy|split`: one of
//! the replica layouts only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_wire::sync::{self, path};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let (send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn post<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    c: &mut Conn,
    p: &str,
    msg: &Req,
) -> anyhow::Result<Rep> {
    c.ready().await?;
    let req = hyper::Request::post(p)
        .header("host", "127.0.0.1")
        .header("content-type", sync::CONTENT_TYPE)
        .body(Full::new(Bytes::from(sync::encode(msg))))?;
    let r = c.send_request(req).await?;
    let status = r.status();
    let body = r.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{p}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(sync::decode(&body)?)
}

/// What a load device reports at check-in.
fn checkin() -> sync::CheckIn {
    sync::CheckIn {
        agent_version: "load".into(),
        models: vec![],
        streams: vec![],
        last_error: None,
        uptime_s: 0,
        config: None,
        agent: None,
    }
}

fn client_tls(ca: &str, auth: Option<(&str, &str)>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(Arc::new(match auth {
        Some((cert, key)) => b.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
        None => b.with_no_client_auth(),
    }))
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes under test: fleet-server replicas (one on SQLite, or several on one
/// PostgreSQL), optionally behind HAProxy. `ports`: where devices connect (device `i` uses
/// `ports[i % len]`).
struct Fleet {
    servers: Vec<KillOnDrop>,
    haproxy: Option<KillOnDrop>,
    ports: Vec<u16>,
    dirs: Vec<std::path::PathBuf>,
    tls: Vec<Arc<rustls::ClientConfig>>,
    enroll_s: f64,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.haproxy.take();
        self.servers.clear();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// How the fleet under test is laid out.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One server on its embedded SQLite database.
    Single,
    /// `replicas` servers on one PostgreSQL (`FLEET_LOAD_POSTGRES`), devices spread over
    /// them by HAProxy (TCP passthrough) or, without it, by the load generator itself.
    Replicas { replicas: usize, haproxy: bool },
}

/// Release `fleet-server serve` processes on a fresh database with `n` enrollment tokens,
/// and `n` devices enrolled through them.
async fn fleet(name: &str, n: usize, layout: Layout, extra: &[&str]) -> anyhow::Result<Fleet> {
    let base = std::env::temp_dir().join(format!("fleet-load-{}-{name}", std::process::id()));
    let replicas = match layout {
        Layout::Single => 1,
        Layout::Replicas { replicas, .. } => replicas,
    };
    let dirs: Vec<_> = (0..replicas).map(|i| base.join(format!("r{i}"))).collect();
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let url = match layout {
        Layout::Single => None,
        Layout::Replicas { .. } => {
            let pg = std::env::var("FLEET_LOAD_POSTGRES").map_err(|_| {
                anyhow::anyhow!("FLEET_LOAD_MODE=replicas needs FLEET_LOAD_POSTGRES=postgres://USER@HOST:PORT (tests/peers/postgres.sh start DIR prints one)")
            })?;
            std::env::set_var("FLEET_TEST_BACKEND", "postgres");
            std::env::set_var("FLEET_TEST_POSTGRES", pg);
            fleet_server::store::testing::database_url().await?
        }
    };
    let store = fleet_server::store::FleetStore::open(&dirs[0], url.as_deref()).await?;
    let tokens: Vec<String> = (0..n)
        .map(|i| format!("load-token-{i}-{}", fastrand::u64(..)))
        .collect();
    for t in &tokens {
        store
            .add_token(
                &fleet_server::ca::sha256_hex(t.as_bytes()),
                &[],
                "bench",
                i64::MAX,
            )
            .await?;
    }
    drop(store);
    let mut servers = Vec::new();
    let mut server_ports = Vec::new();
    for d in &dirs {
        let port = free_port()?;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-server"));
        cmd.args(["serve", "--data-dir"])
            .arg(d)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--checkin-s",
                "10",
            ])
            .args(extra)
            .env("RUST_LOG", "warn");
        if let Some(u) = &url {
            cmd.args(["--database-url", u]);
        }
        servers.push(KillOnDrop(cmd.spawn()?));
        wait_port(port).await?;
        server_ports.push(port);
    }
    let (haproxy, ports) = match layout {
        Layout::Replicas { haproxy: true, .. } => {
            let port = free_port()?;
            let mut cfg = format!(
                "global\n  maxconn {}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\nfrontend fleet\n  bind 127.0.0.1:{port}\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n",
                n + 100
            );
            for (i, p) in server_ports.iter().enumerate() {
                cfg.push_str(&format!("  server r{i} 127.0.0.1:{p}\n"));
            }
            let path = base.join("haproxy.cfg");
            std::fs::write(&path, cfg)?;
            let h = KillOnDrop(
                std::process::Command::new("haproxy")
                    .arg("-f")
                    .arg(&path)
                    .arg("-db")
                    .spawn()?,
            );
            wait_port(port).await?;
            (Some(h), vec![port])
        }
        _ => (None, server_ports),
    };
    let ca = std::fs::read_to_string(dirs[0].join("ca/ca.pem"))?;
    let anon = client_tls(&ca, None)?;

    // Enroll everyone (64 at a time).
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut enrolls = Vec::new();
    for (i, tok) in tokens.into_iter().enumerate() {
        let (sem, anon, ca) = (sem.clone(), anon.clone(), ca.clone());
        let port = ports[i % ports.len()];
        enrolls.push(tokio::spawn(async move {
            let _p = sem.acquire().await?;
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&key)?
                .pem()?;
            let mut c = connect(port, anon).await?;
            let r: sync::EnrollReply = post(
                &mut c,
                path::ENROLL,
                &sync::EnrollRequest {
                    token: tok,
                    csr_pem: csr,
                    name: format!("dev{i}"),
                    agent_version: "load".into(),
                },
            )
            .await?;
            client_tls(&ca, Some((&r.cert_pem, &key.serialize_pem())))
        }));
    }
    let mut tls = Vec::with_capacity(n);
    for e in enrolls {
        tls.push(e.await??);
    }
    let mut all = dirs;
    all.push(base);
    Ok(Fleet {
        servers,
        haproxy,
        ports,
        dirs: all,
        tls,
        enroll_s: t0.elapsed().as_secs_f64(),
    })
}

/// CPU seconds of every `postgres` process (the cluster's backends together).
fn postgres_cpu() -> f64 {
    let mut total = 0.0;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                total += cpu_seconds(pid);
            }
        }
    }
    total
}

async fn run(
    n: usize,
    window: Duration,
    layout: Layout,
    label: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let period = Duration::from_secs(10);
    // Records per upload (48 bytes each).
    let per_upload: u64 = std::env::var("FLEET_LOAD_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut f = fleet(&format!("{n}-{}", fastrand::u32(..)), n, layout, extra).await?;
    let pids: Vec<u32> = f.servers.iter().map(|s| s.0.id()).collect();
    let hpid = f.haproxy.as_ref().map(|h| h.0.id());
    let me = std::process::id();

    // Devices: a random phase, then check-in + upload every period.
    let start = Instant::now() + period; // measurement starts after every device synced once
    let stop = start + window;
    let mut tasks = Vec::new();
    for (i, cfg) in std::mem::take(&mut f.tls).into_iter().enumerate() {
        let port = f.ports[i % f.ports.len()];
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<(f64, f64)> = Vec::new();
            let mut errors = 0u64;
            tokio::time::sleep(period.mul_f64(fastrand::f64())).await;
            let mut conn: Option<Conn> = None;
            let mut seq = 0u64;
            let mut tick = tokio::time::interval(period);
            while Instant::now() < stop {
                tick.tick().await;
                let began = Instant::now();
                let one = async {
                    if conn.is_none() {
                        conn = Some(connect(port, cfg.clone()).await?);
                    }
                    let c = conn.as_mut().ok_or_else(|| anyhow::anyhow!("no conn"))?;
                    let t = Instant::now();
                    let _: sync::CheckInReply = post(c, path::CHECKIN, &checkin()).await?;
                    let checkin = t.elapsed().as_secs_f64() * 1e3;
                    let t = Instant::now();
                    let records = (0..per_upload)
                        .map(|_| {
                            seq += 1;
                            sync::UploadRecord {
                                seq,
                                ts_ms: 0,
                                body: vec![0x5a; 48],
                            }
                        })
                        .collect();
                    let _: sync::UploadAck = post(
                        c,
                        path::UPLOAD,
                        &sync::UploadBatch {
                            stream: "samples".into(),
                            first_available: 1,
                            records,
                        },
                    )
                    .await?;
                    anyhow::Ok((checkin, t.elapsed().as_secs_f64() * 1e3))
                };
                match one.await {
                    Ok(l) if began >= start && began < stop => lat.push(l),
                    Ok(_) => {}
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (s0, h0, p0, m0) = (
        cpu(&pids),
        cpu(hpid.as_slice()),
        postgres_cpu(),
        cpu_seconds(me),
    );
    tokio::time::sleep_until(stop.into()).await;
    let (s1, h1, p1, m1) = (
        cpu(&pids),
        cpu(hpid.as_slice()),
        postgres_cpu(),
        cpu_seconds(me),
    );
    let rss: f64 = pids.iter().map(|p| rss_mb(*p)).sum();
    let (mut c, mut u, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await?;
        errors += e;
        for (a, b) in lat {
            c.push(a);
            u.push(b);
        }
    }
    let enroll_s = f.enroll_s;
    drop(f);
    let w = window.as_secs_f64();
    let rps = (c.len() + u.len()) as f64 / w;
    let pc = |a: f64, b: f64| (b - a) / w * 100.0;
    let mut cpu_line = format!("server CPU {:.0} %", pc(s0, s1));
    if matches!(layout, Layout::Replicas { .. }) {
        cpu_line.push_str(&format!(
            " ({} replicas), PostgreSQL {:.0} %",
            pids.len(),
            pc(p0, p1)
        ));
    }
    if hpid.is_some() {
        cpu_line.push_str(&format!(", HAProxy {:.0} %", pc(h0, h1)));
    }
    println!(
        "{label}, {per_upload} records per upload: {n:>6} devices: enroll {enroll_s:.1} s; {rps:.0} req/s; check-in p50 {:.1} ms p99 {:.1} ms; upload p50 {:.1} ms p99 {:.1} ms; {cpu_line}; load generator {:.0} % (of one core); server RSS {rss:.0} MB; errors {errors}",
        pct(&mut c, 0.5),
        pct(&mut c, 0.99),
        pct(&mut u, 0.5),
        pct(&mut u, 0.99),
        pc(m0, m1),
    );
    Ok(())
}

/// Memory under abuse: one device posts 15 MB uploads on 16 connections at once, over and
/// over, while another checks in every second. Reports the server's peak RSS, the quiet
/// device's check-in latency, and how many big uploads were served or refused (503).
async fn abuse(label: &str, extra: &[&str], window: Duration) -> anyhow::Result<()> {
    let f = fleet(
        &format!("abuse-{}", fastrand::u32(..)),
        2,
        Layout::Single,
        extra,
    )
    .await?;
    let (pid, port, tls) = (f.servers[0].0.id(), f.ports[0], f.tls.clone());
    // 15 MB of incompressible records: the body stays ~15 MB after zstd and inflates to
    // just under the 16 MiB limit.
    let batch = sync::UploadBatch {
        stream: "samples".into(),
        first_available: 1,
        records: (1..=1500u64)
            .map(|seq| sync::UploadRecord {
                seq,
                ts_ms: 0,
                body: (0..10_000).map(|_| fastrand::u8(..)).collect(),
            })
            .collect(),
    };
    let body = Bytes::from(sync::encode(&batch));
    let stop = Instant::now() + window;
    let mut big = Vec::new();
    for _ in 0..16 {
        let (cfg, body) = (tls[0].clone(), body.clone());
        big.push(tokio::spawn(async move {
            let (mut ok, mut busy, mut failed) = (0u64, 0u64, 0u64);
            let mut conn: Option<Conn> = None;
            while Instant::now() < stop {
                let one = async {
                    if conn.is_none() {
                        conn = Some(connect(port, cfg.clone()).await?);
                    }
                    let c = conn.as_mut().ok_or_else(|| anyhow::anyhow!("no conn"))?;
                    c.ready().await?;
                    let req = hyper::Request::post(path::UPLOAD)
                        .header("host", "127.0.0.1")
                        .header("content-type", sync::CONTENT_TYPE)
                        .header("content-encoding", "zstd")
                        .body(Full::new(body.clone()))?;
                    let r = c.send_request(req).await?;
                    let status = r.status();
                    r.into_body().collect().await?;
                    anyhow::Ok(status)
                };
                match one.await {
                    Ok(s) if s.is_success() => ok += 1,
                    Ok(s) if s == hyper::StatusCode::SERVICE_UNAVAILABLE => {
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    _ => {
                        failed += 1;
                        conn = None;
                    }
                }
            }
            (ok, busy, failed)
        }));
    }
    let quiet = {
        let cfg = tls[1].clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut conn: Option<Conn> = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < stop {
                tick.tick().await;
                let t = Instant::now();
                let one = async {
                    if conn.is_none() {
                        conn = Some(connect(port, cfg.clone()).await?);
                    }
                    let c = conn.as_mut().ok_or_else(|| anyhow::anyhow!("no conn"))?;
                    let _: sync::CheckInReply = post(c, path::CHECKIN, &checkin()).await?;
                    anyhow::Ok(())
                };
                match one.await {
                    Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, errors)
        })
    };
    let mut peak = 0f64;
    while Instant::now() < stop {
        peak = peak.max(rss_mb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ok, mut busy, mut failed) = (0, 0, 0);
    for b in big {
        let (o, y, f) = b.await?;
        ok += o;
        busy += y;
        failed += f;
    }
    let (mut lat, errors) = quiet.await?;
    drop(f);
    println!(
        "{label:>24}: peak RSS {peak:.0} MB; 15 MB uploads served {ok}, refused busy {busy}, failed {failed}; other device's check-in p50 {:.1} ms p99 {:.1} ms max {:.1} ms, errors {errors}",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let list = std::env::var("FLEET_LOAD_DEVICES").unwrap_or_else(|_| "1000,10000".into());
    let secs: u64 = std::env::var("FLEET_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var("FLEET_LOAD_MODE").as_deref() == Ok("abuse") {
        // The budget as shipped, against no effective budget, in the same run.
        let window = Duration::from_secs(secs);
        rt.block_on(abuse("default budget (256 MiB)", &[], window))?;
        rt.block_on(abuse(
            "no budget (1 TiB)",
            &["--body-memory-mb", "1048576"],
            window,
        ))?;
        return Ok(());
    }
    let window = Duration::from_secs(secs);
    let counts: Vec<usize> = list
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .collect();
    // Group commit as shipped against one transaction per request, in the same run.
    let groups = std::env::var("FLEET_LOAD_GROUP").unwrap_or_else(|_| "256,1".into());
    let groups: Vec<&str> = groups.split(',').map(str::trim).collect();
    let layouts: Vec<(&str, Layout)> = match std::env::var("FLEET_LOAD_MODE").as_deref() {
        Ok("replicas") => vec![
            (
                "2 replicas + PostgreSQL + HAProxy",
                Layout::Replicas {
                    replicas: 2,
                    haproxy: true,
                },
            ),
            (
                "2 replicas + PostgreSQL, devices split by the client",
                Layout::Replicas {
                    replicas: 2,
                    haproxy: false,
                },
            ),
        ],
        _ => vec![("one server, SQLite", Layout::Single)],
    };
    // `FLEET_LOAD_LAYOUTS=haproxy` or `=split`: one of the two replica layouts.
    let only = std::env::var("FLEET_LOAD_LAYOUTS").unwrap_or_default();
    let layouts: Vec<(&str, Layout)> = layouts
        .into_iter()
        .filter(|(_, l)| match (only.as_str(), l) {
            ("haproxy", Layout::Replicas { haproxy, .. }) => *haproxy,
            ("split", Layout::Replicas { haproxy, .. }) => !*haproxy,
            _ => true,
        })
        .collect();
    for n in counts {
        for (name, layout) in &layouts {
            for g in &groups {
                let label = format!("{name}, --group-commit {g}");
                rt.block_on(run(n, window, *layout, &label, &["--group-commit", g]))?;
            }
        }
    }
    Ok(())
}
