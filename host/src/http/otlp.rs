//! `POST /v1/metrics`: OTLP/HTTP metrics ingest (protobuf or JSON, optionally gzip), bearer
//! required. Accepted points are appended to `events` in one transaction; rejected ones are
//! counted in the OTLP partial-success answer. See [`crate::ingest`] for the mapping.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use tracing::Instrument as _;

use super::{ApiError, AppState, Caller, wire};
use crate::ingest::{self, DecodeError, Encoding};

/// `POST /v1/metrics` with an OTLP `ExportMetricsServiceRequest`.
#[utoipa::path(post, path = "/v1/metrics",
    request_body(
        description = "An OTLP `ExportMetricsServiceRequest`: protobuf, or its JSON mapping (camelCase field names, \
            64-bit integers as strings or numbers, `timeUnixNano` as a string); gzip with `Content-Encoding: gzip`",
        content(
            (Vec<u8> = "application/x-protobuf"),
            ("application/json", example = json!({"resourceMetrics": [{
                "resource": {"attributes": [
                    {"key": "ingero.cluster.id", "value": {"stringValue": "cluster-a"}},
                    {"key": "ingero.node.id", "value": {"stringValue": "cluster-a-n00"}}]},
                "scopeMetrics": [{"metrics": [{
                    "name": "ingero.node.health_score",
                    "gauge": {"dataPoints": [{"timeUnixNano": "1767225600000000000", "asDouble": 0.97}]}}]}]}]}))
        )
    ),
    responses(
        (status = 200, description = "ExportMetricsServiceResponse in the request's encoding; `partial_success.rejected_data_points` counts points without `ingero.cluster.id`/`ingero.node.id`, outside a scoped bearer's clusters, or of a type not stored (exponential histograms, summaries)"),
        (status = 400, description = "`invalid_request`: not an OTLP metrics request, bad gzip, or too large once uncompressed", body = wire::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = wire::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not application/x-protobuf or application/json, or an encoding other than gzip", body = wire::ErrorBody),
        (status = 500, description = "`tool_backend_failure` with `tool` = `ingest`: the database refused the batch (nothing was written)", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn ingest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let header = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let encoding = ingest::encoding_of(header(header::CONTENT_TYPE)).map_err(|e| ApiError::UnsupportedMediaType(e.to_string()))?;
    let body = super::error::read_body(body, state.ingest.max_body.0)?;
    let req = ingest::decode(&body, encoding, header(header::CONTENT_ENCODING), state.ingest.max_uncompressed.0)
        .map_err(|e| match e {
            DecodeError::ContentType(_) | DecodeError::ContentEncoding(_) => ApiError::UnsupportedMediaType(e.to_string()),
            other => ApiError::InvalidRequest(other.to_string()),
        })?;
    if caller.identity.is_scoped() && caller.identity.allowed_clusters.is_empty() {
        return Err(ApiError::TenantScopeRefused("this bearer may see no cluster (its token grants none)".into()));
    }
    let converted = ingest::convert(&req, &caller.identity.allowed_clusters);
    let accepted = converted.rows.len();
    let span = crate::telemetry::child_of(caller.trace.as_ref(), |parent| {
        tracing::info_span!(
            target: crate::telemetry::TARGET,
            parent: parent,
            "ingest",
            otel.status_code = tracing::field::Empty,
            sluice.ingest.accepted = accepted,
            sluice.ingest.rejected = converted.rejected,
        )
    });
    // Committed with whatever other requests wait for the writer (group commit).
    let written = state.db.ingest(converted.rows).instrument(span.clone()).await;
    if written.is_err() && !span.is_none() {
        span.record("otel.status_code", "error");
    }
    drop(span);
    let mut ev = caller.audit("otlp_ingest").with("accepted", accepted).with("rejected", converted.rejected);
    if let Err(e) = &written {
        ev = ev.with("error", format!("{e:#}")).with("status", 500);
        state.audit.record(ev);
        state.metrics.ingest_points("failed", accepted);
        return Err(ApiError::ToolBackendFailure {
            tool: "ingest".into(),
            req_id: caller.req_id.to_string(),
            detail: format!("{e:#}"),
        });
    }
    state.audit.record(ev.with("status", 200));
    state.metrics.ingest_points("accepted", accepted);
    state.metrics.ingest_points("rejected", converted.rejected as usize);
    let content_type = match encoding {
        Encoding::Protobuf => "application/x-protobuf",
        Encoding::Json => "application/json",
    };
    let answer = ingest::response(converted.rejected, converted.reason, encoding);
    Ok(([(header::CONTENT_TYPE, content_type)], answer).into_response())
}
