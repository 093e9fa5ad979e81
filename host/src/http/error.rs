//! `ApiError`: the one type every error response of the API is made from, so every body follows
//! the wire contract: `{"error": "<human text>", "code": "<machine code>", ...extra}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::wire::ErrorBody;

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
    /// 401 `invalid_bearer` for a JWT, with the reason (`expired`, `wrong_audience`, ...).
    #[error("{description}")]
    RefusedToken { reason: &'static str, description: String },
    /// 403 `tool_not_permitted`: the bearer's grants do not include this tool.
    #[error("this bearer may not call {tool}")]
    ToolNotPermitted { tool: String },
    /// 403 `admin_permission_required`: an admin route, and the bearer is not an admin.
    #[error("{0}")]
    AdminRequired(String),
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
    /// 431 `request_header_fields_too_large`: the request's headers together are over the limit.
    #[error("request headers are larger than {0} bytes in all")]
    HeadersTooLarge(usize),
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
    /// 503 `writer_unavailable`, with `Retry-After: 1`: on a lake, this gateway is not the writer
    /// and cannot reach one (none elected yet, or it did not answer). Nothing was written.
    #[error("{0}; nothing was written, retry shortly")]
    WriterUnavailable(String),
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
            Self::MissingBearer | Self::InvalidBearer | Self::RefusedToken { .. } => StatusCode::UNAUTHORIZED,
            Self::ToolNotPermitted { .. } | Self::AdminRequired(_) => StatusCode::FORBIDDEN,
            Self::RateLimited(_) | Self::InFlightCap { per_bearer: true } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown | Self::WriterUnavailable(_) | Self::InFlightCap { per_bearer: false } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TenantScopeRefused(_) => StatusCode::FORBIDDEN,
            Self::ToolNotFound(_) | Self::NotFound | Self::UnknownName { .. } => StatusCode::NOT_FOUND,
            Self::Gone => StatusCode::GONE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
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
            Self::HeadersTooLarge(_) => "request_header_fields_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::ToolBackendFailure { .. } => "tool_backend_failure",
            Self::InFlightCap { .. } => "in_flight_cap",
            Self::MissingBearer => "missing_bearer",
            Self::InvalidBearer | Self::RefusedToken { .. } => "invalid_bearer",
            Self::ToolNotPermitted { .. } => "tool_not_permitted",
            Self::AdminRequired(_) => "admin_permission_required",
            Self::RateLimited(_) => "rate_limited",
            Self::ShuttingDown => "shutting_down",
            Self::WriterUnavailable(_) => "writer_unavailable",
            Self::ToolTimeout { .. } => "tool_timeout",
            Self::SqlTimeout { .. } => "sql_timeout",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        serde_json::to_value(self.error_body()).expect("an error body serialises")
    }

    /// The body as the OpenAPI document describes it.
    pub fn error_body(&self) -> ErrorBody {
        let mut b = ErrorBody { error: self.to_string(), code: self.code(), ..ErrorBody::default() };
        match self {
            Self::InvalidArgs { path, .. } => b.path = Some(path.clone()),
            Self::ToolNotFound(name) | Self::UnknownName { name, .. } => b.name = Some(name.clone()),
            Self::Gone => {
                b.removed_version = Some("v1");
                b.preferred = Some("v2");
                b.docs = Some(crate::http::API_VERSIONING_DOCS);
            }
            Self::ToolBackendFailure { tool, req_id, .. } => {
                b.tool = Some(tool.clone());
                b.req_id = Some(req_id.clone());
            }
            Self::ToolTimeout { tool, deadline_ms } => {
                b.tool = Some(tool.clone());
                b.deadline_ms = Some(*deadline_ms);
            }
            Self::RateLimited(secs) => b.retry_after = Some(*secs),
            Self::RefusedToken { reason, .. } => b.reason = Some(reason),
            Self::ToolNotPermitted { tool } => {
                b.tool = Some(tool.clone());
                b.scope = Some(crate::auth::grant::tool_scope(tool));
            }
            Self::AdminRequired(_) => b.scope = Some(crate::auth::grant::ADMIN_SCOPE.into()),
            Self::SqlTimeout { timeout_ms } => b.timeout_ms = Some(*timeout_ms),
            Self::PayloadTooLarge(limit) | Self::HeadersTooLarge(limit) => b.limit_bytes = Some(*limit),
            _ => {}
        }
        b
    }

}

impl ApiError {
    /// A tool call's failure as REST answers it.
    pub fn from_call(f: crate::calls::CallFailure, caller: &crate::caller::Caller) -> Self {
        use crate::calls::CallFailure as F;
        match f {
            F::InvalidRequest(m) => Self::InvalidRequest(m),
            F::TooLarge(n) => Self::PayloadTooLarge(n),
            F::NotFound(name) => Self::ToolNotFound(name),
            F::InvalidArgs { message, path } => Self::InvalidArgs { message, path },
            F::ScopeRefused(m) => Self::TenantScopeRefused(m),
            F::NotPermitted(tool) => Self::ToolNotPermitted { tool },
            F::NotReadOnly(m) => Self::SqlNotReadOnly(m),
            F::Timeout { tool, deadline } => Self::ToolTimeout { tool, deadline_ms: deadline.as_millis() as u64 },
            F::Busy => Self::InFlightCap { per_bearer: false },
            F::ShuttingDown => Self::ShuttingDown,
            F::Backend { tool, detail } => Self::ToolBackendFailure { tool, req_id: caller.req_id.to_string(), detail },
        }
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
        let mut resp = (self.status(), Json(self.error_body())).into_response();
        let h = resp.headers_mut();
        match &self {
            Self::MissingBearer | Self::InvalidBearer | Self::RefusedToken { .. } => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            Self::ToolNotPermitted { tool } => {
                let scope = crate::auth::grant::tool_scope(tool);
                let v = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&v).expect("tool names are header-safe"));
            }
            Self::AdminRequired(_) => {
                let v = format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", crate::auth::grant::ADMIN_SCOPE);
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&v).expect("header-safe"));
            }
            Self::RateLimited(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            Self::InFlightCap { .. } | Self::WriterUnavailable(_) => {
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
