//! TLS client configuration (rustls with the `ring` provider — pure Rust plus ring's C/asm,
//! cross-compiles statically; no aws-lc/cmake): trust roots from a PEM CA file or the system
//! store, and an optional client certificate for mutual TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS client configuration could not be built (each names the file).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or parsed.
    #[error("cannot read CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The CA file parsed but held no certificate.
    #[error("CA file {0} holds no certificate")]
    EmptyCa(String),
    /// No CA file given and the system store is empty.
    #[error("no system CA certificates found; set `ca_file`")]
    NoSystemRoots,
    /// The client certificate could not be read or parsed.
    #[error("cannot read client certificate {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The private key could not be read or parsed.
    #[error("cannot read private key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Certificate and key do not belong together.
    #[error("client certificate and key do not form a usable pair: {0}")]
    Pair(String),
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// The process-independent ring provider: no global `install_default()` needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a client config. `ca_file` `None` uses the operating system's trust store.
pub fn client_config(
    ca_file: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            let shown = ca.display().to_string();
            let iter = CertificateDer::pem_file_iter(ca).map_err(|e| TlsError::Ca {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            for cert in iter {
                let cert = cert.map_err(|e| TlsError::Ca {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| TlsError::Ca {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::EmptyCa(shown));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match client_auth {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError::Cert {
                    path: cert.display().to_string(),
                    reason: e.to_string(),
                })?;
            if chain.is_empty() {
                return Err(TlsError::Cert {
                    path: cert.display().to_string(),
                    reason: "no certificate in file".into(),
                });
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::Pair(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let e = client_config(Some(Path::new("/nonexistent/ca.crt")), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
        let p = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&p, "not a pem\n").unwrap();
        let e = client_config(Some(&p), None).unwrap_err();
        assert!(
            matches!(e, TlsError::EmptyCa(_) | TlsError::Ca { .. }),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
    }
}
