//! `edge-agent bundle keygen|pack`: make signing keys and pack a signed bundle (feature
//! spec + ONNX + reference statistics from training data). Model authoring happens on a
//! workstation: builds without the `authoring` feature (the ARM gateway builds) leave this
//! out, and with it the ed25519 signing code — signing keys never belong on a gateway.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use edge_wire::bundle::file::{self, read_signing_key};
use edge_wire::bundle::manifest::{Lineage, ModelInfo, Reference, TensorInfo, MANIFEST_FORMAT};
use edge_wire::bundle::Manifest;
use edge_wire::config_check::{Issues, KeyPath};

use super::bundle::{PackLineage, PackSpec};
use crate::features::{model_input, offline::featurize_csv};
use crate::inference::Model;
use crate::models::reference::column_stats;

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
