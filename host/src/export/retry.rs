//! One part of a delivery under the retry policy and the sink's circuit breaker.
//!
//! A part is tried up to [`MAX_TRIES`] times in all: the first try and up to two retries, for
//! transient errors only, with exponential backoff and jitter between them. Every try that
//! reaches the sink is recorded in the sink's breaker, so a part that fails all its tries counts
//! 3 of the breaker's [`BREAKER_THRESHOLD`](super::policy::BREAKER_THRESHOLD) (5) consecutive
//! transient failures: the next failing delivery opens it. An open breaker fails a part at once,
//! without sending, and without retrying.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::policy::{Breaker, BreakerState, Outcome, backoff};
use crate::runtime::sinks::ErrorClass;

/// Tries per part in all: the first try and up to two retries (transient errors only).
pub const MAX_TRIES: u32 = 3;
/// First retry delay; doubles, with jitter.
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How a part is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_tries: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_tries: MAX_TRIES, base: RETRY_BASE, max: RETRY_MAX }
    }
}

/// Why a part was not delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct PartFailure {
    pub class: ErrorClass,
    pub message: String,
    /// Tries that reached the sink (0 when the breaker was open).
    pub tries: u32,
}

/// What happened on one try, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TryEvent {
    /// The try reached the sink and the breaker recorded it; its state now.
    Breaker(BreakerState),
    /// The try failed with this class (an open breaker counts as transient).
    Failed(ErrorClass),
}

/// Sends one part with `send`: asks the breaker before each try, records each try's outcome in
/// it, and retries transient failures after a backoff until `policy.max_tries` tries in all.
/// `observe` hears every try's breaker state and failure (for metrics).
pub async fn send_part<T, F, Fut>(
    breaker: &Mutex<Breaker>,
    policy: RetryPolicy,
    mut send: F,
    mut observe: impl FnMut(TryEvent),
) -> Result<T, PartFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, (ErrorClass, String)>>,
{
    let lock = || breaker.lock().unwrap_or_else(|p| p.into_inner());
    let mut tries = 0;
    loop {
        if let Err(open) = lock().allow(Instant::now()) {
            observe(TryEvent::Failed(ErrorClass::Transient));
            return Err(PartFailure { class: ErrorClass::Transient, message: open.to_string(), tries });
        }
        tries += 1;
        let result = send().await;
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err((ErrorClass::Transient, _)) => Outcome::Transient,
            Err(_) => Outcome::Permanent,
        };
        let state = {
            let mut b = lock();
            b.record(outcome, Instant::now());
            b.state(Instant::now())
        };
        observe(TryEvent::Breaker(state));
        match result {
            Ok(t) => return Ok(t),
            Err((class, message)) => {
                observe(TryEvent::Failed(class));
                if class != ErrorClass::Transient || tries >= policy.max_tries {
                    return Err(PartFailure { class, message, tries });
                }
                tokio::time::sleep(backoff(tries - 1, policy.base, policy.max, jitter())).await;
            }
        }
    }
}

/// A uniform draw in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::policy::BREAKER_THRESHOLD;
    use std::cell::RefCell;

    const FAST: RetryPolicy = RetryPolicy { max_tries: MAX_TRIES, base: Duration::from_millis(1), max: Duration::from_millis(4) };

    /// Sends with answers taken in turn from `script`; returns the result, the number of sends,
    /// and the events observed.
    async fn run(
        breaker: &Mutex<Breaker>,
        script: &[Result<u32, ErrorClass>],
    ) -> (Result<u32, PartFailure>, usize, Vec<TryEvent>) {
        let sent = RefCell::new(0);
        let mut events = Vec::new();
        let result = send_part(
            breaker,
            FAST,
            || {
                let n = {
                    let mut s = sent.borrow_mut();
                    *s += 1;
                    *s - 1
                };
                let answer = script[n].map_err(|c| (c, format!("try {n}")));
                async move { answer }
            },
            |e| events.push(e),
        )
        .await;
        (result, sent.into_inner(), events)
    }

    #[tokio::test]
    async fn transient_failures_are_retried_up_to_three_tries_in_all() {
        let t = ErrorClass::Transient;
        let breaker = Mutex::new(Breaker::new());
        let (r, sent, _) = run(&breaker, &[Err(t), Err(t), Ok(7)]).await;
        assert_eq!((r, sent), (Ok(7), 3), "two retries, then the success");

        let (r, sent, events) = run(&breaker, &[Err(t), Err(t), Err(t), Ok(7)]).await;
        assert_eq!(sent, MAX_TRIES as usize, "never a fourth try");
        assert_eq!(r.unwrap_err(), PartFailure { class: t, message: "try 2".into(), tries: 3 });
        assert_eq!(events.iter().filter(|e| matches!(e, TryEvent::Failed(ErrorClass::Transient))).count(), 3);
    }

    #[tokio::test]
    async fn terminal_and_forbidden_are_tried_once() {
        for class in [ErrorClass::Terminal, ErrorClass::Forbidden] {
            let breaker = Mutex::new(Breaker::new());
            let (r, sent, _) = run(&breaker, &[Err(class), Ok(1)]).await;
            assert_eq!(sent, 1);
            assert_eq!(r.unwrap_err().class, class);
            assert_eq!(breaker.lock().unwrap().state(Instant::now()), BreakerState::Closed, "permanent errors do not count");
        }
    }

    #[tokio::test]
    async fn the_breaker_opens_on_the_fifth_consecutive_try_and_then_nothing_is_sent() {
        let t = ErrorClass::Transient;
        let breaker = Mutex::new(Breaker::new());
        // One part fails all 3 tries: 3 of the 5 failures.
        let (_, sent, events) = run(&breaker, &[Err(t), Err(t), Err(t)]).await;
        assert_eq!(sent, 3);
        assert!(events.contains(&TryEvent::Breaker(BreakerState::Closed)));
        // The next part's second failing try is the fifth: the breaker opens and the part ends
        // there, without a third try.
        let (r, sent, events) = run(&breaker, &[Err(t), Err(t), Err(t)]).await;
        assert_eq!(BREAKER_THRESHOLD, 5);
        assert_eq!(events.last(), Some(&TryEvent::Failed(t)));
        assert!(events.contains(&TryEvent::Breaker(BreakerState::Open)));
        assert_eq!(sent, 2, "the third try finds the breaker open and is not sent");
        assert_eq!(r.unwrap_err().tries, 2);
        // Open: a part fails fast, nothing sent.
        let (r, sent, _) = run(&breaker, &[Ok(1)]).await;
        assert_eq!(sent, 0);
        let f = r.unwrap_err();
        assert_eq!((f.class, f.tries, f.message.as_str()), (t, 0, "sink circuit breaker open"));
    }

    #[test]
    fn the_operations_guide_states_these_numbers() {
        let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
        let guide = guide.split_whitespace().collect::<Vec<_>>().join(" ");
        for claim in [
            format!("tried up to {MAX_TRIES} times in all (the first try and up to {} retries)", MAX_TRIES - 1),
            format!("({} ms, doubling, at most {} s)", RETRY_BASE.as_millis(), RETRY_MAX.as_secs()),
            format!("opens after {BREAKER_THRESHOLD} consecutive transient failures"),
            format!("fails all {MAX_TRIES} of its tries leaves the breaker at {MAX_TRIES}"),
        ] {
            assert!(guide.contains(&claim), "docs/operations.md must say {claim:?}");
        }
    }
}
