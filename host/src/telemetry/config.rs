//! `[traces]`: where spans go, how many, and how they queue.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::HumanDuration;

/// `[traces]`: OpenTelemetry traces over OTLP/HTTP. Off unless `endpoint` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's traces URL, used as given, e.g. `http://127.0.0.1:4318/v1/traces`: https,
    /// or plain http to a loopback address only (a collector beside Sluice).
    pub endpoint: Option<String>,
    /// Share of requests traced when the caller sends no `traceparent` (0.0–1.0). A caller's
    /// `traceparent` decides for its own requests (parent-based): sampled is traced, not
    /// sampled is not.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Finished spans waiting for export; past it, spans are dropped and counted
    /// (`sluice_trace_spans_dropped_total{reason="queue_full"}`), never waited for.
    pub queue: usize,
    /// Spans per export request.
    pub batch: usize,
    /// How long spans wait for a batch to fill before they are sent anyway.
    pub interval: HumanDuration,
    /// One export request's time limit; a batch that fails is dropped and counted.
    pub timeout: HumanDuration,
    /// Headers of each export request, e.g. `{ authorization = "env:OTLP_AUTH" }`: each value
    /// `"env:NAME"` or `"file:/path"` (secrets are never written in the configuration).
    pub headers: BTreeMap<String, String>,
    /// PEM certificates to trust for the endpoint besides the public web roots.
    pub ca_file: Option<PathBuf>,
    /// Put a plugin query's SQL text on its span (`db.query.text`). Off: a query's text can
    /// carry what a tenant asked about; its parameters are never recorded.
    pub record_sql: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            sample_ratio: 0.01,
            service_name: "sluice".into(),
            queue: 4096,
            batch: 512,
            interval: HumanDuration(std::time::Duration::from_secs(5)),
            timeout: HumanDuration(std::time::Duration::from_secs(10)),
            headers: BTreeMap::new(),
            ca_file: None,
            record_sql: false,
        }
    }
}

impl TracesConfig {
    /// Traces are on.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Refuses what cannot work or would be unsafe, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if let Some(u) = &self.endpoint {
            crate::auth::jwt::check_url(u).map_err(|e| format!("traces.endpoint: {e}"))?;
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!("traces.sample_ratio must be between 0.0 and 1.0, not {}", self.sample_ratio));
        }
        if self.queue == 0 || self.batch == 0 || self.batch > self.queue {
            return Err("traces.queue and traces.batch must be at least 1, with batch at most queue".into());
        }
        if self.interval.0.is_zero() || self.timeout.0.is_zero() {
            return Err("traces.interval and traces.timeout must be more than 0s".into());
        }
        if self.service_name.trim().is_empty() {
            return Err("traces.service_name must not be empty".into());
        }
        for (name, source) in &self.headers {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("traces.headers: {name:?} is not a header name"));
            }
            if !crate::secret::is_reference(source) {
                return Err(format!("traces.headers.{name} must be \"env:NAME\" or \"file:/path\""));
            }
        }
        Ok(())
    }

    /// The headers with their secrets read.
    pub(super) fn resolved_headers(&self) -> anyhow::Result<std::collections::HashMap<String, String>> {
        let mut out = std::collections::HashMap::new();
        for (name, source) in &self.headers {
            out.insert(name.clone(), crate::secret::resolve(&format!("traces.headers.{name}"), source)?);
        }
        Ok(out)
    }
}
