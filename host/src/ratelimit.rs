//! Per-bearer token buckets and in-flight caps, and the per-source-IP bucket of
//! `/api/versions`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default per-bearer rate (requests per second) and burst.
pub const DEFAULT_RPS: u32 = 30;
pub const DEFAULT_BURST: u32 = 100;
/// Source IPs remembered by the `/api/versions` limiter; the least recently seen are forgotten.
pub const VERSIONS_IP_CAPACITY: usize = 4096;

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The bucket is empty; retry after this many seconds.
    RateLimited { retry_after: u64 },
    /// Too many requests of this bearer in flight.
    BearerInFlight,
    /// Too many requests in flight in the process.
    ProcessInFlight,
}

/// Limits settings.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub requests_per_second: u32,
    pub burst: u32,
    pub max_in_flight_per_bearer: usize,
    pub max_in_flight: usize,
}

/// One bearer's bucket and its count of requests in flight: a bounded counter, one atomic add
/// to enter and one to leave (a semaphore would also lock its waiter list on every release, and
/// nothing ever waits here).
struct BearerState {
    bucket: DefaultDirectRateLimiter,
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

/// The limiter.
pub struct Limiter {
    settings: LimitSettings,
    quota: Quota,
    /// Read on every request, written once per new bearer: lock-free reads.
    bearers: arc_swap::ArcSwap<HashMap<String, Arc<BearerState>>>,
    versions: Mutex<lru::LruCache<IpAddr, Arc<DefaultDirectRateLimiter>>>,
    clock: DefaultClock,
}

/// What an admitted request holds until it finishes: its place in the bearer's in-flight count.
pub struct Admission(Arc<BearerState>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn quota(rps: u32, burst: u32) -> Quota {
    let rps = NonZeroU32::new(rps.max(1)).expect("non-zero");
    Quota::per_second(rps).allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero"))
}

impl Limiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            quota: quota(settings.requests_per_second, settings.burst),
            bearers: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            versions: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(VERSIONS_IP_CAPACITY).expect("non-zero"),
            )),
            clock: DefaultClock::default(),
            settings,
        }
    }

    fn retry_after(&self, not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
        let wait: Duration = not_until.wait_time_from(self.clock.now());
        wait.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Admits one request of the bearer with this digest, or says why not. `process_in_flight`
    /// is the number of requests the process has in flight, this one included (the drain gate
    /// counts them already; counting twice would cost every request two more shared atomics).
    pub fn admit(&self, bearer_hash: &str, process_in_flight: usize) -> Result<Admission, Rejection> {
        let map = self.bearers.load();
        let state = match map.get(bearer_hash) {
            Some(s) => s.clone(),
            None => {
                drop(map);
                let fresh = Arc::new(BearerState {
                    bucket: RateLimiter::direct(self.quota),
                    in_flight: AtomicUsize::new(0),
                    max_in_flight: self.settings.max_in_flight_per_bearer,
                });
                // Another request of the same bearer may have inserted first: keep the winner.
                let mut chosen = fresh.clone();
                self.bearers.rcu(|m| {
                    let mut m = HashMap::clone(m);
                    chosen = m.entry(bearer_hash.to_owned()).or_insert_with(|| fresh.clone()).clone();
                    m
                });
                chosen
            }
        };
        if let Err(nu) = state.bucket.check() {
            return Err(Rejection::RateLimited { retry_after: self.retry_after(nu) });
        }
        if process_in_flight > self.settings.max_in_flight {
            return Err(Rejection::ProcessInFlight);
        }
        if state.in_flight.fetch_add(1, Ordering::AcqRel) >= state.max_in_flight {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::BearerInFlight);
        }
        Ok(Admission(state))
    }

    /// Admits one `/api/versions` request from `ip` (30 rps, burst 100 per IP).
    pub fn admit_versions(&self, ip: IpAddr) -> Result<(), Rejection> {
        let bucket = {
            let mut lru = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            lru.get_or_insert(ip, || Arc::new(RateLimiter::direct(quota(DEFAULT_RPS, DEFAULT_BURST)))).clone()
        };
        bucket.check().map_err(|nu| Rejection::RateLimited { retry_after: self.retry_after(nu) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rejection_with_retry_after_per_bearer() {
        let l = Limiter::new(LimitSettings { requests_per_second: 1, burst: 5, max_in_flight_per_bearer: 100, max_in_flight: 100 });
        for _ in 0..5 {
            l.admit("a", 1).unwrap();
        }
        assert!(matches!(l.admit("a", 1), Err(Rejection::RateLimited { retry_after: 1 })));
        l.admit("b", 1).unwrap();
    }

    #[test]
    fn in_flight_caps_per_bearer_and_process() {
        let l = Limiter::new(LimitSettings { requests_per_second: 1000, burst: 1000, max_in_flight_per_bearer: 2, max_in_flight: 3 });
        let a1 = l.admit("a", 1).unwrap();
        let _a2 = l.admit("a", 2).unwrap();
        assert!(matches!(l.admit("a", 3), Err(Rejection::BearerInFlight)));
        let _b1 = l.admit("b", 3).unwrap();
        assert!(matches!(l.admit("b", 4), Err(Rejection::ProcessInFlight)));
        drop(a1);
        assert!(l.admit("a", 3).is_ok());
    }
}
