//! Drift: summaries, what a device keeps per feature (or model output) per interval, how
//! summaries merge (across intervals and devices), and how they are scored against a
//! bundle's reference statistics. Shared by the agent (computes) and the fleet server
//! (merges, scores fleet-wide).
//!
//! A [`DriftSummary`] has a fixed size whatever the number of samples: count, missing
//! count, min, max, mean and M2 (Welford; merged with Chan's parallel formula), counts per
//! reference histogram bin, and a DDSketch (relative-accuracy quantile sketch, the
//! DataDog-compatible encoding). Merging two summaries gives exactly the histogram and
//! moments of the union (up to float rounding) and quantiles within the sketch's accuracy.
//!
//! Scores ([`score`]): PSI (bands 0.1 / 0.25), Jensen-Shannon distance (base 2, 0..1),
//! Wasserstein-1 between the quantile functions (the device's sketch against the reference's
//! edges and stored quantiles; in the feature's units and divided by the reference standard
//! deviation), and the Kolmogorov-Smirnov statistic (exact at the bin edges from the
//! histogram, and from the sketch at the reference quantiles).
//!
//! Submodules: [`summary`] (moments, histogram, sketch, scores), [`policy`] (which score and
//! threshold make a column drift, hysteresis over intervals — also stored in bundle
//! manifests), [`record`] (what a device sends
//! per interval, incl. model performance from late labels), [`fleet`] (merging records
//! across intervals and devices).

pub mod fleet;
pub mod record;
mod sketch_check;
pub mod summary;

/// The `[drift]` policy lives beside this module (`crate::drift_policy`) because bundle
/// manifests carry it: bundles depend on it, and drift depends on bundles.
pub use crate::drift_policy as policy;
pub use policy::{DriftMetric, DriftPolicy, DriftRules, Hysteresis};
pub use record::{ColumnDrift, DriftRecord, Performance, ShadowSummary};
pub use summary::*;
