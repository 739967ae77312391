//! Inference with tract: an ONNX model turned into an optimized, runnable plan once, then run
//! per window. Tree ensembles (scikit-learn forests, boosting, IsolationForest) go through our
//! own ONNX-ML ops (`onnx_ml.rs`, `tree.rs`), which tract 0.23 lacks or runs slowly.

mod onnx_ml;
pub(crate) mod tree;

use std::sync::Arc;

use tract_onnx::prelude::*;

/// Why a model did not load or run.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// tract could not parse, type or optimize the ONNX model, it does not have exactly one input,
    /// or it panicked on its warm-up run.
    #[error("cannot load the ONNX model: {0}")]
    Load(String),
    /// The input slice does not have [`Model::input_len`] values.
    #[error("model input expects {expected} values, got {got}")]
    InputSize {
        /// Values the model takes per run.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// tract failed while running the model.
    #[error("inference failed: {0}")]
    Run(String),
}

/// One output of a run, flattened to f64 (integer labels included).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The output's name in the ONNX graph.
    pub name: String,
    /// Its shape as the run produced it (batch dimension included).
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f64>,
}

/// tract's ONNX front end with our ONNX-ML ops registered.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx_ml::register(&mut onnx.op_register);
    onnx
}

/// A loaded model: built and optimized once, cheap to run many times.
#[derive(Debug, Clone)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    input_name: String,
    input_shape: Vec<usize>,
    output_names: Vec<String>,
}

impl Model {
    /// Loads ONNX bytes with a fixed input shape (batch dimension included, e.g. `[1, 12]`).
    pub fn load(onnx: &[u8], input_shape: &[usize]) -> Result<Model, InferenceError> {
        let err = |e: TractError| InferenceError::Load(format!("{e:#}"));
        let mut model = framework().model_for_read(&mut &*onnx).map_err(err)?;
        let inputs = model.input_outlets().map_err(err)?.len();
        if inputs != 1 {
            return Err(InferenceError::Load(format!(
                "the model has {inputs} inputs; exactly one is supported"
            )));
        }
        let input = model.input_outlets().map_err(err)?[0];
        let input_name = model
            .outlet_label(input)
            .map(str::to_string)
            .unwrap_or_else(|| model.node(input.node).name.clone());
        let output_names = model
            .output_outlets()
            .map_err(err)?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        model = model
            .with_input_fact(0, f32::fact(input_shape).into())
            .map_err(err)?;
        let plan = model
            .into_optimized()
            .map_err(err)?
            .into_runnable()
            .map_err(err)?;
        let model = Model {
            plan,
            input_name,
            input_shape: input_shape.to_vec(),
            output_names,
        };
        // One warm-up run on zeros: the first run initializes state lazily (megabytes of code
        // that later runs skip), so it happens here, before the loader's memory is released,
        // not in the first real window. Its result is discarded; a model may reject zeros
        // (say, the log of a feature) and still be fine on real windows; a panic refuses it.
        let zeros = vec![0.0; model.input_len()];
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(&zeros))) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("warm-up run on zeros failed (ignored): {e}"),
            Err(_) => {
                return Err(InferenceError::Load(
                    "the model panicked in its warm-up run on zeros".into(),
                ))
            }
        }
        // Parsing and optimizing leave megabytes of freed heap behind; hand them back.
        crate::memory::release_free_memory();
        Ok(model)
    }

    /// Name of the model's one input in the ONNX graph.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// Names of the model's outputs, in graph order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Number of `f32` values one run takes: the product of the input shape given to
    /// [`Model::load`].
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Runs one input (row-major, `input_len()` values).
    pub fn run(&self, input: &[f32]) -> Result<Vec<Output>, InferenceError> {
        if input.len() != self.input_len() {
            return Err(InferenceError::InputSize {
                expected: self.input_len(),
                got: input.len(),
            });
        }
        let run = |e: TractError| InferenceError::Run(format!("{e:#}"));
        let t = Tensor::from_shape(&self.input_shape, input).map_err(run)?;
        let outs = self.plan.run(tvec!(t.into())).map_err(run)?;
        outs.iter()
            .zip(&self.output_names)
            .map(|(o, name)| {
                let f = o.cast_to::<f64>().map_err(run)?;
                let values = f
                    .try_as_plain_ram()
                    .map_err(run)?
                    .as_slice::<f64>()
                    .map_err(run)?
                    .to_vec();
                Ok(Output {
                    name: name.clone(),
                    shape: o.shape().to_vec(),
                    values,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn models() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
    }

    /// Every reference row, tract vs onnxruntime: |a - b| <= 1e-5 * max(1, |b|).
    fn check(name: &str) {
        let bytes = std::fs::read(models().join(format!("{name}.onnx"))).unwrap();
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(models().join(format!("{name}.ref.json"))).unwrap(),
        )
        .unwrap();
        let shape: Vec<usize> = serde_json::from_value(reference["input_shape"].clone()).unwrap();
        let model = Model::load(&bytes, &shape).unwrap_or_else(|e| panic!("{name}: {e}"));
        let inputs: Vec<Vec<f64>> = serde_json::from_value(reference["inputs"].clone()).unwrap();
        let mut worst = 0f64;
        for (row, x) in inputs.iter().enumerate() {
            let x: Vec<f32> = x.iter().map(|v| *v as f32).collect();
            let outs = model.run(&x).unwrap();
            for o in outs {
                let want: Vec<f64> =
                    serde_json::from_value(reference["outputs"][&o.name][row].clone())
                        .unwrap_or_else(|_| panic!("{name}: no reference for output {}", o.name));
                assert_eq!(o.values.len(), want.len(), "{name}/{} row {row}", o.name);
                for (a, b) in o.values.iter().zip(&want) {
                    let err = (a - b).abs() / b.abs().max(1.0);
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-5,
                        "{name}/{} row {row}: tract {a} vs onnxruntime {b}",
                        o.name
                    );
                }
            }
        }
        eprintln!(
            "{name}: {} rows, worst relative difference {worst:.2e}",
            inputs.len()
        );
    }

    #[test]
    fn dense_autoencoder_matches_onnxruntime() {
        check("dense_autoencoder");
    }

    #[test]
    fn conv1d_matches_onnxruntime() {
        check("conv1d");
    }

    #[test]
    fn random_forest_classifier_matches_onnxruntime() {
        check("rf_classifier");
        check("rf_binary");
    }

    #[test]
    fn isolation_forest_matches_onnxruntime() {
        check("iforest");
    }

    #[test]
    fn gradient_boosting_regressor_matches_onnxruntime() {
        check("gbr");
    }

    #[test]
    fn wrong_input_sizes_and_garbage_models_are_errors() {
        let bytes = std::fs::read(models().join("gbr.onnx")).unwrap();
        let m = Model::load(&bytes, &[1, 8]).unwrap();
        assert!(matches!(
            m.run(&[0.0; 7]),
            Err(InferenceError::InputSize {
                expected: 8,
                got: 7
            })
        ));
        assert!(Model::load(b"not an onnx model", &[1, 8]).is_err());
        assert!(Model::load(&bytes[..bytes.len() / 2], &[1, 8]).is_err());
        // Wrong feature count for the trees: a clear error, not a panic.
        let small = Model::load(&bytes, &[1, 3]);
        assert!(small.is_err() || small.unwrap().run(&[0.0; 3]).is_err());
    }
}
