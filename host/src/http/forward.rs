//! On a lake, ingest and exports belong to the writer (see [`crate::lake`]): a gateway that is
//! not the writer forwards `POST /v1/metrics` and the export routes to it, with the caller's
//! bearer and body, and answers with the writer's answer. One hop only: a forwarded request that
//! reaches a gateway which is no longer the writer gets `503 writer_unavailable`
//! (`Retry-After: 1`), as does any request when no writer is known or it does not answer.
//! Nothing is written in either case, so a retry is safe — except when the writer committed and
//! its answer was lost on the way back (a timeout), where a retry stores the points twice.

use axum::extract::{Request, State};
use axum::http::{HeaderName, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, Caller};

/// Marks a forwarded request (its value: the forwarding gateway's id).
pub const FORWARDED_BY: &str = "sluice-forwarded-by";

/// Headers a forwarded request carries over.
const CARRIED: [&str; 6] = ["authorization", "content-type", "content-encoding", "accept", "traceparent", "tracestate"];
/// Headers of the writer's answer passed back.
const RETURNED: [&str; 3] = ["content-type", "retry-after", "traceresponse"];

/// The middleware on the writer's routes.
pub async fn to_writer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(lake) = state.lake.as_ref() else { return next.run(req).await };
    if lake.is_writer() {
        return next.run(req).await;
    }
    let caller = req.extensions().get::<Caller>().cloned();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (outcome, answer) = forward(&state, lake, req).await;
    state.metrics.lake_forwarded(outcome);
    if let Some(caller) = caller {
        let status = answer.status().as_u16();
        state.audit.record(caller.audit("forwarded_to_writer").with("path", path).with("outcome", outcome).with("status", status));
    }
    answer
}

/// The writer's URL. A reader learns it at its next election tick, so right after an election
/// (or a takeover) it may not know it yet: it waits up to two ticks rather than refuse at once.
async fn writer_url_soon(lake: &crate::lake::Coordinator) -> Option<String> {
    let deadline = tokio::time::Instant::now() + 2 * crate::lake::TICK;
    loop {
        if let Some(url) = lake.writer_url() {
            return Some(url);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

async fn forward(state: &AppState, lake: &crate::lake::Coordinator, req: Request) -> (&'static str, Response) {
    if req.headers().contains_key(FORWARDED_BY) {
        let e = ApiError::WriterUnavailable("this gateway stopped being the lake's writer while the request was forwarded to it".into());
        return ("not_writer", e.into_response());
    }
    let Some(url) = writer_url_soon(lake).await else {
        return ("no_writer", ApiError::WriterUnavailable("no writer is elected on the lake yet".into()).into_response());
    };
    let limit = if req.uri().path() == super::OTLP_ROUTE { state.ingest.max_body.0 } else { state.max_body };
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return ("refused", ApiError::PayloadTooLarge(limit).into_response());
    };
    let target = format!("{}{}", url.trim_end_matches('/'), parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut out = lake.http().request(parts.method, &target).header(FORWARDED_BY, lake.replica());
    for name in CARRIED {
        for v in parts.headers.get_all(name) {
            out = out.header(name, v);
        }
    }
    let answer = match out.body(body).send().await {
        Ok(a) => a,
        Err(e) => {
            let why = if e.is_timeout() { "did not answer in time (the request may have been written)" } else { "could not be reached" };
            tracing::warn!(writer = %url, error = %e, "Forwarding to the lake's writer failed.");
            return ("failed", ApiError::WriterUnavailable(format!("the lake's writer {why}")).into_response());
        }
    };
    let status = answer.status();
    let headers: Vec<(HeaderName, header::HeaderValue)> =
        RETURNED.iter().filter_map(|n| answer.headers().get(*n).map(|v| (HeaderName::from_static(n), v.clone()))).collect();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut().extend(headers);
            ("forwarded", resp)
        }
        Err(e) => ("failed", ApiError::WriterUnavailable(format!("the lake's writer's answer was cut off ({e})")).into_response()),
    }
}
