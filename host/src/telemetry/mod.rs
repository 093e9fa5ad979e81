//! Traces: OpenTelemetry spans of what Sluice does for a request (the request, its
//! authentication, a tool call, each query the plugin makes, an MCP `tools/call`, ingest) and
//! for an export (each sink's delivery, each part), exported over OTLP/HTTP.
//!
//! Spans are `tracing` spans of the target [`TARGET`], turned into OpenTelemetry spans by
//! `tracing-opentelemetry` and queued for the exporter thread (`export.rs`). Whether a request
//! is traced is decided once, when it arrives, before any span exists: a caller's `traceparent`
//! decides for its requests (parent-based); without one, a request is traced when its id falls
//! within `sample_ratio` of the id space. An untraced request creates no span, so tracing at a
//! low ratio costs requests almost nothing.

mod config;
mod export;
mod logging;

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId, TracerProvider as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use config::TracesConfig;
pub use export::{ExportStats, stats};
pub use logging::init_logging;

/// The `tracing` target of every span that becomes an OpenTelemetry span.
pub const TARGET: &str = "sluice::trace";

/// The response header naming the request's trace (W3C Trace Context Level 2):
/// `00-<trace id>-<span id>-<flags>`.
pub static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// The process's trace pipeline (one per process: spans go through the global subscriber).
pub struct Traces {
    /// A request without `traceparent` is traced when its id is below this.
    threshold: u64,
    /// Every such request is traced.
    all: bool,
    record_sql: bool,
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

static ACTIVE: OnceLock<Traces> = OnceLock::new();

/// The pipeline, once [`install`] has run.
pub fn active() -> Option<&'static Traces> {
    ACTIVE.get()
}

/// Starts the exporter and returns the layer that turns [`TARGET`] spans into OpenTelemetry
/// spans; add it to the process's subscriber. Only the first call builds a pipeline.
pub fn install<S>(config: &TracesConfig) -> anyhow::Result<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use tracing_subscriber::Layer as _;
    config.check().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(ACTIVE.get().is_none(), "traces are already installed in this process");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(export::QueueProcessor::start(config)?)
        // The decision is Sluice's, made before a span exists (see the module's comment).
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .build();
    let tracer = provider.tracer("sluice");
    let ratio = config.sample_ratio;
    let traces = Traces {
        threshold: (ratio * u64::MAX as f64) as u64,
        all: ratio >= 1.0,
        record_sql: config.record_sql,
        provider,
    };
    let _ = ACTIVE.set(traces);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE));
    Ok(layer.boxed())
}

/// Sends what is queued, within the export timeout (at the end of a drain, and for tests).
pub fn flush() {
    if let Some(t) = active()
        && let Err(e) = t.provider.force_flush()
    {
        tracing::warn!(error = %e, "Could not send the last spans.");
    }
}

impl Traces {
    /// A plugin query's SQL goes on its span.
    pub fn record_sql(&self) -> bool {
        self.record_sql
    }

    /// A trace of its own (no caller's context), decided by `draw` (a uniformly distributed
    /// number, e.g. the request id).
    pub fn sample_root(&self, draw: u64) -> bool {
        self.all || draw < self.threshold
    }

    /// The trace of a request arriving with `headers`, or `None` when it is not traced and
    /// its caller sent no trace context. `span` makes the request span when it is traced.
    pub fn request(&self, headers: &HeaderMap, draw: u64, span: impl FnOnce() -> tracing::Span) -> Option<Trace> {
        let remote = headers.contains_key("traceparent").then(|| remote(&HeaderExtractor(headers))).flatten();
        self.begin(remote, draw, span)
    }

    /// The trace of an MCP request whose `_meta` is `meta`: its `traceparent` (with
    /// `tracestate`) when there is one, else the HTTP request's trace `outer`.
    pub fn mcp_request(
        &self,
        meta: &serde_json::Map<String, serde_json::Value>,
        outer: Option<&Trace>,
        span: impl FnOnce(&tracing::Span) -> tracing::Span,
    ) -> Option<Trace> {
        match meta.contains_key("traceparent").then(|| remote(&MetaExtractor(meta))).flatten() {
            Some(cx) => self.begin(Some(cx), 0, || span(&tracing::Span::none())),
            None => outer.map(|t| t.child(span)),
        }
    }

    fn begin(&self, remote: Option<opentelemetry::Context>, draw: u64, span: impl FnOnce() -> tracing::Span) -> Option<Trace> {
        let parent = remote.as_ref().map(|cx| cx.span().span_context().clone());
        let traced = match &parent {
            Some(p) => p.is_sampled(),
            None => self.sample_root(draw),
        };
        let untraced = |p: &opentelemetry::trace::SpanContext| Trace {
            trace_id: p.trace_id(),
            span_id: p.span_id(),
            span: tracing::Span::none(),
        };
        if !traced {
            return parent.as_ref().map(untraced);
        }
        let span = span();
        if span.is_disabled() {
            // No trace layer in this process's subscriber.
            return parent.as_ref().map(untraced);
        }
        if let Some(cx) = remote {
            let _ = span.set_parent(cx);
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        Some(Trace { trace_id: sc.trace_id(), span_id: sc.span_id(), span })
    }
}

/// The trace a request (or an export) belongs to.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: TraceId,
    /// The request span's id, or the caller's parent span's when it is not traced here.
    span_id: SpanId,
    /// The span children go under: a recorded span when traced here, else `Span::none()`.
    pub span: tracing::Span,
}

impl Trace {
    /// Spans are recorded for it.
    pub fn traced(&self) -> bool {
        !self.span.is_none()
    }

    /// The trace id as 32 lowercase hex digits (audit lines).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceresponse` header value.
    pub fn header_value(&self) -> HeaderValue {
        let flags = if self.traced() { "01" } else { "00" };
        let v = format!("00-{:032x}-{:016x}-{flags}", self.trace_id, self.span_id);
        HeaderValue::from_str(&v).expect("hex is a valid header value")
    }

    /// The same trace under a child span made by `span` from the parent span (when traced).
    pub fn child(&self, span: impl FnOnce(&tracing::Span) -> tracing::Span) -> Trace {
        if !self.traced() {
            return self.clone();
        }
        let span = span(&self.span);
        let span_id = span.context().span().span_context().span_id();
        Trace { trace_id: self.trace_id, span_id, span }
    }
}

/// The span under `parent` when it is recorded, else none (no span is made).
pub fn child_of(parent: Option<&Trace>, span: impl FnOnce(&tracing::Span) -> tracing::Span) -> tracing::Span {
    match parent {
        Some(t) if t.traced() => span(&t.span),
        _ => tracing::Span::none(),
    }
}

/// A child of the current span when that is a trace span (work done inside a traced request or
/// export), else none.
pub fn current_child(span: impl FnOnce(&tracing::Span) -> tracing::Span) -> tracing::Span {
    if active().is_none() {
        return tracing::Span::none();
    }
    let current = tracing::Span::current();
    match current.metadata() {
        Some(m) if m.target() == TARGET => span(&current),
        _ => tracing::Span::none(),
    }
}

/// A child of the current trace span (an export run from a traced request), else the root of a
/// trace of its own when sampled (a scheduled export), else none.
pub fn current_child_or_root(span: impl FnOnce(&tracing::Span) -> tracing::Span) -> tracing::Span {
    let Some(traces) = active() else { return tracing::Span::none() };
    let current = tracing::Span::current();
    match current.metadata() {
        Some(m) if m.target() == TARGET => span(&current),
        _ if traces.sample_root(getrandom::u64().unwrap_or(u64::MAX)) => span(&tracing::Span::none()),
        _ => tracing::Span::none(),
    }
}

/// A caller's trace context, if valid.
fn remote(extractor: &dyn Extractor) -> Option<opentelemetry::Context> {
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(extractor);
    cx.span().span_context().is_valid().then_some(cx)
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct MetaExtractor<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
