//! `[[sources.simulated]]`: a built-in plant of pumps and motors with physically plausible
//! signals — load-driven current, flow and pressure, temperature lagging load and ambient,
//! vibration RMS — daily ambient and load cycles, sensor noise, and injectable faults and
//! drift, so the agent can be demonstrated and tested with nothing else installed.
//!
//! Deterministic: the same `seed` gives the same signal shapes (values depend on the wall
//! clock only through elapsed time since start).

use std::sync::Arc;
use std::time::Duration;

use edge_sources::{Source, SourceContext, SourceError, SourceFuture};
use edge_wire::config_check::{Issues, KeyPath};
use edge_wire::{now_ns, Quality, Sample, Tag, Value};
use serde::Deserialize;

/// `[[sources.simulated]]`: a simulated plant of pumps and motors, with injectable faults.
/// Deterministic for a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSourceConfig {
    /// Source name, unique among sources.
    pub name: String,
    /// Time between samples of every tag.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Random seed: the same seed gives the same signals.
    #[serde(default)]
    pub seed: u64,
    /// Length of one simulated day (ambient temperature and demand cycle). Shorten it for demos.
    #[serde(default = "default_day", with = "humantime_serde")]
    pub day_length: Duration,
    /// Simulated seconds per real second (default 1). Above 1 the plant runs faster than real
    /// time and sample timestamps advance with simulated time — for producing training
    /// recordings quickly; keep 1 for anything that meets real devices.
    #[serde(default = "one")]
    pub time_scale: f64,
    /// The machines. Default: two pumps and one motor.
    #[serde(default = "default_assets")]
    pub assets: Vec<AssetConfig>,
    /// Faults and drift to inject.
    #[serde(default)]
    pub faults: Vec<FaultConfig>,
}

/// `[[sources.simulated.assets]]`: one simulated machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetConfig {
    /// Asset name: tags are `<name>.<signal>`.
    pub name: String,
    /// What kind of machine (default: pump), which sets its signals.
    #[serde(default)]
    pub kind: AssetKind,
    /// Mean load as a fraction of rated (0..1).
    #[serde(default = "default_load")]
    pub load: f64,
}

/// The kinds of simulated machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    /// Centrifugal pump: temperature, vibration, pressure, current, flow.
    #[default]
    Pump,
    /// Induction motor: temperature, vibration, current, speed.
    Motor,
}

impl AssetKind {
    /// The signals (tag suffixes) this kind produces, in the order they are sampled.
    pub fn signals(self) -> &'static [&'static str] {
        match self {
            AssetKind::Pump => &["temperature", "vibration", "pressure", "current", "flow"],
            AssetKind::Motor => &["temperature", "vibration", "current", "speed"],
        }
    }
}

/// `[[sources.simulated.faults]]`: one fault or drift injected into an asset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Asset the fault affects.
    pub asset: String,
    /// What goes wrong.
    pub kind: FaultKind,
    /// Signal for sensor faults (`drift`, `stuck`, `noise`, `spikes`, `dropout`, `nan`);
    /// ignored by process faults (`bearing_wear`, `load_shift`).
    pub signal: Option<String>,
    /// When the fault starts, after the source starts.
    #[serde(default, with = "humantime_serde")]
    pub start: Duration,
    /// How long it lasts; default: until the agent stops.
    #[serde(default, with = "humantime_serde::option")]
    pub duration: Option<Duration>,
    /// For `drift` and `bearing_wear`: time to reach the full magnitude (then held). Default:
    /// `duration`, or 1 h when the fault is open-ended.
    #[serde(default, with = "humantime_serde::option")]
    pub ramp: Option<Duration>,
    /// Size of the effect (units depend on the kind; see docs/sources.md).
    #[serde(default = "one")]
    pub magnitude: f64,
}

/// The faults the simulator can inject: sensor faults act on one signal, process faults on
/// the whole asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Sensor calibration drift: offset ramping linearly to `magnitude` over `ramp`, then held.
    Drift,
    /// Sensor frozen at its value when the fault starts.
    Stuck,
    /// Extra Gaussian noise with standard deviation `magnitude`.
    Noise,
    /// Random spikes of height `magnitude` on ~2 % of samples.
    Spikes,
    /// Sensor wire break: bad-quality samples without a value.
    Dropout,
    /// The device reports NaN (the agent must flag it bad).
    Nan,
    /// Bearing degradation: vibration grows to `magnitude` x normal over `ramp`
    /// (quadratically), temperature rises with it.
    BearingWear,
    /// Process change: load shifts by `magnitude` (fraction of rated, e.g. 0.2) — a
    /// distribution shift for drift detection.
    LoadShift,
}

fn default_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_day() -> Duration {
    Duration::from_secs(86_400)
}
fn default_load() -> f64 {
    0.7
}
fn one() -> f64 {
    1.0
}
fn default_assets() -> Vec<AssetConfig> {
    vec![
        AssetConfig {
            name: "pump1".into(),
            kind: AssetKind::Pump,
            load: 0.7,
        },
        AssetConfig {
            name: "pump2".into(),
            kind: AssetKind::Pump,
            load: 0.55,
        },
        AssetConfig {
            name: "motor1".into(),
            kind: AssetKind::Motor,
            load: 0.8,
        },
    ]
}

impl SimulatedSourceConfig {
    /// Checks the entry (interval, day length, time scale, assets, faults), adding problems under
    /// `at`.
    pub fn validate(&self, at: &KeyPath, issues: &mut Issues) {
        issues.check(
            self.sample_interval >= Duration::from_millis(1),
            at.key("sample_interval"),
            || "sample_interval must be at least 1ms".into(),
        );
        issues.check(
            self.day_length >= Duration::from_secs(1),
            at.key("day_length"),
            || "day_length must be at least 1s".into(),
        );
        issues.check(
            self.time_scale.is_finite() && (0.001..=1000.0).contains(&self.time_scale),
            at.key("time_scale"),
            || {
                format!(
                    "time_scale {} must be a number from 0.001 to 1000 (simulated seconds per real second)",
                    self.time_scale
                )
            },
        );
        issues.check(!self.assets.is_empty(), at.key("assets"), || {
            "at least one asset is needed".into()
        });
        for (i, a) in self.assets.iter().enumerate() {
            let ap = at.key("assets").index(i);
            issues.check(
                !a.name.is_empty() && !a.name.contains(['/', '+', '#']),
                ap.key("name"),
                || {
                    format!(
                        "asset name `{}` must be non-empty without `/`, `+`, `#`",
                        a.name
                    )
                },
            );
            issues.check((0.0..=1.2).contains(&a.load), ap.key("load"), || {
                format!("load {} must be within 0..=1.2 (fraction of rated)", a.load)
            });
        }
        for (i, f) in self.faults.iter().enumerate() {
            let fp = at.key("faults").index(i);
            let asset = self.assets.iter().find(|a| a.name == f.asset);
            issues.check(asset.is_some(), fp.key("asset"), || {
                let known: Vec<&str> = self.assets.iter().map(|a| a.name.as_str()).collect();
                format!("unknown asset `{}` (assets: {})", f.asset, known.join(", "))
            });
            let sensor = !matches!(f.kind, FaultKind::BearingWear | FaultKind::LoadShift);
            match (&f.signal, asset) {
                (None, _) if sensor => issues.push(
                    fp.key("signal"),
                    format!("a {:?} fault needs `signal` (e.g. \"temperature\")", f.kind),
                ),
                (Some(s), Some(a)) if sensor => issues.check(
                    a.kind.signals().contains(&s.as_str()),
                    fp.key("signal"),
                    || {
                        format!(
                            "asset `{}` has no signal `{s}` (it has: {})",
                            a.name,
                            a.kind.signals().join(", ")
                        )
                    },
                ),
                _ => {}
            }
            issues.check(f.magnitude.is_finite(), fp.key("magnitude"), || {
                "magnitude must be finite".into()
            });
        }
    }

    /// Every tag name with the key path that defines it (for uniqueness checks).
    pub fn tag_names_with_paths(&self, at: &KeyPath) -> Vec<(String, KeyPath)> {
        self.assets
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                let p = at.key("assets").index(i).key("name");
                a.kind
                    .signals()
                    .iter()
                    .map(move |s| (format!("{}.{s}", a.name), p.clone()))
            })
            .collect()
    }
}

/// Gaussian noise source (Box-Muller over a seeded generator).
struct Noise(fastrand::Rng);

impl Noise {
    fn gauss(&mut self, sd: f64) -> f64 {
        let u1 = self.0.f64().max(f64::MIN_POSITIVE);
        let u2 = self.0.f64();
        sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Simulated seconds run before the first sample: at least five time constants of the
/// slowest dynamics (the temperature lag, 10 minutes on a 24-hour day).
const WARM_UP_S: f64 = 3000.0;

/// Per-asset simulation state.
struct AssetState {
    cfg: AssetConfig,
    tags: Vec<Tag>,
    /// Slowly wandering load disturbance (Ornstein-Uhlenbeck).
    wander: f64,
    /// Winding/bearing temperature, first-order lag.
    temp: f64,
    /// Values frozen by `stuck` faults, per signal.
    frozen: Vec<Option<f64>>,
}

/// The simulated plant.
#[derive(Debug)]
pub struct SimulatedPlant {
    cfg: SimulatedSourceConfig,
}

impl SimulatedPlant {
    /// A plant for `cfg`; nothing runs until the source does.
    pub fn new(cfg: SimulatedSourceConfig) -> Self {
        SimulatedPlant { cfg }
    }

    /// Fault activity at elapsed time `t`: `Some(progress in 0..=1)` while active, progress
    /// ramping over `ramp`.
    fn active(f: &FaultConfig, t: f64) -> Option<f64> {
        let start = f.start.as_secs_f64();
        if t < start || f.duration.is_some_and(|d| t > start + d.as_secs_f64()) {
            return None;
        }
        let ramp = f
            .ramp
            .or(f.duration)
            .map_or(3600.0, |d| d.as_secs_f64())
            .max(1e-9);
        Some(((t - start) / ramp).min(1.0))
    }

    /// Runs the plant for [`WARM_UP_S`] before time 0 without emitting samples: the
    /// temperature lag (10 min) and the load wander settle into their daily rhythm, so the
    /// plant starts as it runs on any later day (a training recording and a live run see
    /// the same distributions from their first window).
    fn warm_up(&self, assets: &mut [AssetState], noise: &mut Noise) {
        let mut scratch = Vec::new();
        let mut t = -WARM_UP_S;
        while t < 0.0 {
            for a in assets.iter_mut() {
                self.step(a, noise, t, 1.0, 0, &mut scratch);
            }
            scratch.clear();
            t += 1.0;
        }
    }

    /// One sample per tag of `a` at elapsed time `t` seconds, step `dt` seconds.
    fn step(
        &self,
        a: &mut AssetState,
        noise: &mut Noise,
        t: f64,
        dt: f64,
        ts: i64,
        out: &mut Vec<Sample>,
    ) {
        let day = self.cfg.day_length.as_secs_f64();
        let phase = std::f64::consts::TAU * t / day;
        let ambient = 20.0 + 6.0 * (phase - std::f64::consts::FRAC_PI_2).sin();
        // OU process: mean-reverting load wander, ~0.03 sd, time constant 5 min.
        // A shortened day shortens the plant's slow dynamics with it (the wander and the
        // temperature lag keep their share of the day), so any one simulated day looks like
        // any other, as a real plant's days do.
        let compress = (day / 86_400.0).min(1.0);
        let tau_w = 300.0 * compress;
        let keep = (-dt / tau_w).exp();
        a.wander = a.wander * keep + 0.03 * (1.0 - keep * keep).sqrt() * noise.gauss(1.0);
        let faults: Vec<(&FaultConfig, f64)> = self
            .cfg
            .faults
            .iter()
            .filter(|f| f.asset == a.cfg.name)
            .filter_map(|f| Self::active(f, t).map(|p| (f, p)))
            .collect();
        let shift: f64 = faults
            .iter()
            .filter(|(f, _)| f.kind == FaultKind::LoadShift)
            .map(|(f, _)| f.magnitude)
            .sum();
        let wear: f64 = faults
            .iter()
            .filter(|(f, _)| f.kind == FaultKind::BearingWear)
            .map(|(f, p)| (f.magnitude - 1.0).max(0.0) * p * p)
            .sum();
        let load = (a.cfg.load * (1.0 + 0.12 * phase.sin()) + a.wander + shift).clamp(0.0, 1.3);
        // Temperature: lag (10 min) towards ambient + load heating + friction from wear.
        let target = ambient + 38.0 * load + 6.0 * wear;
        a.temp += (target - a.temp) * (1.0 - (-dt / (600.0 * compress)).exp());
        let vib_base = 1.1 + 0.9 * load;
        // A worn bearing vibrates harder, rougher, and with impacts (spikes): RMS, kurtosis,
        // crest factor and band energy all rise, as on real machines.
        let impact = if wear > 0.0 && noise.0.f64() < 0.04 * wear.min(5.0) {
            vib_base * wear * (1.0 + noise.0.f64())
        } else {
            0.0
        };
        let rough = noise.gauss(0.04 * (1.0 + 2.0 * wear));
        let mut values: Vec<f64> = match a.cfg.kind {
            AssetKind::Pump => vec![
                a.temp + noise.gauss(0.08),
                vib_base * (1.0 + wear) + rough + impact + 0.05 * (t * 0.7).sin(),
                1.8 + 3.2 * load * load + noise.gauss(0.03),
                9.0 + 42.0 * load + noise.gauss(0.25),
                120.0 * load + noise.gauss(0.8),
            ],
            AssetKind::Motor => vec![
                a.temp + 4.0 + noise.gauss(0.08),
                vib_base * 0.8 * (1.0 + wear) + rough + impact,
                6.0 + 55.0 * load + noise.gauss(0.3),
                1485.0 - 35.0 * load + noise.gauss(0.5),
            ],
        };
        let signals = a.cfg.kind.signals();
        let mut quality = vec![true; values.len()];
        for (f, p) in &faults {
            let Some(idx) = f
                .signal
                .as_deref()
                .and_then(|s| signals.iter().position(|x| *x == s))
            else {
                continue;
            };
            match f.kind {
                FaultKind::Drift => values[idx] += f.magnitude * p,
                FaultKind::Stuck => values[idx] = *a.frozen[idx].get_or_insert(values[idx]),
                FaultKind::Noise => values[idx] += noise.gauss(f.magnitude),
                FaultKind::Spikes => {
                    if noise.0.f64() < 0.02 {
                        values[idx] += f.magnitude;
                    }
                }
                FaultKind::Dropout => quality[idx] = false,
                FaultKind::Nan => values[idx] = f64::NAN,
                FaultKind::BearingWear | FaultKind::LoadShift => {}
            }
        }
        // A stuck sensor releases when its fault ends.
        for (i, fr) in a.frozen.iter_mut().enumerate() {
            let stuck_now = faults.iter().any(|(f, _)| {
                f.kind == FaultKind::Stuck && f.signal.as_deref() == Some(signals[i])
            });
            if !stuck_now {
                *fr = None;
            }
        }
        for (i, v) in values.into_iter().enumerate() {
            out.push(if quality[i] {
                Sample::new(a.tags[i].clone(), ts, Value::Float(v), Quality::Good)
            } else {
                Sample::bad(a.tags[i].clone(), ts)
            });
        }
    }

    fn tag_list(&self) -> Vec<Tag> {
        self.cfg
            .assets
            .iter()
            .flat_map(|a| {
                a.kind
                    .signals()
                    .iter()
                    .map(move |s| Arc::from(format!("{}.{s}", a.name)))
            })
            .collect()
    }

    async fn run_loop(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let mut noise = Noise(fastrand::Rng::with_seed(self.cfg.seed));
        let mut assets: Vec<AssetState> = self
            .cfg
            .assets
            .iter()
            .map(|a| {
                let tags: Vec<Tag> = a
                    .kind
                    .signals()
                    .iter()
                    .map(|s| Arc::from(format!("{}.{s}", a.name)))
                    .collect();
                AssetState {
                    frozen: vec![None; tags.len()],
                    tags,
                    wander: 0.0,
                    // Near steady state; `warm_up` does the rest.
                    temp: 14.0 + 38.0 * a.load,
                    cfg: a.clone(),
                }
            })
            .collect();
        self.warm_up(&mut assets, &mut noise);
        ctx.stats.set_connected(true);
        tracing::info!(source = %ctx.name, assets = assets.len(), tags = self.tag_list().len(),
            interval = ?self.cfg.sample_interval, faults = self.cfg.faults.len(), "simulated plant starting");
        let scale = self.cfg.time_scale;
        let mut tick = tokio::time::interval(self.cfg.sample_interval.div_f64(scale));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = tokio::time::Instant::now();
        let start_ns = now_ns();
        let mut last = 0.0f64;
        loop {
            let now = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                now = tick.tick() => now,
            };
            // Simulated time since start.
            let t = (now - start).as_secs_f64() * scale;
            let dt = (t - last).max(self.cfg.sample_interval.as_secs_f64());
            last = t;
            let ts = if scale == 1.0 {
                now_ns()
            } else {
                start_ns + (t * 1e9) as i64
            };
            let mut batch = Vec::with_capacity(assets.len() * 5);
            for a in assets.iter_mut() {
                self.step(a, &mut noise, t, dt, ts, &mut batch);
            }
            if ctx.out.send(batch).await.is_err() {
                break;
            }
        }
        ctx.stats.set_connected(false);
        Ok(())
    }
}

impl Source for SimulatedPlant {
    fn kind(&self) -> &'static str {
        "simulated"
    }
    fn tags(&self) -> Vec<Tag> {
        self.tag_list()
    }
    fn run(self: Box<Self>, ctx: SourceContext) -> SourceFuture {
        Box::pin(self.run_loop(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(faults: Vec<FaultConfig>) -> SimulatedSourceConfig {
        SimulatedSourceConfig {
            name: "sim".into(),
            sample_interval: Duration::from_millis(100),
            seed: 7,
            day_length: Duration::from_secs(3600),
            time_scale: 1.0,
            assets: vec![AssetConfig {
                name: "p".into(),
                kind: AssetKind::Pump,
                load: 0.7,
            }],
            faults,
        }
    }

    /// Runs the model for `n` steps of 1 s, returning each tag's series.
    fn run(c: SimulatedSourceConfig, n: usize) -> Vec<Vec<Sample>> {
        let plant = SimulatedPlant::new(c);
        let a = &plant.cfg.assets[0];
        let mut st = AssetState {
            tags: a.kind.signals().iter().map(|s| Arc::from(*s)).collect(),
            frozen: vec![None; 5],
            wander: 0.0,
            temp: 14.0 + 38.0 * a.load,
            cfg: a.clone(),
        };
        let mut noise = Noise(fastrand::Rng::with_seed(plant.cfg.seed));
        plant.warm_up(std::slice::from_mut(&mut st), &mut noise);
        let mut series = vec![Vec::new(); 5];
        for i in 0..n {
            let mut out = Vec::new();
            plant.step(&mut st, &mut noise, i as f64, 1.0, i as i64, &mut out);
            for (k, s) in out.into_iter().enumerate() {
                series[k].push(s);
            }
        }
        series
    }

    fn mean(s: &[Sample]) -> f64 {
        let v: Vec<f64> = s.iter().filter_map(|x| x.usable_f64()).collect();
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn every_simulated_day_looks_like_any_other() {
        // A 10-minute day (the demos'): the daily means of temperature and current hardly
        // vary from day to day, so a reference recorded on some days holds on the others.
        // (At real-time constants the 10-minute lag and 5-minute load wander spanned whole
        // days: daily means wandered by degrees, and a healthy plant drifted.)
        let mut c = cfg(vec![]);
        c.day_length = Duration::from_secs(600);
        let days = 20;
        let s = run(c, days * 600);
        let spread = |k: usize| {
            let means: Vec<f64> = (0..days)
                .map(|d| mean(&s[k][d * 600..(d + 1) * 600]))
                .collect();
            let m = means.iter().sum::<f64>() / days as f64;
            (means.iter().map(|x| (x - m).powi(2)).sum::<f64>() / days as f64).sqrt()
        };
        let (t, c) = (spread(0), spread(3));
        assert!(t < 0.2, "daily mean temperature varies by {t:.2} °C");
        assert!(c < 0.2, "daily mean current varies by {c:.2} A");
    }

    #[test]
    fn healthy_pump_signals_are_plausible_and_deterministic() {
        let a = run(cfg(vec![]), 600);
        let b = run(cfg(vec![]), 600);
        assert_eq!(a, b, "same seed, same signals");
        let temp = mean(&a[0]);
        let pressure = mean(&a[2]);
        let current = mean(&a[3]);
        assert!((30.0..80.0).contains(&temp), "temperature {temp}");
        assert!((2.0..6.0).contains(&pressure), "pressure {pressure}");
        assert!((20.0..60.0).contains(&current), "current {current}");
        assert!(a.iter().flatten().all(|s| s.quality == Quality::Good));
    }

    #[test]
    fn faults_change_the_signals_they_target() {
        let fault = |kind, signal: Option<&str>, magnitude| FaultConfig {
            asset: "p".into(),
            kind,
            signal: signal.map(String::from),
            start: Duration::from_secs(100),
            duration: Some(Duration::from_secs(200)),
            ramp: None,
            magnitude,
        };
        let base = run(cfg(vec![]), 400);
        let drift = run(
            cfg(vec![fault(FaultKind::Drift, Some("temperature"), 5.0)]),
            400,
        );
        // After the ramp completes (t=300), temperature is offset by ~5.
        let d = drift[0][299].usable_f64().unwrap() - base[0][299].usable_f64().unwrap();
        assert!((d - 5.0).abs() < 0.1, "drift offset {d}");
        let stuck = run(cfg(vec![fault(FaultKind::Stuck, Some("flow"), 1.0)]), 400);
        assert_eq!(stuck[4][150].value, stuck[4][250].value);
        assert_ne!(
            stuck[4][350].value, stuck[4][250].value,
            "released after the fault"
        );
        let drop = run(
            cfg(vec![fault(FaultKind::Dropout, Some("pressure"), 1.0)]),
            400,
        );
        assert_eq!(drop[2][150].quality, Quality::Bad);
        assert_eq!(drop[2][50].quality, Quality::Good);
        let nan = run(cfg(vec![fault(FaultKind::Nan, Some("current"), 1.0)]), 400);
        assert_eq!(
            nan[3][150].quality,
            Quality::Bad,
            "NaN readings are bad quality"
        );
        let wear = run(cfg(vec![fault(FaultKind::BearingWear, None, 3.0)]), 400);
        let v_base = mean(&base[1][280..300]);
        let v_wear = mean(&wear[1][280..300]);
        assert!(v_wear > 2.5 * v_base, "vibration {v_wear} vs {v_base}");
        let shift = run(cfg(vec![fault(FaultKind::LoadShift, None, 0.2)]), 400);
        assert!(
            mean(&shift[3][200..300]) > mean(&base[3][200..300]) + 6.0,
            "current follows load"
        );
    }

    #[test]
    fn validation_names_unknown_assets_and_signals() {
        let mut c = cfg(vec![FaultConfig {
            asset: "nope".into(),
            kind: FaultKind::Drift,
            signal: Some("colour".into()),
            start: Duration::ZERO,
            duration: None,
            ramp: None,
            magnitude: 1.0,
        }]);
        let mut issues = Issues::default();
        c.validate(&KeyPath::root(), &mut issues);
        assert!(issues
            .0
            .iter()
            .any(|i| i.path.to_string() == "faults[0].asset"));
        c.faults[0].asset = "p".into();
        let mut issues = Issues::default();
        c.validate(&KeyPath::root(), &mut issues);
        assert!(
            issues.0[0].message.contains("has no signal `colour`"),
            "{:?}",
            issues.0
        );
    }

    #[test]
    fn time_scales_that_cannot_run_are_refused_by_check() {
        // These passed `check` and then panicked the source at run.
        for bad in [-5.0, 0.0, f64::NAN, f64::INFINITY, 1e12] {
            let mut c = cfg(vec![]);
            c.time_scale = bad;
            let mut issues = Issues::default();
            c.validate(&KeyPath::root(), &mut issues);
            assert!(
                issues.0.iter().any(|i| i.path.to_string() == "time_scale"
                    && i.message.contains("from 0.001 to 1000")),
                "{bad}: {:?}",
                issues.0
            );
        }
        for good in [0.001, 1.0, 60.0, 1000.0] {
            let mut c = cfg(vec![]);
            c.time_scale = good;
            let mut issues = Issues::default();
            c.validate(&KeyPath::root(), &mut issues);
            assert!(issues.0.is_empty(), "{good}: {:?}", issues.0);
        }
    }
}
