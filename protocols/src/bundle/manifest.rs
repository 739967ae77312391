//! The bundle [`Manifest`]: identity and version of a model, its feature spec, its input and
//! output tensors, post-processing, and reference statistics from the training data (the
//! baseline devices measure drift against).

use serde::{Deserialize, Serialize};

use super::spec::FeatureSpec;

/// Schema version of the manifest itself.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Model name, e.g. `pump-anomaly`.
    pub name: String,
    /// Semantic version for people, e.g. `1.4.0`.
    pub version: String,
    /// Monotonic version number: devices refuse a bundle below the highest they have run.
    pub version_number: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time, RFC 3339.
    pub created: String,
    pub features: FeatureSpec,
    pub model: ModelInfo,
    #[serde(default)]
    pub postprocess: PostProcess,
    pub reference: Reference,
    /// Drift policy: which score and thresholds make a column drift, alarm hysteresis,
    /// performance limits. The agent's `[models.drift]` overrides it key by key.
    #[serde(default, skip_serializing_if = "crate::drift::DriftPolicy::is_empty")]
    pub drift: crate::drift::DriftPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// SHA-256 of the ONNX bytes, hex.
    pub sha256: String,
    pub size: u64,
    pub input: TensorInfo,
    pub outputs: Vec<TensorInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRule {
    pub output: String,
    /// Flat index into that output (e.g. 1 = probability of class 1 in `[1, 2]`).
    #[serde(default)]
    pub index: usize,
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

fn three() -> u32 {
    3
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    pub output: String,
    pub names: Vec<String>,
    /// The output value each name stands for (e.g. `[-1, 1]` for IsolationForest); default
    /// `0, 1, 2, ...` (class indices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<i64>>,
}

impl PostProcess {
    /// Every output a rule names exists, and the score's index lies inside its output.
    /// `outputs`: each model output's name and element count.
    pub fn check_outputs(&self, outputs: &[(&str, usize)]) -> Result<(), String> {
        let find = |n: &str| outputs.iter().find(|o| o.0 == n).map(|o| o.1);
        let missing = |what: &str, name: &str| {
            let names: Vec<&str> = outputs.iter().map(|o| o.0).collect();
            format!("postprocess.{what} names output `{name}`; the model has {names:?}")
        };
        if let Some(s) = &self.score {
            match find(&s.output) {
                None => return Err(missing("score", &s.output)),
                Some(n) if s.index >= n => {
                    return Err(format!(
                        "postprocess.score.index {} is past the end of output `{}` ({n} element{}: indices 0..={})",
                        s.index,
                        s.output,
                        if n == 1 { "" } else { "s" },
                        n.saturating_sub(1)
                    ))
                }
                Some(_) => {}
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRange {
    pub output: String,
    pub min: f64,
    pub max: f64,
}

/// Training-data statistics per feature (or raw channel) and per score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Windows the statistics were computed from.
    pub windows: u64,
    pub features: Vec<ColumnStats>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<ColumnStats>,
}

/// Distribution summary of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnStats {
    pub name: String,
    pub count: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Quantiles at [`REFERENCE_QUANTILES`].
    pub quantiles: Vec<f64>,
    /// Histogram bin edges (ascending, `bins + 1` values; the outer edges are -inf/+inf in
    /// use) and the share of training values per bin.
    pub bin_edges: Vec<f64>,
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
        assert_eq!(pp(11, "label").check_outputs(&outputs), Ok(()));
        assert_eq!(
            pp(12, "label").check_outputs(&outputs),
            Err("postprocess.score.index 12 is past the end of output `recon` (12 elements: indices 0..=11)".into())
        );
        assert_eq!(
            pp(0, "class").check_outputs(&outputs),
            Err(
                r#"postprocess.labels names output `class`; the model has ["recon", "label"]"#
                    .into()
            )
        );
    }
}
