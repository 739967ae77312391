//! Where a model's memory goes: process RSS split into anonymous memory (heap) and
//! file-backed pages (the binary's code touched), before and after loading a bundle's model
//! twice. Used for the footprint section of BENCHMARKS.md:
//!
//!   cargo run --release -p edge-agent --example model_mem [BUNDLE] [PUBLIC_KEY]

use std::path::Path;

fn rss() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .filter(|l| {
            ["VmRSS", "RssAnon", "RssFile"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bundle = args
        .get(1)
        .map_or("examples/demo/pump-anomaly.bundle", String::as_str);
    let key = args
        .get(2)
        .map_or("examples/demo/demo.pub.pem", String::as_str);
    let bytes = std::fs::read(bundle)?;
    let key = edge_protocols::bundle::file::read_public_key(Path::new(key))?;
    println!("start                {} kB", rss());
    let b = edge_protocols::bundle::Bundle::from_bytes(&bytes, &[key], 0)?;
    println!("bundle verified      {} kB", rss());
    let shape = b.manifest.features.input_shape();
    let first = edge_agent::inference::Model::load(&b.model, &shape)?;
    println!("model loaded         {} kB", rss());
    let second = edge_agent::inference::Model::load(&b.model, &shape)?;
    println!("same model again     {} kB", rss());
    drop(second);
    println!("second one dropped   {} kB", rss());
    drop(first);
    Ok(())
}
