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

/// Which bundle produced a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleRef {
    /// The `[[models]]` instance name.
    pub model: Arc<str>,
    /// Bundle name and versions from its manifest.
    pub bundle: Arc<str>,
    pub version: Arc<str>,
    pub version_number: u64,
    /// SHA-256 of the bundle file.
    pub sha256: Arc<str>,
}

/// One column's drift over an interval: its mergeable summary and its scores against the
/// bundle's reference (absent if the reference has no usable histogram).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDrift {
    pub summary: edge_protocols::drift::DriftSummary,
    pub scores: Option<edge_protocols::drift::DriftScores>,
}

/// A model's drift summaries for one interval (`[[models]] drift_interval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftRecord {
    #[serde(flatten)]
    pub source: Arc<BundleRef>,
    pub start_ns: i64,
    pub end_ns: i64,
    /// Windows summarized.
    pub windows: u64,
    pub columns: Vec<ColumnDrift>,
    /// Columns in the significant PSI band (>= 0.25).
    pub drifting: Vec<String>,
    /// At least half of the columns drift.
    pub dataset_drift: bool,
}

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
}
