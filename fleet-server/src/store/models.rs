//! The model registry's rows: trusted signing keys, bundle versions, cached deltas.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, FleetStore, Result};

/// A public key trusted for bundle signatures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustedKey {
    /// Key id: the first 16 hex digits of the key's SHA-256 (a bundle row's `signer`).
    pub key_id: String,
    /// The ed25519 public key, PEM.
    pub public_pem: String,
    /// Who trusted it.
    pub added_by: String,
    /// When it was trusted (Unix ms).
    pub added_at: i64,
}

/// A stored bundle version (the file itself is an artifact, by SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BundleRow {
    /// Bundle name.
    pub name: String,
    /// Version number (unique per name; devices refuse lower ones than they ran).
    pub version_number: i64,
    /// Semantic version for people.
    pub version: String,
    /// SHA-256 of the bundle file (hex).
    pub sha256: String,
    /// Size of the bundle file (bytes).
    pub size: i64,
    /// Key id of the signing key.
    pub signer: String,
    /// Who pushed it.
    pub pushed_by: String,
    /// When it was pushed (Unix ms).
    pub pushed_at: i64,
}

/// A cached delta between two bundle files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeltaRow {
    /// The method devices get (the smallest), or `full`.
    pub method: String,
    /// SHA-256 of what devices download with `method` (the delta, or the bundle itself).
    pub artifact_sha256: String,
    /// Its size (bytes).
    pub size: i64,
    /// Every method's size, JSON (`{"full": n, "bsdiff_zstd": n, …}`).
    pub sizes: String,
}

fn bundle_of(r: &AnyRow) -> Result<BundleRow> {
    Ok(BundleRow {
        name: r.try_get("name")?,
        version_number: r.try_get("version_number")?,
        version: r.try_get("version")?,
        sha256: r.try_get("sha256")?,
        size: r.try_get("size")?,
        signer: r.try_get("signer")?,
        pushed_by: r.try_get("pushed_by")?,
        pushed_at: r.try_get("pushed_at")?,
    })
}

fn delta_of(r: &AnyRow) -> Result<DeltaRow> {
    Ok(DeltaRow {
        method: r.try_get("method")?,
        artifact_sha256: r.try_get("artifact_sha256")?,
        size: r.try_get("size")?,
        sizes: r.try_get("sizes")?,
    })
}

/// Which signing keys: bundles' (`model trust`) or agent releases' (`agent trust`), kept
/// apart so a key trusted for one never signs the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRing {
    /// Model bundle signing keys.
    Bundles,
    /// Agent release signing keys.
    Releases,
}

impl KeyRing {
    fn table(self) -> &'static str {
        match self {
            KeyRing::Bundles => "trusted_keys",
            KeyRing::Releases => "release_keys",
        }
    }
}

impl FleetStore {
    /// Adds a bundle signing key (no-op if it is trusted already); true if it was new.
    pub async fn trust_key(&self, key_id: &str, pem: &str, by: &str) -> Result<bool> {
        self.add_key(KeyRing::Bundles, key_id, pem, by).await
    }

    /// The PEM of every trusted key.
    pub async fn trusted_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .trusted_key_rows()
            .await?
            .into_iter()
            .map(|k| k.public_pem)
            .collect())
    }

    /// Every trusted bundle signing key, oldest first.
    pub async fn trusted_key_rows(&self) -> Result<Vec<TrustedKey>> {
        self.keys_of(KeyRing::Bundles).await
    }

    /// Adds a key to `ring` (no-op if it is there already); true if it was new.
    pub async fn add_key(&self, ring: KeyRing, key_id: &str, pem: &str, by: &str) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query(&format!("INSERT INTO {} (key_id, public_pem, added_by, added_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING", ring.table()))
            .bind(key_id)
            .bind(pem)
            .bind(by)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every key of `ring`, oldest first.
    pub async fn keys_of(&self, ring: KeyRing) -> Result<Vec<TrustedKey>> {
        let rows = sqlx::query(&format!(
            "SELECT key_id, public_pem, added_by, added_at FROM {} ORDER BY added_at, key_id",
            ring.table()
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TrustedKey {
                    key_id: r.try_get("key_id")?,
                    public_pem: r.try_get("public_pem")?,
                    added_by: r.try_get("added_by")?,
                    added_at: r.try_get("added_at")?,
                })
            })
            .collect()
    }

    /// The highest version of bundle `name`, if any is stored.
    pub async fn latest_bundle(&self, name: &str) -> Result<Option<BundleRow>> {
        let r = sqlx::query(
            "SELECT * FROM bundles WHERE name = $1 ORDER BY version_number DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(bundle_of).transpose()
    }

    /// Bundle `name` at `version_number`, if stored.
    pub async fn bundle(&self, name: &str, version_number: i64) -> Result<Option<BundleRow>> {
        let r = sqlx::query("SELECT * FROM bundles WHERE name = $1 AND version_number = $2")
            .bind(name)
            .bind(version_number)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(bundle_of).transpose()
    }

    /// A stored version whose file has this SHA-256, if any.
    pub async fn bundle_by_sha(&self, sha256: &str) -> Result<Option<BundleRow>> {
        let r = sqlx::query("SELECT * FROM bundles WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(bundle_of).transpose()
    }

    /// Every stored version, by name then version number.
    pub async fn bundles(&self) -> Result<Vec<BundleRow>> {
        let rows = sqlx::query("SELECT * FROM bundles ORDER BY name, version_number")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(bundle_of).collect()
    }

    /// Stores a new bundle version's row; a second row for the same name and version number
    /// is a database error.
    pub async fn add_bundle(&self, b: &BundleRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO bundles (name, version_number, version, sha256, size, signer, pushed_by, pushed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&b.name)
            .bind(b.version_number)
            .bind(&b.version)
            .bind(&b.sha256)
            .bind(b.size)
            .bind(&b.signer)
            .bind(&b.pushed_by)
            .bind(b.pushed_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The cached delta from bundle file `base` to bundle file `target` (SHA-256s), if any.
    pub async fn delta(&self, base: &str, target: &str) -> Result<Option<DeltaRow>> {
        let r = sqlx::query("SELECT method, artifact_sha256, size, sizes FROM deltas WHERE base_sha256 = $1 AND target_sha256 = $2")
            .bind(base)
            .bind(target)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(delta_of).transpose()
    }

    /// Every cached delta whose target is `target_sha256`: (base SHA-256 or "" for the
    /// compressed full bundle, delta).
    pub async fn deltas_to(&self, target_sha256: &str) -> Result<Vec<(String, DeltaRow)>> {
        let rows = sqlx::query("SELECT base_sha256, method, artifact_sha256, size, sizes FROM deltas WHERE target_sha256 = $1 ORDER BY base_sha256")
            .bind(target_sha256)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("base_sha256")?, delta_of(r)?)))
            .collect()
    }

    /// Caches a delta; an existing one for the same pair stays.
    pub async fn add_delta(&self, base: &str, target: &str, d: &DeltaRow) -> Result<()> {
        let _writer = self.writer.lock().await;
        sqlx::query("INSERT INTO deltas (base_sha256, target_sha256, method, artifact_sha256, size, sizes) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (base_sha256, target_sha256) DO NOTHING")
            .bind(base)
            .bind(target)
            .bind(&d.method)
            .bind(&d.artifact_sha256)
            .bind(d.size)
            .bind(&d.sizes)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Targets of cached deltas stored under this artifact hash.
    pub async fn delta_targets_of_artifact(&self, artifact: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT target_sha256 FROM deltas WHERE artifact_sha256 = $1")
            .bind(artifact)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get("target_sha256")?))
            .collect()
    }

    /// How many non-revoked devices run each `bundle#version_number` (from their last
    /// check-in).
    pub async fn running_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT models FROM devices WHERE revoked_at IS NULL AND models <> ''")
                .fetch_all(&self.pool)
                .await?;
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for r in rows {
            let models: String = r.try_get("models")?;
            for m in super::list_of(&models) {
                *counts.entry(m).or_default() += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }
}
