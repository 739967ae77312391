//! File outputs: records written as JSON lines or CSV to a file or standard output (the
//! [`crate::pipeline::Output`] trait they implement lives with the pipeline).

pub mod file;
