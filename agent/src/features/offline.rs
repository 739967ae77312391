//! Offline featurization: a recording (CSV, `recording.rs` format) through the same
//! [`Featurizer`] the live pipeline uses. Used by `edge-agent featurize` and `bundle pack`.

use std::io::BufRead;

use edge_protocols::bundle::FeatureSpec;

use super::{FeatureRow, Featurizer, WindowStats};
use crate::recording::{parse_csv_row, CSV_HEADER};

/// Reads samples from `input` (header first) and calls `on_row` for every window, in order.
/// Errors name the line. Samples are fed in file order, exactly as they would arrive live.
pub fn featurize_csv(
    spec: &FeatureSpec,
    input: impl BufRead,
    what: &str,
    mut on_row: impl FnMut(&FeatureRow) -> Result<(), String>,
) -> Result<WindowStats, String> {
    let mut f = Featurizer::new(spec);
    let mut batch = Vec::with_capacity(1024);
    let mut rows = Vec::new();
    let mut lines = input.lines().enumerate();
    match lines.next() {
        Some((_, Ok(h))) if h.trim_end() == CSV_HEADER => {}
        Some((_, Ok(h))) => {
            return Err(format!(
                "{what}:1: expected the header `{CSV_HEADER}`, found `{h}`"
            ))
        }
        Some((_, Err(e))) => return Err(format!("{what}: {e}")),
        None => return Err(format!("{what}: empty file")),
    }
    for (i, line) in lines {
        let line = line.map_err(|e| format!("{what}:{}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let s = parse_csv_row(&line).map_err(|e| format!("{what}:{}: {e}", i + 1))?;
        if !f.wants(&s.tag) {
            continue;
        }
        batch.push(s);
        if batch.len() == batch.capacity() {
            f.push(&batch, &mut rows);
            batch.clear();
            for r in rows.drain(..) {
                on_row(&r)?;
            }
        }
    }
    f.push(&batch, &mut rows);
    for r in rows.drain(..) {
        on_row(&r)?;
    }
    Ok(f.stats().clone())
}
