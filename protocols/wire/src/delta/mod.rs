//! Model update deltas: how a device on bundle A gets bundle B without downloading B.
//!
//! Three methods, all producing one self-checking container; the fleet server computes each,
//! keeps the smallest, and serves the full bundle when no delta is smaller:
//!
//! - [`Method::Bsdiff`]: bsdiff of the files, zstd-compressed (bsdiff output is raw).
//! - [`Method::PatchFrom`]: zstd with A as reference prefix (`zstd --patch-from`).
//! - [`Method::TensorXor`]: ML-aware. The ONNX initializers of B are aligned by name (and
//!   byte length) with those of A; each aligned tensor is XORed with its old bytes and
//!   byte-shuffled (all first bytes of each element, then all second bytes, …) so unchanged
//!   high bytes become long zero runs; the result is compressed with A as reference prefix,
//!   which also covers everything that is not a tensor (manifest, graph, signature).
//! - [`Method::Zstd`]: the new file alone, zstd-compressed — no base needed; what a device
//!   gets when the server does not hold the bundle it runs (a compressed full download).
//!
//! ```text
//! "EDGEDLTA" | u8 container version (=1) | u8 method | SHA-256(A) | SHA-256(B) | u64 len(B)
//!            | method payload
//! TensorXor payload: u32 n | n × (u64 offset in B, u64 length, u64 offset in A, u8 elem)
//!                    | zstd(residual, prefix A)
//! ```
//! [`apply`] checks the base hash before and the target hash after: a truncated, tampered
//! or misdirected delta is an error, never a wrong file.

mod onnx_tensors;

use std::io::{Read, Write};
use std::ops::Range;

use sha2::{Digest, Sha256};

pub use onnx_tensors::{tensor_spans, TensorSpan};

const MAGIC: &[u8; 8] = b"EDGEDLTA";
const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 1 + 32 + 32 + 8;
const LEVEL: i32 = 19;
/// Past this size zstd runs at [`LARGE_LEVEL`]: level 19 takes minutes on a 100 MB file
/// (unstripped agent binaries), for a few percent.
const LARGE: usize = 48 << 20;
const LARGE_LEVEL: i32 = 3;

/// The zstd level for a result of `len` bytes.
fn level(len: usize) -> i32 {
    if len > LARGE {
        LARGE_LEVEL
    } else {
        LEVEL
    }
}
/// Largest file a delta may produce (the bundle size limit).
const MAX_TARGET: u64 = 2 << 30;

/// A delta method. Names are used on the wire (`X-Delta-Method`) and in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// bsdiff of the old and new file, zstd-compressed (`bsdiff-zstd`).
    Bsdiff,
    /// zstd of the new file with the old one as dictionary (`zstd-patch-from`).
    PatchFrom,
    /// ONNX initializers aligned by name, XORed with the old bytes, byte-shuffled, zstd
    /// (`tensor-xor-zstd`).
    TensorXor,
    /// The new file alone, zstd-compressed (`zstd-full`).
    Zstd,
}

impl Method {
    /// Whether the result depends on the old file.
    pub fn needs_base(self) -> bool {
        self != Method::Zstd
    }
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 4] = [
        Method::Bsdiff,
        Method::PatchFrom,
        Method::TensorXor,
        Method::Zstd,
    ];

    /// The method's name on the wire and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Bsdiff => "bsdiff-zstd",
            Method::PatchFrom => "zstd-patch-from",
            Method::TensorXor => "tensor-xor-zstd",
            Method::Zstd => "zstd-full",
        }
    }

    /// The method's byte in the delta header.
    pub fn code(self) -> u8 {
        match self {
            Method::Bsdiff => 1,
            Method::PatchFrom => 2,
            Method::TensorXor => 3,
            Method::Zstd => 4,
        }
    }

    fn from_code(c: u8) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.code() == c)
    }

    /// The method of a name.
    pub fn from_name(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// A delta that cannot be applied; nothing is written.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Not a delta container.
    #[error("not a delta (bad magic bytes)")]
    NotADelta,
    /// A container version this build does not read.
    #[error("delta container version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// A method code this build does not know.
    #[error("unknown delta method code {0}")]
    UnknownMethod(u8),
    /// The container ends early (which part).
    #[error("delta is truncated ({0})")]
    Truncated(&'static str),
    /// Made for another base file.
    #[error("delta was made for base {expected}, but the installed bundle is {actual}")]
    WrongBase {
        /// The base SHA-256 the delta names.
        expected: String,
        /// The SHA-256 of the file it was applied to.
        actual: String,
    },
    /// Applied, but the result is not the target it names.
    #[error("delta produced a file with hash {actual}, expected {expected}: the delta is corrupt")]
    WrongResult {
        /// The target SHA-256 the delta names.
        expected: String,
        /// The SHA-256 of what came out.
        actual: String,
    },
    /// Declares a target above the size limit (checked before anything is inflated).
    #[error("delta declares a target of {0} bytes, above the limit")]
    TooLarge(u64),
    /// The method's payload does not decode.
    #[error("delta payload is corrupt: {0}")]
    Corrupt(String),
    /// The method cannot be used on these files.
    #[error("method {0} does not apply to these files (no ONNX tensors to align)")]
    NotApplicable(&'static str),
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn hex(b: &[u8]) -> String {
    crate::bundle::file::hex(b)
}

fn corrupt(e: std::io::Error) -> DeltaError {
    DeltaError::Corrupt(e.to_string())
}

fn window_log(old: &[u8], new_len: usize) -> u32 {
    let total = (old.len() + new_len).max(1024) as u64;
    (64 - (total - 1).leading_zeros()).clamp(10, 30)
}

fn compress_with_prefix(old: &[u8], data: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level(data.len()), old)
        .map_err(corrupt)?;
    enc.window_log(window_log(old, data.len()))
        .map_err(corrupt)?;
    enc.long_distance_matching(true).map_err(corrupt)?;
    enc.set_pledged_src_size(Some(data.len() as u64))
        .map_err(corrupt)?;
    enc.write_all(data).map_err(corrupt)?;
    enc.finish().map_err(corrupt)
}

fn decompress_with_prefix(old: &[u8], data: &[u8], limit: u64) -> Result<Vec<u8>, DeltaError> {
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(data, old).map_err(corrupt)?;
    dec.window_log_max(31).map_err(corrupt)?;
    let mut out = Vec::new();
    dec.take(limit + 1).read_to_end(&mut out).map_err(corrupt)?;
    Ok(out)
}

/// Where a bundle file's ONNX model lies (see `bundle::file`), if it is a bundle.
fn model_range(file: &[u8]) -> Option<Range<usize>> {
    let mlen = u32::from_le_bytes(file.get(10..14)?.try_into().ok()?) as usize;
    let at = 14usize.checked_add(mlen)?;
    let len = usize::try_from(u64::from_le_bytes(file.get(at..at + 8)?.try_into().ok()?)).ok()?;
    let start = at + 8;
    let end = start.checked_add(len)?;
    (file.get(..8)? == b"EDGEBNDL" && end <= file.len()).then_some(start..end)
}

/// ONNX initializers of a bundle file (or of a bare ONNX file), absolute offsets.
fn spans_of(file: &[u8]) -> Option<Vec<TensorSpan>> {
    let r = model_range(file).unwrap_or(0..file.len());
    tensor_spans(file, r)
}

struct Region {
    new: Range<usize>,
    old_start: usize,
    elem: usize,
}

fn aligned_regions(old: &[u8], new: &[u8]) -> Option<Vec<Region>> {
    let old_spans = spans_of(old)?;
    let new_spans = spans_of(new)?;
    let by_name: std::collections::HashMap<&str, &TensorSpan> =
        old_spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let regions: Vec<Region> = new_spans
        .iter()
        .filter_map(|n| {
            let o = by_name.get(n.name.as_str())?;
            (o.range.len() == n.range.len() && o.elem == n.elem).then(|| Region {
                new: n.range.clone(),
                old_start: o.range.start,
                elem: n.elem,
            })
        })
        .collect();
    (!regions.is_empty()).then_some(regions)
}

fn shuffle(src: &[u8], elem: usize, dst: &mut [u8]) {
    let n = src.len() / elem;
    for (i, chunk) in src.chunks_exact(elem).enumerate() {
        for (j, b) in chunk.iter().enumerate() {
            dst[j * n + i] = *b;
        }
    }
    let tail = n * elem;
    dst[tail..].copy_from_slice(&src[tail..]);
}

fn unshuffle(src: &[u8], elem: usize, dst: &mut [u8]) {
    let n = src.len() / elem;
    for (i, chunk) in dst.chunks_exact_mut(elem).enumerate() {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = src[j * n + i];
        }
    }
    let tail = n * elem;
    dst[tail..].copy_from_slice(&src[tail..]);
}

fn header(method: Method, old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.push(method.code());
    // A method without a base records no base hash.
    h.extend_from_slice(&if method.needs_base() {
        sha(old)
    } else {
        [0; 32]
    });
    h.extend_from_slice(&sha(new));
    h.extend_from_slice(&(new.len() as u64).to_le_bytes());
    h
}

/// Makes a delta from `old` to `new` with one method. CPU-heavy (seconds for MBs): run it
/// off the async runtime and cache the result.
pub fn make(method: Method, old: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut out = header(method, old, new);
    match method {
        Method::Bsdiff => {
            let mut patch = Vec::new();
            bsdiff::diff(old, new, &mut patch).map_err(corrupt)?;
            out.extend(zstd::bulk::compress(&patch, level(new.len())).map_err(corrupt)?);
        }
        Method::PatchFrom => out.extend(compress_with_prefix(old, new)?),
        Method::Zstd => out.extend(zstd::bulk::compress(new, level(new.len())).map_err(corrupt)?),
        Method::TensorXor => {
            let regions =
                aligned_regions(old, new).ok_or(DeltaError::NotApplicable(method.name()))?;
            let mut residual = new.to_vec();
            let mut x = Vec::new();
            out.extend_from_slice(&(regions.len() as u32).to_le_bytes());
            for r in &regions {
                let o = &old[r.old_start..r.old_start + r.new.len()];
                x.clear();
                x.extend(new[r.new.clone()].iter().zip(o).map(|(a, b)| a ^ b));
                shuffle(&x, r.elem, &mut residual[r.new.clone()]);
                for v in [r.new.start as u64, r.new.len() as u64, r.old_start as u64] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.push(r.elem as u8);
            }
            out.extend(compress_with_prefix(old, &residual)?);
        }
    }
    Ok(out)
}

/// Every applicable method's delta, smallest first.
pub fn make_all(old: &[u8], new: &[u8]) -> Vec<(Method, Result<Vec<u8>, DeltaError>)> {
    let mut all: Vec<_> = Method::ALL
        .into_iter()
        .map(|m| (m, make(m, old, new)))
        .collect();
    all.sort_by_key(|(_, r)| r.as_ref().map(Vec::len).unwrap_or(usize::MAX));
    all
}

/// What a delta says about itself (without applying it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaInfo {
    /// How it was made.
    pub method: Method,
    /// SHA-256 of the file it applies to (not checked for `zstd-full`, which needs none).
    pub base_sha256: String,
    /// SHA-256 of the file it makes.
    pub target_sha256: String,
    /// Size of the file it makes.
    pub target_len: u64,
}

/// Reads a delta's header, checking magic, version, method and sizes; applies nothing.
pub fn inspect(delta: &[u8]) -> Result<DeltaInfo, DeltaError> {
    if delta.len() < 8 || &delta[..8] != MAGIC {
        return Err(DeltaError::NotADelta);
    }
    if delta.len() < HEADER {
        return Err(DeltaError::Truncated("header"));
    }
    if delta[8] != VERSION {
        return Err(DeltaError::Version(delta[8]));
    }
    let method = Method::from_code(delta[9]).ok_or(DeltaError::UnknownMethod(delta[9]))?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&delta[74..82]);
    Ok(DeltaInfo {
        method,
        base_sha256: hex(&delta[10..42]),
        target_sha256: hex(&delta[42..74]),
        target_len: u64::from_le_bytes(len),
    })
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, DeltaError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(DeltaError::Truncated("region table"))
}

/// Rebuilds the new file from the old one and a delta; checks both hashes.
pub fn apply(old: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let info = inspect(delta)?;
    let actual = hex(&sha(old));
    if info.method.needs_base() && actual != info.base_sha256 {
        return Err(DeltaError::WrongBase {
            expected: info.base_sha256,
            actual,
        });
    }
    if info.target_len > MAX_TARGET {
        return Err(DeltaError::TooLarge(info.target_len));
    }
    let body = &delta[HEADER..];
    let new = match info.method {
        Method::Bsdiff => {
            let mut patch = Vec::new();
            zstd::stream::read::Decoder::new(body)
                .map_err(corrupt)?
                .take(info.target_len.saturating_mul(4) + (1 << 20))
                .read_to_end(&mut patch)
                .map_err(corrupt)?;
            // No capacity from the header: it is not verified until the result is hashed.
            let mut new = Vec::new();
            bsdiff::patch(old, &mut patch.as_slice(), &mut new).map_err(corrupt)?;
            new
        }
        Method::PatchFrom => decompress_with_prefix(old, body, info.target_len)?,
        Method::Zstd => {
            let mut new = Vec::new();
            zstd::stream::read::Decoder::new(body)
                .map_err(corrupt)?
                .take(info.target_len + 1)
                .read_to_end(&mut new)
                .map_err(corrupt)?;
            new
        }
        Method::TensorXor => {
            let n = body
                .get(..4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
                .ok_or(DeltaError::Truncated("region count"))?;
            let table = 4 + n.checked_mul(25).ok_or(DeltaError::Truncated("regions"))?;
            if body.len() < table {
                return Err(DeltaError::Truncated("region table"));
            }
            let mut new = decompress_with_prefix(old, &body[table..], info.target_len)?;
            let mut x = Vec::new();
            for i in 0..n {
                let at = 4 + i * 25;
                let (start, len, old_start) = (
                    u64_at(body, at)? as usize,
                    u64_at(body, at + 8)? as usize,
                    u64_at(body, at + 16)? as usize,
                );
                let elem = usize::from(body[at + 24]).max(1);
                let (Some(nr), Some(or)) = (
                    start.checked_add(len).filter(|e| *e <= new.len()),
                    old_start.checked_add(len).filter(|e| *e <= old.len()),
                ) else {
                    return Err(DeltaError::Corrupt(format!("region {i} is out of bounds")));
                };
                x.resize(len, 0);
                unshuffle(&new[start..nr], elem, &mut x);
                for (d, (a, b)) in new[start..nr]
                    .iter_mut()
                    .zip(x.iter().zip(&old[old_start..or]))
                {
                    *d = a ^ b;
                }
            }
            new
        }
    };
    let got = hex(&sha(&new));
    if new.len() as u64 != info.target_len || got != info.target_sha256 {
        return Err(DeltaError::WrongResult {
            expected: info.target_sha256,
            actual: got,
        });
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::onnx_tensors::tests::tiny_model;
    use super::*;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut r = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| r.f32() * 2.0 - 1.0).collect()
    }

    #[test]
    fn every_method_round_trips() {
        let w1 = weights(4096, 1);
        let w2 = weights(512, 2);
        let old = tiny_model(&w1, &w2);
        let mut w2b = w2.clone();
        for w in w2b.iter_mut().step_by(3) {
            *w += 0.01;
        }
        let new = tiny_model(&w1, &w2b);
        for m in Method::ALL {
            let d = make(m, &old, &new).unwrap();
            assert_eq!(inspect(&d).unwrap().method, m);
            assert_eq!(apply(&old, &d).unwrap(), new, "{}", m.name());
            if m.needs_base() {
                assert!(d.len() < new.len() / 4, "{}: {} bytes", m.name(), d.len());
            }
        }
    }

    #[test]
    fn tensor_xor_beats_bsdiff_when_every_weight_moves() {
        let w1 = weights(20_000, 3);
        let old = tiny_model(&w1, &w1[..64]);
        let w1b: Vec<f32> = w1.iter().map(|w| w * 1.0001).collect();
        let new = tiny_model(&w1b, &w1[..64]);
        let xor = make(Method::TensorXor, &old, &new).unwrap();
        let bs = make(Method::Bsdiff, &old, &new).unwrap();
        assert_eq!(apply(&old, &xor).unwrap(), new);
        assert!(
            xor.len() < bs.len(),
            "xor {} vs bsdiff {}",
            xor.len(),
            bs.len()
        );
    }

    #[test]
    fn bad_deltas_are_errors_not_files() {
        let old = tiny_model(&weights(1000, 4), &weights(100, 5));
        let new = tiny_model(&weights(1000, 6), &weights(100, 5));
        for m in Method::ALL {
            let d = make(m, &old, &new).unwrap();
            // Truncated anywhere.
            for cut in [5, HEADER - 1, HEADER + 3, d.len() - 1] {
                assert!(apply(&old, &d[..cut]).is_err(), "{} cut at {cut}", m.name());
            }
            // A flipped bit in the payload.
            let mut t = d.clone();
            let last = t.len() - 2;
            t[last] ^= 0x40;
            assert!(apply(&old, &t).is_err(), "{} tampered", m.name());
            // Applied to the wrong base.
            if m.needs_base() {
                let err = apply(&new, &d).unwrap_err();
                assert!(matches!(err, DeltaError::WrongBase { .. }), "{err}");
            } else {
                assert_eq!(apply(b"anything", &d).unwrap(), new);
            }
        }
        assert!(matches!(
            apply(&old, b"not a delta at all"),
            Err(DeltaError::NotADelta)
        ));
    }

    #[test]
    fn tensor_xor_needs_tensors() {
        let err = make(Method::TensorXor, b"plain old bytes", b"plain new bytes").unwrap_err();
        assert!(matches!(err, DeltaError::NotApplicable(_)));
    }

    #[test]
    fn shuffle_inverts() {
        let src: Vec<u8> = (0..=250).collect();
        for elem in [1, 2, 4, 8] {
            let mut s = vec![0; src.len()];
            let mut back = vec![0; src.len()];
            shuffle(&src, elem, &mut s);
            unshuffle(&s, elem, &mut back);
            assert_eq!(back, src);
        }
    }
}
