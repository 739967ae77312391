//! `[[sources.replay]]`: plays a recording (any layout `recording.rs` reads) into the
//! pipeline with its recorded timestamps, paced by a speed factor (`1` = as recorded, `60` =
//! an hour per minute) or as fast as the pipeline takes it (`"max"`). The samples are the
//! recording's, bit for bit, so windows, features and predictions are those a device that
//! read them live computed. Also the source of `edge-agent replay`.
//!
//! At the end of the file the source logs it and idles until shutdown (or, for the replay
//! command, fires `on_end`); it never loops, since replayed timestamps going back would be
//! late samples.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edge_sources::{Source, SourceContext, SourceError, SourceFuture};
use edge_wire::config_check::{Issues, KeyPath};
use edge_wire::{Sample, Tag};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::recording::{RecordingError, RecordingReader};

/// How fast a recording plays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplaySpeed {
    /// Recorded time / factor: `1` as recorded, `10` ten times faster.
    Factor(f64),
    /// As fast as the pipeline takes the samples (backpressure paces the reader).
    Max,
}

impl Default for ReplaySpeed {
    fn default() -> Self {
        ReplaySpeed::Factor(1.0)
    }
}

/// A replay speed that is neither a number > 0 nor `max` (as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("speed `{0}` must be a number > 0 (1 = as recorded) or \"max\"")]
pub struct BadSpeed(String);

impl ReplaySpeed {
    fn factor(f: f64, shown: &str) -> Result<Self, BadSpeed> {
        if f.is_finite() && f > 0.0 {
            Ok(ReplaySpeed::Factor(f))
        } else {
            Err(BadSpeed(shown.to_string()))
        }
    }
}

impl std::str::FromStr for ReplaySpeed {
    type Err = BadSpeed;
    fn from_str(s: &str) -> Result<Self, BadSpeed> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(ReplaySpeed::Max);
        }
        ReplaySpeed::factor(s.parse::<f64>().unwrap_or(f64::NAN), s)
    }
}

impl<'de> Deserialize<'de> for ReplaySpeed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(f) => ReplaySpeed::factor(f, &f.to_string()),
            Repr::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// `[[sources.replay]]`: plays a recording (CSV) into the pipeline, paced by its timestamps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySourceConfig {
    /// Source name, unique among sources.
    pub name: String,
    /// The recording: the agent's own CSV (`tag,ts_ns,value,quality`) or an imported long or
    /// wide CSV (docs/models.md, "Recordings").
    pub path: PathBuf,
    /// `1` (default) plays at the recorded pace, `N` N times faster, `"max"` as fast as the
    /// pipeline takes it.
    #[serde(default)]
    pub speed: ReplaySpeed,
    /// The tags this source produces (others in the file are skipped). Feature specs are
    /// checked against these; empty (default) = every tag the recording holds (read from the
    /// file when the config is loaded).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tags read from the file when `tags` is empty (read once, at load).
    #[serde(skip)]
    pub file_tags: std::sync::OnceLock<Result<Vec<String>, RecordingTagsError>>,
}

impl ReplaySourceConfig {
    /// Checks the entry: a path, and (when `tags` is empty) a recording whose tags can be read;
    /// problems are added under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(!self.path.as_os_str().is_empty(), at.key("path"), || {
            "path must name a recording".into()
        });
        if self.tags.is_empty() {
            if let Err(e) = self.file_tags() {
                issues.push(at.key("path"), e.to_string());
            }
        }
    }

    fn file_tags(&self) -> &Result<Vec<String>, RecordingTagsError> {
        self.file_tags.get_or_init(|| recording_tags(&self.path))
    }

    /// The tags this source produces: `tags`, or those of the recording.
    pub fn tag_names(&self) -> Vec<String> {
        if !self.tags.is_empty() {
            return self.tags.clone();
        }
        self.file_tags().as_ref().ok().cloned().unwrap_or_default()
    }
}

/// Why a recording's tags could not be read ([`recording_tags`]). Cloneable: the config
/// keeps the result of its one read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordingTagsError {
    /// The file could not be opened.
    #[error("cannot read {path}: {source}")]
    Open {
        /// The file, as shown.
        path: String,
        /// The I/O error.
        source: std::sync::Arc<std::io::Error>,
    },
    /// The recording is malformed (with its line).
    #[error(transparent)]
    Recording(#[from] RecordingError),
}

/// Every tag of a recording, in order of first appearance (a wide file's header; a long
/// file's tag column, read through without parsing the values).
pub fn recording_tags(path: &std::path::Path) -> Result<Vec<String>, RecordingTagsError> {
    let what = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| RecordingTagsError::Open {
        path: what.clone(),
        source: source.into(),
    })?;
    Ok(RecordingReader::new(std::io::BufReader::new(f), &what).and_then(|r| r.tag_names())?)
}

/// Samples handed over at once: a batch of up to this many with due times within
/// [`PACE_SLACK`] of each other.
const BATCH: usize = 1024;
const PACE_SLACK: Duration = Duration::from_millis(2);

/// The replay source: reads a recording on a thread of its own and hands its samples over at
/// the configured speed; ends at the end of the file.
#[derive(Debug)]
pub struct ReplaySource {
    cfg: ReplaySourceConfig,
    /// Fired at the end of the file (the replay command stops the pipeline with it).
    on_end: Option<CancellationToken>,
    /// Where a read error is left for the replay command (which then fails with it).
    failure: Option<Arc<std::sync::Mutex<Option<String>>>>,
}

impl ReplaySource {
    /// A source for `cfg`; the file is opened when it runs.
    pub fn new(cfg: ReplaySourceConfig) -> Self {
        ReplaySource {
            cfg,
            on_end: None,
            failure: None,
        }
    }

    /// Leaves the error that stopped the replay (a bad row, an unreadable file) in `slot`.
    pub fn report_failure(mut self, slot: Arc<std::sync::Mutex<Option<String>>>) -> Self {
        self.failure = Some(slot);
        self
    }

    /// Fires `token` when the whole recording was handed to the pipeline.
    pub fn on_end(mut self, token: CancellationToken) -> Self {
        self.on_end = Some(token);
        self
    }

    /// Records a fatal error for the replay command and ends the replay; returns the error.
    fn fail(&self, e: String) -> String {
        if let Some(slot) = &self.failure {
            if let Ok(mut s) = slot.lock() {
                s.get_or_insert(e.clone());
            }
        }
        if let Some(t) = &self.on_end {
            t.cancel();
        }
        e
    }

    async fn run_loop(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let path = self.cfg.path.clone();
        let what = path.display().to_string();
        let fatal = |e: String| SourceError::Config(e);
        let f =
            std::fs::File::open(&path).map_err(|e| fatal(format!("cannot read {what}: {e}")))?;
        let reader = RecordingReader::new(std::io::BufReader::new(f), &what)
            .map_err(|e| fatal(e.to_string()))?;
        let only: Option<std::collections::HashSet<String>> =
            (!self.cfg.tags.is_empty()).then(|| self.cfg.tags.iter().cloned().collect());
        ctx.stats.set_connected(true);
        tracing::info!(source = %ctx.name, path = %what, layout = %reader.layout().describe(),
            speed = ?self.cfg.speed, "replaying a recording");
        // Reading is blocking file I/O: a thread reads, the task paces and sends.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Sample>, RecordingError>>(4);
        let reader_thread = std::thread::Builder::new()
            .name(format!("replay-{}", ctx.name))
            .spawn(move || {
                let mut batch = Vec::with_capacity(BATCH);
                for s in reader {
                    match s {
                        Ok(s) => {
                            if only.as_ref().is_none_or(|o| o.contains(&*s.tag)) {
                                batch.push(s);
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                    if batch.len() == BATCH
                        && tx
                            .blocking_send(Ok(std::mem::replace(
                                &mut batch,
                                Vec::with_capacity(BATCH),
                            )))
                            .is_err()
                    {
                        return;
                    }
                }
                let _ = tx.blocking_send(Ok(batch));
            })
            .map_err(|e| fatal(self.fail(format!("cannot start the reader thread: {e}"))))?;
        let mut clock: Option<(i64, tokio::time::Instant)> = None;
        let mut samples = 0u64;
        let mut failed = None;
        'read: while let Some(chunk) = tokio::select! {
            c = rx.recv() => c,
            _ = ctx.shutdown.cancelled() => None,
        } {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if self.cfg.speed == ReplaySpeed::Max {
                // As fast as the pipeline takes it: the chunk goes as it is.
                samples += chunk.len() as u64;
                if ctx.out.send(chunk).await.is_err() {
                    break 'read;
                }
                continue;
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let n = match self.cfg.speed {
                    ReplaySpeed::Max => rest.len(),
                    ReplaySpeed::Factor(f) => {
                        let (t0, w0) =
                            *clock.get_or_insert((rest[0].ts_ns, tokio::time::Instant::now()));
                        let due = |ts: i64| {
                            w0 + Duration::from_secs_f64(((ts - t0).max(0) as f64 / 1e9) / f)
                        };
                        let first = due(rest[0].ts_ns);
                        let n = rest
                            .iter()
                            .take_while(|s| due(s.ts_ns) <= first + PACE_SLACK)
                            .count()
                            .max(1);
                        tokio::select! {
                            _ = tokio::time::sleep_until(first) => {}
                            _ = ctx.shutdown.cancelled() => break 'read,
                        }
                        n
                    }
                };
                let (now, later) = rest.split_at(n);
                samples += now.len() as u64;
                if ctx.out.send(now.to_vec()).await.is_err() {
                    break 'read;
                }
                rest = later;
            }
        }
        drop(rx);
        if let Some(r) = crate::task::joined(
            "replay reader",
            tokio::task::spawn_blocking(move || reader_thread.join()).await,
        ) {
            crate::task::thread_joined("replay reader", r);
        }
        if let Some(e) = failed {
            ctx.stats.error();
            tracing::error!(source = %ctx.name, "replay stopped at a bad row: {e}");
            return Err(fatal(self.fail(e.to_string())));
        }
        tracing::info!(source = %ctx.name, samples, "replay finished: the whole recording was read");
        if let Some(t) = &self.on_end {
            t.cancel();
        }
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

impl Source for ReplaySource {
    fn kind(&self) -> &'static str {
        "replay"
    }

    fn tags(&self) -> Vec<Tag> {
        self.cfg
            .tag_names()
            .iter()
            .map(|t| Arc::from(t.as_str()))
            .collect()
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
        Box::pin(self.run_loop(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_reads_numbers_and_max() {
        #[derive(Deserialize)]
        struct T {
            speed: ReplaySpeed,
        }
        let s = |t: &str| toml::from_str::<T>(t).map(|t| t.speed);
        assert_eq!(s("speed = 2").unwrap(), ReplaySpeed::Factor(2.0));
        assert_eq!(s("speed = 0.5").unwrap(), ReplaySpeed::Factor(0.5));
        assert_eq!(s("speed = \"max\"").unwrap(), ReplaySpeed::Max);
        let e = s("speed = 0").unwrap_err().to_string();
        assert!(e.contains("must be a number > 0"), "{e}");
        assert!(s("speed = \"fast\"").is_err());
    }
}
