//! Model bundles: the feature spec, the manifest, and the signed single-file container that
//! carries a model from training to devices.

pub mod file;
pub mod manifest;
pub mod spec;

pub use file::{Bundle, BundleError};
pub use manifest::Manifest;
pub use spec::{FeatureDef, FeatureKind, FeatureSpec, InputLayout};
