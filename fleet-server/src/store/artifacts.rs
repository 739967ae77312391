//! Artifacts (bundle files and deltas, named by their SHA-256) stored in the database in
//! chunks of [`CHUNK`] bytes, so every server replica on one PostgreSQL serves every artifact
//! without shared disks or an object store, and a download reads one chunk at a time.
//! Also the fleet CA's key material (one row) and the claims that make each delta computed
//! once across replicas.
//!
//! Architecture invariant: an `artifacts` row exists only with all of its chunks (both are
//! written in one transaction), so a reader that finds the row finds the whole artifact.

use sqlx::Row;

use super::{now_ms, FleetStore, Result, StoreError};

/// Bytes per stored chunk (and the most one download holds in memory at a time).
pub const CHUNK: usize = 1 << 20;

/// The fleet CA as stored: certificate and private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct CaRow {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PEM (never logged: `Debug` hides it).
    pub key_pem: String,
}

impl std::fmt::Debug for CaRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRow").finish_non_exhaustive()
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl FleetStore {
    /// Stores an artifact (a no-op when it is there already). The caller has computed
    /// `sha256` over `bytes`.
    pub async fn put_artifact(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
        if self.artifact_size(sha256).await?.is_some() {
            return Ok(());
        }
        let (_writer, mut tx) = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO artifacts (sha256, size, chunk_size, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(to_i64(bytes.len()))
        .bind(to_i64(CHUNK))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(()); // another writer stored it first
        }
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            sqlx::query("INSERT INTO artifact_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                .bind(sha256)
                .bind(to_i64(i))
                .bind(chunk.to_vec())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The size of a stored artifact, `None` if there is none.
    pub async fn artifact_size(&self, sha256: &str) -> Result<Option<u64>> {
        let r = sqlx::query("SELECT size FROM artifacts WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            let n: i64 = r.try_get("size")?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("artifact size {n}")))
        })
        .transpose()
    }

    /// Chunk `idx` of an artifact.
    pub async fn artifact_chunk(&self, sha256: &str, idx: u64) -> Result<Option<Vec<u8>>> {
        let idx = i64::try_from(idx).map_err(|_| StoreError::Invalid("chunk index".into()))?;
        let r = sqlx::query("SELECT data FROM artifact_chunks WHERE sha256 = $1 AND idx = $2")
            .bind(sha256)
            .bind(idx)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| r.try_get("data")).transpose()?)
    }

    /// A whole artifact (for parsing manifests and computing deltas), `None` if unknown.
    pub async fn read_artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let Some(size) = self.artifact_size(sha256).await? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let rows =
            sqlx::query("SELECT idx, data FROM artifact_chunks WHERE sha256 = $1 ORDER BY idx")
                .bind(sha256)
                .fetch_all(&self.pool)
                .await?;
        for (want, r) in rows.iter().enumerate() {
            let idx: i64 = r.try_get("idx")?;
            if idx != to_i64(want) {
                return Err(StoreError::Corrupt(format!(
                    "artifact {sha256}: chunk {want} missing"
                )));
            }
            let data: Vec<u8> = r.try_get("data")?;
            out.extend_from_slice(&data);
        }
        if out.len() as u64 != size {
            return Err(StoreError::Corrupt(format!(
                "artifact {sha256}: {} of {size} bytes stored",
                out.len()
            )));
        }
        Ok(Some(out))
    }

    /// Claims the computation of the delta `base -> target` for `who`: true for exactly one
    /// caller across every replica, unless the claim is older than `stale_ms` (its replica
    /// died while computing), when the next caller takes it over.
    pub async fn claim_delta(
        &self,
        base: &str,
        target: &str,
        who: &str,
        stale_ms: i64,
    ) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO delta_jobs (base_sha256, target_sha256, claimed_by, claimed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (base_sha256, target_sha256) DO UPDATE SET claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at \
             WHERE delta_jobs.claimed_at < $5",
        )
        .bind(base)
        .bind(target)
        .bind(who)
        .bind(now)
        .bind(now - stale_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The stored fleet CA, if any.
    pub async fn fleet_ca(&self) -> Result<Option<CaRow>> {
        let r = sqlx::query("SELECT cert_pem, key_pem FROM fleet_ca WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(CaRow {
                cert_pem: r.try_get("cert_pem")?,
                key_pem: r.try_get("key_pem")?,
            })
        })
        .transpose()
    }

    /// The previous fleet CA while a rotation is in progress.
    pub async fn fleet_ca_previous(&self) -> Result<Option<CaRow>> {
        let r = sqlx::query("SELECT cert_pem, key_pem FROM fleet_ca_previous WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(CaRow {
                cert_pem: r.try_get("cert_pem")?,
                key_pem: r.try_get("key_pem")?,
            })
        })
        .transpose()
    }

    /// Starts a CA rotation: `new` signs device certificates from now on, the current CA
    /// becomes the previous one. Refused while a rotation is in progress.
    pub async fn rotate_fleet_ca(&self, new: &CaRow) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        if sqlx::query("SELECT id FROM fleet_ca_previous WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(StoreError::Invalid(
                "a CA rotation is in progress: finish it first (`fleet-server ca finish`)".into(),
            ));
        }
        let cur = sqlx::query("SELECT cert_pem, key_pem FROM fleet_ca WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("no fleet CA to rotate".into()))?;
        let (cert, key): (String, String) = (cur.try_get("cert_pem")?, cur.try_get("key_pem")?);
        sqlx::query(
            "INSERT INTO fleet_ca_previous (id, cert_pem, key_pem, retired_at) VALUES (1, $1, $2, $3)",
        )
        .bind(cert)
        .bind(key)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE fleet_ca SET cert_pem = $1, key_pem = $2, created_at = $3 WHERE id = 1",
        )
        .bind(&new.cert_pem)
        .bind(&new.key_pem)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends a CA rotation: the previous CA is forgotten (no longer trusted, no longer the
    /// servers' issuer). False when none was in progress.
    pub async fn finish_ca_rotation(&self) -> Result<bool> {
        let _writer = self.writer.lock().await;
        let r = sqlx::query("DELETE FROM fleet_ca_previous WHERE id = 1")
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Non-revoked devices whose certificate another CA than `ca_sha256` signed, by id.
    pub async fn devices_not_on_ca(&self, ca_sha256: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM devices WHERE revoked_at IS NULL AND (cert_ca_sha256 IS NULL OR cert_ca_sha256 <> $1) ORDER BY id")
            .bind(ca_sha256)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Stores the fleet CA unless one is stored already; returns the one that is stored
    /// (so replicas starting at once agree on one CA).
    pub async fn init_fleet_ca(&self, ca: &CaRow) -> Result<CaRow> {
        {
            let _writer = self.writer.lock().await;
            sqlx::query("INSERT INTO fleet_ca (id, cert_pem, key_pem, created_at) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING")
                .bind(&ca.cert_pem)
                .bind(&ca.key_pem)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        }
        self.fleet_ca()
            .await?
            .ok_or_else(|| StoreError::Corrupt("the fleet CA row vanished".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::store;
    use super::*;

    #[tokio::test]
    async fn artifacts_round_trip_in_chunks_and_deltas_are_claimed_once() {
        let (s, dir) = store().await;
        let big: Vec<u8> = (0..(2 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        s.put_artifact("big", &big).await.unwrap();
        s.put_artifact("big", &big).await.unwrap(); // idempotent
        assert_eq!(
            s.artifact_size("big").await.unwrap(),
            Some(big.len() as u64)
        );
        assert_eq!(s.read_artifact("big").await.unwrap().unwrap(), big);
        let last = s.artifact_chunk("big", 2).await.unwrap().unwrap();
        assert_eq!(last, big[2 * CHUNK..]);
        assert!(s.artifact_chunk("big", 3).await.unwrap().is_none());
        assert!(s.read_artifact("none").await.unwrap().is_none());
        s.put_artifact("empty", &[]).await.unwrap();
        assert_eq!(
            s.read_artifact("empty").await.unwrap().unwrap(),
            Vec::<u8>::new()
        );
        // One claim wins; a stale claim is taken over.
        assert!(s.claim_delta("a", "b", "r1", 600_000).await.unwrap());
        assert!(!s.claim_delta("a", "b", "r2", 600_000).await.unwrap());
        assert!(s.claim_delta("a", "b", "r2", -1).await.unwrap());
        // The first CA stored stays.
        let one = CaRow {
            cert_pem: "c1".into(),
            key_pem: "k1".into(),
        };
        let two = CaRow {
            cert_pem: "c2".into(),
            key_pem: "k2".into(),
        };
        assert_eq!(s.init_fleet_ca(&one).await.unwrap(), one);
        assert_eq!(s.init_fleet_ca(&two).await.unwrap(), one);
        std::fs::remove_dir_all(dir).ok();
    }
}
