//! The query watchdog: interrupts queries that pass their deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use duckdb::InterruptHandle;

/// Interrupts queries that pass their deadline. One thread for the whole process; arming and
/// disarming are a map insert and remove under a mutex, and the interrupt happens under the same
/// mutex so a connection that has been disarmed (and may be reused) is never interrupted.
pub(super) struct Watchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
}

#[derive(Default)]
struct WatchState {
    armed: BTreeMap<(Instant, u64), Arc<InterruptHandle>>,
    fired: std::collections::HashSet<u64>,
    /// Set by `fire_all`: every query from now on is interrupted at once.
    all: bool,
}

pub(super) struct Armed<'a> {
    watchdog: &'a Watchdog,
    key: (Instant, u64),
}

static NEXT_ARM: AtomicU64 = AtomicU64::new(0);

impl Watchdog {
    pub(super) fn start() -> Self {
        let shared: Arc<(Mutex<WatchState>, Condvar)> = Arc::default();
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("sluice-query-watchdog".into())
            .spawn(move || {
                loop {
                    let Some(shared) = weak.upgrade() else { return };
                    let (lock, cv) = &*shared;
                    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    while let Some((&key, _)) = st.armed.first_key_value() {
                        if key.0 > now {
                            break;
                        }
                        if let Some(handle) = st.armed.remove(&key) {
                            handle.interrupt();
                            st.fired.insert(key.1);
                        }
                    }
                    // Wake at the next deadline, or after a second to notice the database being dropped.
                    let wait = st
                        .armed
                        .first_key_value()
                        .map_or(Duration::from_secs(1), |(k, _)| k.0.saturating_duration_since(now))
                        .min(Duration::from_secs(1));
                    let _ = cv.wait_timeout(st, wait);
                }
            })
            .expect("spawning the query watchdog thread");
        Self { shared }
    }

    pub(super) fn arm(&self, until: Instant, handle: Arc<InterruptHandle>) -> Armed<'_> {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        // After `fire_all`, arm with a deadline in the past: the watchdog interrupts at once.
        let until = if st.all { Instant::now() } else { until };
        let key = (until, NEXT_ARM.fetch_add(1, Ordering::Relaxed));
        st.armed.insert(key, handle);
        drop(st);
        cv.notify_one();
        Armed { watchdog: self, key }
    }

    pub(super) fn all_fired(&self) -> bool {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner()).all
    }

    pub(super) fn fire_all(&self) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.all = true;
        for (key, handle) in std::mem::take(&mut st.armed) {
            handle.interrupt();
            st.fired.insert(key.1);
        }
        drop(st);
        cv.notify_one();
    }
}

impl Armed<'_> {
    /// Disarms; returns whether the deadline had already fired.
    pub(super) fn disarm(self) -> bool {
        let mut st = self.watchdog.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        st.armed.remove(&self.key);
        st.fired.remove(&self.key.1)
    }
}
