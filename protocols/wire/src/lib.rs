//! What the edge agent and the fleet server say — to each other and to the plant's consumers.
//! Everything here is a format with a byte layout someone else relies on:
//!
//! - [`sample`]: the [`Sample`] every source produces (tag, UTC ns, typed value, quality);
//! - [`records`]: the outbox streams ([`records::Stream`]) and what each stream's records hold
//!   on disk and on the sync wire (CBOR) — the agent writes and the fleet server reads them here;
//! - [`bundle`]: the signed model bundle (container, manifest, feature spec); a bundle read from
//!   bytes is unverified until [`bundle::file::Unverified::verify`] checked its signature;
//! - [`release`]: the signed agent release (the `edge-agent` binary for one target);
//! - [`sync`]: the agent ↔ fleet server messages (versioned CBOR envelope, zstd);
//! - [`delta`]: model update deltas (bsdiff, zstd patch-from, ONNX tensor XOR);
//! - [`drift`]: mergeable drift summaries and scores; [`drift_policy`]: when a column drifts;
//! - [`sparkplug`]: the Sparkplug B 3.0 protobuf payload;
//! - [`tls`]: rustls client configurations (ring provider) for both binaries' HTTPS and MQTT;
//! - [`config_check`]: the key paths and issues every config validator reports.
//!
//! Architecture invariant: this crate never depends on `edge-sources`, `edge-agent` or
//! `fleet-server`, and does no I/O beyond reading files it is pointed at: no tasks, no sockets.

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]
#![warn(missing_docs)]

pub mod bundle;
pub mod config_check;
pub mod delta;
pub mod drift;
pub mod drift_policy;
pub mod records;
pub mod release;
pub mod sample;
pub mod sparkplug;
pub mod sync;
pub mod tls;

pub use sample::{now_ns, Quality, Sample, Tag, Value};
