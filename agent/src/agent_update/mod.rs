//! Agent software updates from the fleet: signed releases of the `edge-agent` binary
//! installed side by side, switched atomically, health-checked, rolled back.
//!
//! The binary systemd starts (`/usr/bin/edge-agent` from the Debian package, the *base*) is
//! never replaced. Fleet releases live under `<data_dir>/agent/`:
//!
//! ```text
//! releases/<release sha256>/edge-agent   the binary (0755)
//! releases/<release sha256>/seal.json    manifest + signature: rebuilds the release file
//! state.json                             which release runs, which ran before, the one
//!                                        being health-checked, the floor, reports owed
//! ```
//!
//! - **Install** ([`crate::sync::agent_release`], in the sync task): download (delta from the running release
//!   file, or full), verify (signature against `[sync.agent_update] trusted_keys`, target,
//!   floor), write the binary beside the others, run its `--version` (it must start on this
//!   machine and say the version its manifest names), then switch: one atomic rewrite of
//!   `state.json` makes it current (the running one becomes previous) and pending. The
//!   agent exits with [`crate::remote_config::RESTART_EXIT_CODE`] for systemd to start it.
//! - **Launch** ([`launch`], first thing `edge-agent run` does in the base binary): a
//!   pending release counts one more start; past [`MAX_STARTS`] starts without becoming
//!   healthy it is rolled back (current = the one before) — this catches a binary that
//!   dies before it can report anything. Then the current release is `exec`ed (same PID,
//!   so systemd's notify and watchdog follow it), with [`RELEASE_ENV`] naming it.
//! - **Health** (in the new binary, [`crate::config_health`]'s criteria within
//!   `[sync.agent_update] health_timeout`): healthy → committed (the floor rises to its
//!   number, report `applied`); not healthy in time → rolled back and the process exits
//!   for systemd to start the previous one; the report (`rolled_back`, with the unmet
//!   criteria or the start count) is sent by whichever binary runs next.
//! - A base binary replaced under it (an `apt upgrade`) wins: the launcher notices the
//!   change of the file it runs as and stops selecting fleet releases.
//!
//! Architecture invariant: `state.json` is the only switch, and it is only ever replaced by
//! rename; a release binary is only executed after [`edge_wire::release::Release`] verified
//! it and its own `--version` ran.

pub mod launch;

use std::path::{Path, PathBuf};

use edge_wire::sync::{AgentReport, AgentStatus, UpdateOutcome};
use serde::{Deserialize, Serialize};

pub use launch::launch;

/// The Rust target triple this binary was built for.
pub const TARGET: &str = env!("EDGE_TARGET");
/// Starts a pending release gets before the launcher rolls it back.
pub const MAX_STARTS: u32 = 3;
/// Set by the launcher for the release it executes: the release file's SHA-256.
pub const RELEASE_ENV: &str = "EDGE_AGENT_RELEASE";

/// One release on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// SHA-256 of the release file (its directory name).
    pub sha256: String,
    /// Its version string.
    pub version: String,
    /// Its release number.
    pub version_number: u64,
}

/// A release switched to but not yet healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRelease {
    /// The release.
    pub release: Installed,
    /// The version that ran before it.
    pub from_version: String,
    /// The rollout that asked.
    pub rollout: Option<String>,
    /// How it travelled.
    pub method: String,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Times the launcher started it.
    pub starts: u32,
}

/// `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateState {
    /// The release the launcher runs (`None`: the base binary).
    pub current: Option<Installed>,
    /// The one before (kept on disk for a rollback).
    pub previous: Option<Installed>,
    /// Switched to, being health-checked.
    pub pending: Option<PendingRelease>,
    /// The highest release number committed: lower ones are refused.
    pub floor: u64,
    /// The base binary as the launcher last saw it (size, modification time in ns since
    /// the epoch).
    pub base: Option<(u64, u64)>,
    /// Release SHA-256s that failed here: not tried again until a `resync` command.
    pub given_up: Vec<String>,
    /// Reports not yet taken by the server, oldest first.
    pub owed: Vec<AgentReport>,
}

/// Why the release store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateStoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// `state.json` does not parse.
    #[error("{path}: {msg}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        msg: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateStoreError + '_ {
    move |source| UpdateStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The releases under `<data_dir>/agent/` and their state (module doc).
#[derive(Debug)]
pub struct ReleaseStore {
    dir: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl ReleaseStore {
    /// The store of an agent whose `agent.data_dir` is `data_dir`; nothing is read yet.
    pub fn new(data_dir: &Path) -> ReleaseStore {
        ReleaseStore {
            dir: data_dir.join("agent"),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// `<data_dir>/agent`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The directory of one release.
    pub fn release_dir(&self, sha256: &str) -> PathBuf {
        self.dir.join("releases").join(sha256)
    }

    /// The binary of one release.
    pub fn binary(&self, sha256: &str) -> PathBuf {
        self.release_dir(sha256).join("edge-agent")
    }

    /// The seal of one release.
    pub fn seal(&self, sha256: &str) -> PathBuf {
        self.release_dir(sha256).join("seal.json")
    }

    /// The state (default when no release was ever installed).
    pub fn state(&self) -> Result<UpdateState, UpdateStoreError> {
        let p = self.state_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| UpdateStoreError::Corrupt {
                path: p,
                msg: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateState::default()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Changes the state under the store's lock and writes it atomically (the switch).
    pub fn update<R>(&self, f: impl FnOnce(&mut UpdateState) -> R) -> Result<R, UpdateStoreError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = self.state()?;
        let r = f(&mut s);
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let bytes = serde_json::to_vec_pretty(&s).unwrap_or_default();
        let p = self.state_path();
        crate::remote_config::write_atomic(&p, &bytes).map_err(|e| UpdateStoreError::Io {
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(r)
    }

    /// The release this process runs (from [`RELEASE_ENV`]), if it is one.
    pub fn running(&self, s: &UpdateState) -> Option<Installed> {
        let sha = std::env::var(RELEASE_ENV).ok()?;
        [&s.current, &s.previous]
            .into_iter()
            .flatten()
            .chain(s.pending.as_ref().map(|p| &p.release))
            .find(|i| i.sha256 == sha)
            .cloned()
    }

    /// What a check-in reports.
    pub fn status(&self) -> AgentStatus {
        let s = self.state().unwrap_or_default();
        AgentStatus {
            version: crate::version().to_string(),
            target: TARGET.to_string(),
            release: self.running(&s).map(|i| (i.version_number, i.sha256)),
            pending: s.pending.map(|p| p.release.sha256),
        }
    }

    /// Reports owed to the server, oldest first.
    pub fn owed(&self) -> Vec<AgentReport> {
        self.state().map(|s| s.owed).unwrap_or_default()
    }

    /// The server took `r`.
    pub fn acknowledged(&self, r: &AgentReport) -> Result<(), UpdateStoreError> {
        self.update(|s| s.owed.retain(|o| o != r))
    }

    /// The pending release passed its health check: it stays, the floor rises, the
    /// releases no longer current or previous are deleted.
    pub fn commit(&self, sha256: &str, detail: &str) -> Result<bool, UpdateStoreError> {
        let done = self.update(|s| {
            let Some(p) = s.pending.take_if(|p| p.release.sha256 == sha256) else {
                return false;
            };
            s.floor = s.floor.max(p.release.version_number);
            s.owed
                .push(report(&p, UpdateOutcome::Applied, detail.into()));
            true
        })?;
        if done {
            tracing::info!(release = %sha256, "agent release committed: {detail}");
            self.prune();
        }
        Ok(done)
    }

    /// Rolls the pending release back to the one before it (the base binary when there was
    /// none): true when there was one to roll back.
    pub fn roll_back(&self, why: &str) -> Result<bool, UpdateStoreError> {
        self.update(|s| roll_back_locked(s, why))
    }

    /// Deletes release directories that are neither current, previous nor pending.
    pub fn prune(&self) {
        let Ok(s) = self.state() else { return };
        let keep: Vec<&str> = [&s.current, &s.previous]
            .into_iter()
            .flatten()
            .chain(s.pending.as_ref().map(|p| &p.release))
            .map(|i| i.sha256.as_str())
            .collect();
        let Ok(entries) = std::fs::read_dir(self.dir.join("releases")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                if let Err(err) = remove_release_dir(&e.path()) {
                    tracing::warn!(
                        "agent releases: cannot remove {}: {err}",
                        e.path().display()
                    );
                }
            }
        }
    }
}

/// Removes a release directory: its files (a binary, a seal, maybe a temporary file), then
/// the directory. Flat by construction, so no recursive walk.
pub fn remove_release_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        std::fs::remove_file(e?.path())?;
    }
    std::fs::remove_dir(dir)
}

/// The report of a pending release.
fn report(p: &PendingRelease, outcome: UpdateOutcome, detail: String) -> AgentReport {
    AgentReport {
        version: p.release.version.clone(),
        version_number: p.release.version_number,
        sha256: p.release.sha256.clone(),
        from_version: p.from_version.clone(),
        rollout: p.rollout.clone(),
        outcome,
        method: p.method.clone(),
        downloaded_bytes: p.downloaded_bytes,
        detail,
    }
}

/// Rolls back the pending release in `s` (see [`ReleaseStore::roll_back`]).
fn roll_back_locked(s: &mut UpdateState, why: &str) -> bool {
    let Some(p) = s.pending.take() else {
        return false;
    };
    if s.current.as_ref() == Some(&p.release) {
        s.current = s.previous.take();
    }
    s.given_up.push(p.release.sha256.clone());
    s.owed
        .push(report(&p, UpdateOutcome::RolledBack, why.into()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(n: u64) -> Installed {
        Installed {
            sha256: format!("{n:064x}"),
            version: format!("1.{n}.0"),
            version_number: n,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "edge-agent-update-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pending(n: u64) -> PendingRelease {
        PendingRelease {
            release: rel(n),
            from_version: "1.0.0".into(),
            rollout: Some("r1".into()),
            method: "full".into(),
            downloaded_bytes: 10,
            starts: 0,
        }
    }

    #[test]
    fn commit_raises_the_floor_and_reports_once() {
        let d = scratch("commit");
        let st = ReleaseStore::new(&d);
        st.update(|s| {
            s.current = Some(rel(2));
            s.previous = Some(rel(1));
            s.pending = Some(pending(2));
        })
        .unwrap();
        assert!(
            !st.commit(&rel(3).sha256, "healthy").unwrap(),
            "not the pending one"
        );
        assert!(st.commit(&rel(2).sha256, "healthy").unwrap());
        let s = st.state().unwrap();
        assert_eq!(s.floor, 2);
        assert!(s.pending.is_none());
        assert_eq!(s.current, Some(rel(2)));
        assert_eq!(s.owed.len(), 1);
        assert_eq!(s.owed[0].outcome, UpdateOutcome::Applied);
        st.acknowledged(&s.owed[0]).unwrap();
        assert!(st.owed().is_empty());
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn roll_back_restores_the_previous_and_gives_up_on_the_release() {
        let d = scratch("rollback");
        let st = ReleaseStore::new(&d);
        st.update(|s| {
            s.current = Some(rel(3));
            s.previous = Some(rel(2));
            s.pending = Some(pending(3));
        })
        .unwrap();
        assert!(st.roll_back("exited 3 times").unwrap());
        assert!(!st.roll_back("again").unwrap(), "nothing pending any more");
        let s = st.state().unwrap();
        assert_eq!(s.current, Some(rel(2)));
        assert_eq!(s.given_up, vec![rel(3).sha256]);
        assert_eq!(s.owed[0].outcome, UpdateOutcome::RolledBack);
        assert_eq!(s.owed[0].detail, "exited 3 times");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_corrupt_state_is_an_error_naming_the_file() {
        let d = scratch("corrupt");
        let st = ReleaseStore::new(&d);
        std::fs::create_dir_all(st.dir()).unwrap();
        std::fs::write(st.dir().join("state.json"), b"{not json").unwrap();
        let e = st.state().unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }
}
