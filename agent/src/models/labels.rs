//! [`LabelJoiner`]: late ground truth joined to the model's predictions (concept drift).
//!
//! Labels are samples of the tag `[models.labels] tag` from any source (an MQTT label
//! topic, a PLC tag that reports a failure later). A label's timestamp says which moment it
//! is about: it labels every waiting prediction whose window `[start, end]` contains that
//! moment. Predictions wait up to `horizon` (measurement time: the newest window end or label
//! seen) and then count as unlabelled; labels that arrive before their window closed wait
//! as long for it. Resolved predictions accumulate into a [`Performance`] that the drift
//! tracker takes at each interval close.

use std::collections::VecDeque;
use std::time::Duration;

use edge_wire::drift::Performance;
use serde::Deserialize;

/// How a label compares with a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// Label value != 0 is the positive class; a prediction is positive when its score is
    /// past the manifest's threshold (accuracy, precision, recall).
    #[default]
    Classification,
    /// The label is the true value of the prediction's score (MAE, RMSE).
    Regression,
}

/// `[models.labels]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// Tag whose samples are the ground truth.
    pub tag: String,
    /// How long a prediction waits for its label before it counts as unlabelled.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// How a label compares with a prediction (default: classification).
    #[serde(default)]
    pub kind: LabelKind,
}

/// Why `[models.labels]` does not fit the running bundle or the sources ([`check`]). The
/// message starts with the key (`labels.…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    /// No source provides the label tag (the tag).
    #[error(
        "labels.tag `{0}`: no source provides this tag (the ground truth must come from a configured source)"
    )]
    UnknownTag(String),
    /// Classification labels with a bundle whose score has no threshold (the bundle name).
    #[error(
        "labels.kind = \"classification\" compares each label with the score past its threshold, but bundle {0} has no postprocess.score.threshold (use kind = \"regression\" for a score that estimates the label)"
    )]
    NoThreshold(String),
}

/// Checks `[models.labels]` against the running bundle and the tags sources provide.
pub fn check(
    cfg: Option<&LabelsConfig>,
    bundle: &super::LoadedBundle,
    tags: &dyn super::TagCatalog,
) -> Result<(), LabelsError> {
    let Some(l) = cfg else { return Ok(()) };
    if !tags.knows(&l.tag) {
        return Err(LabelsError::UnknownTag(l.tag.clone()));
    }
    let has_threshold = bundle
        .manifest
        .postprocess
        .score
        .as_ref()
        .is_some_and(|s| s.threshold.is_some());
    if l.kind == LabelKind::Classification && !has_threshold {
        return Err(LabelsError::NoThreshold(bundle.source.bundle.to_string()));
    }
    Ok(())
}

/// Predictions (and early labels) held at most; past this the oldest resolve as unlabelled.
const MAX_PENDING: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Pending {
    start_ns: i64,
    end_ns: i64,
    /// Classification: predicted positive; regression: the score.
    positive: bool,
    score: f64,
}

/// Joins late labels to waiting predictions for one model (module doc). Owned by the drift
/// tracker.
#[derive(Debug)]
pub struct LabelJoiner {
    kind: LabelKind,
    horizon_ns: i64,
    pending: VecDeque<Pending>,
    /// Labels whose window has not closed yet: (ts, value).
    early: VecDeque<(i64, f64)>,
    now_ns: i64,
    done: Performance,
}

impl LabelJoiner {
    /// A joiner with nothing waiting.
    pub fn new(cfg: &LabelsConfig) -> LabelJoiner {
        LabelJoiner {
            kind: cfg.kind,
            horizon_ns: cfg.horizon.as_nanos().min(i64::MAX as u128) as i64,
            pending: VecDeque::new(),
            early: VecDeque::new(),
            now_ns: i64::MIN,
            done: Performance::default(),
        }
    }

    fn resolve(&mut self, p: Pending, label: f64) {
        match self.kind {
            LabelKind::Classification => {
                self.done
                    .add_classification(p.positive, label != 0.0, p.end_ns)
            }
            LabelKind::Regression => self.done.add_regression(p.score, label, p.end_ns),
        }
    }

    /// A new prediction: `score` (absent = the manifest has none) and whether it is past
    /// the threshold.
    pub fn prediction(
        &mut self,
        start_ns: i64,
        end_ns: i64,
        score: Option<f64>,
        over: Option<bool>,
    ) {
        let Some(score) = score.filter(|s| s.is_finite()) else {
            return;
        };
        let p = Pending {
            start_ns,
            end_ns,
            positive: over.unwrap_or(false),
            score,
        };
        self.now_ns = self.now_ns.max(end_ns);
        if let Some((_, v)) = self
            .early
            .iter()
            .find(|(t, _)| (start_ns..=end_ns).contains(t))
            .copied()
        {
            self.resolve(p, v);
        } else {
            self.pending.push_back(p);
            while self.pending.len() > MAX_PENDING {
                if let Some(old) = self.pending.pop_front() {
                    self.done.add_unlabelled(old.end_ns);
                }
            }
        }
        self.expire();
    }

    /// A label for moment `ts_ns`. Non-finite values are ignored (bad quality never labels).
    pub fn label(&mut self, ts_ns: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let mut keep = VecDeque::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            if (p.start_ns..=p.end_ns).contains(&ts_ns) {
                self.resolve(p, value);
            } else {
                keep.push_back(p);
            }
        }
        self.pending = keep;
        // Windows still open (or still to come, when windows overlap) may contain it too.
        self.early.push_back((ts_ns, value));
        if self.early.len() > MAX_PENDING {
            self.early.pop_front();
        }
        self.now_ns = self.now_ns.max(ts_ns);
        self.expire();
    }

    /// Measurement time moved to `now_ns` (interval close): expire what waited too long.
    pub fn advance(&mut self, now_ns: i64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.expire();
    }

    fn expire(&mut self) {
        let limit = self.now_ns.saturating_sub(self.horizon_ns);
        while self.pending.front().is_some_and(|p| p.end_ns < limit) {
            if let Some(p) = self.pending.pop_front() {
                self.done.add_unlabelled(p.end_ns);
            }
        }
        while self.early.front().is_some_and(|(t, _)| *t < limit) {
            self.early.pop_front();
        }
    }

    /// Predictions resolved since the last call (`None` if none was).
    pub fn take(&mut self) -> Option<Performance> {
        let p = std::mem::take(&mut self.done);
        (p.labelled + p.unlabelled > 0).then_some(p)
    }

    /// Predictions still waiting for a label.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn joiner(kind: LabelKind) -> LabelJoiner {
        LabelJoiner::new(&LabelsConfig {
            tag: "truth".into(),
            horizon: Duration::from_secs(60),
            kind,
        })
    }

    #[test]
    fn late_labels_join_by_window_and_the_rest_expire() {
        let mut j = joiner(LabelKind::Classification);
        // 1 s windows, back to back; predicted positive for windows 3..6.
        for k in 0..10i64 {
            j.prediction(
                k * S,
                (k + 1) * S,
                Some(k as f64),
                Some((3..6).contains(&k)),
            );
        }
        assert!(j.take().is_none(), "nothing resolved yet");
        // Truth: a failure in window 4 and window 7 (missed), normal in window 1 — reported late.
        j.label(4 * S + S / 2, 1.0);
        j.label(7 * S + S / 2, 1.0);
        j.label(S + S / 2, 0.0);
        let p = j.take().unwrap();
        assert_eq!((p.tp, p.fn_, p.tn, p.fp), (1, 1, 1, 0));
        assert_eq!(j.waiting(), 7);
        // Time moves on past the horizon: the other 7 count as unlabelled.
        j.prediction(200 * S, 210 * S, Some(0.0), Some(false));
        let p = j.take().unwrap();
        assert_eq!((p.labelled, p.unlabelled), (0, 7));
        assert_eq!((p.from_ns, p.to_ns), (S, 10 * S));
        assert_eq!(j.waiting(), 1);
    }

    #[test]
    fn a_label_before_its_window_closes_waits_for_it() {
        let mut j = joiner(LabelKind::Regression);
        j.prediction(0, 10 * S, Some(2.0), None);
        j.label(15 * S, 5.0); // window [10, 20] not closed yet
        j.label(12 * S, f64::NAN); // ignored
        j.prediction(10 * S, 20 * S, Some(4.0), None);
        let p = j.take().unwrap();
        assert_eq!(p.labelled, 1);
        assert_eq!(p.mae(), Some(1.0));
        // Predictions without a score (no score rule) are not tracked.
        j.prediction(20 * S, 30 * S, None, None);
        assert_eq!(j.waiting(), 1);
    }
}
