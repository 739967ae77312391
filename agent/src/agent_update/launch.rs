//! The launcher: the first thing `edge-agent run` does in the binary systemd starts. It
//! counts the starts of a pending release, rolls it back after [`super::MAX_STARTS`], and
//! `exec`s the current fleet release (module doc of [`super`]).
//!
//! It runs before the configuration is loaded (a release may understand keys the base
//! binary does not), so it reads only `agent.data_dir` from the file, leniently, and
//! reports on standard error (the journal) because logging is not set up yet.

use std::path::{Path, PathBuf};

use super::{roll_back_locked, ReleaseStore, MAX_STARTS, RELEASE_ENV};

/// `agent.data_dir` of the configuration file, or its default; `None` when the file does
/// not parse as TOML (the normal load reports that).
pub fn data_dir_of(config: &Path) -> Option<PathBuf> {
    // A plain table, as `edge-agent check`'s shape pass reads it (one parser instance in
    // the binary); every key but `[agent] data_dir` is ignored.
    let text = std::fs::read_to_string(config).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    let dir = table
        .get("agent")
        .and_then(|a| a.get("data_dir"))
        .and_then(|d| d.as_str())
        .unwrap_or("/var/lib/edge-agent");
    Some(PathBuf::from(dir))
}

/// What the launcher decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Launch {
    /// Run this binary (no fleet release selected, or this is the selected one).
    Here,
    /// Execute this release binary (its release SHA-256).
    Exec(PathBuf, String),
}

fn stamp(p: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    let ns = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Some((m.len(), ns))
}

/// Decides (and records: start count, rollback, base stamp) what to run, given the binary
/// this process is (`exe`).
pub fn decide(store: &ReleaseStore, exe: &Path) -> Result<Launch, super::UpdateStoreError> {
    if !store.dir().join("state.json").exists() {
        return Ok(Launch::Here);
    }
    let base = stamp(exe);
    let chosen = store.update(|s| {
        if let (Some(seen), Some(now)) = (s.base, base) {
            if seen != now {
                eprintln!(
                    "edge-agent: {} was replaced (a package upgrade?): it runs instead of fleet release {}",
                    exe.display(),
                    s.current.as_ref().map(|c| c.version.as_str()).unwrap_or("-")
                );
                if s.pending.is_some() {
                    roll_back_locked(
                        s,
                        "the installed agent binary was replaced locally (package upgrade) before this release became healthy",
                    );
                }
                s.current = None;
                s.previous = None;
            }
        }
        s.base = base;
        if let Some(p) = s.pending.as_mut() {
            p.starts += 1;
            if p.starts > MAX_STARTS {
                let why = format!(
                    "started {} times without becoming healthy (it exited or was stopped each time before its health check passed); rolled back by the launcher",
                    MAX_STARTS
                );
                eprintln!("edge-agent: agent release {}: {why}", p.release.version);
                roll_back_locked(s, &why);
            }
        }
        s.current.clone()
    })?;
    Ok(match chosen {
        Some(c) => Launch::Exec(store.binary(&c.sha256), c.sha256),
        None => Launch::Here,
    })
}

/// Runs the launcher (module doc). Returns only when this binary is the one to run: either
/// no release is selected, this process is the selected release already, or executing the
/// selected one failed (then it was rolled back and the next choice tried).
pub fn launch(config: &Path) {
    if std::env::var_os(RELEASE_ENV).is_some() {
        return; // the selected release, executed by the launcher
    }
    let Some(data_dir) = data_dir_of(config) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let store = ReleaseStore::new(&data_dir);
    for _ in 0..3 {
        match decide(&store, &exe) {
            Ok(Launch::Here) => return,
            Ok(Launch::Exec(bin, sha)) => {
                use std::os::unix::process::CommandExt;
                let err = std::process::Command::new(&bin)
                    .args(std::env::args_os().skip(1))
                    .env(RELEASE_ENV, &sha)
                    .exec();
                // exec returns only on failure.
                let why = format!("cannot execute {}: {err}", bin.display());
                eprintln!("edge-agent: {why}");
                let rolled = store.update(|s| {
                    if s.pending.as_ref().is_some_and(|p| p.release.sha256 == sha) {
                        roll_back_locked(s, &why)
                    } else {
                        // A committed release that vanished: fall back one step.
                        s.current = s.previous.take();
                        true
                    }
                });
                if !matches!(rolled, Ok(true)) {
                    return;
                }
            }
            Err(e) => {
                eprintln!("edge-agent: agent releases: {e}; running the installed binary");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Installed, PendingRelease};
    use super::*;

    fn rel(n: u64) -> Installed {
        Installed {
            sha256: format!("{n:064x}"),
            version: format!("1.{n}.0"),
            version_number: n,
        }
    }

    #[test]
    fn a_pending_release_gets_three_starts_then_the_previous_one_runs() {
        let d = std::env::temp_dir().join(format!(
            "edge-agent-launch-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        let exe = d.join("base");
        std::fs::write(&exe, b"base binary").unwrap();
        let st = ReleaseStore::new(&d);
        assert_eq!(
            decide(&st, &exe).unwrap(),
            Launch::Here,
            "nothing installed"
        );
        st.update(|s| {
            s.current = Some(rel(3));
            s.previous = Some(rel(2));
            s.pending = Some(PendingRelease {
                release: rel(3),
                from_version: "1.2.0".into(),
                rollout: None,
                method: "full".into(),
                downloaded_bytes: 0,
                starts: 0,
            });
        })
        .unwrap();
        for start in 1..=MAX_STARTS {
            assert_eq!(
                decide(&st, &exe).unwrap(),
                Launch::Exec(st.binary(&rel(3).sha256), rel(3).sha256),
                "start {start}"
            );
        }
        assert_eq!(
            decide(&st, &exe).unwrap(),
            Launch::Exec(st.binary(&rel(2).sha256), rel(2).sha256),
            "rolled back after {MAX_STARTS} starts"
        );
        let s = st.state().unwrap();
        assert!(s.pending.is_none());
        assert!(s.owed[0].detail.contains("started 3 times"), "{:?}", s.owed);
        // The package replaced the base binary: it runs, fleet releases are dropped.
        std::fs::write(&exe, b"base binary, upgraded").unwrap();
        assert_eq!(decide(&st, &exe).unwrap(), Launch::Here);
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn data_dir_is_read_leniently() {
        let d = std::env::temp_dir().join(format!("edge-agent-launch-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("agent.toml");
        std::fs::write(
            &f,
            "[agent]\nid = \"a\"\ndata_dir = \"/x/y\"\nunknown_key = 1\n",
        )
        .unwrap();
        assert_eq!(data_dir_of(&f), Some(PathBuf::from("/x/y")));
        std::fs::write(&f, "[agent]\nid = \"a\"\n").unwrap();
        assert_eq!(data_dir_of(&f), Some(PathBuf::from("/var/lib/edge-agent")));
        std::fs::write(&f, "not toml [").unwrap();
        assert_eq!(data_dir_of(&f), None);
        std::fs::remove_dir_all(d).ok();
    }
}
