//! [`Registry`]: signed bundles and the artifacts devices download (bundles and cached
//! deltas), stored in the database by SHA-256 in chunks (`store::artifacts`), so every
//! replica serves every artifact. Data directories of earlier releases kept them as files in
//! `<data-dir>/artifacts/`: [`Registry::import_files`] moves them into the database.
//!
//! Architecture invariants: a bundle is stored only after its signature verified against a
//! trusted key and its version number is above every stored version of the same name; an
//! artifact is stored with all its chunks in one transaction, so a reader never sees half of
//! one; a delta is computed once per (base, target) pair across every replica (a claim in
//! the database; a claim whose replica died expires after [`DELTA_CLAIM_STALE_MS`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use edge_wire::bundle::file as bundle_file;
use edge_wire::bundle::Manifest;
use edge_wire::delta;
use edge_wire::sync::Artifact;

use crate::store::{now_ms, BundleRow, DeltaRow, FleetStore, StoreError};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The bundle or artifact is refused (bad signature, untrusted key, version not above the
    /// stored ones, missing artifact); the message says which.
    #[error("bundle refused: {0}")]
    Refused(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An artifact file of an earlier release could not be read or removed.
    #[error("artifact store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The cache key of "no base": the compressed full bundle.
const NO_BASE: &str = "";

/// Files larger than this get no bsdiff delta (see [`Registry::compute_delta`]).
pub const BSDIFF_MAX: usize = 32 << 20;

/// A delta claim older than this is taken over by the next replica that needs the delta.
pub const DELTA_CLAIM_STALE_MS: i64 = 10 * 60 * 1000;

/// The model registry (module doc): signed bundles and the artifacts devices download.
/// Cheap to clone; clones share their caches.
#[derive(Debug, Clone)]
pub struct Registry {
    store: FleetStore,
    /// Where earlier releases kept artifact files (imported by [`Registry::import_files`]).
    legacy_dir: PathBuf,
    /// This process, in delta claims.
    replica: Arc<str>,
    inflight: Arc<Mutex<HashSet<(String, String)>>>,
    /// Parsed manifests by bundle file SHA-256 (artifacts are immutable once stored).
    manifests: Arc<Mutex<HashMap<String, Arc<Manifest>>>>,
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Whether `s` is a SHA-256 in hex (an artifact name).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Registry {
    /// The registry over `store`; `data_dir` is where earlier releases kept artifact files.
    /// Nothing is read yet.
    pub fn new(store: FleetStore, data_dir: &Path) -> Result<Registry, RegistryError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        Ok(Registry {
            store,
            legacy_dir: data_dir.join("artifacts"),
            replica: format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..)).into(),
            inflight: Arc::default(),
            manifests: Arc::default(),
        })
    }

    /// The database it stores in.
    pub fn store(&self) -> &FleetStore {
        &self.store
    }

    /// Deltas being computed now (by this process).
    pub fn deltas_in_flight(&self) -> usize {
        self.inflight.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
        let path = path.to_path_buf();
        move |source| RegistryError::Io { path, source }
    }

    /// Moves artifact files of an earlier release (`<data-dir>/artifacts/<sha256>`) into the
    /// database: each file is checked against its name, stored, then deleted. A file whose
    /// content does not match its name is left where it is and reported. Returns how many
    /// were imported.
    pub async fn import_files(&self) -> Result<usize, RegistryError> {
        let dir = &self.legacy_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io(dir)(e)),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(self.io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_sha256_hex(&name) {
                continue; // temporary files of an interrupted write
            }
            let path = entry.path();
            let bytes = tokio::fs::read(&path).await.map_err(self.io(&path))?;
            if edge_wire::bundle::file::sha256_hex(&bytes) != name {
                tracing::error!(file = %path.display(), "artifact file does not match its SHA-256 name: left in place, not imported");
                continue;
            }
            self.store.put_artifact(&name, &bytes).await?;
            tokio::fs::remove_file(&path)
                .await
                .map_err(self.io(&path))?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(files = n, dir = %dir.display(), "artifact files moved into the database");
        }
        let _ = std::fs::remove_dir(dir); // only when empty
        Ok(n)
    }

    /// The bytes of a stored artifact, checked against its SHA-256.
    async fn artifact_bytes(&self, sha256: &str) -> Result<Vec<u8>, RegistryError> {
        let bytes = self.store.read_artifact(sha256).await?.ok_or_else(|| {
            RegistryError::Refused(format!("artifact {sha256} is not in the database"))
        })?;
        if edge_wire::bundle::file::sha256_hex(&bytes) != sha256 {
            return Err(RegistryError::Refused(format!(
                "artifact {sha256} does not match its SHA-256 (altered in the database?)"
            )));
        }
        Ok(bytes)
    }

    /// The manifest of a stored bundle version (`None` if the registry does not have it).
    /// The file was verified when pushed; here its SHA-256 must still match the stored row.
    pub async fn manifest(
        &self,
        name: &str,
        version_number: i64,
    ) -> Result<Option<Arc<Manifest>>, RegistryError> {
        let Some(row) = self.store.bundle(name, version_number).await? else {
            return Ok(None);
        };
        if let Some(m) = self
            .manifests
            .lock()
            .ok()
            .and_then(|c| c.get(&row.sha256).cloned())
        {
            return Ok(Some(m));
        }
        let bytes = self.artifact_bytes(&row.sha256).await?;
        let parsed =
            bundle_file::parse(&bytes).map_err(|e| RegistryError::Refused(e.to_string()))?;
        let m = Arc::new(parsed.manifest);
        if let Ok(mut c) = self.manifests.lock() {
            c.insert(row.sha256, m.clone());
        }
        Ok(Some(m))
    }

    /// Verifies and stores a bundle: the row, and whether it is new. Re-pushing the
    /// identical file is a no-op; any other file whose version number is not above the
    /// stored ones is refused. The caller audits it.
    pub async fn push(
        &self,
        bytes: Vec<u8>,
        actor: &str,
    ) -> Result<(BundleRow, bool), RegistryError> {
        let keys: Vec<_> = self
            .store
            .trusted_keys()
            .await?
            .iter()
            .filter_map(|pem| bundle_file::parse_public_key(pem).ok())
            .collect();
        if keys.is_empty() {
            return Err(RegistryError::Refused(
                "no trusted signing key: add one with `fleet-server model trust KEY.pem`".into(),
            ));
        }
        let b = bundle_file::Bundle::from_bytes(&bytes, &keys, 0)
            .map_err(|e| RegistryError::Refused(e.to_string()))?;
        let name = b.manifest().name.clone();
        let vn = i64::try_from(b.manifest().version_number)
            .map_err(|_| RegistryError::Refused("version number above 2^63".into()))?;
        if let Some(same) = self.store.bundle(&name, vn).await? {
            if same.sha256 == b.file_sha256() {
                return Ok((same, false));
            }
        }
        if let Some(latest) = self.store.latest_bundle(&name).await? {
            if vn <= latest.version_number {
                return Err(RegistryError::Refused(format!(
                    "{name} version number {vn} is not above the latest stored ({}, {}): refusing a downgrade or a replaced version",
                    latest.version_number, latest.version
                )));
            }
        }
        self.store.put_artifact(b.file_sha256(), &bytes).await?;
        let row = BundleRow {
            name: name.clone(),
            version_number: vn,
            version: b.manifest().version.clone(),
            sha256: b.file_sha256().to_string(),
            size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            signer: bundle_file::key_id(b.signer()),
            pushed_by: actor.into(),
            pushed_at: now_ms(),
        };
        self.store.add_bundle(&row).await?;
        Ok((row, true))
    }

    /// Verifies and stores an agent release file (signature against the release keys,
    /// `fleet-server agent trust`): the row, and whether it is new. Re-pushing the same
    /// file is a no-op; another file for a stored (release number, target) is refused, and
    /// so is a release number below the newest stored one for that target.
    pub async fn push_release(
        &self,
        bytes: Vec<u8>,
        actor: &str,
    ) -> Result<(crate::store::ReleaseRow, bool), RegistryError> {
        use edge_wire::release;
        let keys: Vec<_> = self
            .store
            .keys_of(crate::store::KeyRing::Releases)
            .await?
            .iter()
            .filter_map(|k| bundle_file::parse_public_key(&k.public_pem).ok())
            .collect();
        if keys.is_empty() {
            return Err(RegistryError::Refused(
                "no release signing key trusted: add one with `fleet-server agent trust KEY.pem`"
                    .into(),
            ));
        }
        let r = release::parse(&bytes)
            .and_then(|u| u.verify(&keys))
            .map_err(|e| RegistryError::Refused(e.to_string()))?;
        let m = r.manifest();
        let vn = i64::try_from(m.version_number)
            .map_err(|_| RegistryError::Refused("release number above 2^63".into()))?;
        if let Some(same) = self.store.release(vn, &m.target).await? {
            if same.sha256 == r.sha256() {
                return Ok((same, false));
            }
            return Err(RegistryError::Refused(format!(
                "release number {vn} for {} is stored already with another file ({}): use a new release number",
                m.target, same.sha256
            )));
        }
        let others = self.store.release_targets(vn).await?;
        if let Some(o) = others.iter().find(|o| o.version != m.version) {
            return Err(RegistryError::Refused(format!(
                "release number {vn} is version {} for {}, this file says {}: one release number, one version",
                o.version, o.target, m.version
            )));
        }
        self.store.put_artifact(r.sha256(), &bytes).await?;
        let row = crate::store::ReleaseRow {
            version_number: vn,
            target: m.target.clone(),
            version: m.version.clone(),
            sha256: r.sha256().to_string(),
            size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            binary_sha256: m.binary_sha256.clone(),
            signer: r.signer_id(),
            notes: m.notes.clone(),
            pushed_by: actor.into(),
            pushed_at: now_ms(),
        };
        self.store.add_release(&row).await?;
        Ok((row, true))
    }

    /// The artifact that takes a device from release file `base` (by SHA-256; `None`: it
    /// runs its installed binary) to release `target`, as [`Registry::artifact_for`] does
    /// for bundles.
    pub async fn artifact_for_release(
        &self,
        base: Option<&str>,
        target: &crate::store::ReleaseRow,
    ) -> Result<Option<Artifact>, RegistryError> {
        let base = match base.filter(|b| *b != target.sha256) {
            Some(b) if self.store.release_by_sha(b).await?.is_some() => b,
            _ => NO_BASE,
        };
        self.cached_or_spawn(base, &target.sha256, target.size)
            .await
    }

    /// The artifact that takes a device from `base` (the bundle file it runs, by SHA-256)
    /// to `target`: the smallest cached delta, or the full bundle. `None` while the delta
    /// is being computed (in the background; the device gets it at its next check-in).
    pub async fn artifact_for(
        &self,
        base: Option<&str>,
        target: &BundleRow,
    ) -> Result<Option<Artifact>, RegistryError> {
        // The device runs a bundle this server never stored (or none): nothing to diff
        // against, so the compressed full bundle (cached under the empty base).
        let base = match base.filter(|b| *b != target.sha256) {
            Some(b) if self.store.bundle_by_sha(b).await?.is_some() => b,
            _ => NO_BASE,
        };
        self.cached_or_spawn(base, &target.sha256, target.size)
            .await
    }

    /// The cached artifact from `base` to `target` (of `size` bytes), or `None` after
    /// starting its computation.
    async fn cached_or_spawn(
        &self,
        base: &str,
        target: &str,
        size: i64,
    ) -> Result<Option<Artifact>, RegistryError> {
        let full = Artifact {
            sha256: target.to_string(),
            size: size as u64,
            method: "full".into(),
        };
        if let Some(d) = self.store.delta(base, target).await? {
            return Ok(Some(if d.method == "full" {
                full
            } else {
                Artifact {
                    sha256: d.artifact_sha256,
                    size: d.size as u64,
                    method: d.method,
                }
            }));
        }
        self.spawn_delta(base.to_string(), target.to_string());
        Ok(None)
    }

    /// Starts computing a delta in the background unless this process is computing it
    /// already or another replica claimed it (see [`FleetStore::claim_delta`]).
    fn spawn_delta(&self, base: String, target: String) {
        let key = (base.clone(), target.clone());
        {
            let Ok(mut set) = self.inflight.lock() else {
                return;
            };
            if !set.insert(key.clone()) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me
                .store
                .claim_delta(&base, &target, &me.replica, DELTA_CLAIM_STALE_MS)
                .await
            {
                Ok(true) => {
                    if let Err(e) = me.compute_delta(&base, &target).await {
                        tracing::error!(base = %base, target = %target, "delta failed: {e}");
                    }
                }
                Ok(false) => {
                    tracing::debug!(base = %base, target = %target, "delta being computed by another replica")
                }
                Err(e) => tracing::error!(base = %base, target = %target, "delta claim: {e}"),
            }
            if let Ok(mut set) = me.inflight.lock() {
                set.remove(&key);
            }
        });
    }

    /// Computes every method, keeps the smallest (or `full`), and caches the choice.
    pub async fn compute_delta(&self, base: &str, target: &str) -> Result<DeltaRow, RegistryError> {
        let old = if base == NO_BASE {
            Vec::new()
        } else {
            self.artifact_bytes(base).await?
        };
        let new = self.artifact_bytes(target).await?;
        let started = std::time::Instant::now();
        let no_base = base == NO_BASE;
        let (all, new_len) = tokio::task::spawn_blocking(move || {
            let n = new.len();
            let all = if no_base {
                vec![(
                    delta::Method::Zstd,
                    delta::make(delta::Method::Zstd, &old, &new),
                )]
            } else if new.len() > BSDIFF_MAX {
                // bsdiff's suffix sort takes minutes and ~9x the file in memory on large
                // files (agent binaries): zstd with the old file as prefix instead.
                [delta::Method::PatchFrom, delta::Method::Zstd]
                    .into_iter()
                    .map(|m| (m, delta::make(m, &old, &new)))
                    .collect()
            } else {
                delta::make_all(&old, &new)
            };
            (all, n)
        })
        .await
        .map_err(|e| RegistryError::Refused(e.to_string()))?;
        let mut sizes = serde_json::Map::new();
        sizes.insert("full".into(), (new_len as u64).into());
        for (m, r) in &all {
            if let Ok(d) = r {
                sizes.insert(m.name().into(), (d.len() as u64).into());
            }
        }
        let sizes = serde_json::Value::Object(sizes).to_string();
        let best = all
            .into_iter()
            .find_map(|(m, r)| r.ok().map(|d| (m, d)))
            .filter(|(_, d)| d.len() < new_len);
        let row = match best {
            Some((m, d)) => {
                let sha = edge_wire::bundle::file::sha256_hex(&d);
                self.store.put_artifact(&sha, &d).await?;
                DeltaRow {
                    method: m.name().into(),
                    size: i64::try_from(d.len()).unwrap_or(i64::MAX),
                    artifact_sha256: sha,
                    sizes,
                }
            }
            None => DeltaRow {
                method: "full".into(),
                artifact_sha256: target.into(),
                size: new_len as i64,
                sizes,
            },
        };
        tracing::info!(base = %base, target = %target, method = %row.method, bytes = row.size,
            all = %row.sizes, took_ms = started.elapsed().as_millis() as u64, "delta ready");
        self.store.add_delta(base, target, &row).await?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;

    #[tokio::test]
    async fn artifact_files_of_an_earlier_release_move_into_the_database() {
        let (s, dir) = store().await;
        let arts = dir.join("artifacts");
        std::fs::create_dir_all(&arts).unwrap();
        let good = b"a bundle of an earlier release".to_vec();
        let good_sha = edge_wire::bundle::file::sha256_hex(&good);
        std::fs::write(arts.join(&good_sha), &good).unwrap();
        let bad_sha = edge_wire::bundle::file::sha256_hex(b"something else");
        std::fs::write(arts.join(&bad_sha), b"altered").unwrap();
        std::fs::write(arts.join("x.tmp123"), b"partial").unwrap();
        let r = Registry::new(s.clone(), &dir).unwrap();
        assert_eq!(r.import_files().await.unwrap(), 1);
        assert_eq!(r.artifact_bytes(&good_sha).await.unwrap(), good);
        assert!(!arts.join(&good_sha).exists(), "imported files are removed");
        assert!(
            arts.join(&bad_sha).exists(),
            "a file that fails its hash stays"
        );
        assert!(s.artifact_size(&bad_sha).await.unwrap().is_none());
        assert_eq!(r.import_files().await.unwrap(), 0, "idempotent");
        std::fs::remove_dir_all(dir).ok();
    }
}
