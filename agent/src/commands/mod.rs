//! The offline commands of the binary: `bundle keygen|pack|inspect|verify`, `featurize` and
//! `replay`. They return `anyhow` errors whose text is shown to the user as is.

pub mod bundle;
pub mod featurize;
#[cfg(feature = "authoring")]
pub mod pack;
pub mod replay;
