//! `ApiError`: the one type every error response of the API is made from, so every body follows
//! the wire contract: `{"error": "<human text>", "code": "<machine code>", ...extra}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`: the body is not valid JSON or not the expected shape.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400 `invalid_args`: `args` does not match the tool's input schema. `path` is the JSON
    /// pointer of the failing value.
    #[error("{message}")]
    InvalidArgs { message: String, path: String },
    /// 401 `missing_bearer`: no or ill-formed `Authorization: Bearer`.
    #[error("missing or ill-formed Authorization: Bearer header")]
    MissingBearer,
    /// 401 `invalid_bearer`: unknown or expired token.
    #[error("unknown or expired bearer token")]
    InvalidBearer,
    /// 400 `sql_not_read_only`.
    #[error("{0}")]
    SqlNotReadOnly(String),
    /// 403 `tenant_scoped_bearer_refused`.
    #[error("{0}")]
    TenantScopeRefused(String),
    /// 404 `tool_not_found`.
    #[error("unknown tool {0:?}")]
    ToolNotFound(String),
    /// 404 `not_found`: no export or sink of that name.
    #[error("no {what} named {name:?}")]
    UnknownName { what: &'static str, name: String },
    /// 404 `not_found`: no such route.
    #[error("no such endpoint")]
    NotFound,
    /// 410 `gone`: `/api/v1/*`.
    #[error("api/v1 removed in v1.0; use /api/v2")]
    Gone,
    /// 415 `unsupported_media_type`: `POST /v1/metrics` in an encoding it does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 413 `payload_too_large`.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 500 `tool_backend_failure`. `detail` is logged, never sent.
    #[error("tool backend failure")]
    ToolBackendFailure { tool: String, req_id: String, detail: String },
    /// 429 `rate_limited`, with `Retry-After`.
    #[error("rate limit exceeded; retry after {0} s")]
    RateLimited(u64),
    /// 429 (this bearer) or 503 (the process) `in_flight_cap`.
    #[error("too many requests in flight; retry shortly")]
    InFlightCap { per_bearer: bool },
    /// 503 `shutting_down`, with `Retry-After: 5`.
    #[error("the gateway is shutting down; retry on another instance")]
    ShuttingDown,
    /// 504 `sql_timeout`: `POST /api/v2/sql` interrupted at the query timeout.
    #[error("the statement ran past the query timeout of {timeout_ms} ms")]
    SqlTimeout { timeout_ms: u64 },
    /// 504 `tool_timeout`.
    #[error("tool {tool} ran past its deadline of {deadline_ms} ms")]
    ToolTimeout { tool: String, deadline_ms: u64 },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::InvalidArgs { .. } | Self::SqlNotReadOnly(_) => StatusCode::BAD_REQUEST,
            Self::MissingBearer | Self::InvalidBearer => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) | Self::InFlightCap { per_bearer: true } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown | Self::InFlightCap { per_bearer: false } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TenantScopeRefused(_) => StatusCode::FORBIDDEN,
            Self::ToolNotFound(_) | Self::NotFound | Self::UnknownName { .. } => StatusCode::NOT_FOUND,
            Self::Gone => StatusCode::GONE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ToolBackendFailure { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ToolTimeout { .. } | Self::SqlTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidArgs { .. } => "invalid_args",
            Self::SqlNotReadOnly(_) => "sql_not_read_only",
            Self::TenantScopeRefused(_) => "tenant_scoped_bearer_refused",
            Self::ToolNotFound(_) => "tool_not_found",
            Self::NotFound | Self::UnknownName { .. } => "not_found",
            Self::Gone => "gone",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::ToolBackendFailure { .. } => "tool_backend_failure",
            Self::InFlightCap { .. } => "in_flight_cap",
            Self::MissingBearer => "missing_bearer",
            Self::InvalidBearer => "invalid_bearer",
            Self::RateLimited(_) => "rate_limited",
            Self::ShuttingDown => "shutting_down",
            Self::ToolTimeout { .. } => "tool_timeout",
            Self::SqlTimeout { .. } => "sql_timeout",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.to_string(), "code": self.code() });
        let extra = match self {
            Self::InvalidArgs { path, .. } => json!({ "path": path }),
            Self::ToolNotFound(name) | Self::UnknownName { name, .. } => json!({ "name": name }),
            Self::Gone => json!({
                "removed_version": "v1",
                "preferred": "v2",
                "docs": crate::http::API_VERSIONING_DOCS,
            }),
            Self::ToolBackendFailure { tool, req_id, .. } => json!({ "tool": tool, "req_id": req_id }),
            Self::ToolTimeout { tool, deadline_ms } => json!({ "tool": tool, "deadline_ms": deadline_ms }),
            Self::RateLimited(secs) => json!({ "retry_after": secs }),
            Self::SqlTimeout { timeout_ms } => json!({ "timeout_ms": timeout_ms }),
            _ => Value::Null,
        };
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        body
    }
}

/// How a request ended, for its audit line: the status, and the full text of a backend failure
/// (which the client never sees).
pub fn audit_outcome(result: Result<(), &ApiError>) -> (u16, Option<String>) {
    match result {
        Ok(()) => (200, None),
        Err(ApiError::ToolBackendFailure { detail, .. }) => (500, Some(detail.clone())),
        Err(e) => (e.status().as_u16(), None),
    }
}

/// A request body, or the error it comes to: 413 `payload_too_large` (`limit` bytes) when over
/// the route's limit, else 400 `invalid_request`.
pub fn read_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::InvalidRequest(format!("could not read the request body: {e}"))
        }
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The full text of a backend failure is written to the audit log by the handler that
        // knows the caller; the client only ever gets the scrubbed body.
        let mut resp = (self.status(), Json(self.body())).into_response();
        let h = resp.headers_mut();
        match &self {
            Self::MissingBearer | Self::InvalidBearer => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            Self::RateLimited(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            Self::InFlightCap { .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::ShuttingDown => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        resp
    }
}
