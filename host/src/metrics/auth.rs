//! Metrics of the front door's authentication, and of the writers off the request path (the
//! audit log, the trace exporter).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Authentications and identity-provider key sets.
#[derive(Clone)]
pub(super) struct AuthMetrics {
    pub(super) authentications: IntCounterVec,
    /// The two hot outcomes, resolved once.
    pub(super) ok: [IntCounter; 2],
    pub(super) jwks_refreshes: IntCounterVec,
    pub(super) jwks_stale: prometheus::IntGaugeVec,
}

impl AuthMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let authentications = IntCounterVec::new(
            Opts::new(
                "sluice_authentications_total",
                "Bearer authentications by method (static, jwt, none) and outcome (ok, missing_bearer, invalid_bearer, \
                 expired, not_yet_valid, wrong_issuer, wrong_audience, unknown_key, bad_signature, algorithm_refused, \
                 missing_claim, malformed).",
            ),
            &["method", "outcome"],
        )
        .expect("valid metric");
        let jwks_refreshes = IntCounterVec::new(
            Opts::new("sluice_jwks_refreshes_total", "Fetches of an issuer's key set (JWKS), by issuer and outcome (ok, failed)."),
            &["issuer", "outcome"],
        )
        .expect("valid metric");
        let jwks_stale = prometheus::IntGaugeVec::new(
            Opts::new("sluice_jwks_stale", "1 while an issuer's last key-set fetch failed (the keys fetched before stay in use)."),
            &["issuer"],
        )
        .expect("valid metric");
        registry.register(Box::new(authentications.clone())).expect("unique metric");
        registry.register(Box::new(jwks_refreshes.clone())).expect("unique metric");
        registry.register(Box::new(jwks_stale.clone())).expect("unique metric");
        let ok = ["static", "jwt"].map(|m| authentications.with_label_values(&[m, "ok"]));
        Self { authentications, ok, jwks_refreshes, jwks_stale }
    }
}

/// The audit writer and the trace exporter, read from them when metrics are rendered.
#[derive(Clone)]
pub(super) struct AuditMetrics {
    backlog: prometheus::IntGauge,
    write_errors: IntCounter,
    spans_exported: IntCounter,
    /// `queue_full`, `export_failed`.
    spans_dropped: [IntCounter; 2],
}

impl AuditMetrics {
    pub(super) fn new(registry: &Registry) -> Self {
        let backlog = prometheus::IntGauge::new(
            "sluice_audit_backlog_lines",
            "Audit lines the writer found queued at its last wake-up (requests wait for it past 65536).",
        )
        .expect("valid metric");
        let write_errors = IntCounter::new("sluice_audit_write_errors_total", "Audit lines that could not be written.").expect("valid metric");
        registry.register(Box::new(backlog.clone())).expect("unique metric");
        registry.register(Box::new(write_errors.clone())).expect("unique metric");
        let spans_exported = IntCounter::new("sluice_trace_spans_exported_total", "Trace spans sent to the OTLP collector.")
            .expect("valid metric");
        let spans_dropped = IntCounterVec::new(
            Opts::new(
                "sluice_trace_spans_dropped_total",
                "Trace spans dropped, by reason: queue_full (the exporter's queue was full; requests never wait for it) \
                 or export_failed (the collector was down, refused or slow).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(spans_exported.clone())).expect("unique metric");
        registry.register(Box::new(spans_dropped.clone())).expect("unique metric");
        let spans_dropped = ["queue_full", "export_failed"].map(|r| spans_dropped.with_label_values(&[r]));
        Self { backlog, write_errors, spans_exported, spans_dropped }
    }

    pub(super) fn refresh(&self) {
        let (backlog, errors) = crate::audit::writer_stats();
        self.backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        self.write_errors.inc_by(errors.saturating_sub(self.write_errors.get()));
        let traces = crate::telemetry::stats();
        let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        catch_up(&self.spans_exported, traces.exported);
        catch_up(&self.spans_dropped[0], traces.dropped_queue_full);
        catch_up(&self.spans_dropped[1], traces.dropped_export_failed);
    }
}
