//! Models: signed bundles loaded with every check, the version floor, and the model stage that
//! turns samples into features and predictions.

pub mod config;
pub mod control;
pub mod drift;
pub mod floor;
pub mod labels;
pub mod loaded;
pub mod reference;
pub mod stage;

pub use config::{BundlesConfig, ModelConfig, WhenBusy};
pub use control::{ControlError, LoadError, ModelControl, ModelHealth};
pub use loaded::{LoadedBundle, TagCatalog};
pub use stage::{ModelStage, ModelStats};
