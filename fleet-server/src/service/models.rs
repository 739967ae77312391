//! Model registry operations: trusted signing keys, bundle versions (with who runs them),
//! pushes (verified by the registry before anything is stored), deltas.

use std::collections::BTreeMap;

use super::views::{BundleOut, DeltaOut};
use super::{Acting, Result, ServiceError};
use crate::store::{BundleRow, DeltaRow, KeyRing, TrustedKey};
use crate::types::Role;

fn sizes_of(d: &DeltaRow) -> BTreeMap<String, u64> {
    serde_json::from_str(&d.sizes).unwrap_or_default()
}

impl Acting {
    /// The ed25519 keys trusted for bundle signatures (viewer role).
    pub async fn keys(&self) -> Result<Vec<TrustedKey>> {
        self.require(Role::Viewer, "the trusted keys")?;
        Ok(self.store().trusted_key_rows().await?)
    }

    /// Trusts an ed25519 public key (PEM) for bundle signatures.
    pub async fn trust_key(&self, pem: &str) -> Result<TrustedKey> {
        self.require(Role::Admin, "trusting signing keys")?;
        self.trust_in(KeyRing::Bundles, pem, "model.trust").await
    }

    /// Adds a parsed public key (PEM) to `ring`, audited as `action` when it is new.
    pub(super) async fn trust_in(
        &self,
        ring: KeyRing,
        pem: &str,
        action: &str,
    ) -> Result<TrustedKey> {
        let key = edge_wire::bundle::file::parse_public_key(pem)
            .map_err(|e| ServiceError::Refused(format!("not an ed25519 public key: {e}")))?;
        let id = edge_wire::bundle::file::key_id(&key);
        if self
            .store()
            .add_key(ring, &id, pem.trim(), &self.who.name)
            .await?
        {
            self.audit(action, &id, "").await?;
        }
        self.store()
            .keys_of(ring)
            .await?
            .into_iter()
            .find(|k| k.key_id == id)
            .ok_or_else(|| ServiceError::Internal(format!("trusted key {id} vanished")))
    }

    async fn bundle_out(&self, row: BundleRow, running: &BTreeMap<String, i64>) -> BundleOut {
        let manifest = match self
            .svc
            .registry()
            .manifest(&row.name, row.version_number)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(bundle = %row.name, version = row.version_number, "manifest unreadable: {e}");
                None
            }
        };
        let key = format!("{}#{}", row.name, row.version_number);
        BundleOut {
            description: manifest.as_ref().and_then(|m| m.description.clone()),
            created: manifest.as_ref().map(|m| m.created.clone()),
            columns: manifest
                .as_ref()
                .map(|m| m.column_names())
                .unwrap_or_default(),
            running: running.get(&key).copied().unwrap_or(0),
            lineage: manifest
                .as_ref()
                .and_then(|m| m.lineage.as_ref())
                .and_then(|l| serde_json::to_value(l).ok()),
            validation: match self.store().validation(&row.name, row.version_number).await {
                Ok(v) => v.map(super::validation::validation_out),
                Err(e) => {
                    tracing::warn!(bundle = %row.name, version = row.version_number, "validation unreadable: {e}");
                    None
                }
            },
            row,
        }
    }

    /// Every stored version, by name then version number.
    pub async fn bundles(&self) -> Result<Vec<BundleOut>> {
        self.require(Role::Viewer, "the model registry")?;
        let running: BTreeMap<String, i64> =
            self.store().running_counts().await?.into_iter().collect();
        let mut out = Vec::new();
        for row in self.store().bundles().await? {
            out.push(self.bundle_out(row, &running).await);
        }
        Ok(out)
    }

    /// Verifies and stores a bundle (signature by a trusted key, a version number above the
    /// stored ones); a refused bundle stores nothing and says why.
    pub async fn push_bundle(&self, bytes: Vec<u8>) -> Result<BundleOut> {
        self.require(Role::Operator, "pushing bundles")?;
        if bytes.is_empty() {
            return Err(ServiceError::Refused("empty upload: not a bundle".into()));
        }
        let row = match self.svc.registry().push(bytes, &self.who.name).await {
            Ok((row, new)) => {
                if new {
                    self.audit(
                        "model.push",
                        &format!("{}#{}", row.name, row.version_number),
                        &format!(
                            "version {} sha256 {} signer {}",
                            row.version, row.sha256, row.signer
                        ),
                    )
                    .await?;
                    // A gated name: the new version is validated now (its result is in the
                    // answer; a failure refuses its rollouts, not the push).
                    if self.store().gate(&row.name).await?.is_some() {
                        if let Err(e) = self.validate_bundle(&row.name, row.version_number).await {
                            tracing::error!(bundle = %row.name, version = row.version_number, "validation not run: {e}");
                        }
                    }
                }
                row
            }
            Err(e) => {
                let e = ServiceError::from(e);
                if let ServiceError::Refused(m) = &e {
                    self.audit("model.push_refused", "", m).await?;
                }
                return Err(e);
            }
        };
        let running: BTreeMap<String, i64> =
            self.store().running_counts().await?.into_iter().collect();
        Ok(self.bundle_out(row, &running).await)
    }

    /// The cached deltas to each version of a bundle (computed as devices ask for them, or
    /// by [`Self::compute_delta`]).
    pub async fn bundle_deltas(&self, name: &str) -> Result<Vec<DeltaOut>> {
        self.require(Role::Viewer, "bundle deltas")?;
        let versions: Vec<BundleRow> = self
            .store()
            .bundles()
            .await?
            .into_iter()
            .filter(|b| b.name == name)
            .collect();
        if versions.is_empty() {
            return Err(ServiceError::NotFound(format!("no bundle `{name}`")));
        }
        let by_sha: BTreeMap<&str, i64> = versions
            .iter()
            .map(|b| (b.sha256.as_str(), b.version_number))
            .collect();
        let mut out = Vec::new();
        for v in &versions {
            for (base, d) in self.store().deltas_to(&v.sha256).await? {
                out.push(DeltaOut {
                    bundle: name.to_string(),
                    from_version_number: by_sha.get(base.as_str()).copied(),
                    to_version_number: v.version_number,
                    sizes: sizes_of(&d),
                    method: d.method,
                    size: d.size,
                    artifact_sha256: d.artifact_sha256,
                });
            }
        }
        Ok(out)
    }

    /// Computes (or returns the cached) delta between two stored versions.
    pub async fn compute_delta(&self, name: &str, from: i64, to: i64) -> Result<DeltaOut> {
        self.require(Role::Operator, "computing deltas")?;
        let get = |v: i64| async move {
            self.store()
                .bundle(name, v)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("no {name}#{v} in the registry")))
        };
        let (a, b) = (get(from).await?, get(to).await?);
        let d = match self.store().delta(&a.sha256, &b.sha256).await? {
            Some(d) => d,
            None => {
                let d = self
                    .svc
                    .registry()
                    .compute_delta(&a.sha256, &b.sha256)
                    .await?;
                self.audit(
                    "model.delta",
                    &format!("{name}#{from}->{to}"),
                    &format!("{} {} bytes", d.method, d.size),
                )
                .await?;
                d
            }
        };
        Ok(DeltaOut {
            bundle: name.to_string(),
            from_version_number: Some(from),
            to_version_number: to,
            sizes: sizes_of(&d),
            method: d.method,
            size: d.size,
            artifact_sha256: d.artifact_sha256,
        })
    }
}
