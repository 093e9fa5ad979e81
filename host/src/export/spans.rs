//! Trace spans of an export: the run, each sink's delivery, each part sent.

use tracing::Span;
use tracing::field::Empty;

use super::status::{SinkExportStatus, Synced};
use crate::telemetry::{TARGET, current_child, current_child_or_root};

/// An export run: under the request that asked for it, or a sampled trace of its own.
pub(super) fn export(name: &str) -> Span {
    current_child_or_root(|parent| {
        tracing::info_span!(
            target: TARGET,
            parent: parent,
            "export",
            otel.name = %format_args!("export {name}"),
            otel.status_code = Empty,
            sluice.export.name = name,
            sluice.export.generation = Empty,
            sluice.export.items = Empty,
        )
    })
}

/// One sink's delivery within the current export span.
pub(super) fn delivery(sink: &str, sink_type: &str) -> Span {
    current_child(|parent| {
        tracing::info_span!(
            target: TARGET,
            parent: parent,
            "sink_delivery",
            otel.name = %format_args!("deliver {sink}"),
            otel.status_code = Empty,
            sluice.sink.name = sink,
            sluice.sink.type = sink_type,
            sluice.outcome = Empty,
            error.type = Empty,
        )
    })
}

/// The delivery's outcome (`Exported`, `Debounced`, `ExportFailed`) and error class.
pub(super) fn record_delivery(span: &Span, line: &SinkExportStatus) {
    if span.is_none() {
        return;
    }
    span.record("sluice.outcome", tracing::field::debug(line.synced));
    if line.synced == Synced::ExportFailed {
        span.record("otel.status_code", "error");
        if let Some(e) = &line.last_error {
            span.record("error.type", e.class.as_str());
        }
    }
}

/// One part sent to a sink, within the current delivery span.
pub(super) fn part(index: usize, total: usize, bytes: usize) -> Span {
    current_child(|parent| {
        tracing::info_span!(
            target: TARGET,
            parent: parent,
            "sink_part",
            otel.status_code = Empty,
            sluice.part.index = index,
            sluice.part.total = total,
            sluice.part.bytes = bytes,
            sluice.outcome = Empty,
            error.type = Empty,
        )
    })
}

/// A part's outcome: `ok`, or failed with its error class.
pub(super) fn record_part(span: &Span, failure: Option<&str>) {
    if span.is_none() {
        return;
    }
    match failure {
        None => span.record("sluice.outcome", "ok"),
        Some(class) => span.record("sluice.outcome", "failed").record("error.type", class).record("otel.status_code", "error"),
    };
}

/// What the run found.
pub(super) fn record_run(span: &Span, generation: u64, items: usize) {
    if !span.is_none() {
        span.record("sluice.export.generation", generation).record("sluice.export.items", items);
    }
}
