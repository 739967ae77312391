//! The agent ↔ fleet-server sync wire: every message, its version, and its encoding.
//!
//! Bodies are `zstd(CBOR(Envelope))` with content type [`CONTENT_TYPE`]; the envelope carries
//! the protocol version so either side can refuse a version it does not speak with a clear
//! error instead of misreading it. Uploads are idempotent by (device, stream, sequence) and
//! the server acks the highest contiguous sequence it stored ([`UploadAck`]).
//!
//! Endpoints (HTTPS; every one except enrollment requires the device's client certificate):
//!
//! | method, path | request | response |
//! |---|---|---|
//! | `POST /v1/enroll` | [`EnrollRequest`] | [`EnrollReply`] |
//! | `POST /v1/checkin` | [`CheckIn`] | [`CheckInReply`] |
//! | `POST /v1/upload` | [`UploadBatch`] | [`UploadAck`] |
//! | `POST /v1/report` | [`UpdateReport`] | [`Empty`] |
//! | `POST /v1/config/report` | [`ConfigReport`] | [`Empty`] |
//! | `POST /v1/command/result` | [`CommandResult`] | [`Empty`] |
//! | `POST /v1/renew` | [`RenewRequest`] | [`RenewReply`] |
//! | `POST /v1/renew/confirm` (with the renewed certificate) | [`Empty`] | [`Empty`] |
//! | `POST /v1/agent/report` | [`AgentReport`] | [`Empty`] |
//! | `GET /v1/artifacts/{sha256}` | — | bundle, agent release or delta bytes (HTTP ranges) |
//!
//! Errors are plain-text bodies with a 4xx/5xx status.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version of the messages in this module.
pub const PROTOCOL_VERSION: u16 = 1;
/// Content type of every sync body.
pub const CONTENT_TYPE: &str = "application/vnd.edge-sync+cbor";
/// Bodies are zstd-compressed; sent as `Content-Encoding: zstd`.
pub const CONTENT_ENCODING: &str = "zstd";
/// Largest message body accepted, compressed and decompressed.
pub const MAX_BODY: usize = 16 << 20;

/// Endpoint paths of the device API.
pub mod path {
    /// [`super::EnrollRequest`] → [`super::EnrollReply`].
    pub const ENROLL: &str = "/v1/enroll";
    /// [`super::CheckIn`] → [`super::CheckInReply`].
    pub const CHECKIN: &str = "/v1/checkin";
    /// [`super::UploadBatch`] → [`super::UploadAck`].
    pub const UPLOAD: &str = "/v1/upload";
    /// [`super::UpdateReport`] → [`super::Empty`].
    pub const REPORT: &str = "/v1/report";
    /// Followed by `/{sha256}`.
    pub const ARTIFACTS: &str = "/v1/artifacts";
    /// [`super::ConfigReport`] → [`super::Empty`].
    pub const CONFIG_REPORT: &str = "/v1/config/report";
    /// [`super::CommandResult`] → [`super::Empty`].
    pub const COMMAND_RESULT: &str = "/v1/command/result";
    /// [`super::RenewRequest`] → [`super::RenewReply`] (with the certificate in use).
    pub const RENEW: &str = "/v1/renew";
    /// [`super::Empty`] → [`super::Empty`], presented with the renewed certificate.
    pub const RENEW_CONFIRM: &str = "/v1/renew/confirm";
    /// [`super::AgentReport`] → [`super::Empty`].
    pub const AGENT_REPORT: &str = "/v1/agent/report";
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u16,
    msg: T,
}

/// A body that cannot be decoded; the receiver answers 4xx and stores nothing.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not zstd, or a broken zstd stream.
    #[error("body is not zstd: {0}")]
    Compression(String),
    /// Over [`MAX_BODY`], compressed or inflated.
    #[error("body exceeds {MAX_BODY} bytes")]
    TooLarge,
    /// An envelope version this side does not speak.
    #[error(
        "sync message version {0} is not supported (this side speaks version {PROTOCOL_VERSION})"
    )]
    Version(u16),
    /// Not CBOR, or not the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes a message: CBOR in a versioned envelope, zstd-compressed.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut cbor = Vec::new();
    // Serializing our own plain structs into a Vec cannot fail.
    if let Err(e) = ciborium::into_writer(
        &Envelope {
            v: PROTOCOL_VERSION,
            msg,
        },
        &mut cbor,
    ) {
        tracing::error!("CBOR encoding failed: {e}");
    }
    compress(&cbor)
}

thread_local! {
    /// One zstd compression and one decompression context per thread, reused: a fresh
    /// context per message cost more than the message (its tables are allocated, zeroed and,
    /// past glibc's mmap threshold, unmapped again on every call).
    static ZSTD: std::cell::RefCell<Option<(zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn with_zstd<R>(
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>, &mut zstd::bulk::Decompressor<'static>) -> R,
) -> std::io::Result<R> {
    ZSTD.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(std::io::Error::other)?;
        if slot.is_none() {
            *slot = Some((
                zstd::bulk::Compressor::new(COMPRESSION_LEVEL)?,
                zstd::bulk::Decompressor::new()?,
            ));
        }
        match slot.as_mut() {
            Some((c, d)) => Ok(f(c, d)),
            None => Err(std::io::Error::other("zstd context missing")),
        }
    })
}

/// zstd level of sync bodies.
const COMPRESSION_LEVEL: i32 = 3;

fn compress(cbor: &[u8]) -> Vec<u8> {
    match with_zstd(|c, _| c.compress(cbor)) {
        Ok(Ok(z)) => z,
        // A context that cannot be had (out of memory) or a re-entrant call: a fresh one.
        _ => zstd::bulk::compress(cbor, COMPRESSION_LEVEL).unwrap_or_default(),
    }
}

/// Inflates a body into at most [`MAX_BODY`] bytes (one more means "too large"). Frames
/// that state their size (every body [`encode`] writes) go through the thread's reused
/// context in one call; anything else (several frames, no size, a streaming writer)
/// through a streaming decoder, which also gives the precise error for a broken body.
fn decompress(body: &[u8]) -> Result<Vec<u8>, WireError> {
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(body) {
        if size > MAX_BODY as u64 {
            return Err(WireError::TooLarge);
        }
        if let Ok(Ok(v)) = with_zstd(|_, d| d.decompress(body, size as usize)) {
            if v.len() as u64 == size {
                return Ok(v);
            }
        }
    }
    let mut cbor = Vec::new();
    zstd::stream::read::Decoder::new(body)
        .and_then(|d| {
            use std::io::Read;
            d.take(MAX_BODY as u64 + 1).read_to_end(&mut cbor)
        })
        .map_err(|e| WireError::Compression(e.to_string()))?;
    Ok(cbor)
}

/// Decodes a message; checks size, compression, version and shape.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_BODY {
        return Err(WireError::TooLarge);
    }
    let cbor = decompress(body)?;
    if cbor.len() > MAX_BODY {
        return Err(WireError::TooLarge);
    }
    #[derive(Deserialize)]
    struct Version {
        v: u16,
    }
    let v: Version =
        ciborium::from_reader(cbor.as_slice()).map_err(|e| WireError::Malformed(e.to_string()))?;
    if v.v != PROTOCOL_VERSION {
        return Err(WireError::Version(v.v));
    }
    let env: Envelope<T> =
        ciborium::from_reader(cbor.as_slice()).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok(env.msg)
}

/// First contact: a one-time token and a CSR made on the device (its key never leaves it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time enrollment token (`fleet-server device enroll`).
    pub token: String,
    /// PEM certificate signing request for the key made on the device.
    pub csr_pem: String,
    /// The agent's `agent.id`; the registry's device name.
    pub name: String,
    /// The agent's version (`edge-agent --version`).
    pub agent_version: String,
}

/// The device's identity, once enrolled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollReply {
    /// The registry's id of the device (the certificate's CN).
    pub device_id: String,
    /// The device certificate, signed by the fleet CA.
    pub cert_pem: String,
    /// The fleet CA: the agent trusts the server through it from now on.
    pub ca_pem: String,
}

/// One running model as the device sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// `[[models]] name`.
    pub model: String,
    /// The bundle name it serves.
    pub bundle: String,
    /// The bundle's semantic version.
    pub version: String,
    /// The bundle's monotonic version number.
    pub version_number: u64,
    /// SHA-256 of the bundle file.
    pub sha256: String,
}

/// One outbox stream as the device sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The stream's name ([`crate::records::Stream::name`]).
    pub stream: String,
    /// Records waiting for the fleet server.
    pub backlog: u64,
    /// Bytes those records hold.
    pub bytes: u64,
    /// Records the device dropped (limits, full disk) since it started counting.
    pub dropped: u64,
}

/// What the device reports at every check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckIn {
    /// The agent's version.
    pub agent_version: String,
    /// Every model it serves.
    pub models: Vec<ModelStatus>,
    /// Every outbox stream the fleet takes.
    pub streams: Vec<StreamStatus>,
    /// The last sync or update error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// The configuration file the agent runs (absent: an agent that predates remote
    /// configuration, or one run without a file).
    #[serde(default)]
    pub config: Option<ConfigStatus>,
    /// The agent software it runs (absent: an agent that predates agent updates).
    #[serde(default)]
    pub agent: Option<AgentStatus>,
}

/// The agent software a device runs, reported at every check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The running binary's version (`edge-agent --version`).
    pub version: String,
    /// The Rust target triple it was built for: the server hands out releases for it only.
    pub target: String,
    /// The fleet release it runs (`version_number`, SHA-256 of the release file); absent
    /// when it runs the binary it was installed with (the Debian package's).
    pub release: Option<(u64, String)>,
    /// A release being health-checked right now (its SHA-256).
    pub pending: Option<String>,
}

/// An agent release the server wants the device to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredRelease {
    /// The release's version string.
    pub version: String,
    /// Its monotonic release number.
    pub version_number: u64,
    /// The target it is built for (the device's).
    pub target: String,
    /// SHA-256 of the release file: the result must hash to this.
    pub sha256: String,
    /// Size of the release file.
    pub size: u64,
    /// The rollout that asks for it.
    pub rollout: Option<String>,
    /// What to download: a delta from the device's current release file, or the full one.
    pub artifact: Artifact,
}

/// How an agent software update ended, reported after it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The release's version string.
    pub version: String,
    /// Its release number.
    pub version_number: u64,
    /// SHA-256 of the release file.
    pub sha256: String,
    /// The version the device ran before.
    pub from_version: String,
    /// The rollout that asked.
    pub rollout: Option<String>,
    /// How it ended: `applied` (running and healthy), `rolled_back` (it failed its health
    /// check or kept exiting; the previous binary runs again), `failed` (never switched to:
    /// download, delta, signature, target, floor or its `--version` check failed).
    pub outcome: UpdateOutcome,
    /// How it travelled: `full`, a delta method, or `none`.
    pub method: String,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Why, in words.
    pub detail: String,
}

/// The configuration a device runs, as it reports it at every check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// SHA-256 of the configuration file's bytes as the agent loaded them. The server
    /// compares it with the desired configuration's: a local edit shows as drift.
    pub sha256: String,
    /// The fleet configuration it was applied from (`name`, `version_number`), when the
    /// file is one the fleet sent and nobody edited it since.
    pub applied: Option<(String, u64)>,
    /// A configuration being health-checked right now (its SHA-256).
    pub pending: Option<String>,
}

/// A configuration the server wants the device to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredConfig {
    /// The fleet configuration's name.
    pub name: String,
    /// Its version number (one per push of that name).
    pub version_number: u64,
    /// SHA-256 of `toml`: the file the device writes must hash to this.
    pub sha256: String,
    /// The whole agent configuration file (fragments already merged by the server).
    pub toml: String,
    /// The rollout that asks for it (reported back with the outcome).
    pub rollout: Option<String>,
}

/// How applying a configuration ended on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigOutcome {
    /// Validated, applied and healthy; now the device's last good configuration.
    Applied,
    /// Refused by validation (the checks of `edge-agent check`); nothing was touched.
    Refused,
    /// Applied, then failed its health check (or the agent kept dying with it); the last
    /// good configuration runs again.
    RolledBack,
}

/// One configuration attempt, reported after it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigReport {
    /// The fleet configuration's name.
    pub name: String,
    /// Its version number.
    pub version_number: u64,
    /// SHA-256 of the configuration.
    pub sha256: String,
    /// The rollout that asked.
    pub rollout: Option<String>,
    /// How it ended.
    pub outcome: ConfigOutcome,
    /// How it was applied: `in_process` (the agent restarted its pipeline and delivery
    /// without exiting), `restart` (the process exited for systemd to start it again), or
    /// `none` (refused).
    pub applied_by: String,
    /// Why, in words: the health check's verdict, or the refusal.
    pub detail: String,
    /// Validation errors, one per problem, each naming the key and line.
    pub errors: Vec<String>,
}

/// A bundle the server wants the device to run, with how to get it from what it runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredBundle {
    /// The bundle name (the model entries serving it are updated).
    pub bundle: String,
    /// Its semantic version.
    pub version: String,
    /// Its monotonic version number.
    pub version_number: u64,
    /// SHA-256 of the bundle file: the result must hash to this.
    pub sha256: String,
    /// Size of the bundle file.
    pub size: u64,
    /// The rollout that asks for it (reported back with the outcome).
    pub rollout: Option<String>,
    /// What to download: a delta from the device's current bundle, or the full bundle.
    pub artifact: Artifact,
}

/// What the device downloads for a [`DesiredBundle`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// SHA-256 of the artifact bytes (its address under [`path::ARTIFACTS`]).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// `full` or a [`crate::delta::Method`] name.
    pub method: String,
}

/// The server's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckInReply {
    /// The device's registry id.
    pub device_id: String,
    /// Bundles the device should run that it does not run yet.
    pub desired: Vec<DesiredBundle>,
    /// Seconds until the next check-in.
    pub next_checkin_s: u64,
    /// The configuration the device should run, when its reported one differs (absent for
    /// servers that predate remote configuration).
    #[serde(default)]
    pub desired_config: Option<DesiredConfig>,
    /// Operators' commands for the device, oldest first (each until the device sent its
    /// result; the device runs each id at most once).
    #[serde(default)]
    pub commands: Vec<DeviceCommand>,
    /// Renew the device certificate now (two thirds of its lifetime passed, or the fleet
    /// CA is being rotated).
    #[serde(default)]
    pub renew: bool,
    /// The agent release the device should run, when it runs another one.
    #[serde(default)]
    pub desired_agent: Option<DesiredRelease>,
}

/// A certificate renewal: a CSR for a key made on the device now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PEM certificate signing request.
    pub csr_pem: String,
}

/// The renewed certificate (the device confirms it by using it, see [`path::RENEW_CONFIRM`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewReply {
    /// The new device certificate.
    pub cert_pem: String,
    /// The CA certificates the device should trust for the server from now on (PEM, one
    /// or two during a CA rotation).
    pub ca_pem: String,
    /// When the new certificate expires (Unix ms).
    pub not_after_ms: u64,
}

/// An operator's command to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCommand {
    /// The server's id of the command (the result names it).
    pub id: String,
    /// What to do.
    pub action: CommandAction,
}

/// What a command asks the device to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandAction {
    /// Restart the agent process (it exits for systemd to start it again; the result is
    /// sent first).
    Restart,
    /// Load every model's bundle file again, with every check.
    ReloadBundles,
    /// Sparkplug outputs publish their births again (as on a `Node Control/Rebirth` NCMD).
    Rebirth,
    /// Forget the updates and configurations given up on (so they are tried again) and
    /// sync at once.
    Resync,
    /// Recent log lines the agent kept in memory.
    Logs {
        /// From this time (Unix ms).
        since_ms: u64,
        /// Until this time (Unix ms; absent: now).
        until_ms: Option<u64>,
        /// The least level: `error`, `warn`, `info`, `debug` or `trace`.
        level: String,
        /// At most this many bytes of text (the newest lines are kept).
        max_bytes: u64,
    },
    /// A diagnostic bundle (JSON): versions, configuration hash, metrics, outbox, sources,
    /// models, sync and remote configuration state.
    Diagnostics {
        /// At most this many bytes.
        max_bytes: u64,
    },
}

/// How a command ended on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Done (for `restart`: about to happen).
    Done,
    /// Tried and failed; `detail` says why.
    Failed,
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's id.
    pub id: String,
    /// How it ended.
    pub outcome: CommandOutcome,
    /// What happened, in words.
    pub detail: String,
    /// `text/plain` (logs), `application/json` (diagnostics), or empty.
    pub content_type: String,
    /// The logs or the diagnostic bundle.
    #[serde(with = "serde_bytes")]
    pub attachment: Vec<u8>,
}

/// One outbox record as stored on the device (the outbox's own CBOR payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The record's sequence number in its stream.
    pub seq: u64,
    /// Milliseconds since the epoch when the device stored it.
    pub ts_ms: u64,
    /// The record as [`crate::records`] encodes it.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Consecutive records of one stream, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    /// The stream's name.
    pub stream: String,
    /// The device no longer holds records below this (dropped by its limits): the server
    /// may move its contiguous mark past them and counts them as lost on the device.
    pub first_available: u64,
    /// The records.
    pub records: Vec<UploadRecord>,
}

/// What the server stored of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadAck {
    /// The stream's name.
    pub stream: String,
    /// Every record up to here is stored; the device may forget them.
    pub acked_through: u64,
    /// Records in the batch that were already stored (replays).
    pub duplicates: u64,
}

/// How a model update ended on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// Installed and healthy.
    Applied,
    /// Installed, then failed to load or its health check; the previous bundle runs again.
    RolledBack,
    /// Never installed (download, delta or verification failed).
    Failed,
}

/// One update attempt, reported after it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateReport {
    /// The `[[models]]` entry updated.
    pub model: String,
    /// The bundle name.
    pub bundle: String,
    /// The version number it ran before.
    pub from_version_number: u64,
    /// The version number it was asked to run.
    pub to_version_number: u64,
    /// The rollout that asked.
    pub rollout: Option<String>,
    /// How it ended.
    pub outcome: UpdateOutcome,
    /// How the bundle travelled: `full`, a delta method, `local` (the kept previous file) or
    /// `none`.
    pub method: String,
    /// Bytes downloaded over every (resumed) attempt.
    pub downloaded_bytes: u64,
    /// Why, in words (the health check's verdict, the refusal, the rollback).
    pub detail: String,
}

/// An empty reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_compact_bytes() {
        let b = UploadBatch {
            stream: "samples".into(),
            first_available: 1,
            records: vec![UploadRecord {
                seq: 1,
                ts_ms: 2,
                body: vec![7; 1000],
            }],
        };
        let enc = encode(&b);
        assert!(enc.len() < 100, "{} bytes", enc.len());
        assert_eq!(decode::<UploadBatch>(&enc).unwrap(), b);
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let mut cbor = Vec::new();
        ciborium::into_writer(
            &Envelope {
                v: 9,
                msg: Empty {},
            },
            &mut cbor,
        )
        .unwrap();
        let body = zstd::bulk::compress(&cbor, 1).unwrap();
        let e = decode::<Empty>(&body).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        assert!(matches!(
            decode::<Empty>(b"plain text"),
            Err(WireError::Compression(_))
        ));
        let wrong = encode(&Empty {});
        assert!(matches!(
            decode::<UploadAck>(&wrong),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let huge = vec![0u8; MAX_BODY + 10];
        let body = zstd::bulk::compress(&huge, 1).unwrap();
        assert!(body.len() < MAX_BODY);
        assert!(matches!(decode::<Empty>(&body), Err(WireError::TooLarge)));
    }
}
