//! Offline featurization: a recording (CSV, `recording.rs` format) through the same
//! [`Featurizer`] the live pipeline uses. Used by `edge-agent featurize` and `bundle pack`.

use std::io::BufRead;

use edge_wire::bundle::FeatureSpec;

use super::{FeatureRow, Featurizer, WindowStats};
use crate::recording::{RecordingError, RecordingReader};

/// Why offline featurization stopped; `E` is the error of the caller's row handler.
#[derive(Debug, thiserror::Error)]
pub enum FeaturizeError<E> {
    /// The recording could not be read (with the line).
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The caller's handling of a row failed (e.g. writing the output).
    #[error("{0}")]
    Row(E),
}

/// Reads samples from `input` (a recording in any [`crate::recording::CsvLayout`]) and calls
/// `on_row` for every window, in order. Errors name the line. Samples are fed in file order,
/// exactly as they would arrive live.
pub fn featurize_csv<E>(
    spec: &FeatureSpec,
    input: impl BufRead,
    what: &str,
    mut on_row: impl FnMut(&FeatureRow) -> Result<(), E>,
) -> Result<WindowStats, FeaturizeError<E>> {
    let mut f = Featurizer::new(spec);
    let mut batch = Vec::with_capacity(1024);
    let mut rows = Vec::new();
    for s in RecordingReader::new(input, what)? {
        let s = s?;
        if !f.wants(&s.tag) {
            continue;
        }
        batch.push(s);
        if batch.len() == batch.capacity() {
            f.push(&batch, &mut rows);
            batch.clear();
            for r in rows.drain(..) {
                on_row(&r).map_err(FeaturizeError::Row)?;
            }
        }
    }
    f.push(&batch, &mut rows);
    for r in rows.drain(..) {
        on_row(&r).map_err(FeaturizeError::Row)?;
    }
    Ok(f.stats().clone())
}
