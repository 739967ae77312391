//! [`FeatureSpec`]: how a model's input is computed from samples — the window (tags, grid
//! rate, length, hop, alignment and gap rules), the ordered feature list, the input layout and
//! the normalization. Written by the ML engineer as TOML (`bundle pack --spec`), carried in the
//! bundle manifest as JSON, executed by the same code offline (`featurize`) and online.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_check::{Issues, KeyPath};

/// Window and features of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Input tags, in channel order.
    pub tags: Vec<String>,
    /// Rate of the common time grid every tag is aligned onto (Hz). Grid points sit at whole
    /// multiples of the period since the Unix epoch, so online and offline grids coincide.
    pub rate_hz: f64,
    /// Window length: a duration (`window = "10s"`) or a number of grid points.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    /// Window length in grid points (instead of `window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_points: Option<u32>,
    /// Step between window starts; equal to the length for tumbling windows, shorter for
    /// sliding ones. Default: the window length.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub hop: Option<Duration>,
    /// Hop in grid points (instead of `hop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_points: Option<u32>,
    /// A grid point takes the last good sample of its tag at or before it, if that sample is at
    /// most this old; otherwise the point is missing. Default: two grid periods.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Largest share of missing points per tag a window may have; missing points are then
    /// filled from the nearest earlier point (or the first later one). A window with more is
    /// skipped and counted — never fed with made-up values.
    #[serde(default)]
    pub max_missing_fraction: f64,
    /// The features, in model-input order (layout `vector`).
    #[serde(default)]
    pub features: Vec<FeatureDef>,
    /// How features become the input tensor (default `vector`).
    #[serde(default)]
    pub layout: InputLayout,
    /// Normalization applied last: `(x - mean) / scale` per feature (or per channel for raw
    /// layouts). Usually fitted on training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<Scaler>,
}

/// How features become the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputLayout {
    /// `[1, F]`: the feature list.
    #[default]
    Vector,
    /// `[1, T, C]`: the raw aligned window, time-major (the feature list must be empty).
    RawTc,
    /// `[1, C, T]`: the raw aligned window, channel-major (for 1-D convolutions).
    RawCt,
}

/// Normalization `(x - mean) / scale`, one pair per feature (or channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaler {
    /// Subtracted first.
    pub mean: Vec<f64>,
    /// Divided by next.
    pub scale: Vec<f64>,
}

/// One feature: a function of one tag's window. In TOML/JSON: `{ tag = "...", fn = "rms" }`,
/// with the function's parameters alongside (`q`, `low_hz`, ...); unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "FeatureDefRepr", into = "FeatureDefRepr")]
pub struct FeatureDef {
    /// The tag whose window it reads.
    pub tag: String,
    /// The function.
    pub kind: FeatureKind,
}

/// Wire form of [`FeatureDef`]: one struct per function, so unknown keys can be rejected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case", deny_unknown_fields)]
enum FeatureDefRepr {
    Mean {
        tag: String,
    },
    Std {
        tag: String,
    },
    Min {
        tag: String,
    },
    Max {
        tag: String,
    },
    Rms {
        tag: String,
    },
    PeakToPeak {
        tag: String,
    },
    Skewness {
        tag: String,
    },
    Kurtosis {
        tag: String,
    },
    CrestFactor {
        tag: String,
    },
    Slope {
        tag: String,
    },
    ZeroCrossingRate {
        tag: String,
    },
    Quantile {
        tag: String,
        q: f64,
    },
    BandEnergy {
        tag: String,
        low_hz: f64,
        high_hz: f64,
        #[serde(default)]
        window: WindowFn,
    },
}

impl From<FeatureDefRepr> for FeatureDef {
    fn from(r: FeatureDefRepr) -> Self {
        use FeatureDefRepr as R;
        let (tag, kind) = match r {
            R::Mean { tag } => (tag, FeatureKind::Mean),
            R::Std { tag } => (tag, FeatureKind::Std),
            R::Min { tag } => (tag, FeatureKind::Min),
            R::Max { tag } => (tag, FeatureKind::Max),
            R::Rms { tag } => (tag, FeatureKind::Rms),
            R::PeakToPeak { tag } => (tag, FeatureKind::PeakToPeak),
            R::Skewness { tag } => (tag, FeatureKind::Skewness),
            R::Kurtosis { tag } => (tag, FeatureKind::Kurtosis),
            R::CrestFactor { tag } => (tag, FeatureKind::CrestFactor),
            R::Slope { tag } => (tag, FeatureKind::Slope),
            R::ZeroCrossingRate { tag } => (tag, FeatureKind::ZeroCrossingRate),
            R::Quantile { tag, q } => (tag, FeatureKind::Quantile { q }),
            R::BandEnergy {
                tag,
                low_hz,
                high_hz,
                window,
            } => (
                tag,
                FeatureKind::BandEnergy {
                    low_hz,
                    high_hz,
                    window,
                },
            ),
        };
        FeatureDef { tag, kind }
    }
}

impl From<FeatureDef> for FeatureDefRepr {
    fn from(f: FeatureDef) -> Self {
        use FeatureDefRepr as R;
        let tag = f.tag;
        match f.kind {
            FeatureKind::Mean => R::Mean { tag },
            FeatureKind::Std => R::Std { tag },
            FeatureKind::Min => R::Min { tag },
            FeatureKind::Max => R::Max { tag },
            FeatureKind::Rms => R::Rms { tag },
            FeatureKind::PeakToPeak => R::PeakToPeak { tag },
            FeatureKind::Skewness => R::Skewness { tag },
            FeatureKind::Kurtosis => R::Kurtosis { tag },
            FeatureKind::CrestFactor => R::CrestFactor { tag },
            FeatureKind::Slope => R::Slope { tag },
            FeatureKind::ZeroCrossingRate => R::ZeroCrossingRate { tag },
            FeatureKind::Quantile { q } => R::Quantile { tag, q },
            FeatureKind::BandEnergy {
                low_hz,
                high_hz,
                window,
            } => R::BandEnergy {
                tag,
                low_hz,
                high_hz,
                window,
            },
        }
    }
}

/// The feature library. Definitions (n points x_i, grid period dt):
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    /// Σx/n
    Mean,
    /// Population standard deviation √(Σ(x-mean)²/n)
    Std,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// √(Σx²/n)
    Rms,
    /// max - min
    PeakToPeak,
    /// Population skewness m3 / m2^1.5 (0 for a constant window)
    Skewness,
    /// Excess kurtosis m4 / m2² - 3 (0 for a constant window)
    Kurtosis,
    /// max|x| / rms (0 when rms is 0)
    CrestFactor,
    /// Least-squares slope per second
    Slope,
    /// Share of consecutive pairs whose sign (relative to the window mean) changes
    ZeroCrossingRate,
    /// Quantile `q` in [0, 1], linear interpolation between order statistics (numpy default)
    Quantile {
        /// The probability, 0..=1.
        q: f64,
    },
    /// Energy Σ|X_k|²/n of the real FFT bins with `low_hz <= f_k < high_hz`, after removing the
    /// mean and applying `window`
    BandEnergy {
        /// Lowest frequency in the band (inclusive).
        low_hz: f64,
        /// Highest frequency (exclusive).
        high_hz: f64,
        /// Window applied before the FFT.
        window: WindowFn,
    },
}

/// Window function of `band_energy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WindowFn {
    /// Hann (default).
    #[default]
    Hann,
    /// Hamming.
    Hamming,
    /// None (all ones).
    Rectangular,
}

impl FeatureKind {
    /// Column name stem: `rms`, `quantile_0.9`, `band_0-1.5hz`.
    pub fn label(&self) -> String {
        match self {
            FeatureKind::Mean => "mean".into(),
            FeatureKind::Std => "std".into(),
            FeatureKind::Min => "min".into(),
            FeatureKind::Max => "max".into(),
            FeatureKind::Rms => "rms".into(),
            FeatureKind::PeakToPeak => "peak_to_peak".into(),
            FeatureKind::Skewness => "skewness".into(),
            FeatureKind::Kurtosis => "kurtosis".into(),
            FeatureKind::CrestFactor => "crest_factor".into(),
            FeatureKind::Slope => "slope".into(),
            FeatureKind::ZeroCrossingRate => "zero_crossing_rate".into(),
            FeatureKind::Quantile { q } => format!("quantile_{q}"),
            FeatureKind::BandEnergy {
                low_hz, high_hz, ..
            } => format!("band_{low_hz}-{high_hz}hz"),
        }
    }
}

impl FeatureDef {
    /// Column name: `<tag>:<label>`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.tag, self.kind.label())
    }
}

impl FeatureSpec {
    /// Grid period in ns (`1 / rate_hz`).
    pub fn period_ns(&self) -> i64 {
        (1e9 / self.rate_hz).round() as i64
    }

    /// Window length in grid points.
    pub fn window_len(&self) -> usize {
        match (self.window_points, self.window) {
            (Some(n), _) => n as usize,
            (None, Some(d)) => (d.as_secs_f64() * self.rate_hz).round() as usize,
            (None, None) => 0,
        }
    }

    /// Hop in grid points (default: the window length, i.e. tumbling).
    pub fn hop_len(&self) -> usize {
        match (self.hop_points, self.hop) {
            (Some(n), _) => n as usize,
            (None, Some(d)) => (d.as_secs_f64() * self.rate_hz).round() as usize,
            (None, None) => self.window_len(),
        }
    }

    /// The oldest a held sample may be, in ns (default two grid periods).
    pub fn max_age_ns(&self) -> i64 {
        match self.max_age {
            Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            None => 2 * self.period_ns(),
        }
    }

    /// Number of values the model receives per window.
    pub fn input_len(&self) -> usize {
        match self.layout {
            InputLayout::Vector => self.features.len(),
            InputLayout::RawTc | InputLayout::RawCt => self.tags.len() * self.window_len(),
        }
    }

    /// Input tensor shape.
    pub fn input_shape(&self) -> Vec<usize> {
        match self.layout {
            InputLayout::Vector => vec![1, self.features.len()],
            InputLayout::RawTc => vec![1, self.window_len(), self.tags.len()],
            InputLayout::RawCt => vec![1, self.tags.len(), self.window_len()],
        }
    }

    /// Column names of the feature vector (vector layout) or of the raw channels.
    pub fn column_names(&self) -> Vec<String> {
        match self.layout {
            InputLayout::Vector => self.features.iter().map(FeatureDef::name).collect(),
            InputLayout::RawTc | InputLayout::RawCt => self.tags.clone(),
        }
    }

    /// The columns drift is measured on, as features of the window: layout `vector`, the
    /// model's own features; raw layouts, each channel's window mean and standard deviation
    /// (`<tag>:mean`, `<tag>:std`): a raw window has no per-column meaning a histogram could
    /// follow (column k would be sample k of one channel), while its level and spread do.
    /// `bundle pack` computes the reference on these and the device measures the same.
    pub fn drift_features(&self) -> Vec<FeatureDef> {
        match self.layout {
            InputLayout::Vector => self.features.clone(),
            InputLayout::RawTc | InputLayout::RawCt => self
                .tags
                .iter()
                .flat_map(|t| {
                    [FeatureKind::Mean, FeatureKind::Std].map(|kind| FeatureDef {
                        tag: t.clone(),
                        kind,
                    })
                })
                .collect(),
        }
    }

    /// Records every problem of the spec under `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(!self.tags.is_empty(), at.key("tags"), || {
            "at least one tag is needed".into()
        });
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tags.iter().enumerate() {
            issues.check(seen.insert(t.as_str()), at.key("tags").index(i), || {
                format!("tag `{t}` is listed twice")
            });
        }
        issues.check(
            self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 1e6,
            at.key("rate_hz"),
            || format!("rate_hz {} must be > 0 and <= 1e6", self.rate_hz),
        );
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0) {
            return;
        }
        issues.check(
            self.window.is_some() != self.window_points.is_some(),
            at.key("window"),
            || "set exactly one of `window` (a duration) or `window_points`".into(),
        );
        issues.check(
            !(self.hop.is_some() && self.hop_points.is_some()),
            at.key("hop"),
            || "set at most one of `hop` or `hop_points`".into(),
        );
        let n = self.window_len();
        issues.check((2..=1_000_000).contains(&n), at.key("window"), || {
            format!(
                "the window is {n} grid points at {} Hz; it needs 2..=1000000",
                self.rate_hz
            )
        });
        let h = self.hop_len();
        issues.check(h >= 1, at.key("hop"), || {
            "hop must be at least one grid point".into()
        });
        issues.check(
            (0.0..1.0).contains(&self.max_missing_fraction),
            at.key("max_missing_fraction"),
            || {
                format!(
                    "max_missing_fraction {} must be in [0, 1)",
                    self.max_missing_fraction
                )
            },
        );
        match self.layout {
            InputLayout::Vector => {
                issues.check(!self.features.is_empty(), at.key("features"), || {
                    "layout \"vector\" needs at least one [[features]] entry".into()
                })
            }
            _ => issues.check(self.features.is_empty(), at.key("features"), || {
                "raw layouts feed the window itself: remove the [[features]] list".into()
            }),
        }
        let nyquist = self.rate_hz / 2.0;
        for (i, f) in self.features.iter().enumerate() {
            let fp = at.key("features").index(i);
            issues.check(self.tags.contains(&f.tag), fp.key("tag"), || {
                format!(
                    "`{}` is not one of the window's tags ({})",
                    f.tag,
                    self.tags.join(", ")
                )
            });
            match f.kind {
                FeatureKind::Quantile { q } => issues.check((0.0..=1.0).contains(&q), fp.key("q"), || {
                    format!("q {q} must be within [0, 1]")
                }),
                FeatureKind::BandEnergy { low_hz, high_hz, .. } => issues.check(
                    low_hz >= 0.0 && high_hz > low_hz && low_hz < nyquist,
                    fp.key("high_hz"),
                    || format!("band {low_hz}..{high_hz} Hz must satisfy 0 <= low < high and low < Nyquist ({nyquist} Hz)"),
                ),
                _ => {}
            }
        }
        if let Some(s) = &self.scaler {
            let want = match self.layout {
                InputLayout::Vector => self.features.len(),
                _ => self.tags.len(),
            };
            issues.check(s.mean.len() == want && s.scale.len() == want, at.key("scaler"), || {
                format!("scaler needs {want} means and scales (one per feature/channel), has {} and {}", s.mean.len(), s.scale.len())
            });
            issues.check(
                s.scale.iter().all(|x| x.is_finite() && *x != 0.0)
                    && s.mean.iter().all(|x| x.is_finite()),
                at.key("scaler"),
                || "scaler values must be finite and scales non-zero".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct W {
        f: Vec<FeatureDef>,
    }

    #[test]
    fn feature_defs_read_and_reject_unknown_keys() {
        let w: W = serde_json::from_str(r#"{"f":[{"tag":"a","fn":"quantile","q":0.9},{"tag":"b","fn":"band_energy","low_hz":1,"high_hz":2}]}"#).unwrap();
        assert_eq!(w.f[0].kind, FeatureKind::Quantile { q: 0.9 });
        assert_eq!(
            w.f[1].kind,
            FeatureKind::BandEnergy {
                low_hz: 1.0,
                high_hz: 2.0,
                window: WindowFn::Hann
            }
        );
        let e = serde_json::from_str::<W>(r#"{"f":[{"tag":"a","fn":"rms","q":1}]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `q`"), "{e}");
        let e = serde_json::from_str::<W>(r#"{"f":[{"tag":"a","fn":"median"}]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `median`"), "{e}");
        let back = serde_json::to_string(&w.f[0]).unwrap();
        assert_eq!(back, r#"{"fn":"quantile","tag":"a","q":0.9}"#);
    }
}
