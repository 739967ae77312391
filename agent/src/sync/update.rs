//! Model updates from the fleet server: download (resumable), rebuild from a delta, verify,
//! swap atomically, watch the model stage load it and serve healthy windows, and restore the
//! previous bundle when it does not.
//!
//! Architecture invariants:
//! - the bundle file a model stage reads is only ever replaced by `rename` of a complete,
//!   verified file (hash, signature against the pinned keys, version floor), so no half-applied
//!   model ever runs;
//! - the previous bundle is kept beside it (`<bundle>.prev`) until the new one is healthy;
//! - the version floor is lowered only to restore that exact previous file
//!   ([`FloorStore::restore`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use edge_wire::bundle::file as bundle_file;
use edge_wire::sync::{DesiredBundle, UpdateOutcome, UpdateReport};

use super::client::FleetClient;
use super::config::HealthConfig;
use crate::models::floor::FloorStore;
use crate::models::{ModelControl, ModelHealth};

/// One `[[models]]` entry as the updater sees it.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    /// The `[[models]]` name.
    pub name: String,
    /// The bundle file its stage serves.
    pub bundle_path: PathBuf,
    /// Reload requests and the health watch of its running stage.
    pub control: ModelControl,
}

/// What came of one update attempt: reported to the fleet server.
#[derive(Debug)]
struct Attempt {
    outcome: UpdateOutcome,
    detail: String,
    /// How the bundle travelled: a delta method, `full`, `local` (the kept previous file) or
    /// `none`.
    method: String,
    downloaded_bytes: u64,
}

/// What a model's bundle file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleIdentity {
    /// The manifest's model name.
    pub name: String,
    /// The manifest's semantic version.
    pub version: String,
    /// The manifest's version number.
    pub version_number: u64,
    /// SHA-256 of the whole bundle file (hex), as the server names artifacts.
    pub sha256: String,
}

/// The identity and bytes of the bundle file at `path`; `None` if it cannot be read or does not
/// parse as a bundle (the signature is not checked here).
pub fn identify(path: &Path) -> Option<(BundleIdentity, Vec<u8>)> {
    let bytes = std::fs::read(path).ok()?;
    let u = bundle_file::parse(&bytes).ok()?;
    Some((
        BundleIdentity {
            name: u.manifest.name,
            version: u.manifest.version,
            version_number: u.manifest.version_number,
            sha256: u.file_sha256,
        },
        bytes,
    ))
}

fn prev_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

/// Writes `bytes` beside `dest` and renames it over `dest` (fsync file and folder).
fn replace_file(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dest)?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Applies model updates (module doc): download, rebuild, verify, swap, watch health, restore.
/// Owned by the sync task.
pub struct Updater {
    /// Keys an update must be signed with (the agent's `bundles.trusted_keys`).
    pub trusted: Vec<VerifyingKey>,
    /// This device's version floors; an update below its model's floor is refused.
    pub floors: FloorStore,
    /// The models the server may update.
    pub models: Vec<ModelHandle>,
    /// Where artifacts are downloaded (`<data_dir>/sync/downloads`), named by their SHA-256.
    pub downloads: PathBuf,
    /// When a swapped-in bundle counts as healthy.
    pub health: HealthConfig,
    /// Download rate cap, bytes per second (0: none).
    pub max_bytes_per_s: u64,
    /// Targets that failed here: not tried again (the server sees the report).
    pub given_up: HashMap<String, String>,
    /// Bytes received per artifact over every (resumed) attempt.
    pub downloaded: HashMap<String, u64>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("models", &self.models.len())
            .finish()
    }
}

enum Install {
    Healthy(String),
    RolledBack(String),
}

impl Updater {
    /// Works through the server's wishes; returns the reports to send.
    pub async fn apply_all(
        &mut self,
        client: &mut FleetClient,
        desired: &[DesiredBundle],
    ) -> Vec<UpdateReport> {
        let mut reports = Vec::new();
        for d in desired {
            if self.given_up.contains_key(&d.sha256) {
                continue;
            }
            let targets: Vec<(ModelHandle, BundleIdentity, Vec<u8>)> = self
                .models
                .iter()
                .filter_map(|m| identify(&m.bundle_path).map(|(i, b)| (m.clone(), i, b)))
                .filter(|(_, i, _)| i.name == d.bundle && i.sha256 != d.sha256)
                .collect();
            if targets.is_empty() {
                continue;
            }
            for (model, current, current_bytes) in targets {
                let r = self
                    .update_one(client, d, &model, &current, &current_bytes)
                    .await;
                let report = match r {
                    Ok(a) => UpdateReport {
                        model: model.name.clone(),
                        bundle: d.bundle.clone(),
                        from_version_number: current.version_number,
                        to_version_number: d.version_number,
                        rollout: d.rollout.clone(),
                        outcome: a.outcome,
                        method: a.method,
                        downloaded_bytes: a.downloaded_bytes,
                        detail: a.detail,
                    },
                    Err(Retry(e)) => {
                        // Network trouble: the partial download stays; next check-in resumes.
                        tracing::warn!(model = %model.name, bundle = %d.bundle, "update paused: {e}");
                        continue;
                    }
                };
                match report.outcome {
                    UpdateOutcome::Applied => {
                        tracing::info!(model = %model.name, bundle = %d.bundle,
                        from = current.version_number, to = d.version_number, method = %report.method,
                        bytes = report.downloaded_bytes, "model updated: {}", report.detail)
                    }
                    _ => {
                        tracing::error!(model = %model.name, bundle = %d.bundle, to = d.version_number,
                            outcome = ?report.outcome, "model update failed: {}", report.detail);
                        self.given_up
                            .insert(d.sha256.clone(), report.detail.clone());
                    }
                }
                reports.push(report);
            }
        }
        reports
    }

    async fn update_one(
        &mut self,
        client: &mut FleetClient,
        d: &DesiredBundle,
        model: &ModelHandle,
        current: &BundleIdentity,
        current_bytes: &[u8],
    ) -> Result<Attempt, Retry> {
        let attempt = |outcome, detail: String, method: &str, downloaded_bytes| Attempt {
            outcome,
            detail,
            method: method.to_string(),
            downloaded_bytes,
        };
        let failed = |detail: String, method: &str, bytes: u64| {
            Ok(attempt(UpdateOutcome::Failed, detail, method, bytes))
        };
        let floor = self
            .floors
            .floor(&d.bundle)
            .map_err(|e| Retry(format!("version floor: {e}")))?;
        // A fleet rollback to the bundle this device ran just before: allowed below the floor
        // only for that exact file.
        if d.version_number < floor {
            let prev = prev_path(&model.bundle_path);
            return match identify(&prev) {
                Some((p, bytes)) if p.sha256 == d.sha256 => {
                    match self.install(model, current, current_bytes, &bytes, &p, true).await {
                        Install::Healthy(detail) => Ok(attempt(
                            UpdateOutcome::Applied,
                            format!("restored the previous bundle: {detail}"),
                            "local",
                            0,
                        )),
                        Install::RolledBack(detail) => {
                            Ok(attempt(UpdateOutcome::RolledBack, detail, "local", 0))
                        }
                    }
                }
                _ => failed(
                    format!(
                        "version number {} is below this device's floor {floor}: refusing a downgrade",
                        d.version_number
                    ),
                    "none",
                    0,
                ),
            };
        }
        // Download (resuming a partial file), then check what arrived.
        let art = &d.artifact;
        let (artifact, got) = fetch(
            client,
            &self.downloads,
            art,
            self.max_bytes_per_s,
            &mut self.downloaded,
        )
        .await?;
        let new_bytes = if art.method == "full" {
            artifact
        } else {
            match edge_wire::delta::apply(current_bytes, &artifact) {
                Ok(b) => b,
                Err(e) => {
                    return failed(
                        format!("delta ({}) does not apply: {e}", art.method),
                        &art.method,
                        got,
                    );
                }
            }
        };
        // Verify before anything touches the running model.
        let verified = match bundle_file::Bundle::from_bytes(&new_bytes, &self.trusted, floor) {
            Ok(b) => b,
            Err(e) => return failed(format!("bundle refused: {e}"), &art.method, got),
        };
        if verified.manifest().name != d.bundle
            || verified.manifest().version_number != d.version_number
            || verified.file_sha256() != d.sha256
        {
            return failed(
                format!(
                    "bundle is {} #{} ({}), not the announced {} #{} ({})",
                    verified.manifest().name,
                    verified.manifest().version_number,
                    verified.file_sha256(),
                    d.bundle,
                    d.version_number,
                    d.sha256
                ),
                &art.method,
                got,
            );
        }
        let ident = BundleIdentity {
            name: d.bundle.clone(),
            version: d.version.clone(),
            version_number: d.version_number,
            sha256: d.sha256.clone(),
        };
        Ok(
            match self
                .install(model, current, current_bytes, &new_bytes, &ident, false)
                .await
            {
                Install::Healthy(detail) => {
                    attempt(UpdateOutcome::Applied, detail, &art.method, got)
                }
                Install::RolledBack(detail) => {
                    attempt(UpdateOutcome::RolledBack, detail, &art.method, got)
                }
            },
        )
    }

    /// Swaps the file in, has the stage load it, checks its health, and restores the previous
    /// bundle if anything fails.
    async fn install(
        &self,
        model: &ModelHandle,
        current: &BundleIdentity,
        current_bytes: &[u8],
        new_bytes: &[u8],
        new: &BundleIdentity,
        is_rollback: bool,
    ) -> Install {
        let prev = prev_path(&model.bundle_path);
        if let Err(e) = replace_file(&prev, current_bytes) {
            return Install::RolledBack(format!(
                "cannot keep the previous bundle at {}: {e}; not installed",
                prev.display()
            ));
        }
        if is_rollback {
            if let Err(e) = self.floors.restore(&new.name, new.version_number) {
                return Install::RolledBack(format!("cannot set the version floor: {e}"));
            }
        }
        if let Err(e) = replace_file(&model.bundle_path, new_bytes) {
            return Install::RolledBack(format!(
                "cannot write {}: {e}; previous bundle still serving",
                model.bundle_path.display()
            ));
        }
        // 1. The stage loads it now, with every check, and says what it serves.
        let loaded = match self.reload(model).await {
            Ok(sha) if sha == new.sha256 => Ok(()),
            Ok(sha) => Err(format!(
                "the model stage serves {sha}, not the installed file {}",
                new.sha256
            )),
            Err(e) => Err(format!("failed to load: {e}")),
        };
        // 2. Health: enough windows without inference errors or out-of-range outputs.
        let verdict = match loaded {
            Err(e) => Err(e),
            Ok(()) => self
                .watch_health(&model.control, &new.sha256)
                .await
                .map_err(|f| f.to_string()),
        };
        let why = match verdict {
            Ok(detail) => return Install::Healthy(detail),
            Err(why) => why,
        };
        // Roll back: the previous file, with its floor, loaded again.
        let restore = self
            .floors
            .restore(&current.name, current.version_number)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                replace_file(&model.bundle_path, current_bytes).map_err(|e| e.to_string())
            });
        if let Err(e) = restore {
            return Install::RolledBack(format!(
                "{why}; restoring the previous bundle FAILED: {e}"
            ));
        }
        Install::RolledBack(match self.reload(model).await {
            Ok(sha) if sha == current.sha256 => format!(
                "{why}; rolled back to {} #{}",
                current.version, current.version_number
            ),
            Ok(sha) => format!(
                "{why}; restored the previous bundle file, but the model stage serves {sha}"
            ),
            Err(e) => format!("{why}; the restored previous bundle FAILED to load: {e}"),
        })
    }

    /// Asks the stage to load its bundle file; the SHA-256 of what it serves afterwards.
    async fn reload(&self, model: &ModelHandle) -> Result<String, ReloadError> {
        // The stage answers between two batches; this bounds a stage stuck behind a full
        // pipeline, not the load itself.
        let limit = self.health.timeout.max(Duration::from_secs(30));
        match tokio::time::timeout(limit, model.control.reload()).await {
            Ok(Ok(src)) => Ok(src.sha256.to_string()),
            Ok(Err(e)) => Err(ReloadError::Refused(e)),
            Err(_) => Err(ReloadError::NoAnswer(limit)),
        }
    }

    /// Watches the bundle `sha256` serve: `windows` predictions without reaching the error
    /// limits passes; reaching one fails; the timeout with fewer windows keeps it.
    async fn watch_health(
        &self,
        control: &ModelControl,
        sha256: &str,
    ) -> Result<String, HealthFailure> {
        let h = &self.health;
        let mut watch = control.health();
        let deadline = tokio::time::Instant::now() + h.timeout;
        loop {
            let now = {
                let seen = watch.borrow_and_update();
                if *seen.sha256 == *sha256 {
                    seen.clone()
                } else {
                    ModelHealth::default()
                }
            };
            let (p, e, o) = (now.predictions, now.inference_errors, now.out_of_range);
            if e >= h.max_inference_errors {
                return Err(HealthFailure::InferenceErrors {
                    errors: e,
                    windows: p + e,
                });
            }
            if o >= h.max_out_of_range {
                return Err(HealthFailure::OutOfRange {
                    outside: o,
                    windows: p,
                });
            }
            if p >= h.windows {
                return Ok(format!("healthy over {p} windows"));
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(HealthFailure::Stopped),
                Err(_) => {
                    return Ok(format!(
                        "kept: only {p} window(s) within {:?} of the health check, none failing",
                        h.timeout
                    ))
                }
            }
        }
    }
}

/// Downloads an artifact into `downloads` (resuming a partial file across attempts and
/// restarts; `downloaded` counts the bytes per artifact over every attempt), checks its
/// size and SHA-256, and returns its bytes with the bytes downloaded. The finished file is
/// removed once read: a delta that then fails to apply is downloaded again next time.
pub(crate) async fn fetch(
    client: &mut FleetClient,
    downloads: &Path,
    art: &edge_wire::sync::Artifact,
    max_bytes_per_s: u64,
    downloaded: &mut std::collections::HashMap<String, u64>,
) -> Result<(Vec<u8>, u64), Retry> {
    std::fs::create_dir_all(downloads)
        .map_err(|e| Retry(format!("{}: {e}", downloads.display())))?;
    let done = downloads.join(&art.sha256);
    let part = downloads.join(format!("{}.part", art.sha256));
    if !done.exists() {
        let path = format!("{}/{}", edge_wire::sync::path::ARTIFACTS, art.sha256);
        let cap = (max_bytes_per_s > 0).then_some(max_bytes_per_s);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let before = size(&part);
        let r = client.download(&path, &part, art.size, cap).await;
        let after = size(&part);
        // A resumed transfer adds to the file; a restarted one (200 instead of 206) rewrote it.
        *downloaded.entry(art.sha256.clone()).or_default() += if after >= before {
            after - before
        } else {
            after
        };
        r.map_err(|e| {
            if e.is_refusal() {
                Retry(format!("server refused the download: {e}"))
            } else {
                Retry(e.to_string())
            }
        })?;
        let bytes = std::fs::read(&part).map_err(|e| Retry(format!("{}: {e}", part.display())))?;
        let sha = bundle_file::sha256_hex(&bytes);
        if bytes.len() as u64 > art.size || (bytes.len() as u64 == art.size && sha != art.sha256) {
            let _ = std::fs::remove_file(&part);
            return Err(Retry(format!(
                    "downloaded artifact does not match (sha256 {sha}, {} bytes; expected {} bytes {}): discarded, will download again",
                    bytes.len(), art.size, art.sha256
                )));
        }
        if (bytes.len() as u64) < art.size {
            return Err(Retry(format!(
                "download incomplete ({} of {} bytes)",
                bytes.len(),
                art.size
            )));
        }
        std::fs::rename(&part, &done).map_err(|e| Retry(format!("{}: {e}", done.display())))?;
    }
    let got = downloaded.remove(&art.sha256).unwrap_or(0);
    let artifact = std::fs::read(&done).map_err(|e| Retry(format!("{}: {e}", done.display())))?;
    let _ = std::fs::remove_file(&done);
    Ok((artifact, got))
}

/// A temporary problem (network, partial download): try again at the next check-in.
#[derive(Debug)]
pub struct Retry(pub String);

/// Why the model stage did not load a bundle file when asked.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// The stage refused it (the typed load error says why).
    #[error("{0}")]
    Refused(crate::models::ControlError),
    /// The stage did not answer in time (stuck behind a full pipeline).
    #[error("the model stage did not answer within {0:?}")]
    NoAnswer(Duration),
}

/// Why a freshly installed bundle failed its health check.
#[derive(Debug, thiserror::Error)]
enum HealthFailure {
    /// Inference errors reached `[sync.health] max_inference_errors`.
    #[error("health check failed: {errors} inference error(s) in {windows} window(s)")]
    InferenceErrors { errors: u64, windows: u64 },
    /// Outputs outside the manifest's ranges reached `max_out_of_range`.
    #[error("health check failed: {outside} prediction(s) outside the manifest's output range in {windows} window(s)")]
    OutOfRange { outside: u64, windows: u64 },
    /// The stage ended during the check.
    #[error("the model stage stopped during the health check")]
    Stopped,
}
