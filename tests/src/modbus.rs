//! The pymodbus server peer, over TCP and over a socat pty pair (RTU).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::peer::{peer_script, python, Peer};

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
