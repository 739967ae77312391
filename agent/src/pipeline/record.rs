//! [`Record`]: what flows from the pipeline's stages to its outputs. Payloads are shared
//! (`Arc`) so fanning out to several outputs never copies them.

use std::sync::Arc;

use edge_wire::Sample;

/// One record from the pipeline to its outputs.
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
    /// Raw samples.
    Samples,
    /// Feature rows.
    Features,
    /// Model predictions.
    Predictions,
    /// Alarm raises and clears.
    Alarms,
    /// Drift summaries.
    Drift,
}

impl RecordKind {
    /// Every kind, in stream order.
    pub const ALL: [RecordKind; 5] = [
        RecordKind::Samples,
        RecordKind::Features,
        RecordKind::Predictions,
        RecordKind::Alarms,
        RecordKind::Drift,
    ];

    /// The config's word for it (`records = [...]`).
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Samples => "samples",
            RecordKind::Features => "features",
            RecordKind::Predictions => "predictions",
            RecordKind::Alarms => "alarms",
            RecordKind::Drift => "drift",
        }
    }
}

impl Record {
    /// What kind of record this is.
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

    /// Whether the record holds no item (an empty sample batch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// The record payloads are the outbox wire schema, defined once in `edge_wire::records`.
pub use edge_wire::records::{
    AlarmEvent, BundleRef, ColumnDrift, DriftAlarm, DriftAlarmKind, DriftRecord, FeatureRecord,
    Prediction,
};
