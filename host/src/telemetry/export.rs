//! Finished spans to the collector: a bounded queue that never makes a request wait, one
//! exporter thread that sends batches over OTLP/HTTP, and counts of what was sent and dropped.
//!
//! Not the SDK's `BatchSpanProcessor`: it drops spans on a full queue too, but keeps the count
//! to itself (one log line at shutdown); operators need it as a metric.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _, SpanProcessor};
use tokio::sync::mpsc;

use super::TracesConfig;

/// Spans sent to the collector.
static EXPORTED: AtomicU64 = AtomicU64::new(0);
/// Spans dropped because the queue was full.
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
/// Spans dropped because their export request failed (collector down, refused, timed out).
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// What the exporter did so far, for `sluice_trace_spans_exported_total` and
/// `sluice_trace_spans_dropped_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
}

/// The counts of this process.
pub fn stats() -> ExportStats {
    ExportStats {
        exported: EXPORTED.load(Relaxed),
        dropped_queue_full: DROPPED_QUEUE_FULL.load(Relaxed),
        dropped_export_failed: DROPPED_EXPORT_FAILED.load(Relaxed),
    }
}

enum Msg {
    Span(Box<SpanData>),
    /// Send what is queued now, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The span processor: `on_end` queues the span, or drops and counts it when the queue is full.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    tx: mpsc::Sender<Msg>,
    flush_timeout: Duration,
}

impl QueueProcessor {
    /// Starts the exporter thread.
    pub(super) fn start(config: &TracesConfig) -> anyhow::Result<Self> {
        let exporter = exporter(config)?;
        let (tx, rx) = mpsc::channel(config.queue);
        let (batch, interval, timeout) = (config.batch, config.interval.0, config.timeout.0);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name("sluice-traces".into())
            .spawn(move || rt.block_on(run(rx, exporter, batch, interval, timeout)))?;
        Ok(Self { tx, flush_timeout: timeout + Duration::from_secs(1) })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            DROPPED_QUEUE_FULL.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        // Waits for room in the queue: a flush is not a request.
        let sent = match tokio::runtime::Handle::try_current() {
            Ok(_) => self.tx.try_send(Msg::Flush(ack)).is_ok(),
            Err(_) => self.tx.blocking_send(Msg::Flush(ack)).is_ok(),
        };
        if !sent {
            return Err(OTelSdkError::InternalFailure("the trace exporter is gone or its queue is full".into()));
        }
        done.recv_timeout(self.flush_timeout).map_err(|_| OTelSdkError::Timeout(self.flush_timeout))
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

/// The exporter thread: batches of up to `batch` spans, sent when full or `interval` after the
/// first span of the batch came; each send within `timeout`.
async fn run(
    mut rx: mpsc::Receiver<Msg>,
    exporter: opentelemetry_otlp::SpanExporter,
    batch: usize,
    interval: Duration,
    timeout: Duration,
) {
    let mut pending: Vec<SpanData> = Vec::with_capacity(batch);
    let mut failing = false;
    loop {
        let msg = if pending.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(interval, rx.recv()).await {
                Ok(msg) => msg,
                Err(_) => {
                    send(&exporter, &mut pending, timeout, &mut failing).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Span(span)) => {
                pending.push(*span);
                if pending.len() >= batch {
                    send(&exporter, &mut pending, timeout, &mut failing).await;
                }
            }
            Some(Msg::Flush(ack)) => {
                send(&exporter, &mut pending, timeout, &mut failing).await;
                let _ = ack.send(());
            }
            None => {
                send(&exporter, &mut pending, timeout, &mut failing).await;
                return;
            }
        }
    }
}

async fn send(exporter: &opentelemetry_otlp::SpanExporter, pending: &mut Vec<SpanData>, timeout: Duration, failing: &mut bool) {
    if pending.is_empty() {
        return;
    }
    let spans = std::mem::take(pending);
    let n = spans.len() as u64;
    let result = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    match result {
        Ok(()) => {
            EXPORTED.fetch_add(n, Relaxed);
            if std::mem::take(failing) {
                tracing::info!("Trace export works again.");
            }
        }
        Err(e) => {
            DROPPED_EXPORT_FAILED.fetch_add(n, Relaxed);
            // Once per failing streak: a collector that is down would otherwise log every batch.
            if !std::mem::replace(failing, true) {
                tracing::warn!(error = %e, spans = n, "Trace export failed; spans are dropped and counted until it works again.");
            }
        }
    }
}

/// The OTLP/HTTP (protobuf) span exporter, sending with the host's HTTP client.
fn exporter(config: &TracesConfig) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let endpoint = config.endpoint.clone().ok_or_else(|| anyhow::anyhow!("traces.endpoint is not set"))?;
    let client = crate::auth::jwt::http_client(config.ca_file.as_deref())?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(config.timeout.0)
        .with_headers(config.resolved_headers()?)
        .with_http_client(Client(client))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

/// `reqwest` (the client Sluice already has, with its TLS roots) for the OTLP exporter.
#[derive(Debug)]
struct Client(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: axum::http::Request<opentelemetry_http::Bytes>,
    ) -> Result<axum::http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let resp = self.0.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
        let mut out = axum::http::Response::builder().status(resp.status());
        if let Some(h) = out.headers_mut() {
            *h = resp.headers().clone();
        }
        // The collector's answer is small (a partial-success message at most).
        let body = resp.bytes().await?;
        Ok(out.body(body)?)
    }
}
