//! Reconnect timing shared by every source: exponential backoff with jitter, and the
//! `[sources.reconnect]` config keys that tune it.

use std::time::Duration;

use serde::Deserialize;

/// `reconnect` table of a source: how fast to retry a lost device.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First retry delay after a failure.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Upper bound of the delay; also the delay used after errors that need an operator
    /// (wrong password, untrusted certificate).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl ReconnectConfig {
    /// The backoff these settings describe, at its first attempt.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial, self.max)
    }
}

/// Exponential backoff with "equal jitter": the n-th delay is uniformly drawn from
/// `[d/2, d]` with `d = min(max, initial * 2^n)`, so a fleet of agents that lost the same
/// server does not reconnect in lockstep, yet never retries faster than `initial / 2`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `initial` (at least 1 ms) doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; grows until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d / 2 + d.mul_f64(fastrand::f64() * 0.5)
    }

    /// The delay after an error only an operator can fix: the maximum, jittered.
    pub fn fatal_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.max / 2 + self.max.mul_f64(fastrand::f64() * 0.5)
    }

    /// Call after a successful connection: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let bounds = [100u64, 200, 400, 800, 1600, 2000, 2000];
        for hi in bounds {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= hi / 2 && d <= hi,
                "delay {d} outside [{}, {hi}]",
                hi / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
    }
}
