//! Fuzz targets: one function per parser of untrusted or operator input, each taking raw bytes.
//!
//! The same functions run in two places:
//! - `fuzz/libfuzzer/` (cargo-fuzz, nightly): coverage-guided fuzzing, `tests/fuzz.sh`;
//! - `tests/replay.rs` (stable, part of the test suite): every committed corpus file
//!   (`fuzz/corpus/<target>/`) is replayed, so an input that once crashed stays a test.
//!
//! A target must never panic, whatever the bytes. Beyond "no panic", each target asserts the
//! parser's contract where it has one (a decoded record re-encodes to the same bytes, a good
//! sample never carries NaN/inf, a delta never yields more than it declares), so the fuzzer
//! also finds wrong answers, not only crashes.
//!
//! [`TARGETS`] is the one list of targets; the libFuzzer harness has one file per entry.

#![forbid(unsafe_code)]

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use edge_sources::modbus::codec::{apply_scaling, decode_registers, ByteOrder, DataType};
use edge_sources::mqtt::payload::{
    parse_json, parse_plain, timestamp_at, value_at, TimestampFormat,
};
use edge_sources::opcua::config::TimestampSource;
use edge_sources::opcua::values::data_value_to_sample;
use edge_wire::bundle::file as bundle_file;
use edge_wire::bundle::manifest::{ColumnStats, Reference, REFERENCE_QUANTILES};
use edge_wire::config_check::{Issues, KeyPath};
use edge_wire::drift::fleet::MergedDrift;
use edge_wire::drift::policy::DriftPolicy;
use edge_wire::drift::summary::score;
use edge_wire::records::{self, Stream};
use edge_wire::{delta, sync, Quality, Sample, Tag, Value};

/// Every target by name (the name is its corpus folder and its libFuzzer binary).
/// A fuzz target: raw bytes in, a panic for a finding.
pub type Target = fn(&[u8]);

pub const TARGETS: &[(&str, Target)] = &[
    ("sync_body", sync_body),
    ("sync_cbor", sync_cbor),
    ("bundle", bundle),
    ("delta_apply", delta_apply),
    ("outbox_records", outbox_records),
    ("sparkplug_commands", sparkplug_commands),
    ("mqtt_payload", mqtt_payload),
    ("modbus_registers", modbus_registers),
    ("opcua_values", opcua_values),
    ("agent_config", agent_config),
    ("recording_csv", recording_csv),
    ("drift_records", drift_records),
    ("operator_json", operator_json),
];

/// Runs the target called `name`; `false` if there is none.
pub fn run(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

/// Decodes `body` as every message type of the sync wire, as the fleet server (requests) and
/// the agent (replies) do. A message that decodes must survive a re-encode.
fn decode_all_messages(body: &[u8]) {
    fn one<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
        if let Ok(msg) = sync::decode::<T>(body) {
            let again = sync::encode(&msg);
            assert!(
                sync::decode::<T>(&again).is_ok(),
                "a decoded sync message does not decode after re-encoding"
            );
        }
    }
    // Server side: what devices send.
    one::<sync::EnrollRequest>(body);
    one::<sync::CheckIn>(body);
    one::<sync::UploadBatch>(body);
    one::<sync::UpdateReport>(body);
    one::<sync::ConfigReport>(body);
    one::<sync::CommandResult>(body);
    one::<sync::RenewRequest>(body);
    one::<sync::AgentReport>(body);
    // Agent side: what the server answers.
    one::<sync::EnrollReply>(body);
    one::<sync::RenewReply>(body);
    one::<sync::CheckInReply>(body);
    one::<sync::UploadAck>(body);
    one::<sync::Empty>(body);
}

/// A sync body as it arrives over HTTP (zstd-compressed CBOR envelope).
pub fn sync_body(data: &[u8]) {
    decode_all_messages(data);
}

/// The CBOR envelope itself: compressed here, so mutations reach the CBOR decoder instead of
/// stopping at zstd's checksum.
pub fn sync_cbor(data: &[u8]) {
    if let Ok(body) = zstd_frame(data) {
        decode_all_messages(&body);
    }
}

fn zstd_frame(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, 1)
}

/// A bundle file (and an agent release file): container, manifest, hash, signature.
pub fn bundle(data: &[u8]) {
    static KEY: OnceLock<ed25519_dalek::VerifyingKey> = OnceLock::new();
    let key = KEY.get_or_init(|| ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key());
    if let Ok(u) = bundle_file::parse(data) {
        // The manifest's own checks, as `bundle inspect` and the registry run them.
        let _ = u.manifest.column_names();
        let mut issues = Issues::default();
        u.manifest.features.validate(&KeyPath::root(), &mut issues);
        u.manifest.drift.validate(&KeyPath::root(), &mut issues);
        let _ = u.manifest.drift.resolve();
        // Nothing signed with our fuzz key can come out of the fuzzer unless it forged
        // ed25519, so a pass here is a verification bug.
        assert!(
            u.verify(std::slice::from_ref(key)).is_err(),
            "an unsigned bundle verified"
        );
    }
    // The same bytes as an agent release file (same container shape, another magic and
    // signature domain): parsed, then refused by the key.
    if let Ok(u) = edge_wire::release::parse(data) {
        assert!(
            u.verify(std::slice::from_ref(key)).is_err(),
            "an unsigned agent release verified"
        );
    }
}

/// A delta against a fixed base: the first byte picks the method, the next eight the declared
/// target length; the rest is the delta's body behind a valid header (so the fuzzer works on
/// the decoders, not on finding the base's sha256).
pub fn delta_apply(data: &[u8]) {
    let _ = delta::inspect(data);
    let _ = delta::apply(BASE, data);
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = delta::Method::ALL[usize::from(m) % delta::Method::ALL.len()];
    let (len, body) = match rest.split_first_chunk::<8>() {
        Some((l, b)) => (u64::from_le_bytes(*l) % (1 << 20), b),
        None => (0, rest),
    };
    let framed = frame(method, len, body);
    if let Ok(new) = delta::apply(BASE, &framed) {
        assert!(
            new.len() as u64 == len,
            "a delta produced {} bytes, declared {len}",
            new.len()
        );
    }
}

/// A delta header for [`BASE`] (magic, version, method, base and target sha256, target
/// length) followed by `body`. The target hash is a fixed one, so only a body that happens to
/// rebuild that exact file could pass; everything else must fail cleanly.
fn frame(method: delta::Method, len: u64, body: &[u8]) -> Vec<u8> {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    let h = HEADER.get_or_init(|| {
        delta::make(delta::Method::Bsdiff, BASE, BASE)
            .map(|d| d[..74].to_vec())
            .unwrap_or_default()
    });
    let mut out = h.clone();
    if out.len() == 74 {
        out[9] = method.code();
    }
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out
}

const BASE: &[u8] = b"EDGE fuzz base: the previous bundle the device holds. \
    0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmnopqrstuvwxyz";

/// One outbox record of each stream (first byte picks the stream), as the MQTT outputs and
/// the fleet upload read it back: decode, JSON bodies, Sparkplug metrics.
pub fn outbox_records(data: &[u8]) {
    let Some((&s, payload)) = data.split_first() else {
        return;
    };
    let stream = Stream::ALL[usize::from(s) % Stream::ALL.len()];
    // A record that decodes re-encodes to bytes that decode to the same encoding.
    let reencoded: Option<Vec<u8>> = match stream {
        Stream::Samples => records::decode_samples(payload)
            .ok()
            .map(|v| records::encode_samples(v.iter())),
        Stream::Features => records::decode_features(payload)
            .ok()
            .map(|f| records::encode_features(&f)),
        Stream::Predictions => records::decode_prediction(payload)
            .ok()
            .map(|p| records::encode_prediction(&p)),
        Stream::Alarms => records::decode_alarm(payload)
            .ok()
            .map(|a| records::encode_alarm(&a)),
        Stream::Drift => records::decode_drift(payload)
            .ok()
            .map(|d| records::encode_drift(&d)),
        Stream::Events => None,
    };
    if let Some(once) = reencoded {
        let twice = match stream {
            Stream::Samples => {
                records::decode_samples(&once).map(|v| records::encode_samples(v.iter()))
            }
            Stream::Features => {
                records::decode_features(&once).map(|f| records::encode_features(&f))
            }
            Stream::Predictions => {
                records::decode_prediction(&once).map(|p| records::encode_prediction(&p))
            }
            Stream::Alarms => records::decode_alarm(&once).map(|a| records::encode_alarm(&a)),
            Stream::Drift => records::decode_drift(&once).map(|d| records::encode_drift(&d)),
            Stream::Events => return,
        };
        assert_eq!(
            twice.ok().as_ref(),
            Some(&once),
            "record re-encoding is not stable"
        );
    }
    let _ = edge_agent::publish::json_body::bodies(stream, payload);
    with_sparkplug(|f| {
        use edge_agent::publish::forwarder::Format;
        let _ = f.encode(stream, 1, payload, false);
        let _ = f.encode(stream, 2, payload, true);
    });
}

/// A shared Sparkplug edge node (its outbox in a temp folder), born and online.
fn with_sparkplug(f: impl FnOnce(&mut edge_agent::publish::sparkplug::SparkplugFormat)) {
    use edge_agent::outbox::{OutboxConfig, SledOutbox};
    use edge_agent::publish::forwarder::Format;
    use edge_agent::publish::sparkplug::{BdSeq, SparkplugFormat};
    static NODE: OnceLock<Option<Mutex<SparkplugFormat>>> = OnceLock::new();
    let node = NODE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("edge-fuzz-spb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let (ob, _) = SledOutbox::open(
            &dir.join("outbox"),
            &OutboxConfig::default(),
            &[("spb".into(), Stream::ALL.to_vec())],
        )
        .ok()?;
        let mut f = SparkplugFormat::new(
            "plant".into(),
            "gw1".into(),
            Some("scada".into()),
            rumqttc::QoS::AtLeastOnce,
            Arc::new(BdSeq::open(dir.join("bdseq"))),
            Box::new(|t: &str| t.split_once('.').map(|(d, _)| d.to_string())),
            Arc::new(ob),
            Stream::ALL.to_vec(),
            Vec::new(),
        );
        let _ = f.on_connect();
        let _ = f.on_incoming(&rumqttc::Publish::new(
            "spBv1.0/STATE/scada",
            rumqttc::QoS::AtLeastOnce,
            br#"{"online": true, "timestamp": 1}"#.to_vec(),
        ));
        Some(Mutex::new(f))
    });
    if let Some(m) = node {
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
}

/// What a Sparkplug edge node receives: NCMD (rebirth) and the primary host's STATE. The
/// first byte picks the topic.
pub fn sparkplug_commands(data: &[u8]) {
    use edge_agent::publish::forwarder::Format;
    let Some((&t, payload)) = data.split_first() else {
        return;
    };
    let topic = match t % 3 {
        0 => "spBv1.0/plant/NCMD/gw1",
        1 => "spBv1.0/STATE/scada",
        _ => "spBv1.0/plant/DCMD/gw1/pump1",
    };
    with_sparkplug(|f| {
        let p = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload.to_vec());
        let _ = f.on_incoming(&p);
        // Leave the node online for the next input (a STATE may have said offline).
        let _ = f.on_incoming(&rumqttc::Publish::new(
            "spBv1.0/STATE/scada",
            rumqttc::QoS::AtLeastOnce,
            br#"{"online": true, "timestamp": 1}"#.to_vec(),
        ));
    });
}

/// A payload as the MQTT source decodes it: plain text, and JSON with the value and the
/// timestamp at pointers (the first line of the input is the value pointer, the second the
/// timestamp pointer; the rest is the payload).
pub fn mqtt_payload(data: &[u8]) {
    check_good_finite(parse_plain(data).ok());
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (ptr, ts_ptr, payload) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => (&b"/value"[..], &b"/ts"[..], data),
    };
    let (Ok(ptr), Ok(ts_ptr)) = (std::str::from_utf8(ptr), std::str::from_utf8(ts_ptr)) else {
        return;
    };
    if let Ok(doc) = parse_json(payload) {
        check_good_finite(value_at(&doc, ptr).ok());
        for f in [
            TimestampFormat::Auto,
            TimestampFormat::Rfc3339,
            TimestampFormat::UnixS,
            TimestampFormat::UnixMs,
            TimestampFormat::UnixUs,
            TimestampFormat::UnixNs,
        ] {
            let _ = timestamp_at(&doc, ts_ptr, f);
        }
    }
}

/// A value the source accepted as good must be usable by a model.
fn check_good_finite(v: Option<Value>) {
    if let Some(v) = v {
        assert!(
            !v.is_non_finite(),
            "a payload decoded to a non-finite good value: {v:?}"
        );
    }
}

/// Registers as a Modbus device answers them, decoded for every type and byte order, then
/// scaled: the first 16 bytes are scale and offset, the rest the registers.
pub fn modbus_registers(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<16>() else {
        return;
    };
    let scale = f64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
    let offset = f64::from_le_bytes(head[8..].try_into().unwrap_or([0; 8]));
    let regs: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let tag: Tag = Arc::from("plc.value");
    for ty in [
        DataType::Bool,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::I64,
        DataType::F64,
    ] {
        for order in [
            ByteOrder::Abcd,
            ByteOrder::Cdab,
            ByteOrder::Badc,
            ByteOrder::Dcba,
        ] {
            let n = usize::from(ty.register_count()).min(regs.len());
            let bit = regs.first().map(|r| (r % 20) as u8);
            if let Some(v) = decode_registers(&regs[..n], ty, order, bit) {
                let scaled = apply_scaling(v, scale, offset);
                let s = Sample::new(tag.clone(), 0, scaled, Quality::Good);
                assert!(
                    s.quality != Quality::Good || !s.value.is_non_finite(),
                    "a non-finite register value kept good quality"
                );
            }
        }
    }
}

/// An OPC-UA DataValue built from the bytes (variant kind, value, status code, source and
/// server timestamps), mapped to a sample under every timestamp preference.
pub fn opcua_values(data: &[u8]) {
    use opcua::types::{DataValue, DateTime, LocalizedText, StatusCode, UAString, Variant};
    let mut r = Bytes(data);
    let kind = r.u8();
    let raw = r.u64();
    let variant = match kind % 16 {
        0 => Variant::Boolean(raw & 1 == 1),
        1 => Variant::SByte(raw as i8),
        2 => Variant::Int16(raw as i16),
        3 => Variant::Int32(raw as i32),
        4 => Variant::Int64(raw as i64),
        5 => Variant::Byte(raw as u8),
        6 => Variant::UInt16(raw as u16),
        7 => Variant::UInt32(raw as u32),
        8 => Variant::UInt64(raw),
        9 => Variant::Float(f32::from_bits(raw as u32)),
        10 => Variant::Double(f64::from_bits(raw)),
        11 => Variant::String(UAString::from(String::from_utf8_lossy(r.rest()).as_ref())),
        12 => Variant::LocalizedText(Box::new(LocalizedText::new(
            "en",
            String::from_utf8_lossy(r.rest()).as_ref(),
        ))),
        13 => Variant::DateTime(Box::new(DateTime::from(raw as i64))),
        14 => Variant::Empty,
        _ => Variant::from(vec![raw as i32, 1, 2]),
    };
    let status = StatusCode::from(r.u32());
    let source = r.u64() as i64;
    let server = r.u64() as i64;
    let mut dv = DataValue::new_now(variant);
    dv.status = Some(status);
    dv.source_timestamp = (source % 3 != 0).then(|| DateTime::from(source));
    dv.server_timestamp = (server % 3 != 0).then(|| DateTime::from(server));
    let tag: Tag = Arc::from("opc.value");
    for pref in [
        TimestampSource::Source,
        TimestampSource::Server,
        TimestampSource::Agent,
    ] {
        let s = data_value_to_sample(&tag, &dv, pref, 1_700_000_000_000_000_000);
        assert!(
            s.quality == Quality::Bad || !s.value.is_non_finite(),
            "a non-finite OPC-UA value kept {:?} quality",
            s.quality
        );
    }
}

/// Little reader over the fuzz bytes: missing bytes read as zero.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn rest(&mut self) -> &[u8] {
        std::mem::take(&mut self.0)
    }
}

/// An agent configuration file, as `edge-agent check` and `run` load it.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match edge_agent::config::AgentConfig::from_toml(text, Path::new("fuzz.toml")) {
        Ok(_) => {}
        // Every refusal renders (it names the key and line).
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A recording CSV (long or wide layout), as `featurize`, `replay` and the replay source
/// read it. At most 10 000 samples per input.
pub fn recording_csv(data: &[u8]) {
    let Ok(reader) = edge_agent::recording::RecordingReader::new(Cursor::new(data), "fuzz.csv")
    else {
        return;
    };
    for s in reader.take(10_000).flatten() {
        assert!(
            s.quality != Quality::Good || !s.value.is_non_finite(),
            "a recording row gave a non-finite good sample"
        );
    }
}

/// Drift records as the fleet server ingests and merges them (two devices' records from one
/// input, split at the first `0xFF 0xFF` or the middle), scored against a reference covering
/// every column.
pub fn drift_records(data: &[u8]) {
    let (a, b) = match data.windows(2).position(|w| w == [0xFF, 0xFF]) {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => data.split_at(data.len() / 2),
    };
    let recs: Vec<_> = [a, b, data]
        .iter()
        .filter_map(|x| fleet_server::drift::decode(x).ok())
        .collect();
    let rules = DriftPolicy::default().resolve();
    let mut merged = MergedDrift::default();
    for (i, rec) in recs.iter().enumerate() {
        let _ = merged.add(&format!("dev{i}"), rec);
        let mut r = rec.clone();
        r.evaluate(&rules);
        let _ = r.drifting_share(&rules);
        if let Some(p) = &r.performance {
            let _ = p.checks(&rules);
        }
    }
    let reference = Reference {
        windows: 1000,
        features: merged.columns.keys().map(|n| reference_column(n)).collect(),
        outputs: merged.outputs.keys().map(|n| reference_column(n)).collect(),
    };
    let _ = merged.scored(&reference, &rules);
    for s in merged.columns.values() {
        let _ = score(s, &reference_column(&s.name));
    }
}

fn reference_column(name: &str) -> ColumnStats {
    ColumnStats {
        name: name.to_string(),
        count: 1000,
        mean: 0.0,
        std: 1.0,
        min: -4.0,
        max: 4.0,
        quantiles: REFERENCE_QUANTILES
            .iter()
            .map(|q| (q - 0.5) * 4.0)
            .collect(),
        bin_edges: (0..=10).map(|i| f64::from(i) - 5.0).collect(),
        bin_freqs: vec![0.1; 10],
    }
}

/// A JSON request body of the operator API, as its handlers decode it (every body type).
pub fn operator_json(data: &[u8]) {
    use fleet_server::rollout::StartRollout;
    use fleet_server::service::views::*;
    fn one<T: serde::de::DeserializeOwned>(data: &[u8]) {
        let _ = serde_json::from_slice::<T>(data);
    }
    one::<LoginRequest>(data);
    one::<LabelsRequest>(data);
    one::<EnrollmentTokenRequest>(data);
    one::<TrustKeyRequest>(data);
    one::<DeltaRequest>(data);
    one::<StartRollout>(data);
    one::<PolicyRequest>(data);
    one::<NewUser>(data);
    one::<UserUpdate>(data);
    one::<NewToken>(data);
    one::<FinishRotation>(data);
    one::<fleet_server::service::commands::CommandRequest>(data);
    // Configuration pushes are merged (TOML fragments, secret refusal) as the service does.
    if let Ok(p) = serde_json::from_slice::<fleet_server::service::configs::ConfigPush>(data) {
        let _ = fleet_server::service::configs::merge(&p.fragments);
    }
    // Drift policies are validated as the service does before storing one.
    if let Ok(p) = serde_json::from_slice::<DriftPolicy>(data) {
        let mut issues = Issues::default();
        p.validate(&KeyPath::root(), &mut issues);
        let _ = p.resolve();
    }
}
