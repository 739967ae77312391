//! Model delta sizes and times per method, against the full download as baseline.
//!
//! Models: the shipped test models (`tests/models/*.onnx`, tiny) and a 6.8 MB dense
//! autoencoder built here with the ONNX wire layout (float initializers in `raw_data`; the
//! delta methods only see bytes and tensor names). Updates: only the last layer changed (a
//! fine-tuned head), every weight nudged by 0.01 % (relative, Gaussian), every weight changed
//! by 1 %.
//!
//! Agent releases: with `EDGE_BENCH_AGENT="OLD NEW [OLD NEW ...]"` (paths of two
//! edge-agent binaries, e.g. the ARM builds of two commits), the same methods on the
//! binaries; the fleet server keeps the smallest (bsdiff only up to 32 MiB).
//!
//! Run: `cargo bench -p edge-wire --bench delta`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Instant;

use edge_wire::delta::{self, Method};

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
    put_varint((num << 3) | 2, out);
    put_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// ModelProto { ir_version, graph { name, initializer* { dims, data_type=FLOAT, name, raw_data } } }
fn onnx(layers: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut graph = Vec::new();
    field(2, b"dense_autoencoder", &mut graph);
    for (name, dims, w) in layers {
        let mut t = Vec::new();
        for d in dims {
            put_varint(1 << 3, &mut t);
            put_varint(*d as u64, &mut t);
        }
        put_varint(2 << 3, &mut t);
        put_varint(1, &mut t);
        field(8, name.as_bytes(), &mut t);
        let raw: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        field(9, &raw, &mut t);
        field(5, &t, &mut graph);
    }
    let mut m = Vec::new();
    put_varint(1 << 3, &mut m);
    put_varint(8, &mut m);
    field(7, &graph, &mut m);
    m
}

fn gauss(r: &mut fastrand::Rng) -> f32 {
    // Box-Muller
    let (u, v) = (r.f32().max(1e-9), r.f32());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
}

type Layers = Vec<(String, Vec<usize>, Vec<f32>)>;
/// (name, which layers change, relative change)
type Scenario = (&'static str, Box<dyn Fn(usize) -> bool>, f32);

fn dense_autoencoder(seed: u64) -> Layers {
    // 6.8 MB of float32: 320-1024-1024-320 (weights + biases).
    let sizes = [320, 1024, 1024, 320];
    let mut r = fastrand::Rng::with_seed(seed);
    let mut layers = Vec::new();
    for (i, w) in sizes.windows(2).enumerate() {
        let scale = (2.0 / w[0] as f32).sqrt();
        let weights: Vec<f32> = (0..w[0] * w[1]).map(|_| gauss(&mut r) * scale).collect();
        let bias: Vec<f32> = (0..w[1]).map(|_| gauss(&mut r) * 0.01).collect();
        layers.push((format!("layer{i}.weight"), vec![w[1], w[0]], weights));
        layers.push((format!("layer{i}.bias"), vec![w[1]], bias));
    }
    layers
}

fn perturb(layers: &Layers, which: &dyn Fn(usize) -> bool, rel: f32, seed: u64) -> Layers {
    let mut r = fastrand::Rng::with_seed(seed);
    layers
        .iter()
        .enumerate()
        .map(|(i, (n, d, w))| {
            let w = if which(i) {
                w.iter().map(|x| x * (1.0 + rel * gauss(&mut r))).collect()
            } else {
                w.clone()
            };
            (n.clone(), d.clone(), w)
        })
        .collect()
}

fn report(model: &str, change: &str, old: &[u8], new: &[u8]) {
    println!(
        "{model:<22} {change:<22} {:<18} {:>10} {:>8.3} {:>9} {:>9}",
        "full (raw)",
        new.len(),
        1.0,
        "-",
        "-"
    );
    for m in Method::ALL {
        let t = Instant::now();
        match delta::make(m, old, new) {
            Ok(d) => {
                let make_ms = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let back = delta::apply(old, &d).expect("delta applies");
                let apply_ms = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!(back, new, "{} round trip", m.name());
                println!(
                    "{model:<22} {change:<22} {:<18} {:>10} {:>8.3} {make_ms:>9.0} {apply_ms:>9.1}",
                    m.name(),
                    d.len(),
                    d.len() as f64 / new.len() as f64,
                );
            }
            Err(e) => println!("{model:<22} {change:<22} {:<18} {e}", m.name()),
        }
    }
}

fn main() {
    println!(
        "{:<22} {:<22} {:<18} {:>10} {:>8} {:>9} {:>9}",
        "model", "change", "method", "bytes", "vs full", "make ms", "apply ms"
    );
    let base = dense_autoencoder(1);
    let old = onnx(&base);
    let n = base.len();
    let scenarios: [Scenario; 3] = [
        ("last layer retrained", Box::new(move |i| i >= n - 2), 0.05),
        ("all weights 0.01 %", Box::new(|_| true), 1e-4),
        ("all weights 1 %", Box::new(|_| true), 1e-2),
    ];
    for (name, which, rel) in &scenarios {
        let new = onnx(&perturb(&base, which.as_ref(), *rel, 2));
        report("dense AE 6.8 MB", name, &old, &new);
    }
    // The shipped test models: rewrite their float initializers the same way.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models");
    for file in ["dense_autoencoder.onnx", "conv1d.onnx", "iforest.onnx"] {
        let Ok(old) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let spans = delta::tensor_spans(&old, 0..old.len()).unwrap_or_default();
        let mut r = fastrand::Rng::with_seed(3);
        let mut new = old.clone();
        for s in spans.iter().filter(|s| s.elem == 4) {
            for c in new[s.range.clone()].chunks_exact_mut(4) {
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                c.copy_from_slice(&(x * (1.0 + 1e-2 * gauss(&mut r))).to_le_bytes());
            }
        }
        if spans.is_empty() {
            // Tree ensembles keep thresholds in node attributes: flip a few bytes mid-file.
            let mid = new.len() / 2;
            for b in &mut new[mid..mid + 64] {
                *b ^= 1;
            }
        }
        report(
            file,
            if spans.is_empty() {
                "64 bytes changed"
            } else {
                "all weights 1 %"
            },
            &old,
            &new,
        );
    }
    // Agent binaries, when given.
    if let Ok(list) = std::env::var("EDGE_BENCH_AGENT") {
        let paths: Vec<&str> = list.split_whitespace().collect();
        for pair in paths.chunks_exact(2) {
            let old = std::fs::read(pair[0]).unwrap();
            let new = std::fs::read(pair[1]).unwrap();
            let name = std::path::Path::new(pair[1])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            report(&name, "agent binary", &old, &new);
        }
    }
}
