//! Remote configuration: the agent's configuration file as the fleet server sets it —
//! validated before anything is touched, switched atomically, health-checked, and rolled
//! back by itself when the new file does not work (also when the agent dies with it before it
//! can say so).
//!
//! Files, all beside the configuration file `C` (`--config`; for the Debian package
//! `/etc/edge-agent/agent.toml`, which the unit makes writable for the agent):
//!
//! | file | what it is |
//! |---|---|
//! | `C` | the configuration the agent runs; replaced only by rename |
//! | `C.last-good` | the configuration that last passed its health check (the rollback target) |
//! | `C.state` | JSON [`State`]: the pending apply, what the fleet applied last, reports owed to the server, hashes given up |
//!
//! The cycle (driven by the fleet sync, [`RemoteConfig::stage`]):
//!
//! 1. The server sends a [`DesiredConfig`] when the hash the device reports differs from it.
//! 2. Validation with exactly the checks of `edge-agent check` (the [`Check`] the run passes
//!    in: [`crate::check_config_text`]):
//!    errors (key and line) go back as a `refused` report; nothing is written.
//! 3. `C` is copied to `C.last-good` (when no apply is pending, the running file is good),
//!    the new text is written to `C.tmp`, synced, renamed over `C`; `C.state` records the
//!    pending apply. Then the agent restarts: in the process (pipeline, outputs, outbox and
//!    sync stop in order and start again from the new file: [`Restart::InProcess`]), or,
//!    when `[log]` changed (the subscriber is process-wide), by exiting with
//!    [`RESTART_EXIT_CODE`] for systemd to start it again ([`Restart::Process`]).
//! 4. Every start with a pending apply counts ([`RemoteConfig::before_start`]); past
//!    [`MAX_STARTS`] (the agent keeps dying with it) the last good file is restored before
//!    the configuration is even loaded.
//! 5. The health check (`crate::config_health`) runs after each start with a pending apply: commit when
//!    every source is connected, the pipeline moves, every MQTT output is connected and a
//!    fleet check-in succeeded, all at once, within `[sync] config_health_timeout`;
//!    otherwise roll back (restore `C.last-good`, restart again) and report why.
//!
//! Secrets never travel: a fleet configuration names files or environment variables that
//! live on the device (the server refuses inline secrets before storing anything).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use edge_wire::sync::{ConfigOutcome, ConfigReport, ConfigStatus, DesiredConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Exit code of `edge-agent run` when it stops for systemd to start it again (a
/// configuration change that cannot be applied in the process). The unit lists it in
/// `RestartForceExitStatus=`.
pub const RESTART_EXIT_CODE: u8 = 75;

/// Starts with a pending configuration after which the agent gives up on it: the first
/// start, and two more (systemd restarts after a crash or a failed start).
pub const MAX_STARTS: u32 = 3;

/// How the agent restarts to pick up a new configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Pipeline, outputs, outbox and fleet sync stop in order and start again from the
    /// file; the process (and its PID, its log subscriber) stays.
    InProcess,
    /// The process exits with [`RESTART_EXIT_CODE`]; systemd starts it again.
    Process,
}

/// A request to end the current run and start again; shared by whoever may ask (the sync
/// task, the health check) and the run loop in `main`.
#[derive(Debug, Clone)]
pub struct RestartRequest {
    asked: Arc<Mutex<Option<Restart>>>,
    stop: CancellationToken,
}

impl RestartRequest {
    /// A request that ends the run by cancelling `stop` (the run's token).
    pub fn new(stop: CancellationToken) -> Self {
        RestartRequest {
            asked: Arc::default(),
            stop,
        }
    }

    /// Asks for a restart; a process restart wins over an in-process one.
    pub fn request(&self, r: Restart) {
        let mut a = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if *a != Some(Restart::Process) {
            *a = Some(r);
        }
        drop(a);
        self.stop.cancel();
    }

    /// What was asked, if anything.
    pub fn requested(&self) -> Option<Restart> {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A configuration applied but not yet proven healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The fleet configuration's name.
    pub name: String,
    /// Its version number.
    pub version_number: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The rollout that asked for it.
    pub rollout: Option<String>,
    /// How it was applied (`in_process` or `restart`).
    pub applied_by: String,
    /// Runs started with it so far.
    pub starts: u32,
}

/// What the fleet applied last and proved healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The fleet configuration's name.
    pub name: String,
    /// Its version number.
    pub version_number: u64,
    /// SHA-256 of the file as written.
    pub sha256: String,
}

/// `C.state`: everything remote configuration remembers across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The apply being health-checked.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The last fleet configuration that passed its health check.
    #[serde(default)]
    pub applied: Option<Applied>,
    /// Reports not yet acknowledged by the server, oldest first.
    #[serde(default)]
    pub owed: Vec<ConfigReport>,
    /// Hashes refused or rolled back here: not tried again (the server shows the report;
    /// an operator pushes a new version).
    #[serde(default)]
    pub given_up: Vec<String>,
}

/// Why remote configuration could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    /// A file beside the configuration could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// `C.state` is not what this agent writes.
    #[error("{path}: not a remote configuration state file: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What the JSON parser said.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteConfigError + '_ {
    move |source| RemoteConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Validates a configuration text the fleet sent, with the checks of `edge-agent check`,
/// and says how the agent must restart to apply it (in the process, or a new process when
/// `[log]` changed); or every problem, with key and line. Built by `lib::run` (this module
/// sits below the configuration code and cannot call it).
pub type Check = dyn Fn(&str) -> Result<Restart, Vec<String>> + Send + Sync;

/// What [`RemoteConfig::stage`] did with a desired configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Staged {
    /// Nothing to do (already running, being checked, or given up).
    Nothing,
    /// Refused; the report is owed to the server.
    Refused,
    /// Written; the agent must restart this way.
    Restart(Restart),
}

/// The configuration file and its companions; one per agent, shared by the sync task and
/// the health check (a lock keeps their read-modify-writes of `C.state` apart).
#[derive(Debug)]
pub struct RemoteConfig {
    path: PathBuf,
    lock: Mutex<()>,
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `bytes` to `path` atomically: a synced temporary file renamed over it, then the
/// directory synced, so a power cut leaves the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RemoteConfigError> {
    use std::io::Write;
    let tmp = with_suffix(path, ".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl RemoteConfig {
    /// Remote configuration of the file at `path`.
    pub fn new(path: &Path) -> Self {
        RemoteConfig {
            path: path.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `C.last-good`.
    pub fn last_good_path(&self) -> PathBuf {
        with_suffix(&self.path, ".last-good")
    }

    fn state_path(&self) -> PathBuf {
        with_suffix(&self.path, ".state")
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state file (empty when there is none yet).
    pub fn state(&self) -> Result<State, RemoteConfigError> {
        let p = self.state_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RemoteConfigError::State {
                path: p,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn save(&self, s: &State) -> Result<(), RemoteConfigError> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| RemoteConfigError::State {
            path: self.state_path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.state_path(), &bytes)
    }

    /// Read-modify-write of the state under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R, RemoteConfigError> {
        let _g = self.guard();
        let mut s = self.state()?;
        let r = f(&mut s);
        self.save(&s)?;
        Ok(r)
    }

    /// What the device reports at check-in: the hash of the file it runs, the fleet
    /// configuration it came from (when the file is still that one), what is pending.
    pub fn status(&self, running_sha256: &str) -> ConfigStatus {
        let s = self.state().unwrap_or_default();
        ConfigStatus {
            sha256: running_sha256.to_string(),
            applied: s
                .applied
                .filter(|a| a.sha256 == running_sha256)
                .map(|a| (a.name, a.version_number)),
            pending: s.pending.map(|p| p.sha256),
        }
    }

    /// Called before each run loads the file. Counts the start of a pending apply; past
    /// [`MAX_STARTS`] restores the last good file and owes a `rolled_back` report.
    /// Returns the pending apply that this run must health-check, if any.
    pub fn before_start(&self) -> Result<Option<Pending>, RemoteConfigError> {
        let _g = self.guard();
        let mut s = self.state()?;
        let Some(mut p) = s.pending.take() else {
            return Ok(None);
        };
        p.starts += 1;
        if p.starts > MAX_STARTS {
            let why = format!(
                "the agent did not come up healthy in {MAX_STARTS} starts with it (it exited or crashed before its health check passed)"
            );
            self.restore_locked(&mut s, &p, &why)?;
            return Ok(None);
        }
        s.pending = Some(p.clone());
        self.save(&s)?;
        Ok(Some(p))
    }

    /// Gives up a pending apply at once (its file could not be loaded or run): the last
    /// good file is restored and the report owed. The caller restarts.
    pub fn roll_back(&self, why: &str) -> Result<bool, RemoteConfigError> {
        let _g = self.guard();
        let mut s = self.state()?;
        let Some(p) = s.pending.take() else {
            return Ok(false);
        };
        self.restore_locked(&mut s, &p, why)?;
        Ok(true)
    }

    fn restore_locked(
        &self,
        s: &mut State,
        p: &Pending,
        why: &str,
    ) -> Result<(), RemoteConfigError> {
        let good = self.last_good_path();
        let bytes = std::fs::read(&good).map_err(io(&good))?;
        write_atomic(&self.path, &bytes)?;
        tracing::error!(config = %self.path.display(), name = %p.name, version_number = p.version_number,
            "fleet configuration rolled back to the last good file: {why}");
        s.pending = None;
        if !s.given_up.contains(&p.sha256) {
            s.given_up.push(p.sha256.clone());
        }
        s.owed.push(ConfigReport {
            name: p.name.clone(),
            version_number: p.version_number,
            sha256: p.sha256.clone(),
            rollout: p.rollout.clone(),
            outcome: ConfigOutcome::RolledBack,
            applied_by: p.applied_by.clone(),
            detail: why.to_string(),
            errors: Vec::new(),
        });
        self.save(s)
    }

    /// The health check passed: the file becomes the last good one, the report is owed.
    pub fn commit(&self, p: &Pending, detail: &str) -> Result<(), RemoteConfigError> {
        let _g = self.guard();
        let mut s = self.state()?;
        if s.pending.as_ref().map(|x| &x.sha256) != Some(&p.sha256) {
            return Ok(());
        }
        let bytes = std::fs::read(&self.path).map_err(io(&self.path))?;
        write_atomic(&self.last_good_path(), &bytes)?;
        s.pending = None;
        s.applied = Some(Applied {
            name: p.name.clone(),
            version_number: p.version_number,
            sha256: p.sha256.clone(),
        });
        s.owed.push(ConfigReport {
            name: p.name.clone(),
            version_number: p.version_number,
            sha256: p.sha256.clone(),
            rollout: p.rollout.clone(),
            outcome: ConfigOutcome::Applied,
            applied_by: p.applied_by.clone(),
            detail: detail.to_string(),
            errors: Vec::new(),
        });
        tracing::info!(config = %self.path.display(), name = %p.name, version_number = p.version_number,
            "fleet configuration applied and healthy: {detail}");
        self.save(&s)
    }

    /// Takes a desired configuration from the server: validates it with `check` (the checks
    /// of `edge-agent check`) and, when it passes, switches the file and says how to
    /// restart. `running` is the text of the file the agent runs now.
    pub fn stage(
        &self,
        d: &DesiredConfig,
        running: &str,
        check: &Check,
    ) -> Result<Staged, RemoteConfigError> {
        let _g = self.guard();
        let mut s = self.state()?;
        let sha = edge_wire::bundle::file::sha256_hex(d.toml.as_bytes());
        if s.pending.is_some()
            || s.given_up.contains(&d.sha256)
            || sha == edge_wire::bundle::file::sha256_hex(running.as_bytes())
        {
            return Ok(Staged::Nothing);
        }
        let refuse = |s: &mut State, detail: String, errors: Vec<String>| {
            tracing::error!(config = %self.path.display(), name = %d.name, version_number = d.version_number,
                "fleet configuration refused, nothing applied: {detail}{}",
                errors.iter().map(|e| format!("\n  {e}")).collect::<String>());
            s.given_up.push(d.sha256.clone());
            s.owed.push(ConfigReport {
                name: d.name.clone(),
                version_number: d.version_number,
                sha256: d.sha256.clone(),
                rollout: d.rollout.clone(),
                outcome: ConfigOutcome::Refused,
                applied_by: "none".into(),
                detail,
                errors,
            });
        };
        if sha != d.sha256 {
            refuse(
                &mut s,
                format!(
                    "the text hashes to {sha}, not the {} the server named",
                    d.sha256
                ),
                Vec::new(),
            );
            self.save(&s)?;
            return Ok(Staged::Refused);
        }
        let restart = match check(&d.toml) {
            Ok(r) => r,
            Err(errors) => {
                refuse(
                    &mut s,
                    format!("{} validation error(s)", errors.len()),
                    errors,
                );
                self.save(&s)?;
                return Ok(Staged::Refused);
            }
        };
        // The running file is good (nothing is pending): it is what a rollback restores.
        write_atomic(&self.last_good_path(), running.as_bytes())?;
        write_atomic(&self.path, d.toml.as_bytes())?;
        s.pending = Some(Pending {
            name: d.name.clone(),
            version_number: d.version_number,
            sha256: d.sha256.clone(),
            rollout: d.rollout.clone(),
            applied_by: match restart {
                Restart::InProcess => "in_process",
                Restart::Process => "restart",
            }
            .into(),
            starts: 0,
        });
        self.save(&s)?;
        tracing::info!(config = %self.path.display(), name = %d.name, version_number = d.version_number,
            restart = ?restart, "fleet configuration validated and written; restarting to apply it");
        Ok(Staged::Restart(restart))
    }

    /// Reports owed to the server, oldest first.
    pub fn owed(&self) -> Vec<ConfigReport> {
        self.state().map(|s| s.owed).unwrap_or_default()
    }

    /// The server acknowledged the owed report `r`.
    pub fn acknowledged(&self, r: &ConfigReport) -> Result<(), RemoteConfigError> {
        self.update(|s| {
            if let Some(i) = s.owed.iter().position(|x| x == r) {
                s.owed.remove(i);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[agent]\nid = \"gw1\"\n\n[[sources.simulated]]\nname = \"plant\"\n";

    /// The checks of `edge-agent check`, and a process restart when `[log]` changed.
    fn check(path: &Path, running: &str) -> Box<Check> {
        let (path, running) = (path.to_path_buf(), running.to_string());
        Box::new(move |text| {
            let new = crate::check_config_text(text, &path)?;
            let old = crate::config::AgentConfig::from_toml(&running, &path).ok();
            Ok(match old {
                Some(o) if o.log == new.log => Restart::InProcess,
                _ => Restart::Process,
            })
        })
    }

    /// A fresh directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("remote-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn desired(text: &str, version: u64) -> DesiredConfig {
        DesiredConfig {
            name: "line".into(),
            version_number: version,
            sha256: edge_wire::bundle::file::sha256_hex(text.as_bytes()),
            toml: text.into(),
            rollout: Some("r1".into()),
        }
    }

    #[test]
    fn refuses_an_unknown_key_and_touches_nothing() {
        let dir = scratch("refused");
        let path = dir.join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let rc = RemoteConfig::new(&path);
        let bad = format!("{GOOD}\n[outbox]\ncommit_intreval = \"1s\"\n");
        assert_eq!(
            rc.stage(&desired(&bad, 2), GOOD, &*check(&path, GOOD))
                .unwrap(),
            Staged::Refused
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), GOOD);
        let owed = rc.owed();
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].outcome, ConfigOutcome::Refused);
        let all = owed[0].errors.join("\n");
        assert!(all.contains("commit_intreval"), "{all}");
        assert!(all.contains("line"), "{all}");
        // Given up: the same text is not tried again.
        assert_eq!(
            rc.stage(&desired(&bad, 2), GOOD, &*check(&path, GOOD))
                .unwrap(),
            Staged::Nothing
        );
        rc.acknowledged(&owed[0]).unwrap();
        assert!(rc.owed().is_empty());
    }

    #[test]
    fn applies_counts_starts_and_rolls_back_after_too_many() {
        let dir = scratch("starts");
        let path = dir.join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let rc = RemoteConfig::new(&path);
        let new = GOOD.replace("plant", "plant2");
        assert_eq!(
            rc.stage(&desired(&new, 3), GOOD, &*check(&path, GOOD))
                .unwrap(),
            Staged::Restart(Restart::InProcess)
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
        assert_eq!(std::fs::read_to_string(rc.last_good_path()).unwrap(), GOOD);
        for n in 1..=MAX_STARTS {
            assert_eq!(rc.before_start().unwrap().unwrap().starts, n);
        }
        assert_eq!(rc.before_start().unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), GOOD);
        let owed = rc.owed();
        assert_eq!(owed[0].outcome, ConfigOutcome::RolledBack);
        assert!(owed[0].detail.contains("3 starts"), "{}", owed[0].detail);
        assert_eq!(
            rc.stage(&desired(&new, 3), GOOD, &*check(&path, GOOD))
                .unwrap(),
            Staged::Nothing
        );
    }

    #[test]
    fn commit_makes_it_last_good_and_status_names_it() {
        let dir = scratch("commit");
        let path = dir.join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let rc = RemoteConfig::new(&path);
        let new = format!("{GOOD}\n[log]\nlevel = \"debug\"\n");
        assert_eq!(
            rc.stage(&desired(&new, 4), GOOD, &*check(&path, GOOD))
                .unwrap(),
            Staged::Restart(Restart::Process)
        );
        let p = rc.before_start().unwrap().unwrap();
        let sha = edge_wire::bundle::file::sha256_hex(new.as_bytes());
        assert_eq!(rc.status(&sha).pending.as_deref(), Some(sha.as_str()));
        rc.commit(&p, "healthy").unwrap();
        assert_eq!(std::fs::read_to_string(rc.last_good_path()).unwrap(), new);
        let st = rc.status(&sha);
        assert_eq!(st.applied, Some(("line".into(), 4)));
        assert_eq!(st.pending, None);
        // A local edit shows: the hash no longer names the fleet configuration.
        assert_eq!(rc.status("other").applied, None);
        assert_eq!(rc.owed()[0].outcome, ConfigOutcome::Applied);
    }

    #[test]
    fn a_hash_that_does_not_match_is_refused() {
        let dir = scratch("hash");
        let path = dir.join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let rc = RemoteConfig::new(&path);
        let mut d = desired(&GOOD.replace("plant", "p3"), 5);
        d.sha256 = "00".repeat(32);
        assert_eq!(
            rc.stage(&d, GOOD, &*check(&path, GOOD)).unwrap(),
            Staged::Refused
        );
        assert!(rc.owed()[0].detail.contains("hashes to"));
    }
}
