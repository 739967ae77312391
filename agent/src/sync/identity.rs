//! The device identity: a key made on the device, and the certificate the fleet CA signed
//! for it at enrollment. Kept in `<agent.data_dir>/sync/` (`device.key` mode 0600,
//! `device.pem`, `device.json`). The private key never leaves the device: enrollment sends a
//! CSR.

use std::path::{Path, PathBuf};

use edge_wire::sync::{self, EnrollReply, EnrollRequest};
use serde::{Deserialize, Serialize};

use super::client::{ClientError, FleetClient};

/// Who this device is to the fleet server (`device.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The id the fleet server assigned at enrollment.
    pub device_id: String,
    /// The server it was enrolled with.
    pub server: String,
}

/// Why the device identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file of the identity could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key pair, the CSR or the identity record could not be made.
    #[error("cannot make the device key/CSR: {0}")]
    Key(String),
    /// Not enrolled, and no token to enroll with.
    #[error("not enrolled and no [sync] enroll_token is configured: create one with `fleet-server device enroll` and set it")]
    NoToken,
    /// The enrollment token cannot be used (reason). Not produced at present: an unreadable token
    /// is reported by the caller, a refused one as [`IdentityError::Enroll`].
    #[error("enroll_token: {0}")]
    Token(String),
    /// The server refused the enrollment or could not be reached.
    #[error("enrollment: {0}")]
    Enroll(#[from] ClientError),
    /// A stored identity file (path) does not parse (reason).
    #[error("{0} is corrupt: {1}; delete the sync folder to enroll again")]
    Corrupt(PathBuf, String),
}

/// Where the identity lives: `<agent.data_dir>/sync/`.
#[derive(Debug)]
pub struct IdentityFiles {
    /// The directory (`<agent.data_dir>/sync`).
    pub dir: PathBuf,
}

impl IdentityFiles {
    /// The identity files under `data_dir`; nothing is read or created yet.
    pub fn new(data_dir: &Path) -> Self {
        IdentityFiles {
            dir: data_dir.join("sync"),
        }
    }
    /// The device's private key (PEM, mode 0600; never leaves the device).
    pub fn key(&self) -> PathBuf {
        self.dir.join("device.key")
    }
    /// The device certificate the fleet CA signed (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("device.pem")
    }
    fn meta(&self) -> PathBuf {
        self.dir.join("device.json")
    }
    /// The renewed key, until the server confirmed the certificate.
    pub fn next_key(&self) -> PathBuf {
        self.dir.join("device.next.key")
    }
    /// The renewed certificate, until the server confirmed it.
    pub fn next_cert(&self) -> PathBuf {
        self.dir.join("device.next.pem")
    }
    /// The fleet CA certificates the server said to trust (at enrollment and renewals).
    pub fn fleet_ca(&self) -> PathBuf {
        self.dir.join("fleet-ca.pem")
    }

    /// Whether a renewal waits for its confirmation (or a promotion was cut short).
    pub fn has_next(&self) -> bool {
        self.next_cert().exists()
    }

    /// The renewed identity becomes the one in use: the key first, then the certificate,
    /// so a cut between the two leaves only `device.next.pem`, which the next call moves.
    pub fn promote_next(&self) -> Result<(), IdentityError> {
        let mv = |from: PathBuf, to: PathBuf| {
            std::fs::rename(&from, &to).map_err(|source| IdentityError::Io { path: from, source })
        };
        if self.next_key().exists() {
            mv(self.next_key(), self.key())?;
        }
        if self.next_cert().exists() {
            mv(self.next_cert(), self.cert())?;
        }
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Forgets a renewal the server does not know (a later one replaced it).
    pub fn drop_next(&self) {
        let _ = std::fs::remove_file(self.next_key());
        let _ = std::fs::remove_file(self.next_cert());
    }

    /// Asks the server (over `client`, with the certificate in use) for a certificate for a
    /// new key made here; stores both as the next identity and the CA certificates to trust.
    /// The certificate in use stays in use until [`Self::promote_next`].
    pub async fn renew(
        &self,
        client: &mut FleetClient,
        agent_id: &str,
    ) -> Result<sync::RenewReply, IdentityError> {
        let (key, csr) = key_and_csr(agent_id)?;
        let reply: sync::RenewReply = client
            .call(sync::path::RENEW, &sync::RenewRequest { csr_pem: csr })
            .await?;
        // The key first: a key without its certificate is ignored (has_next looks at the
        // certificate) and replaced by the next renewal.
        self.write(&self.next_key(), key.serialize_pem().as_bytes(), true)?;
        self.write(&self.next_cert(), reply.cert_pem.as_bytes(), false)?;
        self.write(&self.fleet_ca(), reply.ca_pem.as_bytes(), false)?;
        Ok(reply)
    }

    /// The stored identity, if enrolled.
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        let meta = self.meta();
        if !meta.exists() || !self.cert().exists() || !self.key().exists() {
            return Ok(None);
        }
        let text = std::fs::read(&meta).map_err(|source| IdentityError::Io {
            path: meta.clone(),
            source,
        })?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| IdentityError::Corrupt(meta, e.to_string()))
    }

    fn write(&self, path: &Path, contents: &[u8], private: bool) -> Result<(), IdentityError> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(if private { 0o600 } else { 0o644 });
        let mut f = o.open(&tmp).map_err(io)?;
        f.write_all(contents).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Makes a key and CSR, presents the token, stores the certificate.
    pub async fn enroll(
        &self,
        client: &mut FleetClient,
        server: &str,
        agent_id: &str,
        token: &str,
    ) -> Result<Identity, IdentityError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| IdentityError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let (key, csr) = key_and_csr(agent_id)?;
        let reply: EnrollReply = client
            .call(
                sync::path::ENROLL,
                &EnrollRequest {
                    token: token.to_string(),
                    csr_pem: csr,
                    name: agent_id.to_string(),
                    agent_version: crate::version().to_string(),
                },
            )
            .await?;
        self.write(&self.key(), key.serialize_pem().as_bytes(), true)?;
        self.write(&self.cert(), reply.cert_pem.as_bytes(), false)?;
        self.write(&self.fleet_ca(), reply.ca_pem.as_bytes(), false)?;
        let id = Identity {
            device_id: reply.device_id,
            server: server.to_string(),
        };
        let meta = serde_json::to_vec_pretty(&id).map_err(|e| IdentityError::Key(e.to_string()))?;
        self.write(&self.meta(), &meta, false)?;
        Ok(id)
    }
}

/// A new key pair and a CSR for it (CN = the agent id; the server sets the real subject).
fn key_and_csr(agent_id: &str) -> Result<(rcgen::KeyPair, String), IdentityError> {
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_id);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    Ok((key, csr))
}
