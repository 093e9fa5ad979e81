//! Prometheus metrics. Label values come only from bounded sets: route templates, methods,
//! status classes, loaded tool names and fixed outcome names.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::Method;
mod auth;
mod sandbox;
mod supply;

use auth::{AuditMetrics, AuthMetrics};
pub use sandbox::{PluginSeries, RECENT_MINUTES};
use sandbox::SandboxMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
    exponential_buckets,
};

/// The outcome label values of `sluice_plugin_calls_total`.
pub const PLUGIN_CALL_OUTCOMES: [&str; 7] = ["ok", "tool_error", "timeout", "trap", "memory_limit", "busy", "cancelled"];

/// The outcome label values of `sluice_sink_calls_total`.
pub const SINK_CALL_OUTCOMES: [&str; 5] = ["ok", "sink_error", "timeout", "trap", "memory_limit"];

/// Method label values; [`method_index`] maps a request's method to one of them.
const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other"];
/// Status class label values, by `status / 100 - 1` (anything else counts as `5xx`).
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of a method's label value (unusual methods share `other`).
pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

/// The HTTP metrics of one route template (see [`Metrics::http_route`]).
pub struct HttpRouteMetrics {
    route: &'static str,
    requests_vec: IntCounterVec,
    duration_vec: HistogramVec,
    requests: [[OnceLock<IntCounter>; STATUS_CLASSES.len()]; METHODS.len()],
    duration: OnceLock<Histogram>,
}

impl HttpRouteMetrics {
    /// Records one request; `method` from [`method_index`].
    pub fn record(&self, method: usize, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 4,
        };
        let method = method.min(METHODS.len() - 1);
        self.requests[method][class]
            .get_or_init(|| self.requests_vec.with_label_values(&[self.route, METHODS[method], STATUS_CLASSES[class]]))
            .inc();
        self.duration
            .get_or_init(|| self.duration_vec.with_label_values(&[self.route]))
            .observe(elapsed.as_secs_f64());
    }
}

/// Every metric the gateway exports. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    plugin_calls: IntCounterVec,
    plugin_duration: HistogramVec,
    plugin_reloads: IntCounterVec,
    auth_failures: IntCounterVec,
    auth: AuthMetrics,
    audit: AuditMetrics,
    sandbox: SandboxMetrics,
    supply: supply::SupplyMetrics,
    rate_limited: IntCounterVec,
    ingest_points: IntCounterVec,
    sink_errors: IntCounterVec,
    export_duration: HistogramVec,
    export_bytes: IntCounterVec,
    export_debounced: IntCounterVec,
    export_spill_warn: IntCounterVec,
    sink_connection_tests: IntCounterVec,
    sink_breaker_state: prometheus::IntGaugeVec,
    lake_forwarded: IntCounterVec,
    lake_writer: prometheus::IntGauge,
    lake_maintenance: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = exponential_buckets(0.000_1, 4.0, 10).expect("valid buckets");
        let http_requests = IntCounterVec::new(
            Opts::new("sluice_http_requests_total", "HTTP requests by route template, method and status class."),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("sluice_http_request_duration_seconds", "HTTP request duration by route template.")
                .buckets(buckets.clone()),
            &["route"],
        )
        .expect("valid metric");
        let plugin_calls = IntCounterVec::new(
            Opts::new(
                "sluice_plugin_calls_total",
                "Tool calls by tool, version and outcome (ok, tool_error, timeout, trap, memory_limit, busy, cancelled).",
            ),
            &["plugin", "version", "outcome"],
        )
        .expect("valid metric");
        let plugin_duration = HistogramVec::new(
            HistogramOpts::new("sluice_plugin_call_duration_seconds", "Tool call duration (instantiate + call).")
                .buckets(buckets),
            &["plugin", "version"],
        )
        .expect("valid metric");
        let plugin_reloads = IntCounterVec::new(
            Opts::new(
                "sluice_plugin_reloads_total",
                "Component (re)loads by plugin file and result (loaded, failed).",
            ),
            &["plugin", "result"],
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("sluice_auth_failures_total", "Requests refused by auth, by reason (missing_bearer, invalid_bearer)."),
            &["reason"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "sluice_rate_limited_total",
                "Requests refused by a limit (rate_limited, in_flight_bearer, in_flight_process, versions_ip).",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let ingest_points = IntCounterVec::new(
            Opts::new("sluice_ingest_points_total", "OTLP data points by result (accepted, rejected, failed)."),
            &["result"],
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        let sink_errors = counter(
            "sluice_sink_errors_total",
            "Sink failures by sink type and reason (transient, terminal, forbidden, payload_too_large, spill_required).",
            &["sink_type", "reason"],
        );
        let export_duration = HistogramVec::new(
            HistogramOpts::new("sluice_export_duration_seconds", "Time to deliver one export to one sink.")
                .buckets(exponential_buckets(0.001, 4.0, 10).expect("valid buckets")),
            &["sink_type"],
        )
        .expect("valid metric");
        let export_bytes = counter("sluice_export_bytes_total", "Payload bytes delivered, by sink type.", &["sink_type"]);
        let export_debounced = counter("sluice_export_debounced_total", "Deliveries skipped as unchanged, by export.", &["export"]);
        let export_spill_warn = counter("sluice_export_spill_warn_total", "Exports of 1 MiB or more.", &[]);
        let sink_connection_tests = counter(
            "sluice_sink_connection_test_total",
            "Sink connection tests by sink type and result (ok, failed).",
            &["sink_type", "result"],
        );
        registry.register(Box::new(export_duration.clone())).expect("unique metric");
        let sink_breaker_state = prometheus::IntGaugeVec::new(
            Opts::new("sluice_sink_breaker_state", "Each sink's circuit breaker: 0 closed, 1 open, 2 half-open."),
            &["sink"],
        )
        .expect("valid metric");
        registry.register(Box::new(sink_breaker_state.clone())).expect("unique metric");
        let lake_forwarded = counter(
            "sluice_lake_forwarded_total",
            "Requests a gateway that is not the lake's writer forwarded to it, by outcome (forwarded, no_writer, not_writer, failed, refused).",
            &["outcome"],
        );
        let lake_maintenance = counter(
            "sluice_lake_maintenance_total",
            "Lake upkeep passes on the writer (flush inlined rows, merge files, expire snapshots), by outcome (ok, failed).",
            &["outcome"],
        );
        let lake_writer = prometheus::IntGauge::new("sluice_lake_writer", "1 while this gateway is the lake's writer, else 0.").expect("valid metric");
        registry.register(Box::new(lake_writer.clone())).expect("unique metric");
        for c in [
            &http_requests, &plugin_calls, &plugin_reloads, &auth_failures, &rate_limited, &ingest_points, &sink_errors,
            &export_bytes, &export_debounced, &export_spill_warn, &sink_connection_tests, &lake_forwarded, &lake_maintenance,
        ] {
            registry.register(Box::new(c.clone())).expect("unique metric");
        }
        for h in [&http_duration, &plugin_duration] {
            registry.register(Box::new(h.clone())).expect("unique metric");
        }
        let auth = AuthMetrics::new(&registry);
        let audit = AuditMetrics::new(&registry);
        let sandbox = SandboxMetrics::new(&registry);
        let supply = supply::SupplyMetrics::new(&registry);
        Self {
            registry,
            http_requests,
            http_duration,
            plugin_calls,
            plugin_duration,
            plugin_reloads,
            auth_failures,
            auth,
            audit,
            sandbox,
            supply,
            rate_limited,
            ingest_points,
            sink_errors,
            export_duration,
            export_bytes,
            export_debounced,
            export_spill_warn,
            sink_connection_tests,
            sink_breaker_state,
            lake_forwarded,
            lake_writer,
            lake_maintenance,
        }
    }

    /// A request forwarded (or not) to the lake's writer; `outcome` from a fixed set.
    pub fn lake_forwarded(&self, outcome: &'static str) {
        self.lake_forwarded.with_label_values(&[outcome]).inc();
    }

    /// A lake upkeep pass on the writer.
    pub fn lake_maintenance(&self, ok: bool) {
        self.lake_maintenance.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    /// Whether this gateway is the lake's writer.
    pub fn lake_writer(&self, writer: bool) {
        self.lake_writer.set(i64::from(writer));
    }

    /// A sink's breaker state (sink names come from the operator's configuration).
    pub fn sink_breaker(&self, sink: &str, state: &str) {
        let v = match state {
            "open" => 1,
            "half_open" => 2,
            _ => 0,
        };
        self.sink_breaker_state.with_label_values(&[sink]).set(v);
    }

    /// A sink failure; `sink_type` comes from loaded sink components, `reason` from a fixed set.
    pub fn sink_error(&self, sink_type: &str, reason: &'static str) {
        self.sink_errors.with_label_values(&[sink_type, reason]).inc();
    }

    /// One export delivered to one sink, in `elapsed`.
    pub fn export_duration(&self, sink_type: &str, elapsed: Duration) {
        self.export_duration.with_label_values(&[sink_type]).observe(elapsed.as_secs_f64());
    }

    /// Payload bytes delivered.
    pub fn export_bytes(&self, sink_type: &str, n: usize) {
        self.export_bytes.with_label_values(&[sink_type]).inc_by(n as u64);
    }

    /// A delivery skipped as unchanged; export names come from the operator's configuration.
    pub fn export_debounced(&self, export: &str) {
        self.export_debounced.with_label_values(&[export]).inc();
    }

    /// An export of 1 MiB or more.
    pub fn export_spill_warn(&self) {
        self.export_spill_warn.with_label_values::<&str>(&[]).inc();
    }

    /// A sink connection test.
    pub fn sink_connection_test(&self, sink_type: &str, ok: bool) {
        self.sink_connection_tests.with_label_values(&[sink_type, if ok { "ok" } else { "failed" }]).inc();
    }

    /// Records OTLP points; `result` is `accepted`, `rejected` or `failed`.
    pub fn ingest_points(&self, result: &'static str, n: usize) {
        if n > 0 {
            self.ingest_points.with_label_values(&[result]).inc_by(n as u64);
        }
    }

    /// The HTTP metrics of one route template, resolved once: recording a request then costs
    /// no label hashing and no registry lock. Series appear when first recorded.
    pub fn http_route(&self, route: &'static str) -> HttpRouteMetrics {
        HttpRouteMetrics {
            route,
            requests_vec: self.http_requests.clone(),
            duration_vec: self.http_duration.clone(),
            requests: Default::default(),
            duration: OnceLock::new(),
        }
    }

    /// The series of one tool version, to record its calls into (see [`PluginSeries`]).
    pub fn plugin_series(&self, plugin: &str, version: &str) -> PluginSeries {
        PluginSeries {
            outcomes: &PLUGIN_CALL_OUTCOMES,
            calls: PLUGIN_CALL_OUTCOMES.iter().map(|o| self.plugin_calls.with_label_values(&[plugin, version, o])).collect(),
            recent: Default::default(),
            duration: self.plugin_duration.with_label_values(&[plugin, version]),
            instantiate: self.sandbox.instantiate.with_label_values(&[plugin, version]),
            peak_memory: self.sandbox.peak_memory.with_label_values(&[plugin, version]),
        }
    }

    /// The series of one sink component version (see [`PluginSeries`]).
    pub fn sink_series(&self, sink_type: &str, version: &str) -> PluginSeries {
        let s = &self.sandbox;
        PluginSeries {
            outcomes: &SINK_CALL_OUTCOMES,
            calls: SINK_CALL_OUTCOMES.iter().map(|o| s.sink_calls.with_label_values(&[sink_type, version, o])).collect(),
            recent: Default::default(),
            duration: s.sink_duration.with_label_values(&[sink_type, version]),
            instantiate: s.sink_instantiate.with_label_values(&[sink_type, version]),
            peak_memory: s.sink_peak_memory.with_label_values(&[sink_type, version]),
        }
    }

    /// Removes the series of a sink component version no longer loaded by any sink.
    pub fn forget_sink_version(&self, sink_type: &str, version: &str) {
        let s = &self.sandbox;
        for outcome in SINK_CALL_OUTCOMES {
            let _ = s.sink_calls.remove_label_values(&[sink_type, version, outcome]);
        }
        for h in [&s.sink_duration, &s.sink_instantiate, &s.sink_peak_memory] {
            let _ = h.remove_label_values(&[sink_type, version]);
        }
    }

    /// Removes every per-version series of a tool version no longer loaded (after a hot swap or
    /// removal), so the series stay bounded by what is loaded.
    pub fn forget_plugin_version(&self, plugin: &str, version: &str) {
        for outcome in PLUGIN_CALL_OUTCOMES {
            let _ = self.plugin_calls.remove_label_values(&[plugin, version, outcome]);
        }
        for h in [&self.plugin_duration, &self.sandbox.instantiate, &self.sandbox.peak_memory] {
            let _ = h.remove_label_values(&[plugin, version]);
        }
    }

    /// Records a request refused by auth. `reason` is one of a fixed set.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// One authentication: `method` is `static`, `jwt` or `none` (no bearer), `outcome` `ok` or a
    /// refusal's reason (a fixed set).
    pub fn authentication(&self, method: &'static str, outcome: &'static str) {
        match (method, outcome) {
            ("static", "ok") => self.auth.ok[0].inc(),
            ("jwt", "ok") => self.auth.ok[1].inc(),
            _ => self.auth.authentications.with_label_values(&[method, outcome]).inc(),
        }
    }

    /// One fetch of an issuer's key set. Issuers come from the operator's configuration.
    pub fn jwks_refresh(&self, issuer: &str, ok: bool) {
        self.auth.jwks_refreshes.with_label_values(&[issuer, if ok { "ok" } else { "failed" }]).inc();
        self.auth.jwks_stale.with_label_values(&[issuer]).set(i64::from(!ok));
    }

    /// Records a request refused by a limit. `limit` is one of a fixed set.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.with_label_values(&[limit]).inc();
    }

    /// Records the (re)load of one plugin file. File names come from the operator's plugins
    /// directory, never from requests.
    pub fn plugin_reload(&self, file: &str, ok: bool) {
        self.plugin_reloads.with_label_values(&[file, if ok { "loaded" } else { "failed" }]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.audit.refresh();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding metrics");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
