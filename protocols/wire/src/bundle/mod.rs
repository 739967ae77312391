//! Model bundles: the feature spec, the manifest, and the signed single-file container that
//! carries a model from training to devices.

pub mod file;
pub mod manifest;
pub mod spec;

pub use file::{Bundle, BundleError};
pub use manifest::Manifest;
pub use spec::{FeatureDef, FeatureKind, FeatureSpec, InputLayout};

use std::sync::Arc;

/// Which bundle produced a record (prediction, features, drift, alarm).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BundleRef {
    /// The agent's `[[models]]` instance name.
    pub model: Arc<str>,
    /// The bundle name from its manifest.
    pub bundle: Arc<str>,
    /// Its semantic version.
    pub version: Arc<str>,
    /// Its monotonic version number.
    pub version_number: u64,
    /// SHA-256 of the bundle file.
    pub sha256: Arc<str>,
}
