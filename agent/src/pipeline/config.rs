//! `[pipeline]`: the channel between sources and the pipeline, its backpressure policy, the
//! outputs' queues and the shutdown deadline.

use std::time::Duration;

use edge_sources::BackpressurePolicy;
use serde::Deserialize;

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Capacity of the sources -> pipeline channel, in batches (one poll / notification /
    /// message is one batch).
    pub channel_capacity: usize,
    /// What sources do when the pipeline is full (see `BackpressurePolicy`): `block` (default,
    /// nothing lost) or `drop_newest`.
    pub backpressure: BackpressurePolicy,
    /// Capacity of each output's input queue, in records.
    pub output_capacity: usize,
    /// Longest a shutdown may take before in-flight data is dropped (and logged).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            channel_capacity: 1024,
            backpressure: BackpressurePolicy::Block,
            output_capacity: 1024,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}
