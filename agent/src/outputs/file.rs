//! `[[outputs.file]]`: writes samples to a file or stdout as JSON lines or as the CSV
//! recording format (`recording.rs`) — for debugging, and for recording training data that
//! `edge-agent featurize` reads back.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use edge_sources::error_latch::ErrorLatch;
use edge_wire::config_check::{Issues, KeyPath};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::pipeline::record::{Record, RecordKind};
use crate::pipeline::{Output, OutputFuture, OutputStats};
use crate::recording::{write_csv_row, CSV_HEADER};

/// `[[outputs.file]]`: records appended to a file or written to standard output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputConfig {
    /// Output name, unique among outputs (in logs and metrics).
    pub name: String,
    /// File to append to; `-` is standard output.
    pub path: PathBuf,
    /// `jsonl` (one JSON object per sample, feature row or prediction) or `csv` (the
    /// recording format; samples only).
    #[serde(default)]
    pub format: FileFormat,
    /// Which records to write: any of `samples`, `features`, `predictions`, `alarms`, `drift`. Default: all
    /// (jsonl), samples (csv).
    #[serde(default)]
    pub records: Option<Vec<crate::pipeline::record::RecordKind>>,
}

/// `[[outputs.file]] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line, tagged with its kind (`sample`, `features`, `prediction`, `alarm`,
    /// `drift`).
    #[default]
    Jsonl,
    /// The recording CSV format (header written to a new or empty file); samples only.
    Csv,
}

impl FileOutputConfig {
    /// Checks the entry (non-empty path; csv only with samples), adding problems under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(!self.path.as_os_str().is_empty(), at.key("path"), || {
            "path must not be empty (use \"-\" for standard output)".into()
        });
        if self.format == FileFormat::Csv {
            issues.check(
                self.records.as_ref().is_none_or(|r| r.iter().all(|k| *k == RecordKind::Samples)),
                at.key("records"),
                || "the csv format holds samples only; use format = \"jsonl\" for features and predictions".into(),
            );
        }
    }
}

/// Writes records to a file, one write + flush per record (a batch), so a crash loses at
/// most the record being written.
#[derive(Debug)]
pub struct FileOutput {
    cfg: FileOutputConfig,
}

impl FileOutput {
    /// An output for `cfg`; the file is opened (created, with its parent directories) at the first
    /// record.
    pub fn new(cfg: FileOutputConfig) -> Self {
        FileOutput { cfg }
    }

    fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        if self.cfg.path.as_os_str() == "-" {
            return Ok(Box::new(std::io::stdout()));
        }
        if let Some(dir) = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.path)?;
        let empty = f.metadata()?.len() == 0;
        let mut w: Box<dyn Write + Send> = Box::new(f);
        if empty && self.cfg.format == FileFormat::Csv {
            writeln!(w, "{CSV_HEADER}")?;
        }
        Ok(w)
    }

    /// What the output says it writes where, at start.
    fn announcement(&self, dest: &str) -> String {
        let kinds: Vec<&str> = RecordKind::ALL
            .into_iter()
            .filter(|k| self.accepts(*k))
            .map(RecordKind::name)
            .collect();
        let format = match self.cfg.format {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Csv => "csv",
        };
        format!("writing {} to {dest} ({format})", kinds.join(", "))
    }

    fn render(&self, r: &Record, buf: &mut String) {
        buf.clear();
        match r {
            Record::Samples(samples) => {
                for s in samples.iter() {
                    match self.cfg.format {
                        FileFormat::Csv => write_csv_row(buf, s),
                        FileFormat::Jsonl => push_json(
                            buf,
                            &Tagged {
                                kind: "sample",
                                body: s,
                            },
                        ),
                    }
                }
            }
            Record::Features(f) => push_json(
                buf,
                &Tagged {
                    kind: "features",
                    body: &**f,
                },
            ),
            Record::Prediction(p) => push_json(
                buf,
                &Tagged {
                    kind: "prediction",
                    body: &**p,
                },
            ),
            Record::Alarm(a) => push_json(
                buf,
                &Tagged {
                    kind: "alarm",
                    body: &**a,
                },
            ),
            Record::Drift(d) => push_json(
                buf,
                &Tagged {
                    kind: "drift",
                    body: &**d,
                },
            ),
        }
    }

    async fn run_loop(self: Box<Self>, mut input: mpsc::Receiver<Record>, stats: Arc<OutputStats>) {
        let name = self.cfg.name.clone();
        let dest = if self.cfg.path.as_os_str() == "-" {
            "standard output".to_string()
        } else {
            self.cfg.path.display().to_string()
        };
        tracing::info!(output = %name, "{}", self.announcement(&dest));
        // File I/O is blocking: it runs on the blocking pool, one record at a time.
        let (wtx, mut wrx) = mpsc::channel::<(String, usize)>(4);
        let this = Arc::new(self);
        let writer_this = this.clone();
        let writer_stats = stats.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut latch = ErrorLatch::default();
            let mut out: Option<Box<dyn Write + Send>> = None;
            while let Some((text, n)) = wrx.blocking_recv() {
                if out.is_none() {
                    match writer_this.open() {
                        Ok(w) => out = Some(w),
                        Err(e) => {
                            let msg =
                                format!("cannot open {}: {e}", writer_this.cfg.path.display());
                            if latch.fail(&msg) {
                                tracing::error!(output = %writer_this.cfg.name, "{msg}; dropping records until it works");
                            }
                            writer_stats.add_failed(n);
                            continue;
                        }
                    }
                }
                let res = out
                    .as_mut()
                    .map(|w| w.write_all(text.as_bytes()).and_then(|_| w.flush()));
                match res {
                    Some(Ok(())) => {
                        if latch.ok().is_some() {
                            tracing::info!(output = %writer_this.cfg.name, "writing again");
                        }
                        writer_stats.add_written(n);
                    }
                    Some(Err(e)) => {
                        let msg =
                            format!("write to {} failed: {e}", writer_this.cfg.path.display());
                        if latch.fail(&msg) {
                            tracing::error!(output = %writer_this.cfg.name, "{msg}; dropping records until it works");
                        }
                        writer_stats.add_failed(n);
                        out = None; // reopen next time (the file may have been rotated away)
                    }
                    None => {}
                }
            }
        });
        let mut buf = String::new();
        while let Some(r) = input.recv().await {
            this.render(&r, &mut buf);
            if wtx.send((std::mem::take(&mut buf), r.len())).await.is_err() {
                break;
            }
        }
        drop(wtx);
        tracing::debug!(output = %name, "input closed, waiting for the writer");
        if let Err(e) = writer.await {
            tracing::error!(output = %name, "file writer failed: {e}");
        }
    }
}

/// A record with its kind: `{"kind": "sample", ...}`.
#[derive(serde::Serialize)]
struct Tagged<'a, T: serde::Serialize> {
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

fn push_json<T: serde::Serialize>(buf: &mut String, v: &T) {
    // Serializing plain data into a String cannot fail.
    if let Ok(j) = serde_json::to_string(v) {
        buf.push_str(&j);
        buf.push('\n');
    }
}

impl Output for FileOutput {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn accepts(&self, kind: RecordKind) -> bool {
        match &self.cfg.records {
            Some(r) => r.contains(&kind),
            None => self.cfg.format == FileFormat::Jsonl || kind == RecordKind::Samples,
        }
    }
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        stats: Arc<OutputStats>,
    ) -> OutputFuture {
        Box::pin(self.run_loop(input, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(format: FileFormat, records: Option<Vec<RecordKind>>) -> FileOutput {
        FileOutput::new(FileOutputConfig {
            name: "f".into(),
            path: "out.jsonl".into(),
            format,
            records,
        })
    }

    /// The start-up line names what the file gets (it said "writing samples" for every file).
    #[test]
    fn the_start_line_names_the_records_written() {
        let o = output(
            FileFormat::Jsonl,
            Some(vec![RecordKind::Predictions, RecordKind::Drift]),
        );
        assert_eq!(
            o.announcement("out.jsonl"),
            "writing predictions, drift to out.jsonl (jsonl)"
        );
        let all = output(FileFormat::Jsonl, None);
        assert_eq!(
            all.announcement("-"),
            "writing samples, features, predictions, alarms, drift to - (jsonl)"
        );
        let csv = output(FileFormat::Csv, None);
        assert_eq!(
            csv.announcement("rec.csv"),
            "writing samples to rec.csv (csv)"
        );
    }
}
