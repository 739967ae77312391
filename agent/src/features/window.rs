//! [`WindowAssembler`]: aligns the samples of several tags onto one time grid and cuts
//! windows, with the gap rules of the feature spec. Event-time driven and deterministic: the
//! same samples in the same order give the same windows, whether they come from a live source
//! or a recording — the basis of training-serving parity.
//!
//! - Grid points sit at `k * period` ns since the epoch; window starts at grid indices that are
//!   multiples of the hop. Window `[start, start + n * period)` holds points `start + i*period`.
//! - A point takes its tag's last sample at or before it, if that sample is good and at most
//!   `max_age` old; a bad sample (or NaN) in between makes the point missing.
//! - A window is final once every tag has reported past its last point — or lags the most
//!   advanced tag by more than `max_age + window` (a silent tag cannot stall the others).
//! - Samples older than their tag's latest are late: dropped and counted.
//! - Missing points within `max_missing_fraction` are filled from the nearest earlier point
//!   in the window (or the first later one); more, and the window is skipped and counted.

use std::collections::{HashMap, VecDeque};

use edge_wire::bundle::FeatureSpec;
use edge_wire::Sample;

/// A window ready for features: `values[c * len + i]` is channel (tag) `c` at point `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Time of the first point (UTC ns since the epoch, a multiple of the period).
    pub start_ns: i64,
    /// End of the window (UTC ns, exclusive): `start_ns + len × period`.
    pub end_ns: i64,
    /// Number of channels: the spec's tags, in spec order.
    pub channels: usize,
    /// Points per channel.
    pub len: usize,
    /// `channels × len` values, channel-major; gaps are already filled.
    pub values: Vec<f64>,
}

impl Window {
    /// The `len` values of channel `c`; panics if `c >= channels`.
    pub fn channel(&self, c: usize) -> &[f64] {
        &self.values[c * self.len..(c + 1) * self.len]
    }
}

/// Why windows were not produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Windows completed and handed on.
    pub windows: u64,
    /// Windows skipped because a tag had too many missing points.
    pub skipped_missing: u64,
    /// Samples dropped for arriving older than their tag's latest sample.
    pub late_samples: u64,
    /// Samples dropped because a tag's buffer hit its cap.
    pub overflow_samples: u64,
    /// Samples of the spec's tags taken into the windows.
    pub samples: u64,
    /// Of those, samples whose timestamp is not on the grid (a whole multiple of the period
    /// since the epoch), and the offset past its grid point of the first such sample.
    pub off_grid_samples: u64,
    /// How far past its grid point the first off-grid sample was (ns; 0 while none was).
    pub first_off_grid_ns: i64,
}

impl WindowStats {
    /// For offline tools (featurize, pack, replay): a warning when most samples sit off the
    /// grid. Each grid point takes the last sample at or before it, so a recording whose
    /// timestamps are all 1 ms late gives values one period old and one window fewer — a
    /// different input from what the ML engineer expects. Live data jitters, so `run` does
    /// not warn.
    pub fn grid_warning(&self, rate_hz: f64) -> Option<String> {
        (self.samples > 0 && self.off_grid_samples * 2 > self.samples).then(|| {
            let period_ms = 1e3 / rate_hz;
            format!(
                "{} of {} samples are off the {rate_hz} Hz grid (e.g. {} ms after a grid point, \
                 the grid period is {period_ms} ms): each grid point takes the last sample at or \
                 before it, so features see values up to one period old and the first window \
                 starts a period later; shift the timestamps onto the grid or set rate_hz to the \
                 data's rate",
                self.off_grid_samples,
                self.samples,
                self.first_off_grid_ns as f64 / 1e6
            )
        })
    }
}

/// Per-tag buffer of (timestamp, value; NaN = bad) in timestamp order.
#[derive(Debug, Default)]
struct TagBuf {
    points: VecDeque<(i64, f64)>,
    last_ts: Option<i64>,
}

/// Bound on buffered samples per tag (memory guard against a sample flood).
const MAX_BUFFERED: usize = 1 << 20;
/// Jump over long gaps instead of iterating window by window.
const MAX_EMPTY_WINDOWS_ITERATED: i64 = 10_000;

/// Cuts the windows of one feature spec out of samples of any tags (the rules are in the module
/// doc). One per model stage and offline tool; not shared between threads.
#[derive(Debug)]
pub struct WindowAssembler {
    tags: Vec<String>,
    index: HashMap<String, usize>,
    bufs: Vec<TagBuf>,
    period: i64,
    len: usize,
    hop: usize,
    max_age: i64,
    max_missing: usize,
    /// Grid index of the next window start.
    next_start: Option<i64>,
    /// Counters since creation; read them between pushes.
    pub stats: WindowStats,
}

impl WindowAssembler {
    /// An assembler for `spec`, which must have passed `FeatureSpec::validate` (a zero period or
    /// length is clamped to 1 rather than rejected).
    pub fn new(spec: &FeatureSpec) -> Self {
        let len = spec.window_len().max(1);
        WindowAssembler {
            index: spec
                .tags
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i))
                .collect(),
            bufs: spec.tags.iter().map(|_| TagBuf::default()).collect(),
            tags: spec.tags.clone(),
            period: spec.period_ns().max(1),
            len,
            hop: spec.hop_len().max(1),
            max_age: spec.max_age_ns(),
            max_missing: (spec.max_missing_fraction * len as f64).floor() as usize,
            next_start: None,
            stats: WindowStats::default(),
        }
    }

    /// The spec's tags, in channel order.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Whether this assembler cares about `tag`.
    pub fn wants(&self, tag: &str) -> bool {
        self.index.contains_key(tag)
    }

    /// Adds one sample; other tags are ignored.
    pub fn push(&mut self, s: &Sample) {
        let Some(&c) = self.index.get(&*s.tag) else {
            return;
        };
        let buf = &mut self.bufs[c];
        if buf.last_ts.is_some_and(|l| s.ts_ns <= l) {
            self.stats.late_samples += 1;
            return;
        }
        if buf.points.len() >= MAX_BUFFERED {
            buf.points.pop_front();
            self.stats.overflow_samples += 1;
        }
        buf.last_ts = Some(s.ts_ns);
        self.stats.samples += 1;
        let off = s.ts_ns.rem_euclid(self.period);
        if off != 0 {
            if self.stats.off_grid_samples == 0 {
                self.stats.first_off_grid_ns = off;
            }
            self.stats.off_grid_samples += 1;
        }
        buf.points
            .push_back((s.ts_ns, s.usable_f64().unwrap_or(f64::NAN)));
        if self.next_start.is_none() {
            let hop_ns = self.period * self.hop as i64;
            // First window start: the first hop-aligned grid point at or after this sample.
            self.next_start = Some(
                s.ts_ns.div_euclid(hop_ns) * self.hop as i64
                    + if s.ts_ns.rem_euclid(hop_ns) == 0 {
                        0
                    } else {
                        self.hop as i64
                    },
            );
        }
    }

    /// Event time up to which every tag is known (see the module docs).
    fn watermark(&self) -> Option<i64> {
        let lasts: Vec<i64> = self.bufs.iter().filter_map(|b| b.last_ts).collect();
        let most = *lasts.iter().max()?;
        let patience = self.max_age + self.period * self.len as i64;
        let mut w = i64::MAX;
        for b in &self.bufs {
            let l = b
                .last_ts
                .unwrap_or(i64::MIN)
                .max(most.saturating_sub(patience));
            w = w.min(l);
        }
        Some(w)
    }

    /// Every window that is final now, in time order.
    pub fn drain_ready(&mut self, out: &mut Vec<Window>) {
        let Some(wm) = self.watermark() else { return };
        let Some(mut start) = self.next_start else {
            return;
        };
        let hop = self.hop as i64;
        loop {
            let last_point = (start + self.len as i64 - 1) * self.period;
            if last_point > wm {
                break;
            }
            // Long silence: skip windows that cannot hold any sample, arithmetically.
            let lo = start * self.period - self.max_age;
            let next_data = self
                .bufs
                .iter()
                .filter_map(|b| b.points.iter().find(|p| p.0 >= lo).map(|p| p.0))
                .min();
            if let Some(nd) = next_data {
                let empty = (nd.div_euclid(self.period) - start - self.len as i64) / hop;
                if empty > MAX_EMPTY_WINDOWS_ITERATED {
                    self.stats.skipped_missing += empty as u64;
                    start += empty * hop;
                    continue;
                }
            }
            match self.assemble(start) {
                Some(w) => {
                    self.stats.windows += 1;
                    out.push(w);
                }
                None => self.stats.skipped_missing += 1,
            }
            start += hop;
            self.prune(start);
        }
        self.next_start = Some(start);
    }

    /// Drops samples no future window can use (keeps the latest one before the horizon,
    /// which may still be held).
    fn prune(&mut self, next_start: i64) {
        let horizon = next_start * self.period - self.max_age;
        for b in &mut self.bufs {
            while b.points.len() >= 2 && b.points[1].0 <= horizon {
                b.points.pop_front();
            }
        }
    }

    fn assemble(&self, start: i64) -> Option<Window> {
        let n = self.len;
        let mut values = Vec::with_capacity(n * self.bufs.len());
        for b in &self.bufs {
            let mut series: Vec<f64> = Vec::with_capacity(n);
            let mut j = 0usize; // index of the first sample after the point
            for i in 0..n {
                let t = (start + i as i64) * self.period;
                while j < b.points.len() && b.points[j].0 <= t {
                    j += 1;
                }
                let v = match j.checked_sub(1).map(|k| b.points[k]) {
                    Some((ts, v)) if t - ts <= self.max_age => v,
                    _ => f64::NAN,
                };
                series.push(v);
            }
            let missing = series.iter().filter(|v| v.is_nan()).count();
            if missing == n || missing > self.max_missing {
                return None;
            }
            if missing > 0 {
                fill_missing(&mut series);
            }
            values.extend_from_slice(&series);
        }
        Some(Window {
            start_ns: start * self.period,
            end_ns: (start + n as i64) * self.period,
            channels: self.bufs.len(),
            len: n,
            values,
        })
    }
}

/// Fills NaN points from the previous valid point; leading ones from the first valid point.
fn fill_missing(s: &mut [f64]) {
    let Some(first) = s.iter().copied().find(|v| !v.is_nan()) else {
        return;
    };
    let mut prev = first;
    for v in s.iter_mut() {
        if v.is_nan() {
            *v = prev;
        } else {
            prev = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_wire::{Quality, Value};
    use std::sync::Arc;
    use std::time::Duration;

    fn spec(tags: &[&str], rate: f64, points: u32, hop: u32, missing: f64) -> FeatureSpec {
        FeatureSpec {
            tags: tags.iter().map(|s| s.to_string()).collect(),
            rate_hz: rate,
            window: None,
            window_points: Some(points),
            hop: None,
            hop_points: Some(hop),
            max_age: Some(Duration::from_millis(150)),
            max_missing_fraction: missing,
            features: vec![],
            layout: Default::default(),
            scaler: None,
        }
    }

    fn s(tag: &str, ts_ms: i64, v: f64) -> Sample {
        Sample::new(
            Arc::from(tag),
            ts_ms * 1_000_000,
            Value::Float(v),
            Quality::Good,
        )
    }

    fn run(a: &mut WindowAssembler, samples: &[Sample]) -> Vec<Window> {
        let mut out = Vec::new();
        for x in samples {
            a.push(x);
            a.drain_ready(&mut out);
        }
        out
    }

    #[test]
    fn two_tags_align_on_the_grid_with_sliding_windows() {
        // 10 Hz grid, 4-point windows, hop 2: windows at 0,200,400.. ms.
        let mut a = WindowAssembler::new(&spec(&["a", "b"], 10.0, 4, 2, 0.0));
        let mut samples = Vec::new();
        for i in 0..12 {
            samples.push(s("a", i * 100, i as f64));
            samples.push(s("b", i * 100 + 30, 100.0 + i as f64)); // 30 ms later
        }
        let w = run(&mut a, &samples);
        // b's first sample (30 ms) is after the 0 ms point, which is therefore missing: the
        // 0 ms window is skipped (no missing points allowed) and the first one starts at 200.
        assert_eq!(w[0].start_ns, 200_000_000);
        assert_eq!(w[0].end_ns, 600_000_000);
        assert_eq!(w[0].channel(0), &[2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            w[0].channel(1),
            &[101.0, 102.0, 103.0, 104.0],
            "last sample at or before each point"
        );
        assert_eq!(w[1].start_ns, 400_000_000, "sliding by the hop");
        assert_eq!(a.stats.skipped_missing, 1);
        assert_eq!(
            w.len(),
            4,
            "windows at 200..800 ms; the one at 1000 ms needs both tags past 1300 ms"
        );
    }

    #[test]
    fn gaps_bad_samples_and_the_missing_budget() {
        let mut strict = WindowAssembler::new(&spec(&["a"], 10.0, 5, 5, 0.0));
        let mut lenient = WindowAssembler::new(&spec(&["a"], 10.0, 5, 5, 0.4));
        let mut samples: Vec<Sample> = (0..20).map(|i| s("a", i * 100, i as f64)).collect();
        samples[2] = Sample::bad(Arc::from("a"), 200_000_000); // a bad reading at 200 ms
        samples[3].value = Value::Float(f64::NAN); // NaN arrives as bad quality
        samples[3].quality = Quality::Bad;
        let w1 = run(&mut strict, &samples);
        let w2 = run(&mut lenient, &samples);
        assert_eq!(
            w1[0].start_ns, 500_000_000,
            "the first window has 2 bad points"
        );
        assert_eq!(strict.stats.skipped_missing, 1);
        assert_eq!(w2[0].start_ns, 0);
        assert_eq!(
            w2[0].channel(0),
            &[0.0, 1.0, 1.0, 1.0, 4.0],
            "filled from the previous point"
        );
    }

    #[test]
    fn late_samples_are_dropped_and_a_silent_tag_does_not_stall() {
        let mut a = WindowAssembler::new(&spec(&["a", "b"], 10.0, 2, 2, 0.0));
        let mut out = Vec::new();
        a.push(&s("a", 0, 1.0));
        a.push(&s("b", 0, 1.0));
        a.push(&s("a", 100, 2.0));
        a.push(&s("a", 50, 9.0)); // late
        assert_eq!(a.stats.late_samples, 1);
        // b goes silent; a keeps going: windows close once a is past patience, b missing.
        for i in 2..30 {
            a.push(&s("a", i * 100, i as f64));
            a.drain_ready(&mut out);
        }
        assert!(a.stats.skipped_missing > 5, "{:?}", a.stats);
        assert_eq!(out.len(), 1, "only the first window had b");
    }

    #[test]
    fn a_clock_jump_does_not_iterate_millions_of_windows() {
        let mut a = WindowAssembler::new(&spec(&["a"], 10.0, 2, 2, 0.0));
        let mut out = Vec::new();
        a.push(&s("a", 0, 1.0));
        a.push(&s("a", 100, 1.0));
        a.push(&s("a", 10_000_000_000, 1.0)); // ~4 months later
        a.push(&s("a", 10_000_000_100, 1.0));
        a.push(&s("a", 10_000_000_200, 1.0));
        a.drain_ready(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].start_ns, 10_000_000_000 * 1_000_000);
    }
}
