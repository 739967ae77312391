//! The bundle file: one self-contained, signed file with the manifest and the ONNX model.
//!
//! ```text
//! "EDGEBNDL" | u16 format (=1) | u32 manifest length | manifest (JSON, UTF-8)
//!            | u64 model length | model (ONNX bytes)
//!            | 32-byte public key of the signer | 64-byte ed25519 signature
//! ```
//! All integers little-endian. The signature covers
//! `"edge-bundle-v1" || SHA-256(manifest) || SHA-256(model)`, and the manifest records the
//! model's SHA-256 and size, so neither part can be swapped or altered.
//!
//! Architecture invariant: nothing reads a model out of a bundle without going through
//! [`Bundle::open`], which checks structure, hashes, signature (against pinned keys) and
//! the version floor before returning.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::manifest::{Manifest, MANIFEST_FORMAT};

const MAGIC: &[u8; 8] = b"EDGEBNDL";
const FORMAT: u16 = 1;
const DOMAIN: &[u8] = b"edge-bundle-v1";
/// Refuse manifests larger than this (a manifest is a few hundred KB at most).
const MAX_MANIFEST: usize = 16 << 20;
/// Refuse models larger than this.
const MAX_MODEL: u64 = 2 << 30;

/// Why a bundle was refused. Nothing of a refused bundle is used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Not a bundle file.
    #[error("not a bundle (bad magic bytes)")]
    NotABundle,
    /// A container format this build does not read.
    #[error("bundle format {0} is not supported by this agent (it reads format {FORMAT})")]
    Format(u16),
    /// The file ends early (which part).
    #[error("bundle is truncated: {0}")]
    Truncated(&'static str),
    /// Bytes after the last part.
    #[error("bundle has {0} unexpected trailing bytes")]
    Trailing(usize),
    /// The manifest does not parse or is not valid.
    #[error("manifest is not valid: {0}")]
    Manifest(String),
    /// The model is not the one the manifest names.
    #[error("model hash mismatch: manifest says {expected}, model is {actual}")]
    ModelHash {
        /// The SHA-256 in the manifest.
        expected: String,
        /// The SHA-256 of the model bytes.
        actual: String,
    },
    /// The signature does not match the manifest and model.
    #[error("signature does not verify: the bundle was altered or signed by another key")]
    BadSignature,
    /// Signed by a key not in the trusted list (its id).
    #[error("bundle is signed by key {0}, which is not trusted here")]
    UntrustedKey(String),
    /// No trusted key is configured to check it against.
    #[error("bundle is not signed (no trusted key configured to check it against)")]
    NoTrustedKeys,
    /// Below the highest version number this device has run.
    #[error(
        "bundle version number {got} is below this device's floor {floor}: refusing a downgrade"
    )]
    Downgrade {
        /// The bundle's version number.
        got: u64,
        /// The highest this device has run.
        floor: u64,
    },
    /// A key file could not be read or parsed.
    #[error("key: {0}")]
    Key(String),
}

/// A bundle whose structure, hashes, signature and version floor have been checked. Its
/// fields are private: the only ways to one are [`Bundle::open`], [`Bundle::from_bytes`] and
/// [`Unverified::verify`], so holding a `Bundle` means it was verified.
#[derive(Debug, Clone)]
pub struct Bundle {
    manifest: Manifest,
    model: Vec<u8>,
    signer: VerifyingKey,
    file_sha256: String,
}

impl Bundle {
    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The ONNX model bytes (their hash is in the manifest).
    pub fn model(&self) -> &[u8] {
        &self.model
    }
    /// The public key that signed it.
    pub fn signer(&self) -> &VerifyingKey {
        &self.signer
    }
    /// SHA-256 of the whole file, hex: the bundle's identity.
    pub fn file_sha256(&self) -> &str {
        &self.file_sha256
    }
    /// The manifest and the model, consumed.
    pub fn into_parts(self) -> (Manifest, Vec<u8>) {
        (self.manifest, self.model)
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 (hex) of a file, read in chunks (training recordings can be large).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signed_message(manifest: &[u8], model: &[u8]) -> Vec<u8> {
    domain_message(DOMAIN, manifest, model)
}

/// What a signature covers: `domain || SHA-256(manifest) || SHA-256(payload)` (bundles and
/// agent releases, each with its own domain so one can never pass for the other).
pub(crate) fn domain_message(domain: &[u8], manifest: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend_from_slice(&Sha256::digest(manifest));
    m.extend_from_slice(&Sha256::digest(payload));
    m
}

/// Short id of a public key: first 8 bytes of its SHA-256, hex.
pub fn key_id(k: &VerifyingKey) -> String {
    sha256_hex(k.as_bytes())[..16].to_string()
}

/// Serializes and signs a bundle. The manifest's model hash and size are set here.
pub fn pack(manifest: &Manifest, model: &[u8], key: &SigningKey) -> Result<Vec<u8>, BundleError> {
    let mut manifest = manifest.clone();
    manifest.format = MANIFEST_FORMAT;
    manifest.model.sha256 = sha256_hex(model);
    manifest.model.size = model.len() as u64;
    let mbytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let sig = key.sign(&signed_message(&mbytes, model));
    let mut out = Vec::with_capacity(mbytes.len() + model.len() + 128);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(mbytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&mbytes);
    out.extend_from_slice(&(model.len() as u64).to_le_bytes());
    out.extend_from_slice(model);
    out.extend_from_slice(key.verifying_key().as_bytes());
    out.extend_from_slice(&sig.to_bytes());
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BundleError> {
        if self.0.len() < n {
            return Err(BundleError::Truncated(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BundleError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

/// The parsed parts of a bundle, before any trust decision.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// The manifest as parsed (not trusted yet).
    pub manifest: Manifest,
    /// The manifest bytes the signature covers.
    pub manifest_bytes: Vec<u8>,
    /// The model bytes (their hash matches the manifest's).
    pub model: Vec<u8>,
    /// The public key the file says signed it.
    pub signer: [u8; 32],
    /// The ed25519 signature.
    pub signature: [u8; 64],
    /// SHA-256 of the whole file, hex.
    pub file_sha256: String,
}

/// Parses the container and checks the manifest's model hash. Does not check the signature:
/// use for `bundle inspect`; everything else uses [`Bundle::open`].
pub fn parse(bytes: &[u8]) -> Result<Unverified, BundleError> {
    let mut r = Reader(bytes);
    if r.take(8, "magic").map_err(|_| BundleError::NotABundle)? != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let format = u16::from_le_bytes(r.array("format")?);
    if format != FORMAT {
        return Err(BundleError::Format(format));
    }
    let mlen = u32::from_le_bytes(r.array("manifest length")?) as usize;
    if mlen > MAX_MANIFEST {
        return Err(BundleError::Manifest(format!(
            "manifest of {mlen} bytes exceeds the {MAX_MANIFEST}-byte limit"
        )));
    }
    let manifest_bytes = r.take(mlen, "manifest")?.to_vec();
    let model_len = u64::from_le_bytes(r.array("model length")?);
    if model_len > MAX_MODEL || model_len > r.0.len() as u64 {
        return Err(BundleError::Truncated("model"));
    }
    let model = r.take(model_len as usize, "model")?.to_vec();
    let signer: [u8; 32] = r.array("signer key")?;
    let signature: [u8; 64] = r.array("signature")?;
    if !r.0.is_empty() {
        return Err(BundleError::Trailing(r.0.len()));
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BundleError::Manifest(e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BundleError::Manifest(format!(
            "manifest format {} is not supported (expected {MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    let actual = sha256_hex(&model);
    if manifest.model.sha256 != actual || manifest.model.size != model.len() as u64 {
        return Err(BundleError::ModelHash {
            expected: manifest.model.sha256.clone(),
            actual,
        });
    }
    Ok(Unverified {
        manifest,
        manifest_bytes,
        model,
        signer,
        signature,
        file_sha256: sha256_hex(bytes),
    })
}

impl Unverified {
    /// Checks the signature against the trusted keys.
    pub fn verify(self, trusted: &[VerifyingKey]) -> Result<Bundle, BundleError> {
        if trusted.is_empty() {
            return Err(BundleError::NoTrustedKeys);
        }
        let signer =
            VerifyingKey::from_bytes(&self.signer).map_err(|_| BundleError::BadSignature)?;
        if !trusted.iter().any(|k| k.as_bytes() == signer.as_bytes()) {
            return Err(BundleError::UntrustedKey(key_id(&signer)));
        }
        let sig = Signature::from_bytes(&self.signature);
        signer
            .verify(&signed_message(&self.manifest_bytes, &self.model), &sig)
            .map_err(|_| BundleError::BadSignature)?;
        Ok(Bundle {
            manifest: self.manifest,
            model: self.model,
            signer,
            file_sha256: self.file_sha256,
        })
    }
}

impl Bundle {
    /// Parses and verifies bundle bytes, refusing version numbers below `floor`.
    pub fn from_bytes(
        bytes: &[u8],
        trusted: &[VerifyingKey],
        floor: u64,
    ) -> Result<Bundle, BundleError> {
        let b = parse(bytes)?.verify(trusted)?;
        if b.manifest.version_number < floor {
            return Err(BundleError::Downgrade {
                got: b.manifest.version_number,
                floor,
            });
        }
        Ok(b)
    }

    /// Reads and verifies a bundle file.
    pub fn open(path: &Path, trusted: &[VerifyingKey], floor: u64) -> Result<Bundle, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| BundleError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, trusted, floor)
    }
}

/// Reads an ed25519 public key: PEM (`-----BEGIN PUBLIC KEY-----`, as written by
/// `openssl pkey -pubout` or `edge-agent bundle keygen`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_public_key(&text).map_err(|e| BundleError::Key(format!("{}: {e}", path.display())))
}

/// Parses an ed25519 public key PEM.
pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, BundleError> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    VerifyingKey::from_public_key_pem(pem)
        .map_err(|e| BundleError::Key(format!("not an ed25519 public key PEM: {e}")))
}

/// Reads an ed25519 private key: PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.display().to_string(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        BundleError::Key(format!(
            "{}: not an ed25519 PKCS#8 private key PEM: {e}",
            path.display()
        ))
    })
}

/// A new key pair as (private PKCS#8 PEM, public PEM).
pub fn generate_key_pem() -> Result<(String, String), BundleError> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| BundleError::Key(format!("no OS randomness: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| BundleError::Key(e.to_string()))?;
    Ok((private.to_string(), public))
}
