//! Replays every committed corpus file through its target (`fuzz/corpus/<target>/*`): the
//! inputs the fuzzer kept for coverage and every input that once crashed a target stay
//! regression tests on stable Rust, without libFuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

#[test]
fn every_corpus_file_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0usize;
    for (name, target) in edge_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "target {name} has no committed corpus in {}",
            dir.display()
        );
        for f in files {
            let data = std::fs::read(&f).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", f.display());
            replayed += 1;
        }
    }
    eprintln!(
        "replayed {replayed} corpus inputs over {} targets",
        edge_fuzz::TARGETS.len()
    );
}

#[test]
fn the_libfuzzer_harness_has_one_binary_per_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("libfuzzer");
    let manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/libfuzzer/Cargo.toml");
    for (name, _) in edge_fuzz::TARGETS {
        let src = root.join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(
            text.contains(&format!("edge_fuzz::run(\"{name}\"")),
            "{} does not run target {name}",
            src.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/libfuzzer/Cargo.toml has no [[bin]] {name}"
        );
    }
}
