//! Agent releases: the `edge-agent` binary for one target as a signed single file, the way
//! the fleet hands out agent software updates.
//!
//! ```text
//! "EDGEAREL" | u16 format (=1) | u32 manifest length | manifest (JSON, UTF-8)
//!            | u64 binary length | binary (the executable)
//!            | 32-byte public key of the signer | 64-byte ed25519 signature
//! ```
//! All integers little-endian. The signature covers
//! `"edge-agent-release-v1" || SHA-256(manifest) || SHA-256(binary)` (a domain of its own: a
//! bundle signature never verifies as a release, nor the other way round), and the manifest
//! records the binary's SHA-256 and size.
//!
//! The release file can be rebuilt byte for byte from its parts ([`Release::to_bytes`]), so a
//! device keeps the binary and a small [`ReleaseSeal`] beside it, not a second copy of the
//! binary, and still has the exact bytes a delta to the next release is made from.
//!
//! Architecture invariant: nothing installs or runs a binary from a release without going
//! through [`Release::from_bytes`], which checks structure, hashes, signature (against pinned
//! keys), target and version floor before returning.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::bundle::file::{domain_message, key_id, sha256_hex};

const MAGIC: &[u8; 8] = b"EDGEAREL";
const FORMAT: u16 = 1;
const DOMAIN: &[u8] = b"edge-agent-release-v1";
const MAX_MANIFEST: usize = 1 << 20;
/// Refuse binaries larger than this.
const MAX_BINARY: u64 = 1 << 30;
/// The one release name: the agent.
pub const RELEASE_NAME: &str = "edge-agent";

/// What a release says about its binary (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Manifest format (1).
    pub format: u16,
    /// Always [`RELEASE_NAME`].
    pub name: String,
    /// The version the binary reports (`edge-agent --version` prints it first): checked on
    /// the device before it switches.
    pub version: String,
    /// Monotonic release number: a device refuses a release below the highest it committed.
    pub version_number: u64,
    /// The Rust target triple the binary is built for (`aarch64-unknown-linux-musl`, …): a
    /// device takes only its own.
    pub target: String,
    /// SHA-256 of the binary, hex.
    pub binary_sha256: String,
    /// Size of the binary in bytes.
    pub binary_size: u64,
    /// Free text: the source revision, build notes.
    #[serde(default)]
    pub notes: String,
}

/// Why a release was refused. Nothing of a refused release is installed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Not a release file.
    #[error("not an agent release (bad magic bytes)")]
    NotARelease,
    /// A container format this build does not read.
    #[error("agent release format {0} is not supported (this build reads format {FORMAT})")]
    Format(u16),
    /// The file ends early (which part).
    #[error("agent release is truncated: {0}")]
    Truncated(&'static str),
    /// Bytes after the last part.
    #[error("agent release has {0} unexpected trailing bytes")]
    Trailing(usize),
    /// The manifest does not parse or is not valid.
    #[error("agent release manifest is not valid: {0}")]
    Manifest(String),
    /// The binary is not the one the manifest names.
    #[error("binary hash mismatch: the manifest says {expected}, the binary is {actual}")]
    BinaryHash {
        /// The SHA-256 in the manifest.
        expected: String,
        /// The SHA-256 of the binary.
        actual: String,
    },
    /// The signature does not match.
    #[error("signature does not verify: the release was altered or signed by another key")]
    BadSignature,
    /// Signed by a key not in the trusted list (its id).
    #[error("agent release is signed by key {0}, which is not trusted here")]
    UntrustedKey(String),
    /// No release key configured.
    #[error("no release signing key is trusted here ([sync.agent_update] trusted_keys)")]
    NoTrustedKeys,
    /// Built for another target.
    #[error("agent release is built for {got}, this device runs {ours}")]
    Target {
        /// The release's target.
        got: String,
        /// This device's.
        ours: String,
    },
    /// Below the floor.
    #[error(
        "agent release number {got} is below this device's floor {floor}: refusing a downgrade"
    )]
    Downgrade {
        /// The release's version number.
        got: u64,
        /// The highest this device committed.
        floor: u64,
    },
    /// The signing key could not be used.
    #[error("key: {0}")]
    Key(String),
}

/// The signature part of a release: with the binary it rebuilds the release file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSeal {
    /// The manifest bytes exactly as signed (JSON).
    pub manifest: String,
    /// The signer's public key, hex.
    pub signer: String,
    /// The signature, hex.
    pub signature: String,
}

/// A verified release: structure, hashes, signature, target and floor checked. Fields are
/// private: holding one means it was verified.
#[derive(Debug, Clone)]
pub struct Release {
    manifest: ReleaseManifest,
    manifest_bytes: Vec<u8>,
    binary: Vec<u8>,
    signer: VerifyingKey,
    signature: [u8; 64],
    sha256: String,
}

impl Release {
    /// Parses and verifies release bytes for `target`, refusing version numbers below `floor`.
    pub fn from_bytes(
        bytes: &[u8],
        trusted: &[VerifyingKey],
        target: &str,
        floor: u64,
    ) -> Result<Release, ReleaseError> {
        let r = parse(bytes)?.verify(trusted)?;
        if r.manifest.target != target {
            return Err(ReleaseError::Target {
                got: r.manifest.target.clone(),
                ours: target.into(),
            });
        }
        if r.manifest.version_number < floor {
            return Err(ReleaseError::Downgrade {
                got: r.manifest.version_number,
                floor,
            });
        }
        Ok(r)
    }

    /// Rebuilds and verifies a release from a kept binary and its seal (what a device
    /// stores), e.g. as the base of a delta. Same checks as [`Release::from_bytes`] except
    /// the floor.
    pub fn from_parts(
        binary: Vec<u8>,
        seal: &ReleaseSeal,
        trusted: &[VerifyingKey],
        target: &str,
    ) -> Result<Release, ReleaseError> {
        let signer: [u8; 32] = unhex(&seal.signer).ok_or(ReleaseError::BadSignature)?;
        let signature: [u8; 64] = unhex(&seal.signature).ok_or(ReleaseError::BadSignature)?;
        let bytes = assemble(seal.manifest.as_bytes(), &binary, &signer, &signature);
        Release::from_bytes(&bytes, trusted, target, 0)
    }

    /// The signed manifest.
    pub fn manifest(&self) -> &ReleaseManifest {
        &self.manifest
    }
    /// The executable.
    pub fn binary(&self) -> &[u8] {
        &self.binary
    }
    /// SHA-256 of the release file, hex: the release's identity on the wire.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// The signer's key id.
    pub fn signer_id(&self) -> String {
        key_id(&self.signer)
    }
    /// What to keep beside the binary to rebuild the file.
    pub fn seal(&self) -> ReleaseSeal {
        ReleaseSeal {
            manifest: String::from_utf8_lossy(&self.manifest_bytes).into_owned(),
            signer: crate::bundle::file::hex(self.signer.as_bytes()),
            signature: crate::bundle::file::hex(&self.signature),
        }
    }
    /// The release file, byte for byte.
    pub fn to_bytes(&self) -> Vec<u8> {
        assemble(
            &self.manifest_bytes,
            &self.binary,
            self.signer.as_bytes(),
            &self.signature,
        )
    }
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn assemble(manifest: &[u8], binary: &[u8], signer: &[u8; 32], signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(manifest.len() + binary.len() + 128);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(binary.len() as u64).to_le_bytes());
    out.extend_from_slice(binary);
    out.extend_from_slice(signer);
    out.extend_from_slice(signature);
    out
}

/// Signs a release of `binary`; the manifest's hash and size are set here.
pub fn pack(manifest: &ReleaseManifest, binary: &[u8], key: &SigningKey) -> Vec<u8> {
    let mut m = manifest.clone();
    m.format = 1;
    m.name = RELEASE_NAME.into();
    m.binary_sha256 = sha256_hex(binary);
    m.binary_size = binary.len() as u64;
    // Serializing a plain struct cannot fail.
    let mbytes = serde_json::to_vec_pretty(&m).unwrap_or_default();
    let sig = key.sign(&domain_message(DOMAIN, &mbytes, binary));
    assemble(
        &mbytes,
        binary,
        key.verifying_key().as_bytes(),
        &sig.to_bytes(),
    )
}

/// A release file's parts before any trust decision (`fleet-server agent inspect`).
#[derive(Debug, Clone)]
pub struct UnverifiedRelease {
    /// The manifest as parsed (not trusted yet).
    pub manifest: ReleaseManifest,
    manifest_bytes: Vec<u8>,
    binary: Vec<u8>,
    signer: [u8; 32],
    signature: [u8; 64],
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], ReleaseError> {
    if b.len() < n {
        return Err(ReleaseError::Truncated(what));
    }
    let (a, rest) = b.split_at(n);
    *b = rest;
    Ok(a)
}

fn array<const N: usize>(b: &mut &[u8], what: &'static str) -> Result<[u8; N], ReleaseError> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(b, N, what)?);
    Ok(a)
}

/// Parses the container and checks the binary's hash; no signature check.
pub fn parse(bytes: &[u8]) -> Result<UnverifiedRelease, ReleaseError> {
    let mut b = bytes;
    if take(&mut b, 8, "magic").map_err(|_| ReleaseError::NotARelease)? != MAGIC {
        return Err(ReleaseError::NotARelease);
    }
    let format = u16::from_le_bytes(array(&mut b, "format")?);
    if format != FORMAT {
        return Err(ReleaseError::Format(format));
    }
    let mlen = u32::from_le_bytes(array(&mut b, "manifest length")?) as usize;
    if mlen > MAX_MANIFEST {
        return Err(ReleaseError::Manifest(format!(
            "{mlen} bytes exceed the {MAX_MANIFEST}-byte limit"
        )));
    }
    let manifest_bytes = take(&mut b, mlen, "manifest")?.to_vec();
    let blen = u64::from_le_bytes(array(&mut b, "binary length")?);
    if blen > MAX_BINARY || blen > b.len() as u64 {
        return Err(ReleaseError::Truncated("binary"));
    }
    let binary = take(&mut b, blen as usize, "binary")?.to_vec();
    let signer: [u8; 32] = array(&mut b, "signer key")?;
    let signature: [u8; 64] = array(&mut b, "signature")?;
    if !b.is_empty() {
        return Err(ReleaseError::Trailing(b.len()));
    }
    let manifest: ReleaseManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| ReleaseError::Manifest(e.to_string()))?;
    if manifest.format != 1 || manifest.name != RELEASE_NAME {
        return Err(ReleaseError::Manifest(format!(
            "format {} name `{}` (expected format 1, name `{RELEASE_NAME}`)",
            manifest.format, manifest.name
        )));
    }
    let actual = sha256_hex(&binary);
    if manifest.binary_sha256 != actual || manifest.binary_size != binary.len() as u64 {
        return Err(ReleaseError::BinaryHash {
            expected: manifest.binary_sha256.clone(),
            actual,
        });
    }
    Ok(UnverifiedRelease {
        manifest,
        manifest_bytes,
        binary,
        signer,
        signature,
        sha256: sha256_hex(bytes),
    })
}

impl UnverifiedRelease {
    /// The signer's key id (not trusted yet).
    pub fn signer_id(&self) -> String {
        crate::bundle::file::hex(&self.signer)[..16].to_string()
    }

    /// Checks the signature against the trusted keys.
    pub fn verify(self, trusted: &[VerifyingKey]) -> Result<Release, ReleaseError> {
        if trusted.is_empty() {
            return Err(ReleaseError::NoTrustedKeys);
        }
        let signer =
            VerifyingKey::from_bytes(&self.signer).map_err(|_| ReleaseError::BadSignature)?;
        if !trusted.iter().any(|k| k.as_bytes() == signer.as_bytes()) {
            return Err(ReleaseError::UntrustedKey(key_id(&signer)));
        }
        signer
            .verify(
                &domain_message(DOMAIN, &self.manifest_bytes, &self.binary),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| ReleaseError::BadSignature)?;
        Ok(Release {
            manifest: self.manifest,
            manifest_bytes: self.manifest_bytes,
            binary: self.binary,
            signer,
            signature: self.signature,
            sha256: self.sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest(vn: u64) -> ReleaseManifest {
        ReleaseManifest {
            format: 1,
            name: RELEASE_NAME.into(),
            version: format!("1.{vn}.0"),
            version_number: vn,
            target: "x86_64-unknown-linux-gnu".into(),
            binary_sha256: String::new(),
            binary_size: 0,
            notes: String::new(),
        }
    }

    #[test]
    fn round_trip_seal_rebuilds_the_same_file() {
        let k = key(1);
        let bytes = pack(&manifest(2), b"\x7fELF binary", &k);
        let r = Release::from_bytes(&bytes, &[k.verifying_key()], "x86_64-unknown-linux-gnu", 1)
            .unwrap();
        assert_eq!(r.binary(), b"\x7fELF binary");
        assert_eq!(r.to_bytes(), bytes);
        assert_eq!(r.sha256(), sha256_hex(&bytes));
        let again = Release::from_parts(
            r.binary().to_vec(),
            &r.seal(),
            &[k.verifying_key()],
            "x86_64-unknown-linux-gnu",
        )
        .unwrap();
        assert_eq!(again.sha256(), r.sha256());
    }

    #[test]
    fn refusals_name_the_reason() {
        let k = key(1);
        let trusted = [k.verifying_key()];
        let t = "x86_64-unknown-linux-gnu";
        let bytes = pack(&manifest(2), b"binary", &k);
        let err = |b: &[u8], keys: &[VerifyingKey], target: &str, floor: u64| {
            Release::from_bytes(b, keys, target, floor)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&bytes, &trusted, "aarch64-unknown-linux-musl", 0).contains("built for x86_64"));
        assert!(err(&bytes, &trusted, t, 3).contains("below this device's floor 3"));
        assert!(err(&bytes, &[key(2).verifying_key()], t, 0).contains("not trusted"));
        assert!(err(&bytes, &[], t, 0).contains("no release signing key"));
        assert!(err(&bytes[..bytes.len() - 10], &trusted, t, 0).contains("truncated"));
        let mut altered = bytes.clone();
        let at = altered.len() - 64 - 32 - 2; // inside the binary
        altered[at] ^= 1;
        assert!(err(&altered, &trusted, t, 0).contains("hash mismatch"));
        let mut sig = bytes.clone();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        assert!(err(&sig, &trusted, t, 0).contains("signature does not verify"));
        assert!(err(b"EDGEBNDL....", &trusted, t, 0).contains("not an agent release"));
        // A bundle's signature never verifies as a release: different domain.
        let mut m = bytes.clone();
        m.extend_from_slice(b"x");
        assert!(err(&m, &trusted, t, 0).contains("trailing"));
    }
}
