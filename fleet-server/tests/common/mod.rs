//! Shared fixtures of the fleet-server integration tests: a store and registry in a
//! temporary directory with version 1 of a two-column test bundle pushed, fake devices, and
//! drift records built from known distributions, stored through the upload path.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use edge_wire::bundle::manifest::{ColumnStats, Manifest};
use edge_wire::bundle::BundleRef;
use edge_wire::drift::{ColumnDrift, DriftRecord, DriftRules, DriftSummary};
use fleet_server::drift;
use fleet_server::registry::Registry;
use fleet_server::store::FleetStore;

pub const MIN: i64 = 60_000_000_000;
pub const BUNDLE: &str = "pump";

pub struct Fleet {
    pub dir: PathBuf,
    pub store: FleetStore,
    pub registry: Registry,
    /// Next sequence number per device.
    pub seqs: std::collections::HashMap<String, i64>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Reference of a column uniform on 0..10: ten equal bins.
pub fn reference(name: &str) -> ColumnStats {
    ColumnStats {
        name: name.into(),
        count: 10_000,
        mean: 5.0,
        std: 2.89,
        min: 0.0,
        max: 10.0,
        quantiles: vec![0.1, 0.5, 2.5, 5.0, 7.5, 9.5, 9.9],
        bin_edges: (0..=10).map(f64::from).collect(),
        bin_freqs: vec![0.1; 10],
    }
}

pub fn manifest(version_number: u64) -> Manifest {
    let reference = serde_json::json!({
        "windows": 10000,
        "features": [reference("a"), reference("b")],
    });
    serde_json::from_value(serde_json::json!({
        "format": 1,
        "name": BUNDLE,
        "version": format!("1.0.{version_number}"),
        "version_number": version_number,
        "created": "2025-01-01T00:00:00Z",
        "features": {"tags": ["p.a", "p.b"], "rate_hz": 1.0,
            "features": [{"tag": "p.a", "fn": "mean"}, {"tag": "p.b", "fn": "mean"}]},
        "model": {"sha256": "", "size": 0,
            "input": {"name": "x", "shape": [1, 2], "dtype": "f32"},
            "outputs": [{"name": "y", "shape": [1, 1], "dtype": "f32"}]},
        "reference": reference,
    }))
    .expect("test manifest")
}

pub async fn fleet() -> Fleet {
    let dir = std::env::temp_dir().join(format!("fleet-drift-{}", fastrand::u64(..)));
    // SQLite in `dir`, or a new PostgreSQL database (FLEET_TEST_BACKEND=postgres).
    let store = fleet_server::store::testing::open(&dir).await.unwrap();
    let registry = Registry::new(store.clone(), &dir).unwrap();
    // Trust a key and push version 1 only (version 2 stays unknown to the registry).
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    store.trust_key("k", &pem, "test").await.unwrap();
    let bytes = edge_wire::bundle::file::pack(&manifest(1), b"model", &key).unwrap();
    registry.push(bytes, "test").await.unwrap();
    Fleet {
        dir,
        store,
        registry,
        seqs: Default::default(),
    }
}

impl Fleet {
    pub async fn device(&self, id: &str, labels: &[&str]) {
        let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let tok = format!("tok-{id}");
        self.store
            .add_token(&tok, &labels, "test", store_now() + 60_000)
            .await
            .unwrap();
        self.store
            .enroll(
                &tok,
                id,
                &format!("gw-{id}"),
                &fleet_server::store::IssuedCert::test(format!("cert-{id}")),
            )
            .await
            .unwrap();
    }

    /// Stores records the way an upload does.
    pub async fn upload(&mut self, device: &str, recs: &[DriftRecord]) {
        let seq = self.seqs.entry(device.to_string()).or_insert(0);
        let mut bodies = Vec::new();
        for r in recs {
            let mut b = Vec::new();
            ciborium::into_writer(r, &mut b).unwrap();
            *seq += 1;
            bodies.push((*seq, r.end_ns / 1_000_000, b));
        }
        let batch: Vec<(i64, i64, &[u8])> = bodies
            .iter()
            .map(|(s, t, b)| (*s, *t, b.as_slice()))
            .collect();
        let first = batch.first().map_or(1, |b| b.0);
        let r = self
            .store
            .ingest(device, drift::STREAM, first, &batch)
            .await
            .unwrap();
        assert_eq!(r.inserted as usize, batch.len());
    }
}

pub fn store_now() -> i64 {
    fleet_server::store::now_ms()
}

pub fn column(name: &str, values: &[f64], start_ms: i64, rules: &DriftRules) -> ColumnDrift {
    let r = reference(name);
    let mut s = DriftSummary::new(name, &r.bin_edges, start_ms);
    values.iter().for_each(|v| s.add(*v));
    ColumnDrift::scored(s, &r, rules)
}

/// A device's record over [start, start + 10 min): columns `a` and `b`.
pub fn record(version: u64, a: &[f64], b: &[f64], start_ns: i64) -> DriftRecord {
    let rules = DriftRules::default();
    let mut rec = DriftRecord {
        source: Arc::new(BundleRef {
            model: "m".into(),
            bundle: BUNDLE.into(),
            version: format!("1.0.{version}").into(),
            version_number: version,
            sha256: "s".into(),
        }),
        start_ns,
        end_ns: start_ns + 10 * MIN,
        windows: a.len() as u64,
        columns: vec![
            column("a", a, start_ns / 1_000_000, &rules),
            column("b", b, start_ns / 1_000_000, &rules),
        ],
        outputs: vec![],
        drifting: vec![],
        dataset_drift: false,
        metric: Default::default(),
        performance: None,
        shadow: None,
    };
    rec.evaluate(&rules);
    rec
}

/// `n` values uniform on [lo, hi).
pub fn uniform(r: &mut fastrand::Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| lo + r.f64() * (hi - lo)).collect()
}

/// A time in the past aligned to the hour.
pub fn base() -> i64 {
    let h = 60 * MIN;
    (drift::now_ns() - 48 * h).div_euclid(h) * h
}
