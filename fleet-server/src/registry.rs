//! [`Registry`]: signed bundles and the artifacts devices download (bundles and cached
//! deltas), stored as files named by their SHA-256 in `<data-dir>/artifacts/`.
//!
//! Architecture invariants: a bundle is stored only after its signature verified against a
//! trusted key and its version number is above every stored version of the same name; an
//! artifact file is written under a temporary name and renamed, so a reader never sees half
//! a file; a delta is computed at most once per (base, target) pair.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use edge_protocols::bundle::file as bundle_file;
use edge_protocols::bundle::Manifest;
use edge_protocols::delta;
use edge_protocols::sync::Artifact;

use crate::store::{now_ms, BundleRow, DeltaRow, FleetStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("bundle refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("artifact store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cache key of "no base": the compressed full bundle.
const NO_BASE: &str = "";

#[derive(Debug, Clone)]
pub struct Registry {
    store: FleetStore,
    dir: PathBuf,
    inflight: Arc<Mutex<HashSet<(String, String)>>>,
    /// Parsed manifests by bundle file SHA-256 (files are immutable once stored).
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

impl Registry {
    pub fn new(store: FleetStore, data_dir: &Path) -> Result<Registry, RegistryError> {
        let dir = data_dir.join("artifacts");
        std::fs::create_dir_all(&dir).map_err(|source| RegistryError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Registry {
            store,
            dir,
            inflight: Arc::default(),
            manifests: Arc::default(),
        })
    }

    /// Deltas being computed now.
    pub fn deltas_in_flight(&self) -> usize {
        self.inflight.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn artifact_path(&self, sha256: &str) -> Option<PathBuf> {
        (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(sha256))
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
        let path = path.to_path_buf();
        move |source| RegistryError::Io { path, source }
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
        let path = self.dir.join(&row.sha256);
        let bytes = tokio::fs::read(&path).await.map_err(self.io(&path))?;
        let parsed =
            bundle_file::parse(&bytes).map_err(|e| RegistryError::Refused(e.to_string()))?;
        if parsed.file_sha256 != row.sha256 {
            return Err(RegistryError::Refused(format!(
                "artifact {} does not match its SHA-256 (altered on disk?)",
                path.display()
            )));
        }
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
        let name = b.manifest.name.clone();
        let vn = i64::try_from(b.manifest.version_number)
            .map_err(|_| RegistryError::Refused("version number above 2^63".into()))?;
        if let Some(same) = self.store.bundle(&name, vn).await? {
            if same.sha256 == b.file_sha256 {
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
        let path = self.dir.join(&b.file_sha256);
        let to_write = bytes;
        let p2 = path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&p2, &to_write))
            .await
            .map_err(|e| RegistryError::Refused(e.to_string()))?
            .map_err(self.io(&path))?;
        let row = BundleRow {
            name: name.clone(),
            version_number: vn,
            version: b.manifest.version.clone(),
            sha256: b.file_sha256.clone(),
            size: std::fs::metadata(&path)
                .map(|m| m.len() as i64)
                .unwrap_or(0),
            signer: bundle_file::key_id(&b.signer),
            pushed_by: actor.into(),
            pushed_at: now_ms(),
        };
        self.store.add_bundle(&row).await?;
        Ok((row, true))
    }

    /// The artifact that takes a device from `base` (the bundle file it runs, by SHA-256)
    /// to `target`: the smallest cached delta, or the full bundle. `None` while the delta
    /// is being computed (in the background; the device gets it at its next check-in).
    pub async fn artifact_for(
        &self,
        base: Option<&str>,
        target: &BundleRow,
    ) -> Result<Option<Artifact>, RegistryError> {
        let full = Artifact {
            sha256: target.sha256.clone(),
            size: target.size as u64,
            method: "full".into(),
        };
        // The device runs a bundle this server never stored (or none): nothing to diff
        // against, so the compressed full bundle (cached under the empty base).
        let base = match base.filter(|b| *b != target.sha256) {
            Some(b) if self.store.bundle_by_sha(b).await?.is_some() => b,
            _ => NO_BASE,
        };
        if let Some(d) = self.store.delta(base, &target.sha256).await? {
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
        self.spawn_delta(base.to_string(), target.sha256.clone());
        Ok(None)
    }

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
            if let Err(e) = me.compute_delta(&base, &target).await {
                tracing::error!(base = %base, target = %target, "delta failed: {e}");
            }
            if let Ok(mut set) = me.inflight.lock() {
                set.remove(&key);
            }
        });
    }

    /// Computes every method, keeps the smallest (or `full`), and caches the choice.
    pub async fn compute_delta(&self, base: &str, target: &str) -> Result<DeltaRow, RegistryError> {
        let tp = self.dir.join(target);
        let old = if base == NO_BASE {
            Vec::new()
        } else {
            let bp = self.dir.join(base);
            tokio::fs::read(&bp).await.map_err(self.io(&bp))?
        };
        let new = tokio::fs::read(&tp).await.map_err(self.io(&tp))?;
        let started = std::time::Instant::now();
        let no_base = base == NO_BASE;
        let (all, new_len) = tokio::task::spawn_blocking(move || {
            let n = new.len();
            let all = if no_base {
                vec![(
                    delta::Method::Zstd,
                    delta::make(delta::Method::Zstd, &old, &new),
                )]
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
                let sha = crate::ca::sha256_hex(&d);
                let path = self.dir.join(&sha);
                let p2 = path.clone();
                tokio::task::spawn_blocking(move || write_atomic(&p2, &d))
                    .await
                    .map_err(|e| RegistryError::Refused(e.to_string()))?
                    .map_err(self.io(&path))?;
                DeltaRow {
                    method: m.name().into(),
                    size: std::fs::metadata(&path)
                        .map(|m| m.len() as i64)
                        .unwrap_or(0),
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
