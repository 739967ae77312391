//! [`FleetCa`]: the fleet's own certificate authority. It signs the server's TLS certificate
//! and every device certificate (from the CSR the device made; the device key never leaves
//! the device). Created on first start and kept in the fleet database (`fleet_ca`), so every
//! replica on one PostgreSQL signs with the same CA; data directories of earlier releases kept
//! it in `<data-dir>/ca/` and it is imported from there once. The public certificate is also
//! written to `<data-dir>/ca/ca.pem` for tools. The server's own TLS certificate is per
//! replica (its names differ), issued by this CA into `<data-dir>/ca/server.*` (key mode 0600).
//!
//! Device certificates carry the device id as common name and are only ever checked
//! against this CA; the server maps them to devices by the certificate's SHA-256, so a
//! revoked device is refused on its next request without a CRL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// Why the fleet CA could not be loaded, made or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file in the CA directory (`<data_dir>/ca`) could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen could not make or sign a certificate.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A device's CSR could not be read.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// The database failed.
    #[error("fleet CA in the database: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The fleet CA: signs device certificates at enrollment and the server's TLS certificate.
/// Its key lives in the database, so every replica signs with the same CA.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    /// The signing CA's certificate (PEM).
    pub ca_pem: String,
    /// SHA-256 of `ca_pem`: which CA signed a device certificate.
    pub ca_sha256: String,
    /// During a rotation: the previous CA (its issuer and certificate). Device
    /// certificates it signed are still accepted, and it issues the server's own
    /// certificate (devices that have not renewed yet trust only it).
    previous: Option<(Issuer<'static, KeyPair>, String)>,
    dir: PathBuf,
}

/// The fleet CA a running server uses, replaced in place when the database says it
/// changed (a rotation started or finished, possibly by another replica or the CLI).
#[derive(Debug, Clone)]
pub struct CaHandle(Arc<std::sync::RwLock<Arc<FleetCa>>>);

impl CaHandle {
    /// A handle on `ca`.
    pub fn new(ca: Arc<FleetCa>) -> Self {
        CaHandle(Arc::new(std::sync::RwLock::new(ca)))
    }

    /// The CA now.
    pub fn current(&self) -> Arc<FleetCa> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Uses `ca` from now on.
    pub fn replace(&self, ca: Arc<FleetCa>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ca;
    }
}

/// A new self-signed fleet CA (key and certificate, PEM), named with its creation time so
/// two generations are told apart.
pub fn new_ca() -> Result<crate::store::CaRow, CaError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        DnType::CommonName,
        format!(
            "edge fleet CA {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
        ),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, 20);
    let cert = p.self_signed(&key)?;
    Ok(crate::store::CaRow {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa").field("dir", &self.dir).finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Validity from yesterday (clock skew) for `years`.
fn validity(p: &mut CertificateParams, years: i32) {
    use chrono::Datelike;
    let y = chrono::Utc::now() - chrono::Duration::days(1);
    p.not_before = rcgen::date_time_ymd(y.year(), y.month() as u8, y.day() as u8);
    p.not_after = rcgen::date_time_ymd(y.year() + years, y.month() as u8, y.day().min(28) as u8);
}

/// SHA-256 of `b`, lowercase hex.
pub fn sha256_hex(b: &[u8]) -> String {
    edge_wire::bundle::file::hex(&Sha256::digest(b))
}

impl FleetCa {
    /// Loads the fleet CA from the database; on first start imports it from the files of an
    /// earlier release (`<data_dir>/ca/ca.key` + `ca.pem`, the key file is removed once the
    /// database holds it) or creates one. Replicas starting at once agree on one CA (the
    /// first stored wins).
    pub async fn open(
        data_dir: &Path,
        store: &crate::store::FleetStore,
    ) -> Result<FleetCa, CaError> {
        let dir = data_dir.join("ca");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.pem"));
        let row = match store.fleet_ca().await? {
            Some(row) => row,
            None if key_path.exists() && cert_path.exists() => {
                let row = crate::store::CaRow {
                    key_pem: std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
                    cert_pem: std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
                };
                // Parse before storing: a broken file must not become the fleet's CA.
                Issuer::from_ca_cert_pem(&row.cert_pem, KeyPair::from_pem(&row.key_pem)?)?;
                let stored = store.init_fleet_ca(&row).await?;
                if stored == row {
                    tracing::info!(dir = %dir.display(), "fleet CA moved into the database");
                }
                stored
            }
            None => {
                let row = new_ca()?;
                let stored = store.init_fleet_ca(&row).await?;
                if stored == row {
                    tracing::info!(database = store.describe(), "created the fleet CA");
                }
                stored
            }
        };
        // The key lives in the database only; the public certificate is copied for tools.
        if key_path.exists() {
            std::fs::remove_file(&key_path).map_err(io(&key_path))?;
        }
        let key = KeyPair::from_pem(&row.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&row.cert_pem, key)?;
        let ca_sha256 = sha256_hex(row.cert_pem.as_bytes());
        let previous = match store.fleet_ca_previous().await? {
            Some(p) => Some((
                Issuer::from_ca_cert_pem(&p.cert_pem, KeyPair::from_pem(&p.key_pem)?)?,
                p.cert_pem,
            )),
            None => None,
        };
        // Devices enrolled before certificates were tracked were signed by the CA in use
        // then: the previous one during a rotation, else this one.
        let adopted = previous
            .as_ref()
            .map_or(ca_sha256.clone(), |(_, pem)| sha256_hex(pem.as_bytes()));
        store.adopt_ca(&adopted).await?;
        let ca = FleetCa {
            issuer,
            ca_pem: row.cert_pem,
            ca_sha256,
            previous,
            dir,
        };
        // What devices are given (`[sync] server_ca`): every CA to trust.
        let trust = ca.trust_pem();
        if std::fs::read_to_string(&cert_path).ok().as_deref() != Some(trust.as_str()) {
            crate::registry::write_atomic(&cert_path, trust.as_bytes()).map_err(io(&cert_path))?;
        }
        Ok(ca)
    }

    /// Every CA certificate devices should trust for the server, and the server for
    /// devices (PEM): the signing CA, and the previous one during a rotation.
    pub fn trust_pem(&self) -> String {
        match &self.previous {
            Some((_, prev)) => format!("{}\n{}", self.ca_pem.trim_end(), prev),
            None => self.ca_pem.clone(),
        }
    }

    /// Whether a rotation is in progress, and the previous CA's SHA-256.
    pub fn previous_sha256(&self) -> Option<String> {
        self.previous
            .as_ref()
            .map(|(_, pem)| sha256_hex(pem.as_bytes()))
    }

    /// [`FleetCa::generation`] of what the database holds now (two reads, no writes).
    pub async fn stored_generation(store: &crate::store::FleetStore) -> Result<String, CaError> {
        let cur = store
            .fleet_ca()
            .await?
            .map(|r| sha256_hex(r.cert_pem.as_bytes()))
            .unwrap_or_default();
        let prev = store
            .fleet_ca_previous()
            .await?
            .map(|r| sha256_hex(r.cert_pem.as_bytes()))
            .unwrap_or_default();
        Ok(format!("{cur}/{prev}"))
    }

    /// Which CAs this value was loaded from (a change means: reload).
    pub fn generation(&self) -> String {
        format!(
            "{}/{}",
            self.ca_sha256,
            self.previous_sha256().unwrap_or_default()
        )
    }

    /// The server's TLS certificate and key (PEM), for these DNS names / IP addresses;
    /// reissued when the names or the issuing CA (another database) change.
    pub fn server_cert(&self, names: &[String]) -> Result<(String, String), CaError> {
        let (key_path, cert_path, names_path) = (
            self.dir.join("server.key"),
            self.dir.join("server.pem"),
            self.dir.join("server.names"),
        );
        // The issuer devices trust for sure: the previous CA during a rotation.
        let (issuer, issuer_pem) = match &self.previous {
            Some((i, pem)) => (i, pem),
            None => (&self.issuer, &self.ca_pem),
        };
        let wanted = format!(
            "{}\nissuer {}",
            names.join(","),
            sha256_hex(issuer_pem.as_bytes())
        );
        if std::fs::read_to_string(&names_path).ok().as_deref() != Some(wanted.as_str())
            || !key_path.exists()
            || !cert_path.exists()
        {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            for n in names {
                p.subject_alt_names
                    .push(match n.parse::<std::net::IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(n.clone().try_into()?),
                    });
            }
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(
                DnType::CommonName,
                names.first().cloned().unwrap_or_default(),
            );
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            validity(&mut p, 5);
            let cert = p.signed_by(&key, issuer)?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            std::fs::write(&names_path, &wanted).map_err(io(&names_path))?;
        }
        Ok((
            std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        ))
    }

    /// Signs a device CSR for `valid_for` from now (valid from an hour ago, for clock skew).
    /// Only the CSR's public key is used: subject, names and usages are set here (CN =
    /// device id, client auth only).
    pub fn sign_device(
        &self,
        csr_pem: &str,
        device_id: &str,
        valid_for: std::time::Duration,
    ) -> Result<(String, crate::store::IssuedCert), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, device_id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + valid_for;
        let signed = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        let issued_at = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        Ok((
            signed.pem(),
            crate::store::IssuedCert {
                sha256: sha256_hex(signed.der()),
                issued_at,
                expires_at: issued_at.saturating_add(valid_for.as_millis() as i64),
                ca_sha256: self.ca_sha256.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::store;

    fn legacy_ca(dir: &Path) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        std::fs::create_dir_all(dir.join("ca")).unwrap();
        std::fs::write(dir.join("ca/ca.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca/ca.pem"), cert.pem()).unwrap();
        cert.pem()
    }

    #[tokio::test]
    async fn the_ca_of_an_earlier_release_moves_into_the_database_and_every_replica_shares_it() {
        let (s, dir) = store().await;
        let old = legacy_ca(&dir);
        let ca = FleetCa::open(&dir, &s).await.unwrap();
        assert_eq!(ca.ca_pem, old, "the existing CA is kept (devices trust it)");
        assert!(
            !dir.join("ca/ca.key").exists(),
            "the key lives in the database only"
        );
        assert_eq!(s.fleet_ca().await.unwrap().unwrap().cert_pem, old);
        // Another replica with its own (empty) data directory signs with the same CA.
        let other = dir.join("replica-2");
        let ca2 = FleetCa::open(&other, &s).await.unwrap();
        assert_eq!(ca2.ca_pem, old);
        assert_eq!(
            std::fs::read_to_string(other.join("ca/ca.pem")).unwrap(),
            old
        );
        let (cert, _) = ca2.server_cert(&["localhost".into()]).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert_eq!(
            ca2.server_cert(&["localhost".into()]).unwrap().0,
            cert,
            "kept"
        );
        // The same data directory on another database (another CA): the server certificate
        // is reissued by that CA.
        let (s3, dir3) = store().await;
        let ca3 = FleetCa::open(&other, &s3).await.unwrap();
        assert_ne!(ca3.ca_pem, old);
        assert_ne!(ca3.server_cert(&["localhost".into()]).unwrap().0, cert);
        std::fs::remove_dir_all(dir3).ok();
        // A broken key file on a fresh database is refused, not adopted.
        let (s2, dir2) = store().await;
        legacy_ca(&dir2);
        std::fs::write(dir2.join("ca/ca.key"), "not a key").unwrap();
        let err = FleetCa::open(&dir2, &s2).await.unwrap_err().to_string();
        assert!(err.contains("certificate"), "{err}");
        assert!(s2.fleet_ca().await.unwrap().is_none());
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(dir2).ok();
    }
}
