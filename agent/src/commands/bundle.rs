//! `edge-agent bundle inspect|verify`: what a bundle holds, and whether it verifies and loads
//! (keygen and pack: [`super::pack`], with the `authoring` feature).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use edge_wire::bundle::file::{self, key_id, read_public_key};
use edge_wire::bundle::manifest::PostProcess;
use edge_wire::bundle::{Bundle, FeatureSpec};
use serde::Deserialize;

use crate::inference::Model;

/// The pack description (`--spec pack.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackSpec {
    /// Model name, e.g. `pump-anomaly` (the manifest's `name`; devices select bundles by it).
    pub name: String,
    /// Semantic version for people, e.g. `1.4.0`.
    pub version: String,
    /// Monotonic version number: devices refuse a bundle below the highest they have run.
    pub version_number: u64,
    /// Free text for people.
    pub description: Option<String>,
    /// How samples become the model input (`[spec]`); validated before anything is computed.
    pub spec: FeatureSpec,
    /// Score, labels and output ranges (`[postprocess]`); default: none.
    #[serde(default)]
    pub postprocess: PostProcess,
    /// Drift policy shipped with the bundle (`[drift]`, docs/bundles.md).
    #[serde(default)]
    pub drift: edge_wire::drift::DriftPolicy,
    /// Provenance recorded in the manifest (`[lineage]`); `pack --code-revision/--param/
    /// --metric` add to it and win over it.
    #[serde(default)]
    pub lineage: PackLineage,
}

/// `[lineage]` of a pack spec, and the matching `bundle pack` flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackLineage {
    /// Source revision of the training code (`--code-revision` wins).
    pub code_revision: Option<String>,
    /// Training parameters; numbers and booleans are kept as their TOML text.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, toml::Value>,
    /// Evaluation metrics, finite numbers (`--metric KEY=VALUE` adds and wins).
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

impl PackLineage {
    /// `KEY=VALUE` flags (`--param`, `--metric`) over the spec's table.
    pub fn with_flags(
        mut self,
        code_revision: Option<String>,
        params: &[String],
        metrics: &[String],
    ) -> anyhow::Result<PackLineage> {
        let split = |flag: &str, kv: &str| -> anyhow::Result<(String, String)> {
            kv.split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("--{flag} `{kv}`: expected KEY=VALUE"))
        };
        if code_revision.is_some() {
            self.code_revision = code_revision;
        }
        for p in params {
            let (k, v) = split("param", p)?;
            self.params.insert(k, toml::Value::String(v));
        }
        for m in metrics {
            let (k, v) = split("metric", m)?;
            let x: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite())
                .ok_or_else(|| anyhow::anyhow!("--metric `{m}`: `{v}` is not a finite number"))?;
            self.metrics.insert(k, x);
        }
        Ok(self)
    }
}

/// A layout as the feature spec writes it.
fn layout_name(l: edge_wire::bundle::spec::InputLayout) -> &'static str {
    use edge_wire::bundle::spec::InputLayout as L;
    match l {
        L::Vector => "vector",
        L::RawTc => "raw_tc",
        L::RawCt => "raw_ct",
    }
}

/// A human summary of a bundle (signature not checked).
pub fn inspect(path: &Path, json: bool) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u = file::parse(&bytes)?;
    if json {
        return Ok(serde_json::to_string_pretty(&u.manifest)?);
    }
    let m = &u.manifest;
    let signer = ed25519_dalek::VerifyingKey::from_bytes(&u.signer)
        .map(|k| key_id(&k))
        .unwrap_or_else(|_| "invalid".into());
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "bundle      {} {} (version number {})",
        m.name, m.version, m.version_number
    );
    if let Some(d) = &m.description {
        let _ = writeln!(s, "            {d}");
    }
    let _ = writeln!(s, "created     {}", m.created);
    let _ = writeln!(
        s,
        "file        {} bytes, sha256 {}",
        bytes.len(),
        u.file_sha256
    );
    let _ = writeln!(
        s,
        "model       {} bytes, sha256 {}",
        m.model.size, m.model.sha256
    );
    let _ = writeln!(
        s,
        "signed by   key {signer} (signature not checked: use `bundle verify`)"
    );
    let f = &m.features;
    let _ = writeln!(
        s,
        "window      {} tags at {} Hz, {} points, hop {}, layout {}, input {:?}",
        f.tags.len(),
        f.rate_hz,
        f.window_len(),
        f.hop_len(),
        layout_name(f.layout),
        f.input_shape()
    );
    let _ = writeln!(s, "tags        {}", f.tags.join(", "));
    let _ = writeln!(s, "features    {}", f.column_names().join(", "));
    let outs: Vec<String> = m
        .model
        .outputs
        .iter()
        .map(|o| format!("{} {:?}", o.name, o.shape))
        .collect();
    let _ = writeln!(s, "outputs     {}", outs.join(", "));
    if let Some(sc) = &m.postprocess.score {
        let what = match sc.reconstruction {
            Some(r) => format!(
                "{} of {} against the input{}",
                r.name(),
                sc.output,
                if sc.per_feature {
                    " (per feature too)"
                } else {
                    ""
                }
            ),
            None => format!("{}[{}]", sc.output, sc.index),
        };
        let _ = writeln!(
            s,
            "score       {what} threshold {} alarm {}",
            sc.threshold
                .map_or_else(|| "none".to_string(), |t| t.to_string()),
            if sc.alarm_above { "above" } else { "below" }
        );
    }
    if let Some(l) = &m.lineage {
        let short = |h: &str| h.get(..16).unwrap_or(h).to_string();
        let _ = writeln!(
            s,
            "trained on  {} (sha256 {}), feature spec sha256 {}",
            if l.training_data_name.is_empty() {
                "?"
            } else {
                &l.training_data_name
            },
            short(&l.training_data_sha256),
            short(&l.feature_spec_sha256)
        );
        if let Some(r) = &l.code_revision {
            let _ = writeln!(s, "code        {r}");
        }
        if !l.params.is_empty() {
            let p: Vec<String> = l.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "params      {}", p.join(", "));
        }
        if !l.metrics.is_empty() {
            let p: Vec<String> = l.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "metrics     {}", p.join(", "));
        }
        if !l.packed_by.is_empty() {
            let _ = writeln!(s, "packed by   {}", l.packed_by);
        }
    }
    let _ = writeln!(
        s,
        "reference   {} training windows, {} feature and {} output columns",
        m.reference.windows,
        m.reference.features.len(),
        m.reference.outputs.len()
    );
    Ok(s)
}

/// Verifies signature (against `keys`), hashes, floor, and that the model loads with its spec.
pub fn verify(path: &Path, keys: &[PathBuf], floor: u64) -> anyhow::Result<String> {
    if keys.is_empty() {
        bail!("give at least one --key PUB.pem to verify against");
    }
    let trusted = keys
        .iter()
        .map(|k| read_public_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let b = Bundle::open(path, &trusted, floor)?;
    Model::load(b.model(), &b.manifest().features.input_shape()).map_err(|e| {
        anyhow::anyhow!("signature ok, but the model does not load with its feature spec: {e}")
    })?;
    Ok(format!(
        "OK: {} {} (version number {}) signed by key {}, model loads with input {:?}",
        b.manifest().name,
        b.manifest().version,
        b.manifest().version_number,
        key_id(b.signer()),
        b.manifest().features.input_shape()
    ))
}
