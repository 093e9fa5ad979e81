//! Graceful drain: once draining starts, readiness fails and new requests get 503
//! `shutting_down`; requests already in flight run to completion (or until the shutdown deadline).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Default time in-flight requests get after SIGTERM before they are cancelled.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// The drain state of the process.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Drain {
    /// Admits a request unless draining, and returns how many are in flight with it. The count
    /// goes up before the check, so a request admitted concurrently with the start of the drain
    /// is always waited for. Every admission must be followed by one [`Drain::leave`].
    pub fn try_enter(&self) -> Option<usize> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if self.draining.load(Ordering::SeqCst) {
            self.leave();
            return None;
        }
        Some(n)
    }

    /// Ends an admitted request; the last one out during a drain wakes the drainer.
    pub fn leave(&self) {
        // Only a drain waits for idleness; skip the notifier's lock otherwise.
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.draining.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// Starts draining.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight, or `timeout`; returns whether it drained.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}
