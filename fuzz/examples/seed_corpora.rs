//! Writes the seed inputs of every target into `fuzz/corpus/<target>/seed-*`: real messages,
//! records, bundles, deltas, configs and recordings made by the project's own encoders, so the
//! fuzzer starts from valid input and mutates its way into the corners.
//!
//! `cargo run -p edge-fuzz --example seed_corpora` (idempotent; `tests/fuzz.sh` runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edge_wire::bundle::file as bundle_file;
use edge_wire::bundle::BundleRef;
use edge_wire::drift::policy::DriftPolicy;
use edge_wire::drift::record::{ColumnDrift, DriftRecord};
use edge_wire::drift::summary::DriftSummary;
use edge_wire::records::{self, AlarmEvent, FeatureRecord, Prediction, Stream};
use edge_wire::sparkplug::proto::{Metric, MetricValue, Payload};
use edge_wire::{delta, sync, Quality, Sample, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let repo = root.parent().ok_or("no repository root")?;
    let mut n = 0;
    let mut put = |target: &str, name: &str, data: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), data)?;
        n += 1;
        Ok(())
    };

    // ---- sync messages ----
    let msgs: Vec<(&str, Vec<u8>)> = vec![
        (
            "enroll",
            sync::encode(&sync::EnrollRequest {
                token: "tok-123".into(),
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
                name: "gateway-1".into(),
                agent_version: "0.1.0".into(),
            }),
        ),
        (
            "checkin",
            sync::encode(&sync::CheckIn {
                agent_version: "0.1.0".into(),
                models: vec![sync::ModelStatus {
                    model: "pump".into(),
                    bundle: "pump-anomaly".into(),
                    version: "1.0.0".into(),
                    version_number: 3,
                    sha256: "ab".repeat(32),
                }],
                streams: vec![sync::StreamStatus {
                    stream: "samples".into(),
                    backlog: 12,
                    bytes: 4096,
                    dropped: 0,
                }],
                last_error: Some("broker unreachable".into()),
                uptime_s: 3600,
                config: None,
                agent: Some(sync::AgentStatus {
                    version: "1.1.0".into(),
                    target: "aarch64-unknown-linux-musl".into(),
                    release: Some((11, "cd".repeat(32))),
                    pending: None,
                }),
            }),
        ),
        (
            "upload",
            sync::encode(&sync::UploadBatch {
                stream: "samples".into(),
                first_available: 1,
                records: (1..4)
                    .map(|seq| sync::UploadRecord {
                        seq,
                        ts_ms: 1_700_000_000_000 + seq,
                        body: records::encode_samples(&samples()),
                    })
                    .collect(),
            }),
        ),
        (
            "report",
            sync::encode(&sync::UpdateReport {
                model: "pump".into(),
                bundle: "pump-anomaly".into(),
                from_version_number: 2,
                to_version_number: 3,
                rollout: Some("r-1".into()),
                outcome: sync::UpdateOutcome::RolledBack,
                method: "bsdiff+zstd".into(),
                downloaded_bytes: 1234,
                detail: "health check failed".into(),
            }),
        ),
        (
            "config-report",
            sync::encode(&sync::ConfigReport {
                name: "line-7".into(),
                version_number: 3,
                sha256: "ab".repeat(32),
                rollout: Some("r-1".into()),
                outcome: sync::ConfigOutcome::Refused,
                applied_by: "none".into(),
                detail: "1 validation error(s)".into(),
                errors: vec!["agent.toml:4: outbox.commit_intreval: unknown key".into()],
            }),
        ),
        (
            "command-result",
            sync::encode(&sync::CommandResult {
                id: "c1".into(),
                outcome: sync::CommandOutcome::Done,
                detail: "2 line(s)".into(),
                content_type: "text/plain".into(),
                attachment: b"2026-12-07T18:00:00.000Z  INFO edge_agent: running\n".to_vec(),
            }),
        ),
        (
            "renew",
            sync::encode(&sync::RenewRequest {
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
            }),
        ),
        (
            "renew-reply",
            sync::encode(&sync::RenewReply {
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
                not_after_ms: 1_800_000_000_000,
            }),
        ),
        (
            "checkin-reply-remote-ops",
            sync::encode(&sync::CheckInReply {
                device_id: "d-1".into(),
                desired: Vec::new(),
                next_checkin_s: 10,
                desired_config: Some(sync::DesiredConfig {
                    name: "line-7".into(),
                    version_number: 2,
                    sha256: "cd".repeat(32),
                    toml: "[agent]\nid = \"gw\"\n".into(),
                    rollout: Some("r-3".into()),
                }),
                commands: vec![sync::DeviceCommand {
                    id: "c2".into(),
                    action: sync::CommandAction::Logs {
                        since_ms: 0,
                        until_ms: None,
                        level: "info".into(),
                        max_bytes: 1 << 20,
                    },
                }],
                renew: true,
                desired_agent: None,
            }),
        ),
        (
            "enroll-reply",
            sync::encode(&sync::EnrollReply {
                device_id: "d-1".into(),
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n".into(),
            }),
        ),
        (
            "checkin-reply",
            sync::encode(&sync::CheckInReply {
                device_id: "d-1".into(),
                desired: vec![sync::DesiredBundle {
                    bundle: "pump-anomaly".into(),
                    version: "1.1.0".into(),
                    version_number: 4,
                    sha256: "cd".repeat(32),
                    size: 1000,
                    rollout: Some("r-2".into()),
                    artifact: sync::Artifact {
                        sha256: "ef".repeat(32),
                        size: 100,
                        method: "tensor-xor".into(),
                    },
                }],
                next_checkin_s: 10,
                desired_config: None,
                commands: Vec::new(),
                renew: false,
                desired_agent: None,
            }),
        ),
        (
            "ack",
            sync::encode(&sync::UploadAck {
                stream: "samples".into(),
                acked_through: 3,
                duplicates: 1,
            }),
        ),
        (
            "checkin-reply-agent-release",
            sync::encode(&sync::CheckInReply {
                device_id: "d-1".into(),
                desired: Vec::new(),
                next_checkin_s: 10,
                desired_config: None,
                commands: Vec::new(),
                renew: false,
                desired_agent: Some(sync::DesiredRelease {
                    version: "1.2.0".into(),
                    version_number: 12,
                    target: "aarch64-unknown-linux-musl".into(),
                    sha256: "ab".repeat(32),
                    size: 16_000_000,
                    rollout: Some("r-9".into()),
                    artifact: sync::Artifact {
                        sha256: "ba".repeat(32),
                        size: 900_000,
                        method: "zstd-patch-from".into(),
                    },
                }),
            }),
        ),
        (
            "agent-report",
            sync::encode(&sync::AgentReport {
                version: "1.2.0".into(),
                version_number: 12,
                sha256: "ab".repeat(32),
                from_version: "1.1.0".into(),
                rollout: Some("r-9".into()),
                outcome: sync::UpdateOutcome::RolledBack,
                method: "zstd-patch-from".into(),
                downloaded_bytes: 900_000,
                detail: "started 3 times without becoming healthy".into(),
            }),
        ),
        ("empty", sync::encode(&sync::Empty {})),
    ];
    for (name, body) in &msgs {
        put("sync_body", name, body)?;
        put("sync_cbor", name, &zstd::decode_all(body.as_slice())?)?;
    }

    // ---- bundle: the shipped demo bundle's manifest around a small model ----
    let demo = std::fs::read(repo.join("examples/demo/pump-anomaly.bundle"))?;
    let parsed = bundle_file::parse(&demo)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let small = bundle_file::pack(&parsed.manifest, b"\x08\x07\x12\x04fuzz", &key)?;
    put("bundle", "demo-manifest-small-model", &small)?;
    let release = edge_wire::release::pack(
        &edge_wire::release::ReleaseManifest {
            format: 1,
            name: edge_wire::release::RELEASE_NAME.into(),
            version: "1.2.0".into(),
            version_number: 12,
            target: "aarch64-unknown-linux-musl".into(),
            binary_sha256: String::new(),
            binary_size: 0,
            notes: "fuzz seed".into(),
        },
        b"\x7fELF a small binary",
        &key,
    );
    put("bundle", "agent-release", &release)?;
    put(
        "bundle",
        "manifest-only",
        &parsed.manifest_bytes[..parsed.manifest_bytes.len().min(4096)],
    )?;

    // ---- deltas: each method's real body for a small edit of the fuzz base ----
    let base: &[u8] = b"EDGE fuzz base: the previous bundle the device holds. \
    0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmnopqrstuvwxyz";
    let mut newer = base.to_vec();
    newer[20] ^= 0x5A;
    newer.extend_from_slice(b" and a retrained last layer");
    for m in delta::Method::ALL {
        if let Ok(d) = delta::make(m, base, &newer) {
            let mut input = vec![m.code().wrapping_sub(1)];
            input.extend_from_slice(&(newer.len() as u64).to_le_bytes());
            input.extend_from_slice(&d[82..]);
            put("delta_apply", m.name(), &input)?;
            put("delta_apply", &format!("{}-whole", m.name()), &d)?;
        }
    }

    // ---- outbox records ----
    let src = Arc::new(BundleRef {
        model: Arc::from("pump"),
        bundle: Arc::from("pump-anomaly"),
        version: Arc::from("1.0.0"),
        version_number: 3,
        sha256: Arc::from("ab".repeat(32)),
    });
    let features = FeatureRecord {
        source: src.clone(),
        start_ns: 1_700_000_000_000_000_000,
        end_ns: 1_700_000_010_000_000_000,
        names: Arc::from(vec![
            "pump1.flow:mean".to_string(),
            "pump1.flow:std".to_string(),
        ]),
        values: vec![12.5, 0.25],
    };
    let prediction = Prediction {
        source: src.clone(),
        start_ns: 1_700_000_000_000_000_000,
        end_ns: 1_700_000_010_000_000_000,
        outputs: vec![("score".into(), vec![0.7]), ("label".into(), vec![1.0])],
        score: Some(0.7),
        label: Some("anomaly".into()),
        over_threshold: Some(true),
        alarm: Some(false),
    };
    let alarm = AlarmEvent {
        source: src.clone(),
        ts_ns: 1_700_000_010_000_000_000,
        active: true,
        score: 0.9,
        threshold: Some(0.6),
        drift: Some(records::DriftAlarm {
            subject: "pump1.flow:mean".into(),
            kind: records::DriftAlarmKind::Column,
            metric: "psi".into(),
            intervals: 3,
        }),
    };
    let drift = drift_record(src.clone());
    let recs: Vec<(Stream, Vec<u8>)> = vec![
        (Stream::Samples, records::encode_samples(&samples())),
        (Stream::Features, records::encode_features(&features)),
        (Stream::Predictions, records::encode_prediction(&prediction)),
        (Stream::Alarms, records::encode_alarm(&alarm)),
        (Stream::Drift, records::encode_drift(&drift)),
    ];
    for (s, body) in &recs {
        // The target picks the stream by its position in `Stream::ALL`.
        let pos = Stream::ALL.iter().position(|x| x == s).unwrap_or(0);
        let mut input = vec![pos as u8];
        input.extend_from_slice(body);
        put("outbox_records", s.name(), &input)?;
    }
    let drift_bytes = records::encode_drift(&drift);
    put("drift_records", "one", &drift_bytes)?;
    let mut two = drift_bytes.clone();
    two.extend_from_slice(&[0xFF, 0xFF]);
    two.extend_from_slice(&drift_bytes);
    put("drift_records", "two-devices", &two)?;

    // ---- Sparkplug commands ----
    let rebirth = Payload {
        timestamp: Some(1_700_000_000_000),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(11),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        }],
        seq: None,
        ..Default::default()
    };
    let mut ncmd = vec![0u8];
    ncmd.extend(rebirth.encode_to_vec());
    put("sparkplug_commands", "ncmd-rebirth", &ncmd)?;
    let by_alias = Payload {
        metrics: vec![Metric {
            alias: Some(1),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut ncmd = vec![0u8];
    ncmd.extend(by_alias.encode_to_vec());
    put("sparkplug_commands", "ncmd-alias", &ncmd)?;
    put(
        "sparkplug_commands",
        "state-json",
        b"\x01{\"online\": false, \"timestamp\": 1700000000000}",
    )?;
    put("sparkplug_commands", "state-text", b"\x01OFFLINE")?;

    // ---- MQTT source payloads ----
    put("mqtt_payload", "plain", b"21.5")?;
    put("mqtt_payload", "plain-bool", b"true")?;
    put(
        "mqtt_payload",
        "json",
        b"/data/value\n/data/ts\n{\"data\": {\"value\": 21.5, \"ts\": \"2026-11-27T05:25:54.123Z\"}}",
    )?;
    put(
        "mqtt_payload",
        "json-ms",
        b"/v\n/t\n{\"v\": \"42\", \"t\": 1700000000123}",
    )?;

    // ---- Modbus registers: scale 0.1, offset -40, then words ----
    let mut regs = Vec::new();
    regs.extend_from_slice(&0.1f64.to_le_bytes());
    regs.extend_from_slice(&(-40.0f64).to_le_bytes());
    for w in [0x41A4u16, 0x0000, 0x0102, 0x0304] {
        regs.extend_from_slice(&w.to_be_bytes());
    }
    put("modbus_registers", "f32-scaled", &regs)?;

    // ---- OPC-UA values: kind, raw value, status, timestamps ----
    for (kind, raw) in [
        (10u8, 21.5f64.to_bits()),
        (9, u64::from(f32::NAN.to_bits())),
        (3, 7),
    ] {
        let mut v = vec![kind];
        v.extend_from_slice(&raw.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&133_000_000_000_000_001i64.to_le_bytes());
        v.extend_from_slice(&133_000_000_000_000_002i64.to_le_bytes());
        put("opcua_values", &format!("kind-{kind}"), &v)?;
    }

    // ---- agent configs: every shipped example ----
    for e in std::fs::read_dir(repo.join("examples"))? {
        let p: PathBuf = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("config");
            put("agent_config", name, &std::fs::read(&p)?)?;
        }
    }

    // ---- recordings: long and wide layouts ----
    put(
        "recording_csv",
        "long",
        b"ts,tag,value,quality\n2026-11-27T05:25:54.000Z,pump1.flow,12.5,good\n2026-11-27T05:25:55.000Z,pump1.flow,NaN,bad\n",
    )?;
    put(
        "recording_csv",
        "wide",
        b"timestamp,pump1.flow,pump1.pressure\n1700000000000,12.5,3.1\n1700000001000,,3.2\n",
    )?;

    // ---- operator API bodies ----
    let bodies: [(&str, &str); 12] = [
        (
            "config-push",
            r#"{"fragments":[["base.toml","[agent]\nid = \"gw\"\n[outbox]\ncommit_interval = \"1s\"\n"],["site.toml","[[sources.modbus]]\nname = \"plc1\"\ntcp = { address = \"10.0.0.1:502\" }\n[outputs.mqtt.broker]\npassword = { file = \"/etc/p\" }\n"]]}"#,
        ),
        (
            "command-logs",
            r#"{"action":{"kind":"logs","since_ms":0,"until_ms":null,"level":"warn","max_bytes":65536}}"#,
        ),
        ("command-restart", r#"{"action":{"kind":"restart"}}"#),
        ("ca-finish", r#"{"force":true}"#),
        ("login", r#"{"user":"admin","password":"secret-pass"}"#),
        ("labels", r#"{"labels":["site=north","line=2"]}"#),
        ("delta", r#"{"from":1,"to":2}"#),
        (
            "rollout",
            r#"{"bundle":"pump-anomaly","version_number":3,"selector":["site=north"],"canary_percent":10,"max_failures":1}"#,
        ),
        (
            "policy",
            r#"{"bundle":"pump-anomaly","select":["site=north"],"every":"10m","buckets":3,"share":0.5}"#,
        ),
        (
            "user",
            r#"{"name":"ops","role":"operator","password":"long-password-1"}"#,
        ),
        (
            "token",
            r#"{"name":"ci","role":"viewer","expires_in":"30d"}"#,
        ),
        (
            "drift-policy",
            r#"{"metric":"psi","threshold":0.2,"raise_after":3,"clear_after":2}"#,
        ),
    ];
    for (name, b) in bodies {
        put("operator_json", name, b.as_bytes())?;
    }
    eprintln!("wrote {n} seed inputs under {}", corpus.display());
    Ok(())
}

fn samples() -> Vec<Sample> {
    vec![
        Sample::new(
            Arc::from("pump1.flow"),
            1_700_000_000_000_000_000,
            Value::Float(12.5),
            Quality::Good,
        ),
        Sample::new(
            Arc::from("pump1.running"),
            1_700_000_000_000_000_000,
            Value::Bool(true),
            Quality::Good,
        ),
        Sample::bad(Arc::from("pump1.pressure"), 1_700_000_000_000_000_000),
    ]
}

fn drift_record(src: Arc<BundleRef>) -> DriftRecord {
    let rules = DriftPolicy::default().resolve();
    let edges: Vec<f64> = (0..=10).map(|i| f64::from(i) - 5.0).collect();
    let reference = edge_wire::bundle::manifest::ColumnStats {
        name: "pump1.flow:mean".into(),
        count: 1000,
        mean: 0.0,
        std: 1.0,
        min: -4.0,
        max: 4.0,
        quantiles: vec![-2.3, -1.6, -0.7, 0.0, 0.7, 1.6, 2.3],
        bin_edges: edges.clone(),
        bin_freqs: vec![0.1; 10],
    };
    let mut s = DriftSummary::new("pump1.flow:mean", &edges, 1_700_000_000_000);
    for i in 0..200 {
        s.add((f64::from(i) / 40.0) - 2.0);
    }
    let col = ColumnDrift::scored(s, &reference, &rules);
    let mut rec = DriftRecord {
        source: src,
        start_ns: 1_700_000_000_000_000_000,
        end_ns: 1_700_000_300_000_000_000,
        windows: 30,
        columns: vec![col],
        outputs: Vec::new(),
        drifting: Vec::new(),
        dataset_drift: false,
        metric: Default::default(),
        performance: None,
        shadow: None,
    };
    rec.evaluate(&rules);
    rec
}
