//! Safe rollout of a new tool version (`[plugins.tools."<name>".rollout]`): the new version serves
//! a share of the calls (a canary) while the old one serves the rest, and is promoted after
//! enough calls or time under the failure limit, or rolled back the moment it reaches it.
//!
//! The decision is taken on the call path by flipping an atomic state, which routing reads, so a
//! rolled-back canary gets no further call; the registry snapshot is rewritten afterwards
//! ([`super::Runtime::settle_rollouts`]), off the call path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::{LoadedTool, Runtime};
use crate::config::Rollout;

const RUNNING: u8 = 0;
const PROMOTED: u8 = 1;
const ROLLED_BACK: u8 = 2;

/// A new version on trial next to the one serving.
pub struct Canary {
    /// The new version.
    pub tool: Arc<LoadedTool>,
    /// The version it would replace (serving the other calls).
    pub stable: Arc<LoadedTool>,
    policy: Rollout,
    started: Instant,
    started_at: SystemTime,
    calls: AtomicU64,
    failures: AtomicU64,
    stable_calls: AtomicU64,
    /// Canary calls running now (slots held).
    inflight: AtomicU64,
    state: AtomicU8,
    /// Why it was rolled back or promoted (set once, with the state).
    reason: std::sync::Mutex<Option<String>>,
}

/// A call's place on a running canary, given back when the call ends (whatever way it ends).
pub struct CanarySlot(Arc<Canary>);

impl Drop for CanarySlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a call's outcome decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Promoted,
    RolledBack,
}

/// A tool's rollout, as the plugin list shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutStatus {
    /// `canary`, `promoted` or `rolled_back`.
    pub state: &'static str,
    /// The canary's version and digest.
    pub canary_version: String,
    pub canary_digest: String,
    /// The share of calls it is given.
    pub share: f64,
    /// Calls the canary served, and how many of them failed.
    pub canary_calls: u64,
    pub canary_failures: u64,
    /// Calls the serving version served meanwhile.
    pub stable_calls: u64,
    /// When the canary started (RFC 3339).
    pub started_at: String,
    /// Why it was promoted or rolled back.
    pub reason: Option<String>,
}

impl Canary {
    /// A canary of `tool` next to `stable`.
    pub fn new(tool: Arc<LoadedTool>, stable: Arc<LoadedTool>, policy: Rollout) -> Self {
        Self {
            tool,
            stable,
            policy,
            started: Instant::now(),
            started_at: SystemTime::now(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            stable_calls: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
            reason: std::sync::Mutex::new(None),
        }
    }

    /// The version a call goes to: the canary for its share of calls while it runs, the new
    /// version once promoted, the old one once rolled back. A call given to a running canary
    /// holds a slot until it ends (the returned guard): the canary never has more calls in
    /// flight than failures it may still have, so however many calls run at once, no more than
    /// `max_failures` of them fail on it. (Under heavy concurrency with a small `max_failures`
    /// this lowers its share.)
    pub fn pick(self: &Arc<Self>) -> (Arc<LoadedTool>, Option<CanarySlot>) {
        match self.state.load(Ordering::Acquire) {
            RUNNING if random_unit() < self.policy.canary_share => match self.reserve() {
                Some(slot) => (self.tool.clone(), Some(slot)),
                None => (self.stable.clone(), None),
            },
            PROMOTED => (self.tool.clone(), None),
            _ => (self.stable.clone(), None),
        }
    }

    fn reserve(self: &Arc<Self>) -> Option<CanarySlot> {
        let failures = self.failures.load(Ordering::Acquire);
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (failures + n < self.policy.max_failures).then_some(n + 1))
            .ok()
            .map(|_| CanarySlot(self.clone()))
    }

    /// Counts a call of `tool` (either version) that ended with `failed`; returns the decision
    /// it caused, if any (exactly once per canary).
    pub fn observe(&self, tool: &Arc<LoadedTool>, failed: Option<&str>) -> Option<Decision> {
        if Arc::ptr_eq(tool, &self.stable) {
            self.stable_calls.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !Arc::ptr_eq(tool, &self.tool) || self.state.load(Ordering::Acquire) != RUNNING {
            return None;
        }
        let calls = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let failures = if failed.is_some() { self.failures.fetch_add(1, Ordering::AcqRel) + 1 } else { self.failures.load(Ordering::Acquire) };
        if failures >= self.policy.max_failures {
            let why = format!(
                "{failures} of {calls} canary calls failed (limit {}); last: {}",
                self.policy.max_failures,
                failed.unwrap_or("?")
            );
            return self.decide(ROLLED_BACK, why).then_some(Decision::RolledBack);
        }
        if calls >= self.policy.promote_after_calls {
            let why = format!("{calls} calls with {failures} failures (limit {})", self.policy.max_failures);
            return self.decide(PROMOTED, why).then_some(Decision::Promoted);
        }
        self.check_time()
    }

    /// Promotes the canary if it has run long enough under the limit.
    pub fn check_time(&self) -> Option<Decision> {
        if self.state.load(Ordering::Acquire) != RUNNING || self.started.elapsed() < self.policy.promote_after.0 {
            return None;
        }
        let why = format!(
            "{:?} with {} failures in {} calls (limit {})",
            self.policy.promote_after.0,
            self.failures.load(Ordering::Acquire),
            self.calls.load(Ordering::Acquire),
            self.policy.max_failures
        );
        self.decide(PROMOTED, why).then_some(Decision::Promoted)
    }

    /// Promotes or rolls back by hand (the admin API). `false` if already decided.
    pub fn force(&self, decision: Decision, by: &str) -> bool {
        let (state, why) = match decision {
            Decision::Promoted => (PROMOTED, format!("promoted by {by}")),
            Decision::RolledBack => (ROLLED_BACK, format!("rolled back by {by}")),
        };
        self.decide(state, why)
    }

    fn decide(&self, to: u8, why: String) -> bool {
        let won = self.state.compare_exchange(RUNNING, to, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if won {
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        }
        won
    }

    /// The decision taken, if any.
    pub fn decision(&self) -> Option<Decision> {
        match self.state.load(Ordering::Acquire) {
            PROMOTED => Some(Decision::Promoted),
            ROLLED_BACK => Some(Decision::RolledBack),
            _ => None,
        }
    }

    /// Why it was decided.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its state for the plugin list.
    pub fn status(&self) -> RolloutStatus {
        RolloutStatus {
            state: match self.decision() {
                None => "canary",
                Some(Decision::Promoted) => "promoted",
                Some(Decision::RolledBack) => "rolled_back",
            },
            canary_version: self.tool.version.clone(),
            canary_digest: self.tool.digest.clone(),
            share: self.policy.canary_share,
            canary_calls: self.calls.load(Ordering::Relaxed),
            canary_failures: self.failures.load(Ordering::Relaxed),
            stable_calls: self.stable_calls.load(Ordering::Relaxed),
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            reason: self.reason(),
        }
    }
}

impl Runtime {
    /// Counts a finished call towards its tool's rollout; a decision it causes takes effect at
    /// once (routing reads it) and is logged, audited and counted here.
    pub(super) fn observe_rollout(&self, tool: &Arc<LoadedTool>, error: Option<&super::CallError>) {
        let registry = self.registry.load();
        let Some(canary) = registry.canaries.get(&tool.name) else { return };
        let failed = error.filter(|e| counts_against_version(e)).map(|e| e.outcome());
        if let Some(d) = canary.observe(tool, failed) {
            self.rollout_decided(canary, d);
        }
    }

    fn rollout_decided(&self, canary: &Canary, d: Decision) {
        let (event, what) = match d {
            Decision::Promoted => ("plugin_canary_promoted", "promoted"),
            Decision::RolledBack => ("plugin_canary_rolled_back", "rolled_back"),
        };
        let reason = canary.reason().unwrap_or_default();
        tracing::warn!(plugin = %canary.tool.name, version = %canary.tool.version, outcome = what, reason = %reason, "Canary decided.");
        self.metrics.plugin_rollout(what);
        self.audit_event(
            crate::audit::AuditEvent::new(event)
                .with("tool", canary.tool.name.as_str())
                .with("version", canary.tool.version.as_str())
                .with("digest", canary.tool.digest.as_str())
                .with("replaced_version", canary.stable.version.as_str())
                .with("reason", reason),
        );
    }

    /// Promotes canaries that ran long enough, and folds decided ones into the registry. The
    /// server calls it every second; it reloads only when something was decided.
    pub fn settle_rollouts(&self) {
        let registry = self.registry.load_full();
        let mut decided = false;
        for c in registry.canaries.values() {
            if let Some(d) = c.check_time() {
                self.rollout_decided(c, d);
            }
            decided |= c.decision().is_some();
        }
        if decided {
            self.reload();
        }
    }

    /// Promotes or rolls back `tool`'s canary by hand (when it is still undecided); its status
    /// afterwards, or `None` when the tool has no canary.
    pub fn decide_rollout(&self, tool: &str, d: Decision, by: &str) -> Option<RolloutStatus> {
        let registry = self.registry.load_full();
        let canary = registry.canaries.get(tool)?;
        if canary.force(d, by) {
            self.rollout_decided(canary, d);
            self.reload();
        }
        Some(canary.status())
    }
}

/// Whether a failed call counts against the version (rather than the caller or the gateway):
/// traps, the memory limit, the deadline, internal tool errors and failed queries.
pub fn counts_against_version(e: &super::CallError) -> bool {
    use super::{CallError, ToolError, WitQueryError};
    match e {
        CallError::Trap(_) | CallError::MemoryLimit(_) | CallError::Timeout(_) => true,
        CallError::Tool(ToolError::Internal(_)) => true,
        CallError::Tool(ToolError::Query(q)) => !matches!(q, WitQueryError::ScopeDenied),
        CallError::Tool(_) | CallError::Busy | CallError::Cancelled => false,
    }
}

/// A uniform number in [0, 1) from a per-thread xorshift generator seeded once from the OS.
fn random_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_canary_draw_is_uniform() {
        const N: usize = 1_000_000;
        let mut buckets = [0usize; 10];
        for _ in 0..N {
            let u = super::random_unit();
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        // Each bucket expects 100 000 with s.d. 300: five s.d. either side.
        for (i, b) in buckets.iter().enumerate() {
            assert!((98_500..=101_500).contains(b), "bucket {i}: {b}");
        }
    }
}
