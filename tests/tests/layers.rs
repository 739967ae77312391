//! The shape of the code, checked: which workspace crate may depend on which (from
//! `cargo metadata`), and that the top-level modules of each product crate import each other
//! without a cycle (from the `crate::` paths in their non-test code), so every module has a
//! layer and nothing runs back up. `cargo test -p interop-tests --test layers -- --nocapture`
//! prints both graphs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Workspace crates each product crate may use (normal and build dependencies). Test-only
/// crates (`interop-tests`, `edge-fuzz`) may use anything; nothing may use them.
const ALLOWED: &[(&str, &[&str])] = &[
    ("edge-wire", &[]),
    ("edge-sources", &["edge-wire"]),
    ("edge-agent", &["edge-wire", "edge-sources"]),
    ("fleet-server", &["edge-wire"]),
];

#[test]
fn crates_depend_only_downwards() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let deps = graph.entry(name).or_default();
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if members.contains(dep) && d["kind"].as_str() != Some("dev") {
                deps.insert(dep);
            }
        }
    }
    println!("workspace crates and what they use:");
    for (k, v) in &graph {
        println!("  {k} -> {v:?}");
    }
    for (krate, allowed) in ALLOWED {
        let uses = graph
            .get(krate)
            .unwrap_or_else(|| panic!("{krate} is not a workspace member"));
        let extra: Vec<_> = uses.iter().filter(|d| !allowed.contains(d)).collect();
        assert!(
            extra.is_empty(),
            "{krate} depends on {extra:?}; it may use only {allowed:?} (ARCHITECTURE.md)"
        );
    }
    let products: Vec<&str> = ALLOWED.iter().map(|(k, _)| *k).collect();
    for k in graph.keys() {
        assert!(
            products.contains(k) || !graph.values().any(|u| u.contains(k)),
            "{k} is a test crate, yet a crate depends on it"
        );
    }
}

/// Top-level module -> the top-level modules its non-test code names through `crate::`,
/// with one file per edge for the message.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let root = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    // `pub use metrics::Metrics;` at the root: `crate::Metrics` is module `metrics`.
    let mut reexports = BTreeMap::new();
    for line in root.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub use ") {
            if let Some((module, items)) = rest.split_once("::") {
                for item in items
                    .trim_matches(|c| matches!(c, '{' | '}' | ';' | ' '))
                    .split(',')
                {
                    let item = item.trim().trim_end_matches(['}', ';']);
                    if !item.is_empty() {
                        reexports.insert(item.to_string(), module.to_string());
                    }
                }
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            // Test modules sit at the end of a file and may reach anywhere.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for line in code.lines() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                        group
                            .split('}')
                            .next()
                            .unwrap_or_default()
                            .split(',')
                            .map(|s| s.trim().split("::").next().unwrap_or_default().to_string())
                            .collect()
                    } else {
                        vec![rest
                            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or_default()
                            .to_string()]
                    };
                    for name in names {
                        let module = if name.starts_with(|c: char| c.is_lowercase()) {
                            Some(name)
                        } else {
                            reexports.get(&name).cloned()
                        };
                        if let Some(m) = module.filter(|m| *m != top && !m.is_empty()) {
                            graph
                                .entry(top.clone())
                                .or_default()
                                .entry(m)
                                .or_insert_with(|| rel.display().to_string());
                        }
                    }
                }
            }
        }
    }
    graph
}

/// A cycle in the graph, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for next in graph.get(n).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn product_crates_have_no_module_cycles() {
    for krate in [
        "protocols/wire/src",
        "protocols/sources/src",
        "agent/src",
        "fleet-server/src",
    ] {
        let graph = module_graph(&workspace().join(krate));
        println!("{krate}:");
        for (m, uses) in &graph {
            println!("  {m} -> {:?}", uses.keys().collect::<Vec<_>>());
        }
        if let Some(cycle) = find_cycle(&graph) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!(
                "{krate}: modules import each other in a cycle: {}",
                steps.join(", ")
            );
        }
    }
}

/// The checker itself finds a cycle, including through a grouped import and a root
/// re-export, and ignores comments and test modules.
#[test]
fn the_cycle_check_sees_cycles() {
    let dir = std::env::temp_dir().join(format!("layers-check-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub use a::Thing;\nmod a;\nmod b;\n").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::{b::X};\npub struct Thing;\n").unwrap();
    std::fs::write(
        dir.join("b/mod.rs"),
        "// crate::c in a comment\nuse crate::Thing;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("c.rs"),
        "pub fn f() {}\n#[cfg(test)]\nmod tests { use crate::a::Thing; }\n",
    )
    .unwrap();
    let graph = module_graph(&dir);
    let cycle = find_cycle(&graph).expect("a -> b -> a is a cycle");
    assert!(cycle.contains(&"a".to_string()) && cycle.contains(&"b".to_string()));
    assert!(
        !graph.contains_key("c"),
        "test modules are not edges: {graph:?}"
    );
    std::fs::remove_file(dir.join("b/mod.rs")).unwrap();
    std::fs::write(dir.join("b/mod.rs"), "pub struct X;\n").unwrap();
    assert_eq!(find_cycle(&module_graph(&dir)), None);
    std::fs::remove_dir_all(&dir).ok();
}
