//! The bundle [`Manifest`]: identity and version of a model, its feature spec, its input and
//! output tensors, post-processing, and reference statistics from the training data (the
//! baseline devices measure drift against).

use serde::{Deserialize, Serialize};

use super::spec::FeatureSpec;

/// Schema version of the manifest itself.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a bundle says about its model: identity, feature spec, tensors, post-processing,
/// reference statistics, drift policy and lineage. Signed with the model's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The manifest format ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// Model name, e.g. `pump-anomaly`.
    pub name: String,
    /// Semantic version for people, e.g. `1.4.0`.
    pub version: String,
    /// Monotonic version number: devices refuse a bundle below the highest they have run.
    pub version_number: u64,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// How samples become the model input.
    pub features: FeatureSpec,
    /// The ONNX model's hash, size and tensors.
    pub model: ModelInfo,
    /// Score, labels and output ranges derived from the outputs.
    #[serde(default)]
    pub postprocess: PostProcess,
    /// Statistics of every feature and output over the training data (drift reference).
    pub reference: Reference,
    /// Drift policy: which score and thresholds make a column drift, alarm hysteresis,
    /// performance limits. The agent's `[models.drift]` overrides it key by key.
    #[serde(
        default,
        skip_serializing_if = "crate::drift_policy::DriftPolicy::is_empty"
    )]
    pub drift: crate::drift_policy::DriftPolicy,
    /// Where the model came from (written by `bundle pack`; signed with the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// A model's provenance: what it was trained on and with, so a prediction on a device can be
/// traced back to a dataset, a feature spec and a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// SHA-256 (hex) of the training recording file `bundle pack --train` read: the same
    /// file gives the same fingerprint wherever it is.
    pub training_data_sha256: String,
    /// The training recording's file name (without its directory).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub training_data_name: String,
    /// SHA-256 (hex) of the feature spec as carried in the manifest (JSON): two bundles with
    /// the same value compute identical model inputs.
    pub feature_spec_sha256: String,
    /// Revision of the training code (e.g. its git commit), as given at pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_revision: Option<String>,
    /// Training parameters (hyperparameters, seeds), as given at pack.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
    /// Training or validation metrics (e.g. `val_auc = 0.93`), as given at pack.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The `edge-agent` version that packed the bundle.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub packed_by: String,
}

/// The ONNX model a manifest signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// SHA-256 of the ONNX bytes, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The one input tensor.
    pub input: TensorInfo,
    /// The output tensors.
    pub outputs: Vec<TensorInfo>,
}

/// One tensor of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// Its name in the ONNX graph.
    pub name: String,
    /// Shape with the batch dimension (1), e.g. `[1, 12]`.
    pub shape: Vec<usize>,
    /// `f32` or `i64`.
    pub dtype: String,
}

/// What the agent derives from the raw outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PostProcess {
    /// Which output value is "the score" (e.g. an anomaly score or failure probability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreRule>,
    /// Class names for a label output holding class indices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelRule>,
    /// Range each output's values must stay in (health check after an update).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<OutputRange>,
}

/// Which value of the outputs is the score, and when it is past the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRule {
    /// The output holding it.
    pub output: String,
    /// Flat index into that output (e.g. 1 = probability of class 1 in `[1, 2]`).
    #[serde(default)]
    pub index: usize,
    /// For models that reconstruct their input (autoencoders): the score is the error
    /// between the whole output and the model input (after layout and scaler) instead of
    /// one output value; the output must have as many elements as the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstruction: Option<Reconstruction>,
    /// With `reconstruction`: also publish each input element's error, as the prediction
    /// output `reconstruction_error` (squared for `mse`, absolute otherwise), so an operator
    /// sees which feature is off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_feature: bool,
    /// An alarm is raised when the score crosses this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// `true`: scores above the threshold are alarms; `false`: below (e.g. IsolationForest
    /// decision function, where lower is more anomalous).
    #[serde(default = "yes")]
    pub alarm_above: bool,
    /// The alarm is raised after this many consecutive windows past the threshold…
    #[serde(default = "three")]
    pub raise_after: u32,
    /// …and cleared after this many consecutive windows back within it (hysteresis against
    /// flapping on a noisy score).
    #[serde(default = "three")]
    pub clear_after: u32,
}

/// How a reconstruction error is summarized into one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// Mean squared error.
    Mse,
    /// Mean absolute error.
    Mae,
    /// Largest absolute error of any element.
    Max,
}

impl Reconstruction {
    /// The rule's name in the pack spec.
    pub fn name(self) -> &'static str {
        match self {
            Reconstruction::Mse => "mse",
            Reconstruction::Mae => "mae",
            Reconstruction::Max => "max",
        }
    }

    /// The per-element errors (squared for `mse`, absolute otherwise) and their summary.
    /// `None` when the lengths differ or nothing is there.
    pub fn score(self, input: &[f32], output: &[f64]) -> Option<(f64, Vec<f64>)> {
        if input.len() != output.len() || input.is_empty() {
            return None;
        }
        let errs: Vec<f64> = input
            .iter()
            .zip(output)
            .map(|(x, y)| {
                let d = *y - f64::from(*x);
                match self {
                    Reconstruction::Mse => d * d,
                    Reconstruction::Mae | Reconstruction::Max => d.abs(),
                }
            })
            .collect();
        let score = match self {
            Reconstruction::Mse | Reconstruction::Mae => {
                errs.iter().fold(0.0, |a, e| a + e) / errs.len() as f64
            }
            Reconstruction::Max => errs.iter().copied().fold(0.0, f64::max),
        };
        Some((score, errs))
    }
}

/// The prediction output holding per-feature reconstruction errors (`per_feature`).
pub const RECONSTRUCTION_ERROR_OUTPUT: &str = "reconstruction_error";

fn three() -> u32 {
    3
}

fn yes() -> bool {
    true
}

/// Class names for an output holding class indices (or other label values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    /// The output holding the label.
    pub output: String,
    /// One name per label value.
    pub names: Vec<String>,
    /// The output value each name stands for (e.g. `[-1, 1]` for IsolationForest); default
    /// `0, 1, 2, ...` (class indices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<i64>>,
}

/// Why a post-processing rule does not fit the model's outputs
/// ([`PostProcess::check_outputs`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputCheckError {
    /// A rule (`score`, `labels` or `ranges`) names an output the model does not have.
    #[error("postprocess.{rule} names output `{output}`; the model has {outputs:?}")]
    NoSuchOutput {
        /// The rule's key under `postprocess`.
        rule: &'static str,
        /// The output it names.
        output: String,
        /// The model's outputs, in graph order.
        outputs: Vec<String>,
    },
    /// A reconstruction score compares an output with the model input of another length.
    #[error(
        "postprocess.score.reconstruction = \"{method}\" compares output `{output}` ({output_len} elements) with the model input ({input_len} elements): they must be the same length"
    )]
    ReconstructionLength {
        /// The reconstruction method (`mse`, `mae`, `max`).
        method: &'static str,
        /// The output compared.
        output: String,
        /// Its element count.
        output_len: usize,
        /// The model input's element count.
        input_len: usize,
    },
    /// `score.index` was given with a reconstruction score.
    #[error(
        "postprocess.score.index has no meaning with reconstruction (the score covers the whole output): remove it"
    )]
    IndexWithReconstruction,
    /// `score.per_feature` was given without a reconstruction score.
    #[error("postprocess.score.per_feature needs reconstruction = \"mse\", \"mae\" or \"max\"")]
    PerFeatureWithoutReconstruction,
    /// `score.index` lies past the end of its output.
    #[error(
        "postprocess.score.index {index} is past the end of output `{output}` ({len} element{}: indices 0..={})",
        plural(.len),
        .len.saturating_sub(1)
    )]
    IndexPastEnd {
        /// The index given.
        index: usize,
        /// The score's output.
        output: String,
        /// Its element count.
        len: usize,
    },
}

fn plural(n: &usize) -> &'static str {
    if *n == 1 {
        ""
    } else {
        "s"
    }
}

impl PostProcess {
    /// Every output a rule names exists, the score's index lies inside its output, and a
    /// reconstruction output is as long as the model input (`input_len` elements).
    /// `outputs`: each model output's name and element count.
    pub fn check_outputs(
        &self,
        outputs: &[(&str, usize)],
        input_len: usize,
    ) -> Result<(), OutputCheckError> {
        let find = |n: &str| outputs.iter().find(|o| o.0 == n).map(|o| o.1);
        let missing = |rule: &'static str, name: &str| OutputCheckError::NoSuchOutput {
            rule,
            output: name.to_string(),
            outputs: outputs.iter().map(|o| o.0.to_string()).collect(),
        };
        if let Some(s) = &self.score {
            match (find(&s.output), s.reconstruction) {
                (None, _) => return Err(missing("score", &s.output)),
                (Some(n), Some(r)) if n != input_len => {
                    return Err(OutputCheckError::ReconstructionLength {
                        method: r.name(),
                        output: s.output.clone(),
                        output_len: n,
                        input_len,
                    })
                }
                (Some(_), Some(_)) if s.index != 0 => {
                    return Err(OutputCheckError::IndexWithReconstruction)
                }
                (Some(_), None) if s.per_feature => {
                    return Err(OutputCheckError::PerFeatureWithoutReconstruction)
                }
                (Some(_), Some(_)) => {}
                (Some(n), None) if s.index >= n => {
                    return Err(OutputCheckError::IndexPastEnd {
                        index: s.index,
                        output: s.output.clone(),
                        len: n,
                    })
                }
                (Some(_), None) => {}
            }
        }
        if let Some(l) = &self.labels {
            if find(&l.output).is_none() {
                return Err(missing("labels", &l.output));
            }
        }
        for r in &self.ranges {
            if find(&r.output).is_none() {
                return Err(missing("ranges", &r.output));
            }
        }
        Ok(())
    }
}

/// The range an output's values must stay in; a prediction outside counts against the
/// health check after an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRange {
    /// The output.
    pub output: String,
    /// Smallest allowed value.
    pub min: f64,
    /// Largest allowed value.
    pub max: f64,
}

/// Training-data statistics per feature (or raw channel) and per score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Windows the statistics were computed from.
    pub windows: u64,
    /// One per feature column (or raw channel's mean and std).
    pub features: Vec<ColumnStats>,
    /// One per model output element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<ColumnStats>,
}

/// Distribution summary of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnStats {
    /// The column's name.
    pub name: String,
    /// Values it was computed from.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// Their standard deviation.
    pub std: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// Quantiles at [`REFERENCE_QUANTILES`].
    pub quantiles: Vec<f64>,
    /// Histogram bin edges (ascending, `bins + 1` values; the outer edges are -inf/+inf in
    /// use) and the share of training values per bin.
    pub bin_edges: Vec<f64>,
    /// Share of the training values in each bin.
    pub bin_freqs: Vec<f64>,
}

/// Probabilities of [`ColumnStats::quantiles`].
pub const REFERENCE_QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

impl Manifest {
    /// Every column name the model input consists of.
    pub fn column_names(&self) -> Vec<String> {
        self.features.column_names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocess_rules_must_fit_the_model_outputs() {
        let pp = |index: usize, label_output: &str| PostProcess {
            score: Some(ScoreRule {
                output: "recon".into(),
                index,
                reconstruction: None,
                per_feature: false,
                threshold: None,
                alarm_above: true,
                raise_after: 3,
                clear_after: 3,
            }),
            labels: Some(LabelRule {
                output: label_output.into(),
                names: vec!["a".into()],
                values: None,
            }),
            ranges: Vec::new(),
        };
        let outputs = [("recon", 12), ("label", 1)];
        assert_eq!(pp(11, "label").check_outputs(&outputs, 12), Ok(()));
        assert_eq!(
            pp(12, "label").check_outputs(&outputs, 12).unwrap_err().to_string(),
            "postprocess.score.index 12 is past the end of output `recon` (12 elements: indices 0..=11)"
        );
        assert_eq!(
            pp(0, "class")
                .check_outputs(&outputs, 12)
                .unwrap_err()
                .to_string(),
            r#"postprocess.labels names output `class`; the model has ["recon", "label"]"#
        );
    }

    #[test]
    fn reconstruction_scores_and_their_checks() {
        let input = [1.0f32, 2.0, 3.0, 4.0];
        let output = [1.5, 2.0, 1.0, 4.0];
        let (mse, errs) = Reconstruction::Mse.score(&input, &output).unwrap();
        assert_eq!(errs, [0.25, 0.0, 4.0, 0.0]);
        assert_eq!(mse, 4.25 / 4.0);
        assert_eq!(
            Reconstruction::Mae.score(&input, &output).unwrap().0,
            2.5 / 4.0
        );
        assert_eq!(Reconstruction::Max.score(&input, &output).unwrap().0, 2.0);
        assert_eq!(Reconstruction::Mse.score(&input, &output[..3]), None);

        let rule: ScoreRule =
            toml::from_str("output = \"recon\"\nreconstruction = \"mse\"\nthreshold = 0.5")
                .unwrap();
        let pp = PostProcess {
            score: Some(rule.clone()),
            ..Default::default()
        };
        assert_eq!(pp.check_outputs(&[("recon", 12)], 12), Ok(()));
        assert_eq!(
            pp.check_outputs(&[("recon", 12)], 10).unwrap_err().to_string(),
            "postprocess.score.reconstruction = \"mse\" compares output `recon` (12 elements) with the model input (10 elements): they must be the same length"
        );
        let per = PostProcess {
            score: Some(ScoreRule {
                reconstruction: None,
                per_feature: true,
                ..rule
            }),
            ..Default::default()
        };
        assert!(per
            .check_outputs(&[("recon", 12)], 12)
            .unwrap_err()
            .to_string()
            .contains("per_feature needs"));
    }
}
