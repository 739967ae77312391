//! [`LoadedBundle`]: a bundle that passed every check and is ready to serve — signature by a
//! trusted key, version floor, feature-spec validity, known tags, and an ONNX model that loads
//! with the spec's input shape — plus the post-processing of its outputs.

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use edge_wire::bundle::manifest::RECONSTRUCTION_ERROR_OUTPUT;
use edge_wire::bundle::{Bundle, Manifest};
use edge_wire::config_check::{Issues, KeyPath};

use super::control::LoadError;
use crate::inference::{Model, Output};
use crate::pipeline::record::BundleRef;

/// A bundle that passed every check (signature, version floor, feature spec, tags, model
/// shape and outputs), with its model built and ready to run.
#[derive(Debug)]
pub struct LoadedBundle {
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// The ONNX model, built for the feature spec's input shape.
    pub model: Model,
    /// Which bundle predictions and drift records come from (shared with every record).
    pub source: Arc<BundleRef>,
    /// Column names of the feature rows, in spec order (`FeatureSpec::column_names`).
    pub names: Arc<[String]>,
}

/// Decides whether a tag name will exist at runtime.
pub trait TagCatalog {
    /// Whether `tag` will exist at run time (named by a source, or matching an MQTT name
    /// template).
    fn knows(&self, tag: &str) -> bool;
}

impl LoadedBundle {
    /// Runs every check on `bytes` (the contents of `path`).
    pub fn load(
        instance: &str,
        path: &Path,
        bytes: &[u8],
        trusted: &[VerifyingKey],
        floor: u64,
        tags: &dyn TagCatalog,
    ) -> Result<LoadedBundle, LoadError> {
        let incompatible = |reason: String| LoadError::Incompatible {
            path: path.to_path_buf(),
            reason,
        };
        let b = Bundle::from_bytes(bytes, trusted, floor).map_err(|source| LoadError::Refused {
            path: path.to_path_buf(),
            source,
        })?;
        let spec = &b.manifest().features;
        let mut issues = Issues::default();
        spec.validate(&KeyPath::root().key("features"), &mut issues);
        if let Some(i) = issues.0.first() {
            return Err(incompatible(format!(
                "feature spec: {}: {}",
                i.path, i.message
            )));
        }
        let unknown: Vec<&str> = spec
            .tags
            .iter()
            .map(String::as_str)
            .filter(|t| !tags.knows(t))
            .collect();
        if !unknown.is_empty() {
            return Err(incompatible(format!(
                "the feature spec reads tags no source provides: {} (check the tag names in the sources)",
                unknown.join(", ")
            )));
        }
        let model = Model::load(b.model(), &spec.input_shape()).map_err(|e| {
            incompatible(format!(
                "the model does not accept the feature spec's input {:?}: {e}",
                spec.input_shape()
            ))
        })?;
        // One run before serving: tract's first run is slower (lazy allocations), and a model
        // that cannot run on an input of the spec's shape is refused here, with the shape,
        // rather than on the first window.
        let shape = spec.input_shape();
        let zeros = vec![0f32; shape.iter().product()];
        let probe = model.run(&zeros).map_err(|e| {
            incompatible(format!(
                "the model fails on an input of the feature spec's shape {shape:?}: {e}"
            ))
        })?;
        let sizes: Vec<(&str, usize)> = probe
            .iter()
            .map(|o| (o.name.as_str(), o.values.len()))
            .collect();
        b.manifest()
            .postprocess
            .check_outputs(&sizes, zeros.len())
            .map_err(|e| incompatible(e.to_string()))?;
        let source = Arc::new(BundleRef {
            model: Arc::from(instance),
            bundle: Arc::from(b.manifest().name.as_str()),
            version: Arc::from(b.manifest().version.as_str()),
            version_number: b.manifest().version_number,
            sha256: Arc::from(b.file_sha256()),
        });
        let names: Arc<[String]> = spec.column_names().into();
        Ok(LoadedBundle {
            manifest: b.into_parts().0,
            model,
            source,
            names,
        })
    }

    /// Score, label and alarm from the outputs, per the manifest; `input` is the model input
    /// the outputs came from (reconstruction scores compare against it). With a per-feature
    /// reconstruction rule, the errors are appended to `outputs` as
    /// [`RECONSTRUCTION_ERROR_OUTPUT`].
    pub fn postprocess(
        &self,
        outputs: &mut Vec<Output>,
        input: &[f32],
    ) -> (Option<f64>, Option<String>, Option<bool>) {
        let pp = &self.manifest.postprocess;
        let mut errors = None;
        let score = pp.score.as_ref().and_then(|s| {
            let out = outputs.iter().find(|o| o.name == s.output)?;
            match s.reconstruction {
                None => out.values.get(s.index).copied(),
                Some(r) => {
                    let (score, errs) = r.score(input, &out.values)?;
                    errors = s.per_feature.then_some(errs);
                    Some(score)
                }
            }
        });
        if let Some(values) = errors {
            outputs.push(Output {
                name: RECONSTRUCTION_ERROR_OUTPUT.to_string(),
                shape: vec![1, values.len()],
                values,
            });
        }
        let outputs: &[Output] = outputs;
        let find = |n: &str| outputs.iter().find(|o| o.name == n);
        let alarm = match (&pp.score, score) {
            (Some(rule), Some(v)) => {
                rule.threshold
                    .map(|t| if rule.alarm_above { v > t } else { v < t })
            }
            _ => None,
        };
        let label = pp.labels.as_ref().and_then(|l| {
            let v = find(&l.output)?.values.first().copied()?;
            if v.fract() != 0.0 {
                return None;
            }
            let i = match &l.values {
                Some(values) => values.iter().position(|x| *x as f64 == v)?,
                None => usize::try_from(v as i64).ok()?,
            };
            l.names.get(i).cloned()
        });
        (score, label, alarm)
    }

    /// Whether every output value is within the manifest's declared ranges.
    pub fn in_range(&self, outputs: &[Output]) -> bool {
        self.manifest.postprocess.ranges.iter().all(|r| {
            outputs.iter().filter(|o| o.name == r.output).all(|o| {
                o.values
                    .iter()
                    .all(|v| v.is_finite() && *v >= r.min && *v <= r.max)
            })
        })
    }
}
