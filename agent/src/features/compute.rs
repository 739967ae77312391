//! The feature library: pure functions over one channel of a window (f64, fixed summation
//! order, no fused multiply-add, so a given input always gives the same bits on a given
//! platform). Definitions are in `FeatureKind`'s docs and match numpy's (`np.mean`, `np.std`,
//! `np.quantile(method="linear")`, `np.fft.rfft`, `np.hanning`/`np.hamming`), which the
//! benchmark and the reference tests use.

use std::collections::HashMap;
use std::sync::Arc;

use edge_wire::bundle::spec::WindowFn;
use edge_wire::bundle::FeatureKind;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Reusable scratch space and FFT plans (one per window length).
#[derive(Default)]
pub struct Scratch {
    sorted: Vec<f64>,
    fft_in: Vec<f64>,
    fft_out: Vec<Complex<f64>>,
    plans: HashMap<usize, Arc<dyn RealToComplex<f64>>>,
    planner: RealFftPlanner<f64>,
    windows: HashMap<(usize, WindowFnKey), Vec<f64>>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WindowFnKey {
    Hann,
    Hamming,
    Rectangular,
}

fn sum(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |a, v| a + v)
}

/// Arithmetic mean; NaN for an empty slice.
pub fn mean(x: &[f64]) -> f64 {
    sum(x) / x.len() as f64
}

/// Central moments m2, m3, m4 (divided by n).
fn moments(x: &[f64]) -> (f64, f64, f64) {
    let m = mean(x);
    let (mut s2, mut s3, mut s4) = (0.0, 0.0, 0.0);
    for v in x {
        let d = v - m;
        let d2 = d * d;
        s2 += d2;
        s3 += d2 * d;
        s4 += d2 * d2;
    }
    let n = x.len() as f64;
    (s2 / n, s3 / n, s4 / n)
}

fn min(x: &[f64]) -> f64 {
    x.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(x: &[f64]) -> f64 {
    x.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().fold(0.0, |a, v| a + v * v) / x.len() as f64).sqrt()
}

/// numpy's default (linear) quantile.
fn quantile(x: &[f64], q: f64, sorted: &mut Vec<f64>) -> f64 {
    sorted.clear();
    sorted.extend_from_slice(x);
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

fn slope(x: &[f64], dt: f64) -> f64 {
    let n = x.len() as f64;
    let t_mean = (n - 1.0) / 2.0;
    let x_mean = mean(x);
    let (mut num, mut den) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let dtm = i as f64 - t_mean;
        num += dtm * (v - x_mean);
        den += dtm * dtm;
    }
    if den == 0.0 {
        0.0
    } else {
        num / den / dt
    }
}

fn zero_crossing_rate(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    let crossings = x
        .windows(2)
        .filter(|w| (w[0] - m >= 0.0) != (w[1] - m >= 0.0))
        .count();
    crossings as f64 / (x.len() - 1) as f64
}

impl Scratch {
    fn window_fn(&mut self, n: usize, w: WindowFn) -> &[f64] {
        let key = match w {
            WindowFn::Hann => WindowFnKey::Hann,
            WindowFn::Hamming => WindowFnKey::Hamming,
            WindowFn::Rectangular => WindowFnKey::Rectangular,
        };
        self.windows.entry((n, key)).or_insert_with(|| {
            // numpy.hanning / numpy.hamming: symmetric, n-1 in the denominator.
            let denom = (n.max(2) - 1) as f64;
            (0..n)
                .map(|i| {
                    let c = (2.0 * std::f64::consts::PI * i as f64 / denom).cos();
                    match key {
                        WindowFnKey::Hann => 0.5 - 0.5 * c,
                        WindowFnKey::Hamming => 0.54 - 0.46 * c,
                        WindowFnKey::Rectangular => 1.0,
                    }
                })
                .collect()
        })
    }

    /// Σ|X_k|²/n over rfft bins with low <= f_k < high, on the de-meaned, windowed signal.
    fn band_energy(&mut self, x: &[f64], rate: f64, low: f64, high: f64, w: WindowFn) -> f64 {
        let n = x.len();
        let m = mean(x);
        let win: Vec<f64> = self.window_fn(n, w).to_vec();
        let plan = self
            .plans
            .entry(n)
            .or_insert_with(|| self.planner.plan_fft_forward(n))
            .clone();
        self.fft_in.clear();
        self.fft_in
            .extend(x.iter().zip(&win).map(|(v, w)| (v - m) * w));
        self.fft_out.resize(n / 2 + 1, Complex::new(0.0, 0.0));
        // Lengths match the plan by construction, so this cannot fail.
        if plan.process(&mut self.fft_in, &mut self.fft_out).is_err() {
            return f64::NAN;
        }
        let mut e = 0.0;
        for (k, c) in self.fft_out.iter().enumerate() {
            let f = k as f64 * rate / n as f64;
            if f >= low && f < high {
                e += c.norm_sqr();
            }
        }
        e / n as f64
    }

    /// One feature of one channel. `rate` is the grid rate in Hz.
    pub fn compute(&mut self, kind: &FeatureKind, x: &[f64], rate: f64) -> f64 {
        match *kind {
            FeatureKind::Mean => mean(x),
            FeatureKind::Std => moments(x).0.sqrt(),
            FeatureKind::Min => min(x),
            FeatureKind::Max => max(x),
            FeatureKind::Rms => rms(x),
            FeatureKind::PeakToPeak => max(x) - min(x),
            FeatureKind::Skewness => {
                let (m2, m3, _) = moments(x);
                if m2 == 0.0 {
                    0.0
                } else {
                    m3 / m2.powf(1.5)
                }
            }
            FeatureKind::Kurtosis => {
                let (m2, _, m4) = moments(x);
                if m2 == 0.0 {
                    0.0
                } else {
                    m4 / (m2 * m2) - 3.0
                }
            }
            FeatureKind::CrestFactor => {
                let r = rms(x);
                if r == 0.0 {
                    0.0
                } else {
                    x.iter().fold(0.0f64, |a, v| a.max(v.abs())) / r
                }
            }
            FeatureKind::Slope => slope(x, 1.0 / rate),
            FeatureKind::ZeroCrossingRate => zero_crossing_rate(x),
            FeatureKind::Quantile { q } => quantile(x, q, &mut self.sorted),
            FeatureKind::BandEnergy {
                low_hz,
                high_hz,
                window,
            } => self.band_energy(x, rate, low_hz, high_hz, window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn moments_and_order_statistics_match_numpy() {
        // numpy: x = [2, 4, 4, 4, 5, 5, 7, 9]
        let x = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let mut s = Scratch::default();
        let f = |s: &mut Scratch, k: FeatureKind| s.compute(&k, &x, 10.0);
        assert_eq!(f(&mut s, FeatureKind::Mean), 5.0);
        assert_eq!(f(&mut s, FeatureKind::Std), 2.0); // np.std
        assert_eq!(f(&mut s, FeatureKind::PeakToPeak), 7.0);
        assert!(close(f(&mut s, FeatureKind::Rms), (232.0f64 / 8.0).sqrt()));
        // scipy.stats.skew(x) = 0.65625, kurtosis (excess) = -0.21875
        assert!(close(f(&mut s, FeatureKind::Skewness), 0.65625));
        assert!(close(f(&mut s, FeatureKind::Kurtosis), -0.21875));
        // np.quantile(x, 0.9) = 7.6, np.quantile(x, 0.25) = 4.0
        assert!(close(f(&mut s, FeatureKind::Quantile { q: 0.9 }), 7.6));
        assert!(close(f(&mut s, FeatureKind::Quantile { q: 0.25 }), 4.0));
        assert!(close(
            f(&mut s, FeatureKind::CrestFactor),
            9.0 / (29.0f64).sqrt()
        ));
    }

    #[test]
    fn slope_crossings_and_constant_windows() {
        let mut s = Scratch::default();
        let ramp: Vec<f64> = (0..10).map(|i| 3.0 * i as f64 * 0.1 + 1.0).collect(); // 3 units/s at 10 Hz
        assert!(close(s.compute(&FeatureKind::Slope, &ramp, 10.0), 3.0));
        let alt = [1.0, -1.0, 1.0, -1.0, 1.0];
        assert_eq!(s.compute(&FeatureKind::ZeroCrossingRate, &alt, 10.0), 1.0);
        let flat = [4.0; 6];
        for k in [
            FeatureKind::Skewness,
            FeatureKind::Kurtosis,
            FeatureKind::Std,
            FeatureKind::Slope,
        ] {
            assert_eq!(s.compute(&k, &flat, 10.0), 0.0, "{k:?}");
        }
        assert_eq!(s.compute(&FeatureKind::CrestFactor, &[0.0; 4], 10.0), 0.0);
    }

    #[test]
    fn band_energy_finds_a_sine_in_its_band_and_parseval_holds() {
        let rate = 100.0;
        let n = 200;
        let x: Vec<f64> = (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * 10.0 * i as f64 / rate).sin())
            .collect();
        let mut s = Scratch::default();
        let band = |s: &mut Scratch, lo, hi| {
            s.compute(
                &FeatureKind::BandEnergy {
                    low_hz: lo,
                    high_hz: hi,
                    window: WindowFn::Rectangular,
                },
                &x,
                rate,
            )
        };
        let total = band(&mut s, 0.0, 51.0);
        let in_band = band(&mut s, 9.0, 11.0);
        let out_band = band(&mut s, 20.0, 40.0);
        assert!(in_band / total > 0.999, "{in_band} of {total}");
        assert!(out_band < 1e-20);
        // One-sided rfft energy of a unit sine of n samples: (n/2)^2 / n = n/4.
        assert!(close(in_band, n as f64 / 4.0));
        // Hann windowing keeps the peak in band too.
        let h = s.compute(
            &FeatureKind::BandEnergy {
                low_hz: 9.0,
                high_hz: 11.0,
                window: WindowFn::Hann,
            },
            &x,
            rate,
        );
        assert!(h > 0.0 && h < in_band);
    }
}
