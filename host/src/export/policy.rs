//! Debounce, retry backoff and the per-sink circuit breaker.

use std::time::{Duration, Instant};

/// What was last delivered to a sink, successfully.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub checksum: String,
    pub generation: u64,
    pub at: Instant,
}

/// Whether a binding may skip this export: the same data (checksum and generation) was
/// delivered successfully within the binding's interval. Only successes are recorded, so a
/// failed export is never skipped.
pub fn debounced(last: Option<&Delivered>, checksum: &str, generation: u64, now: Instant, interval: Duration) -> bool {
    last.is_some_and(|d| d.checksum == checksum && d.generation == generation && now.duration_since(d.at) < interval)
}

/// Exponential backoff with jitter for transient failures: `base · 2^attempt`, capped at `max`,
/// then scaled by a factor in [0.5, 1) from `unit` (a uniform draw in [0, 1)), so sinks failing
/// together do not retry in step.
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    exp.min(max).mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0 - f64::EPSILON))
}

/// Consecutive transient failures that open a breaker.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker fails calls fast, unless configured otherwise.
pub use crate::config::DEFAULT_BREAKER_OPEN_FOR as BREAKER_OPEN_FOR;

/// The breaker's state, as status and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// One sink's circuit breaker: opens after [`BREAKER_THRESHOLD`] consecutive transient failures,
/// fails calls fast for [`BREAKER_OPEN_FOR`], then lets one trial through; its success closes
/// the breaker, its failure opens it again. Terminal and forbidden errors do not count: no retry
/// would help them, and they say nothing about the sink being up.
#[derive(Debug, Clone)]
pub struct Breaker {
    open_for: Duration,
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// A call the breaker refused: report it as a transient "sink circuit breaker open".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sink circuit breaker open")]
pub struct BreakerOpen;

/// How a call through the breaker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Transient,
    /// Terminal or forbidden.
    Permanent,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    pub fn new() -> Self {
        Self::open_for(BREAKER_OPEN_FOR)
    }

    /// A breaker that stays open this long (instead of [`BREAKER_OPEN_FOR`]).
    pub fn open_for(open_for: Duration) -> Self {
        Self { open_for, failures: 0, open_until: None, trial_in_flight: false }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call now. Half-open, only one trial is let through at a time.
    pub fn allow(&mut self, now: Instant) -> Result<(), BreakerOpen> {
        match self.state(now) {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(BreakerOpen),
            BreakerState::HalfOpen if self.trial_in_flight => Err(BreakerOpen),
            BreakerState::HalfOpen => {
                self.trial_in_flight = true;
                Ok(())
            }
        }
    }

    /// Records how an allowed call ended.
    pub fn record(&mut self, outcome: Outcome, now: Instant) {
        let trial = std::mem::take(&mut self.trial_in_flight);
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.open_until = None;
            }
            Outcome::Transient => {
                self.failures += 1;
                if trial || self.failures >= BREAKER_THRESHOLD {
                    self.open_until = Some(now + self.open_for);
                }
            }
            // Says nothing about the sink's health; a half-open trial that ends so lets the
            // next call try again.
            Outcome::Permanent => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_skips_only_unchanged_data_delivered_within_the_interval() {
        let t0 = Instant::now();
        let last = Delivered { checksum: "abc".into(), generation: 3, at: t0 };
        let i = Duration::from_secs(60);
        assert!(debounced(Some(&last), "abc", 3, t0 + Duration::from_secs(59), i));
        assert!(!debounced(Some(&last), "abc", 3, t0 + Duration::from_secs(60), i), "interval passed");
        assert!(!debounced(Some(&last), "abd", 3, t0, i), "data changed");
        assert!(!debounced(Some(&last), "abc", 4, t0, i), "new generation");
        assert!(!debounced(None, "abc", 3, t0, i), "never delivered");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff(0, base, max, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_secs(4));
        assert!(backoff(3, base, max, 0.999) < Duration::from_secs(8));
        assert!(backoff(3, base, max, 0.999) > Duration::from_millis(7_900));
        assert_eq!(backoff(20, base, max, 0.0), Duration::from_secs(150));
        assert!(backoff(u32::MAX, base, max, 0.5) <= max, "no overflow");
    }

    #[test]
    fn the_breaker_opens_after_five_transient_failures_then_lets_one_trial_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new();
        for i in 0..BREAKER_THRESHOLD {
            assert_eq!(b.state(t0), BreakerState::Closed, "after {i} failures");
            b.allow(t0).unwrap();
            b.record(Outcome::Transient, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.allow(t0 + Duration::from_secs(29)), Err(BreakerOpen));
        let later = t0 + BREAKER_OPEN_FOR;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.allow(later).unwrap();
        assert_eq!(b.allow(later), Err(BreakerOpen), "one trial at a time");
        // The trial fails: open again for another 30 s.
        b.record(Outcome::Transient, later);
        assert_eq!(b.state(later + Duration::from_secs(1)), BreakerState::Open);
        let again = later + BREAKER_OPEN_FOR;
        b.allow(again).unwrap();
        b.record(Outcome::Success, again);
        assert_eq!(b.state(again), BreakerState::Closed);
        b.allow(again).unwrap();
    }

    #[test]
    fn terminal_errors_do_not_open_the_breaker_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new();
        for _ in 0..20 {
            b.allow(t0).unwrap();
            b.record(Outcome::Permanent, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        for _ in 0..BREAKER_THRESHOLD - 1 {
            b.record(Outcome::Transient, t0);
        }
        b.record(Outcome::Success, t0);
        b.record(Outcome::Transient, t0);
        assert_eq!(b.state(t0), BreakerState::Closed, "the count restarted at the success");
    }
}
