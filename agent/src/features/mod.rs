//! Windows and features: the one implementation used online (the model stage) and offline
//! (`edge-agent featurize`, `bundle pack`), so a model is trained on exactly the numbers it
//! will be served. [`Featurizer`] = [`window::WindowAssembler`] + the feature library
//! ([`compute`]) + layout and normalization.

pub mod compute;
pub mod offline;
pub mod window;

use edge_wire::bundle::{FeatureKind, FeatureSpec, InputLayout};
use edge_wire::Sample;

use compute::Scratch;
pub use window::{Window, WindowStats};

/// The features of one window (before normalization), or the raw window for raw layouts.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    /// Start of the window (UTC ns since the epoch, on the grid).
    pub start_ns: i64,
    /// End of the window (UTC ns, exclusive: start + points × period).
    pub end_ns: i64,
    /// Layout `vector`: one value per feature, in spec order. Raw layouts: the window,
    /// channel-major (`[c * len + i]`).
    pub values: Vec<f64>,
    /// Raw layouts: the drift columns (`FeatureSpec::drift_features`: each channel's mean and
    /// std). Empty for layout `vector`, whose drift columns are `values`.
    drift: Vec<f64>,
}

impl FeatureRow {
    /// The values drift is measured on, in `FeatureSpec::drift_features` order.
    pub fn drift_values(&self) -> &[f64] {
        if self.drift.is_empty() {
            &self.values
        } else {
            &self.drift
        }
    }
}

/// Turns samples into feature rows for one feature spec: windows on the spec's grid, then the
/// spec's features. Deterministic: the same samples in the same order give the same rows.
#[derive(Debug)]
pub struct Featurizer {
    spec: FeatureSpec,
    /// For each feature, the index of its tag's channel.
    channel_of: Vec<usize>,
    windows: window::WindowAssembler,
    scratch: Scratch,
    ready: Vec<Window>,
}

impl Featurizer {
    /// `spec` must have passed `FeatureSpec::validate`.
    pub fn new(spec: &FeatureSpec) -> Self {
        let channel_of = spec
            .features
            .iter()
            .map(|f| spec.tags.iter().position(|t| *t == f.tag).unwrap_or(0))
            .collect();
        Featurizer {
            spec: spec.clone(),
            channel_of,
            windows: window::WindowAssembler::new(spec),
            scratch: Scratch::default(),
            ready: Vec::new(),
        }
    }

    /// The spec this featurizer was built from.
    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Whether `tag` is one of the spec's tags (other samples are ignored by [`Featurizer::push`]).
    pub fn wants(&self, tag: &str) -> bool {
        self.windows.wants(tag)
    }

    /// The window counters so far (skipped, late, off-grid samples).
    pub fn stats(&self) -> &WindowStats {
        &self.windows.stats
    }

    /// Feeds samples; appends the rows of every window that became final.
    pub fn push(&mut self, samples: &[Sample], out: &mut Vec<FeatureRow>) {
        for s in samples {
            self.windows.push(s);
        }
        self.windows.drain_ready(&mut self.ready);
        for w in self.ready.drain(..) {
            out.push(compute_row(
                &self.spec,
                &self.channel_of,
                &mut self.scratch,
                &w,
            ));
        }
    }

    /// The model input of a row: layout applied, normalized, as f32.
    pub fn model_input(&self, row: &FeatureRow) -> Vec<f32> {
        model_input(&self.spec, row)
    }
}

/// Per channel of a raw window, what drift is measured on (`FeatureSpec::drift_features`).
const RAW_DRIFT_KINDS: [FeatureKind; 2] = [FeatureKind::Mean, FeatureKind::Std];

fn compute_row(
    spec: &FeatureSpec,
    channel_of: &[usize],
    scratch: &mut Scratch,
    w: &Window,
) -> FeatureRow {
    let (values, drift) = match spec.layout {
        InputLayout::Vector => (
            spec.features
                .iter()
                .zip(channel_of)
                .map(|(f, &c)| scratch.compute(&f.kind, w.channel(c), spec.rate_hz))
                .collect(),
            Vec::new(),
        ),
        // drift_features: per channel, in tag order, its mean then its std.
        InputLayout::RawTc | InputLayout::RawCt => {
            let mut drift = Vec::with_capacity(2 * spec.tags.len());
            for c in 0..spec.tags.len() {
                for kind in RAW_DRIFT_KINDS {
                    drift.push(scratch.compute(&kind, w.channel(c), spec.rate_hz));
                }
            }
            (w.values.clone(), drift)
        }
    };
    FeatureRow {
        start_ns: w.start_ns,
        end_ns: w.end_ns,
        values,
        drift,
    }
}

/// Applies layout and scaler; the result feeds the model's input tensor.
pub fn model_input(spec: &FeatureSpec, row: &FeatureRow) -> Vec<f32> {
    let scale = |v: f64, k: usize| match &spec.scaler {
        Some(s) => (v - s.mean[k]) / s.scale[k],
        None => v,
    };
    match spec.layout {
        InputLayout::Vector => row
            .values
            .iter()
            .enumerate()
            .map(|(k, v)| scale(*v, k) as f32)
            .collect(),
        InputLayout::RawCt => {
            let len = spec.window_len();
            row.values
                .iter()
                .enumerate()
                .map(|(j, v)| scale(*v, j / len.max(1)) as f32)
                .collect()
        }
        InputLayout::RawTc => {
            let (len, ch) = (spec.window_len(), spec.tags.len());
            let mut out = vec![0f32; len * ch];
            for c in 0..ch {
                for i in 0..len {
                    out[i * ch + c] = scale(row.values[c * len + i], c) as f32;
                }
            }
            out
        }
    }
}
