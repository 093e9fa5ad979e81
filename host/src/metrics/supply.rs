//! Where components come from and how new versions take over: registry polls, trust-policy
//! refusals and canary decisions.

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub(super) struct SupplyMetrics {
    source_polls: IntCounterVec,
    refusals: IntCounterVec,
    rollouts: IntCounterVec,
}

impl SupplyMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        Self {
            source_polls: counter(
                "sluice_plugin_source_polls_total",
                "Polls of the OCI registry sources, by outcome (changed, unchanged, failed).",
                "outcome",
            ),
            refusals: counter(
                "sluice_plugin_refusals_total",
                "Components refused when loading, by reason (unsigned, bad_signature, key_not_allowed, invalid).",
                "reason",
            ),
            rollouts: counter(
                "sluice_plugin_rollouts_total",
                "Canary decisions, by outcome (promoted, rolled_back).",
                "outcome",
            ),
        }
    }
}

impl super::Metrics {
    /// A registry source was polled.
    pub fn plugin_source_poll(&self, outcome: &'static str) {
        self.supply.source_polls.with_label_values(&[outcome]).inc();
    }

    /// A component was refused (the trust policy's reason, or `invalid`).
    pub fn plugin_refused(&self, reason: &'static str) {
        self.supply.refusals.with_label_values(&[reason]).inc();
    }

    /// A canary was promoted or rolled back.
    pub fn plugin_rollout(&self, outcome: &'static str) {
        self.supply.rollouts.with_label_values(&[outcome]).inc();
    }
}
