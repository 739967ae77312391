//! The typed control path to a running model stage: [`ModelControl`] asks the stage to load
//! its bundle file now and answers with what it serves or why it refused ([`LoadError`]), and
//! a health watch ([`ModelHealth`]) counts the predictions, inference errors and out-of-range
//! outputs of the bundle being served. The fleet updater (`crate::sync::update`) installs a
//! bundle file, asks for the reload, and watches the health of exactly that bundle — no
//! polling of files or counters.

use std::path::PathBuf;
use std::sync::Arc;

use edge_wire::bundle::file::BundleError;
use edge_wire::bundle::BundleRef;
use tokio::sync::{mpsc, oneshot, watch};

use super::floor::FloorError;

/// Why a bundle was not loaded. The previous bundle keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The bundle file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Not a valid bundle, or not one this device may run: format, hashes, signature, trusted
    /// keys, version floor.
    #[error("{}: {source}", path.display())]
    Refused {
        /// The bundle file.
        path: PathBuf,
        /// The bundle check that failed.
        source: BundleError,
    },
    /// A valid, trusted bundle that cannot run here: its feature spec, the tags it reads, its
    /// model's input or outputs, the labels configuration, or (for a shadow challenger) a
    /// feature spec other than the champion's.
    #[error("{}: {reason}", path.display())]
    Incompatible {
        /// The bundle file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The version floor could not be read or raised.
    #[error(transparent)]
    Floor(#[from] FloorError),
}

/// What one bundle has done since it started serving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelHealth {
    /// The bundle (its SHA-256) these counts are about; empty before the first prediction.
    pub sha256: Arc<str>,
    /// Windows predicted.
    pub predictions: u64,
    /// Windows whose inference failed.
    pub inference_errors: u64,
    /// Predictions outside the manifest's declared output ranges.
    pub out_of_range: u64,
}

impl ModelHealth {
    /// Counts one inference of `bundle`, starting from zero when the bundle changed.
    pub(crate) fn count(&mut self, bundle: &BundleRef, failed: bool, out_of_range: bool) {
        if *self.sha256 != *bundle.sha256 {
            *self = ModelHealth {
                sha256: bundle.sha256.clone(),
                ..ModelHealth::default()
            };
        }
        if failed {
            self.inference_errors += 1;
        } else {
            self.predictions += 1;
            self.out_of_range += u64::from(out_of_range);
        }
    }
}

/// A request to load the bundle file now (the stage's answer comes back on `reply`).
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    pub(crate) reply: oneshot::Sender<Result<Arc<BundleRef>, Arc<LoadError>>>,
}

/// Why a control request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The model stage is not running (the agent is stopping).
    #[error("the model stage is not running")]
    Stopped,
    /// The stage refused the bundle; the previous one keeps serving.
    #[error("{0}")]
    Load(Arc<LoadError>),
}

/// The handle to one running model stage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ModelControl {
    pub(crate) requests: mpsc::Sender<ReloadRequest>,
    pub(crate) health: watch::Receiver<ModelHealth>,
}

impl ModelControl {
    /// Loads the stage's bundle file now, with every check, and answers with the bundle that
    /// serves afterwards. A file the stage already loaded (or refused) since it last changed
    /// is not loaded twice: the answer is that load's outcome.
    pub async fn reload(&self) -> Result<Arc<BundleRef>, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(ReloadRequest { reply })
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer
            .await
            .map_err(|_| ControlError::Stopped)?
            .map_err(ControlError::Load)
    }

    /// The health of the bundle being served, updated after every inference.
    pub fn health(&self) -> watch::Receiver<ModelHealth> {
        self.health.clone()
    }
}
