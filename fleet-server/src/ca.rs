//! [`FleetCa`]: the fleet's own certificate authority. It signs the server's TLS certificate
//! and every device certificate (from the CSR the device made; the device key never leaves
//! the device). Created on first start in `<data-dir>/ca/`; the key file is mode 0600.
//!
//! Device certificates carry the device id as common name and are only ever checked
//! against this CA; the server maps them to devices by the certificate's SHA-256, so a
//! revoked device is refused on its next request without a CRL.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
}

pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    dir: PathBuf,
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

pub fn sha256_hex(b: &[u8]) -> String {
    edge_protocols::bundle::file::hex(&Sha256::digest(b))
}

impl FleetCa {
    /// Loads the CA from `<data_dir>/ca`, creating it on first start.
    pub fn open(data_dir: &Path) -> Result<FleetCa, CaError> {
        let dir = data_dir.join("ca");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.pem"));
        if !key_path.exists() || !cert_path.exists() {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(DnType::CommonName, "edge fleet CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut p, 20);
            let cert = p.self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            tracing::info!(dir = %dir.display(), "created the fleet CA");
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
        Ok(FleetCa {
            issuer,
            ca_pem,
            dir,
        })
    }

    /// The server's TLS certificate and key (PEM), for these DNS names / IP addresses;
    /// reissued when the names change.
    pub fn server_cert(&self, names: &[String]) -> Result<(String, String), CaError> {
        let (key_path, cert_path, names_path) = (
            self.dir.join("server.key"),
            self.dir.join("server.pem"),
            self.dir.join("server.names"),
        );
        let wanted = names.join(",");
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
            let cert = p.signed_by(&key, &self.issuer)?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            std::fs::write(&names_path, &wanted).map_err(io(&names_path))?;
        }
        Ok((
            std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        ))
    }

    /// Signs a device CSR. Only the CSR's public key is used: subject, names and usages are
    /// set here (CN = device id, client auth only).
    pub fn sign_device(&self, csr_pem: &str, device_id: &str) -> Result<(String, String), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, device_id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, 10);
        let signed = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok((signed.pem(), sha256_hex(signed.der())))
    }
}
