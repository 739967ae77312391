//! Modbus polling throughput against the pymodbus peer: registers/s of the coalescing poller
//! vs the naive baseline of one request per tag (what a poller without read planning does),
//! same server, same tags, same run.
//!
//! Run: `cargo bench -p interop-tests --bench modbus_poll` (needs tests/peers/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use edge_sources::modbus::{ModbusPoller, ModbusSourceConfig};
use edge_wire::Quality;
use interop_tests::*;

const REGISTERS: usize = 1000;
const SECONDS: u64 = 6;

fn config(port: u16, max_per_read: u16) -> ModbusSourceConfig {
    let mut text = format!(
        "name = \"bench\"\ntcp = {{ address = \"127.0.0.1:{port}\" }}\npoll_interval = \"1ms\"\n\
         timeout = \"2s\"\nmax_registers_per_read = {max_per_read}\n"
    );
    for i in 0..REGISTERS {
        text.push_str(&format!(
            "[[tags]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {}\n",
            1000 + i
        ));
    }
    toml_config(&text)
}

/// Good register values per second over SECONDS, after a 1 s warm-up.
async fn measure(port: u16, max_per_read: u16) -> (f64, usize) {
    let poller = ModbusPoller::new(config(port, max_per_read));
    let requests = poller.request_count();
    let mut h = Harness::start("bench", Box::new(poller));
    h.collect_for(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let got = h.collect_for(Duration::from_secs(SECONDS)).await;
    let good = got.iter().filter(|s| s.quality == Quality::Good).count();
    let rate = good as f64 / t0.elapsed().as_secs_f64();
    h.stop().await.unwrap();
    (rate, requests)
}

fn main() {
    let dir = tempdir();
    let port = free_port();
    let _server = modbus_tcp_with(dir.path(), port, &["--extra", &REGISTERS.to_string()]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (naive, nreq) = measure(port, 1).await;
        let (ours, oreq) = measure(port, 125).await;
        println!(
            "modbus TCP polling {REGISTERS} u16 registers on pymodbus 3.16, {SECONDS} s each:"
        );
        println!(
            "  baseline: one request per tag ({nreq} requests/cycle)  {naive:>10.0} registers/s"
        );
        println!(
            "  edge-agent coalesced ({oreq} requests/cycle)           {ours:>10.0} registers/s"
        );
        println!("  ratio coalesced / per-tag: {:.1}", ours / naive);
    });
}
