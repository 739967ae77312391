//! [`Record`]: what flows from the pipeline's stages to its outputs. Payloads are shared
//! (`Arc`) so fanning out to several outputs never copies them.

use std::sync::Arc;

use edge_protocols::Sample;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub enum Record {
    /// Raw samples as the sources produced them.
    Samples(Arc<Vec<Sample>>),
    /// The features of one window, before normalization.
    Features(Arc<FeatureRecord>),
    /// A model's output for one window.
    Prediction(Arc<Prediction>),
    /// A model's alarm was raised or cleared.
    Alarm(Arc<AlarmEvent>),
    /// A model's drift summaries for one interval.
    Drift(Arc<DriftRecord>),
}

/// The kinds of record, for outputs that take only some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Samples,
    Features,
    Predictions,
    Alarms,
    Drift,
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Samples(_) => RecordKind::Samples,
            Record::Features(_) => RecordKind::Features,
            Record::Prediction(_) => RecordKind::Predictions,
            Record::Alarm(_) => RecordKind::Alarms,
            Record::Drift(_) => RecordKind::Drift,
        }
    }

    /// Number of items in the record, for counters.
    pub fn len(&self) -> usize {
        match self {
            Record::Samples(s) => s.len(),
            Record::Features(_) | Record::Prediction(_) | Record::Alarm(_) | Record::Drift(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub use edge_protocols::bundle::BundleRef;
pub use edge_protocols::drift::{ColumnDrift, DriftRecord};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    pub start_ns: i64,
    pub end_ns: i64,
    pub names: Arc<[String]>,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    pub start_ns: i64,
    pub end_ns: i64,
    /// Raw model outputs by name (flattened).
    pub outputs: Vec<(String, Vec<f64>)>,
    /// The manifest's score, if it declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Class name from the manifest's label rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether this window's score is past the manifest's threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_threshold: Option<bool>,
    /// The alarm state after hysteresis (`raise_after` / `clear_after` windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<bool>,
}

/// An alarm state change of a model (hysteresis applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    /// End of the window that changed the state.
    pub ts_ns: i64,
    /// `true`: raised; `false`: cleared.
    pub active: bool,
    pub score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Set for drift and performance alarms (`score` is then the metric's value and
    /// `threshold` its limit); absent for the model's score alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftAlarm>,
}

/// What a drift alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAlarmKind {
    /// A feature column drifts from the bundle's reference.
    Column,
    /// A model output drifts from the outputs seen on the training data.
    Output,
    /// At least `dataset_share` of the feature columns drift.
    Dataset,
    /// Accuracy / recall / MAE on late labels past its limit (concept drift).
    Performance,
}

impl DriftAlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAlarmKind::Column => "column",
            DriftAlarmKind::Output => "output",
            DriftAlarmKind::Dataset => "dataset",
            DriftAlarmKind::Performance => "performance",
        }
    }
}

/// The drift part of an [`AlarmEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    /// Column or output name, `dataset`, or the performance metric (`accuracy`, `recall`, `mae`).
    pub subject: String,
    pub kind: DriftAlarmKind,
    /// The metric compared: `psi`, `js`, `ks`, `w1_std`, `drifting_share`, `accuracy`,
    /// `recall`, `mae`; `bundle_replaced` when a new bundle cleared it.
    pub metric: String,
    /// Consecutive intervals that decided the change.
    pub intervals: u32,
}
