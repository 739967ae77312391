//! `edge-agent bundle ...`: make signing keys, pack a signed bundle (feature spec + ONNX +
//! reference statistics from training data), inspect one, verify one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use edge_wire::bundle::file::{self, key_id, read_public_key, read_signing_key};
use edge_wire::bundle::manifest::{
    Lineage, ModelInfo, PostProcess, Reference, TensorInfo, MANIFEST_FORMAT,
};
use edge_wire::bundle::{Bundle, FeatureSpec, Manifest};
use edge_wire::config_check::{Issues, KeyPath};
use serde::Deserialize;

use crate::features::{model_input, offline::featurize_csv};
use crate::inference::Model;
use crate::models::reference::column_stats;

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

/// What `pack` made, and what it noticed on the way (printed as warnings).
#[derive(Debug)]
pub struct Packed {
    /// The manifest signed into the bundle.
    pub manifest: Manifest,
    /// Things worth a look that did not stop the pack (e.g. samples off the feature grid).
    pub warnings: Vec<String>,
}

/// Writes `<prefix>.key.pem` (private, mode 0600) and `<prefix>.pub.pem`.
pub fn keygen(prefix: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (private, public) = file::generate_key_pem()?;
    let key = PathBuf::from(format!("{}.key.pem", prefix.display()));
    let publ = PathBuf::from(format!("{}.pub.pem", prefix.display()));
    if key.exists() {
        bail!(
            "{} exists: refusing to overwrite a signing key",
            key.display()
        );
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&key)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(&publ, public).with_context(|| format!("writing {}", publ.display()))?;
    Ok((key, publ))
}

/// Builds, checks and signs a bundle. Returns the manifest written.
pub fn pack(
    spec_path: &Path,
    model_path: &Path,
    train: &Path,
    key_path: &Path,
    out: &Path,
    lineage: impl FnOnce(PackLineage) -> anyhow::Result<PackLineage>,
) -> anyhow::Result<Packed> {
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("reading {}", spec_path.display()))?;
    let ps: PackSpec =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", spec_path.display(), e))?;
    let mut issues = Issues::default();
    ps.spec.validate(&KeyPath::root().key("spec"), &mut issues);
    ps.drift
        .validate(&KeyPath::root().key("drift"), &mut issues);
    if !issues.is_empty() {
        let lines: Vec<String> = issues
            .0
            .iter()
            .map(|i| match crate::config::line_of(&text, &i.path) {
                Some(l) => format!("  {}:{l}: {}: {}", spec_path.display(), i.path, i.message),
                None => format!("  {}: {}: {}", spec_path.display(), i.path, i.message),
            })
            .collect();
        bail!(
            "the feature spec has {} problem(s):\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
    let onnx =
        std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let shape = ps.spec.input_shape();
    let model = Model::load(&onnx, &shape).map_err(|e| {
        anyhow::anyhow!(
            "{}: the model does not accept the feature spec's input {shape:?}: {e}",
            model_path.display()
        )
    })?;
    let key = read_signing_key(key_path)?;
    let given = lineage(ps.lineage.clone())?;
    // The postprocess rules must fit the model's outputs: checked before the training data
    // is read, so a wrong index fails at once.
    let probe = model
        .run(&vec![0.0; shape.iter().product()])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sizes: Vec<(&str, usize)> = probe
        .iter()
        .map(|o| (o.name.as_str(), o.values.len()))
        .collect();
    if let Err(e) = ps.postprocess.check_outputs(&sizes, shape.iter().product()) {
        bail!("{e}");
    }

    // Reference statistics: the training recording through the serving code path.
    // Drift columns: the features themselves, or each raw channel's window statistics.
    let names: Vec<String> = ps.spec.drift_features().iter().map(|f| f.name()).collect();
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut outputs: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
    let f = std::fs::File::open(train).with_context(|| format!("reading {}", train.display()))?;
    let stats = featurize_csv(
        &ps.spec,
        std::io::BufReader::new(f),
        &train.display().to_string(),
        |row| -> Result<(), crate::inference::InferenceError> {
            row.drift_values()
                .iter()
                .zip(columns.iter_mut())
                .for_each(|(v, c)| c.push(*v));
            let input = model_input(&ps.spec, row);
            if input.iter().all(|v| v.is_finite()) {
                let outs = model.run(&input)?;
                for o in outs {
                    let idx = match outputs.iter().position(|(n, _)| *n == o.name) {
                        Some(i) => i,
                        None => {
                            outputs.push((o.name.clone(), vec![Vec::new(); o.values.len()]));
                            outputs.len() - 1
                        }
                    };
                    for (k, v) in o.values.iter().enumerate() {
                        if let Some(col) = outputs[idx].1.get_mut(k) {
                            col.push(*v);
                        }
                    }
                }
            }
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    if stats.windows == 0 {
        bail!(
            "{}: no complete window in the training data ({} skipped for missing data, {} late samples): \
             check the tags and the window spec",
            train.display(),
            stats.skipped_missing,
            stats.late_samples
        );
    }
    let features = names
        .iter()
        .zip(&columns)
        .map(|(n, c)| {
            column_stats(n, c).ok_or_else(|| anyhow::anyhow!("column {n} has no finite value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out_stats = outputs
        .iter()
        .flat_map(|(n, cols)| {
            cols.iter()
                .enumerate()
                .filter_map(move |(k, c)| column_stats(&format!("{n}[{k}]"), c))
        })
        .collect::<Vec<_>>();
    let unknown: Vec<&str> = ps
        .drift
        .thresholds
        .keys()
        .map(String::as_str)
        .filter(|k| !names.iter().any(|n| n == k) && !out_stats.iter().any(|o| o.name == *k))
        .collect();
    if !unknown.is_empty() {
        let outs: Vec<&str> = out_stats.iter().map(|o| o.name.as_str()).collect();
        bail!(
            "{}: drift.thresholds names {} — not a feature column ({}) or model output ({})",
            spec_path.display(),
            unknown.join(", "),
            names.join(", "),
            outs.join(", ")
        );
    }
    let spec_json = serde_json::to_vec(&ps.spec).context("encoding the feature spec")?;
    let lineage = Lineage {
        training_data_sha256: file::sha256_file(train)
            .with_context(|| format!("reading {}", train.display()))?,
        training_data_name: train
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        feature_spec_sha256: file::sha256_hex(&spec_json),
        code_revision: given.code_revision,
        params: given
            .params
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Datetime(d) => d.to_string(),
                    // Arrays and tables as JSON (the agent links no TOML writer).
                    other => serde_json::to_string(&other).unwrap_or_default(),
                };
                (k, text)
            })
            .collect(),
        metrics: given.metrics,
        packed_by: format!("edge-agent {}", crate::version()),
    };
    let warnings: Vec<String> = stats
        .grid_warning(ps.spec.rate_hz)
        .map(|w| format!("{}: {w}", train.display()))
        .into_iter()
        .collect();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: ps.name,
        version: ps.version,
        version_number: ps.version_number,
        description: ps.description,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        features: ps.spec.clone(),
        model: ModelInfo {
            sha256: String::new(),
            size: 0,
            input: TensorInfo {
                name: model.input_name().to_string(),
                shape: shape.clone(),
                dtype: "f32".into(),
            },
            outputs: probe
                .iter()
                .map(|o| TensorInfo {
                    name: o.name.clone(),
                    shape: o.shape.clone(),
                    dtype: "f32".into(),
                })
                .collect(),
        },
        postprocess: ps.postprocess,
        drift: ps.drift,
        lineage: Some(lineage),
        reference: Reference {
            windows: stats.windows,
            features,
            outputs: out_stats,
        },
    };
    let bytes = file::pack(&manifest, &onnx, &key)?;
    let tmp = out.with_extension("bundle.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(Packed {
        manifest: file::parse(&bytes)?.manifest,
        warnings,
    })
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
