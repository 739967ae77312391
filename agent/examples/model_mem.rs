//! Where a model's memory goes: process RSS split into anonymous memory (heap) and
//! file-backed pages (the binary's code touched), plus the bytes the program really has
//! allocated (a counting global allocator), before and after loading a bundle's model twice.
//! The gap between RssAnon and live bytes is what the allocator keeps after parse garbage
//! is freed. Used for the footprint section of BENCHMARKS.md:
//!
//!   cargo run --release -p edge-agent --example model_mem [BUNDLE] [PUBLIC_KEY]
#![allow(clippy::unwrap_used, clippy::expect_used)]
// a measuring tool: a failed unwrap ends the measurement
// The counting allocator below is the measurement; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes currently allocated and the peak.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size() as isize, Ordering::Relaxed) + l.size() as isize;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            let d = new as isize - l.size() as isize;
            let now = LIVE.fetch_add(d, Ordering::Relaxed) + d;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn report(step: &str) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "| {step} | {} | {} | {} | {} | {} |",
        kb("VmRSS:"),
        kb("RssAnon:"),
        kb("RssFile:"),
        LIVE.load(Ordering::Relaxed) / 1024,
        PEAK.load(Ordering::Relaxed) / 1024,
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bundle = args
        .get(1)
        .map_or("examples/demo/pump-anomaly.bundle", String::as_str);
    let key = args
        .get(2)
        .map_or("examples/demo/demo.pub.pem", String::as_str);
    println!("| step | RSS kB | anonymous kB | file-backed kB | live heap kB | peak heap kB |");
    println!("|---|---|---|---|---|---|");
    report("start");
    let bytes = std::fs::read(bundle)?;
    let key = edge_wire::bundle::file::read_public_key(Path::new(key))?;
    let b = edge_wire::bundle::Bundle::from_bytes(&bytes, &[key], 0)?;
    drop(bytes);
    report("bundle verified");
    let shape = b.manifest().features.input_shape();
    let first = edge_agent::inference::Model::load(b.model(), &shape)?;
    report("model loaded");
    let second = edge_agent::inference::Model::load(b.model(), &shape)?;
    report("the same model loaded again");
    drop(second);
    report("second copy dropped");
    edge_agent::memory::release_free_memory();
    report("allocator trimmed");
    edge_agent::memory::release_executable_pages();
    report("code pages released");
    drop(first);
    Ok(())
}
