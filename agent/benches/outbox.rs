//! The outbox against a raw append-only file, in the same run.
//!
//! 1. Append throughput (records/s) with group commit every `COMMIT` (the agent's default
//!    durability interval), one record per call as the agent's writer does. Baseline: a
//!    length-prefixed append-only file (`BufWriter`) flushed and `fdatasync`ed on the same
//!    cadence — the least any durable log pays. Two record sizes: one sample (~40 B of CBOR)
//!    and a batch of 20 samples (~650 B).
//! 2. Disk bytes per record after the run (sled's log vs the raw file).
//! 3. Agent RSS with a 1 GB backlog: the real `edge-agent` binary started on an outbox holding
//!    1 GB of undelivered samples (its broker unreachable), against the same agent on an empty
//!    outbox.
//!
//! Run: `cargo bench -p edge-agent --bench outbox` (results in BENCHMARKS.md). Needs ~2.5 GB
//! of free disk in the temp dir. `OUTBOX_BENCH_BACKLOG_MB` overrides the backlog size.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::outbox::{OutboxConfig, SledOutbox, Stream};
use edge_wire::records::encode_samples;
use edge_wire::{Quality, Sample, Value};

const COMMIT: Duration = Duration::from_millis(500);
const RUN: Duration = Duration::from_secs(4);

fn record(samples: usize, i: usize) -> Vec<u8> {
    let s: Vec<Sample> = (0..samples)
        .map(|k| {
            Sample::new(
                Arc::from(format!("pump{}.temperature", k % 10)),
                1_795_000_000_000_000_000 + (i * 100_000_000) as i64,
                Value::Float(60.0 + (i % 1000) as f64 * 0.013 + k as f64),
                Quality::Good,
            )
        })
        .collect();
    encode_samples(&s)
}

fn cfg(max_bytes_mb: u64) -> OutboxConfig {
    let mut c = OutboxConfig::default();
    c.samples.max_bytes = max_bytes_mb << 20;
    c
}

/// Appends for `RUN`, committing every `COMMIT`; returns (records, records/s, disk bytes).
fn sled_run(dir: &Path, payloads: &[Vec<u8>]) -> (usize, f64, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let (o, _) = SledOutbox::open(dir, &cfg(8192), &[("mqtt".into(), vec![Stream::Samples])])
        .expect("open outbox");
    let t0 = Instant::now();
    let mut last = t0;
    let mut n = 0;
    while t0.elapsed() < RUN {
        o.append(
            Stream::Samples,
            std::slice::from_ref(&payloads[n % payloads.len()]),
        )
        .expect("append");
        n += 1;
        if n % 64 == 0 && last.elapsed() >= COMMIT {
            o.commit().expect("commit");
            last = Instant::now();
        }
    }
    o.commit().expect("commit");
    let secs = t0.elapsed().as_secs_f64();
    let disk = dir_size(dir);
    (n, n as f64 / secs, disk)
}

fn file_run(path: &Path, payloads: &[Vec<u8>]) -> (usize, f64, u64) {
    let _ = std::fs::remove_file(path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open file");
    let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
    let t0 = Instant::now();
    let mut last = t0;
    let mut n = 0;
    while t0.elapsed() < RUN {
        let p = &payloads[n % payloads.len()];
        // seq + append time + length, as the outbox keeps them.
        w.write_all(&(n as u64).to_le_bytes()).expect("write");
        w.write_all(&0u64.to_le_bytes()).expect("write");
        w.write_all(&(p.len() as u32).to_le_bytes()).expect("write");
        w.write_all(p).expect("write");
        n += 1;
        if n % 64 == 0 && last.elapsed() >= COMMIT {
            w.flush().expect("flush");
            w.get_ref().sync_data().expect("fdatasync");
            last = Instant::now();
        }
    }
    w.flush().expect("flush");
    w.get_ref().sync_data().expect("fdatasync");
    let secs = t0.elapsed().as_secs_f64();
    (
        n,
        n as f64 / secs,
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    )
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        total += if p.is_dir() {
            dir_size(&p)
        } else {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        };
    }
    total
}

fn vm_rss_kb(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

/// RSS (current, peak) of the agent after `wait`, with its data dir at `data`.
fn agent_rss(data: &Path, wait: Duration) -> (u64, u64) {
    let cfg = data.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[agent]
id = "bench"
data_dir = "{d}"

[[sources.simulated]]
name = "plant"
sample_interval = "100ms"

[outbox.samples]
max_bytes = 4294967296
max_age = "30d"

[[outputs.mqtt]]
name = "mqtt"
broker = {{ url = "mqtt://127.0.0.1:9" }}
streams = ["samples"]
"#,
            d = data.display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("edge-agent");
    std::thread::sleep(wait);
    let rss = vm_rss_kb(child.id()).unwrap_or((0, 0));
    let _ = child.kill();
    let _ = child.wait();
    rss
}

fn main() {
    let base = std::env::temp_dir().join(format!("outbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("bench dir");
    println!("group commit every {COMMIT:?}, {RUN:?} per run, one record per append\n");
    println!("| record | payload B | sled records/s | raw file records/s | ratio | sled disk B/record | file disk B/record |");
    println!("|---|---|---|---|---|---|---|");
    for (label, samples) in [("1 sample", 1usize), ("20 samples", 20)] {
        let payloads: Vec<Vec<u8>> = (0..256).map(|i| record(samples, i)).collect();
        let avg = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
        let (sn, s_rate, s_disk) = sled_run(&base.join("sled"), &payloads);
        let (fnn, f_rate, f_disk) = file_run(&base.join("raw.log"), &payloads);
        println!(
            "| {label} | {avg} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            s_rate,
            f_rate,
            s_rate / f_rate,
            s_disk as f64 / sn as f64,
            f_disk as f64 / fnn as f64
        );
    }
    let _ = std::fs::remove_dir_all(base.join("sled"));
    let _ = std::fs::remove_file(base.join("raw.log"));

    // A 1 GB backlog, then the agent on it vs on an empty outbox.
    let mb: u64 = std::env::var("OUTBOX_BENCH_BACKLOG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let full = base.join("full");
    let empty = base.join("empty");
    std::fs::create_dir_all(&full).expect("dir");
    std::fs::create_dir_all(&empty).expect("dir");
    let t0 = Instant::now();
    {
        let (o, _) = SledOutbox::open(
            &full.join("outbox"),
            &cfg(4096),
            &[("mqtt".into(), vec![Stream::Samples])],
        )
        .expect("open outbox");
        let payloads: Vec<Vec<u8>> = (0..256).map(|i| record(20, i)).collect();
        let mut i = 0;
        while o.stats()[Stream::Samples].bytes < mb << 20 {
            let chunk: Vec<Vec<u8>> = (0..1000).map(|k| payloads[(i + k) % 256].clone()).collect();
            o.append(Stream::Samples, &chunk).expect("append");
            i += 1000;
            if i % 100_000 == 0 {
                o.commit().expect("commit");
            }
        }
        o.commit().expect("commit");
        println!(
            "\nbacklog: {} records, {} MB of records, {} MB on disk, written in {:.0} s",
            o.stats()[Stream::Samples].records,
            o.stats()[Stream::Samples].bytes >> 20,
            dir_size(&full.join("outbox")) >> 20,
            t0.elapsed().as_secs_f64()
        );
    }
    let wait = Duration::from_secs(15);
    let (e_rss, e_hwm) = agent_rss(&empty, wait);
    let t1 = Instant::now();
    let (f_rss, f_hwm) = agent_rss(&full, wait);
    let _ = t1;
    println!(
        "\n| agent (simulated plant, broker unreachable, after {wait:?}) | RSS MB | peak RSS MB |"
    );
    println!("|---|---|---|");
    println!(
        "| baseline: empty outbox | {:.1} | {:.1} |",
        e_rss as f64 / 1024.0,
        e_hwm as f64 / 1024.0
    );
    println!(
        "| {mb} MB backlog | {:.1} | {:.1} |",
        f_rss as f64 / 1024.0,
        f_hwm as f64 / 1024.0
    );
    println!(
        "| **ratio backlog / empty** | **{:.2}** | **{:.2}** |",
        f_rss as f64 / e_rss.max(1) as f64,
        f_hwm as f64 / e_hwm.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&base);
}
