//! [`Record`]: what flows from the pipeline's stages to its outputs. Batches are shared
//! (`Arc`) so fanning out to several outputs never copies samples.

use std::sync::Arc;

use edge_protocols::Sample;

#[derive(Debug, Clone)]
pub enum Record {
    /// Raw samples as the sources produced them.
    Samples(Arc<Vec<Sample>>),
}

impl Record {
    /// Number of items in the record, for counters.
    pub fn len(&self) -> usize {
        match self {
            Record::Samples(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
