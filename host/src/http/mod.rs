//! The HTTP surface: the API router (`/api/*`, `/metrics`) and the health router (`/healthz`,
//! `/readyz`).
//!
//! Layers, outermost first: drain gate → request id + metrics → auth → per-bearer limits →
//! routes. `/api/versions` and `/api/v1/*` are public; everything else needs a bearer.

pub mod error;
pub mod openapi;
mod tools;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

pub use error::ApiError;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::{AuthStore, Identity};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Rejection};
use crate::runtime::Runtime;

/// Where `/api/v1` callers are sent.
pub const API_VERSIONING_DOCS: &str = "https://github.com/sluice-gateway/sluice/blob/main/docs/api-versioning.md";

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of every handler: one `Arc`, so each layer's clone is a single refcount bump.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppInner {
    pub runtime: Arc<Runtime>,
    pub metrics: Metrics,
    pub auth: Arc<AuthStore>,
    pub limiter: Arc<Limiter>,
    pub drain: Arc<Drain>,
    pub audit: AuditLog,
    /// Largest request body.
    pub max_body: usize,
}

/// The request's id: 16 lowercase hex characters, also in every log and audit line about it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh id: a per-process random seed mixed with a counter, so ids never repeat within a
    /// process and are not guessable across processes.
    pub fn generate() -> Self {
        use std::hash::{BuildHasher, Hasher};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        let mut h = SEED.get_or_init(Default::default).build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        Self(format!("{:016x}", h.finish()))
    }
}

/// The authenticated caller of a request, for handlers and audit lines.
#[derive(Debug, Clone)]
pub struct Caller {
    pub req_id: String,
    pub identity: Arc<Identity>,
    pub source_ip: Option<IpAddr>,
}

impl Caller {
    /// An audit event pre-filled with who, from where and which request.
    pub fn audit(&self, event: &'static str) -> AuditEvent {
        AuditEvent {
            req_id: Some(self.req_id.clone()),
            bearer_hash: Some(self.identity.bearer_hash.clone()),
            bearer_key_name: Some(self.identity.key_name.clone()),
            source_ip: self.source_ip,
            ..AuditEvent::new(event)
        }
    }
}

/// The API router: everything on the API listener.
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/api/versions", get(versions))
        .route("/api/v1", any(gone))
        .route("/api/v1/{*rest}", any(gone))
        .route("/api/v2/health", get(health))
        .route("/api/v2/whoami", get(whoami))
        .route("/api/v2/openapi.json", get(openapi_json))
        .route("/api/v2/tools/list", get(tools::list))
        .route("/api/v2/tools/{name}", post(tools::call))
        .route("/api/v2/admin/plugins", get(tools::plugins))
        .route("/api/v2/admin/plugins/reload", post(tools::reload))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), front_door))
        .with_state(state)
}

/// Routes that need no bearer.
fn is_public(path: &str) -> bool {
    path == "/api/versions" || path == "/api/v1" || path.starts_with("/api/v1/")
}

/// The health router: liveness and readiness, no auth. Readiness fails once draining starts.
pub fn health_router(drain: Arc<Drain>) -> Router {
    Router::new().route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) })).route(
        "/readyz",
        get(move || async move {
            if drain.is_draining() {
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"ready": false, "reason": "shutting_down"})))
            } else {
                (StatusCode::OK, axum::Json(json!({"ready": true})))
            }
        }),
    )
}

fn source_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

fn set_request_id(resp: &mut Response, id: &str) {
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), HeaderValue::from_str(id).expect("hex is a valid header value"));
}

/// The front door, one layer so a request pays for one hop, in the contract's order:
///
/// 1. drain gate: once draining, 503 `shutting_down` (`Retry-After: 5`); admitted requests are
///    counted so the drain can wait for them;
/// 2. request id (`X-Request-Id` on every response) and metrics under the route template;
/// 3. bearer auth (except public routes): [`Caller`] for the handlers, 401 otherwise;
/// 4. the bearer's token bucket and in-flight caps.
async fn front_door(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = RequestId::generate();
    let Some(_in_flight) = state.drain.enter() else {
        let mut resp = ApiError::ShuttingDown.into_response();
        set_request_id(&mut resp, &id.0);
        return resp;
    };
    let started = Instant::now();
    let method = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    };
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = if is_public(req.uri().path()) {
        req.extensions_mut().insert(id.clone());
        next.run(req).await
    } else {
        match authenticate(&state, &req, &id) {
            Err(resp) => resp,
            Ok(caller) => match state.limiter.admit(&caller.identity.bearer_hash) {
                Err(rejection) => limited(&state, &caller, rejection),
                Ok(_admission) => {
                    req.extensions_mut().insert(caller);
                    next.run(req).await
                }
            },
        }
    };
    set_request_id(&mut resp, &id.0);
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    state.metrics.http_request(route, method, resp.status().as_u16(), started.elapsed());
    resp
}

/// `Authorization: Bearer <token>` → [`Caller`], or a 401 response (audited).
#[allow(clippy::result_large_err)] // The error is the response itself, built once on a cold path.
fn authenticate(state: &AppState, req: &Request, id: &RequestId) -> Result<Caller, Response> {
    let ip = source_ip(req);
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let result = match token {
        None => Err(("missing_bearer", ApiError::MissingBearer)),
        Some(t) => state.auth.authenticate(t).ok_or(("invalid_bearer", ApiError::InvalidBearer)),
    };
    match result {
        Ok(identity) => Ok(Caller { req_id: id.0.clone(), identity, source_ip: ip }),
        Err((reason, err)) => {
            state.metrics.auth_failure(reason);
            // The hash of a presented token helps operators find a misconfigured client; the token never appears.
            let presented = token.map(crate::auth::token_hash);
            state.audit.record(
                AuditEvent { req_id: Some(id.0.clone()), source_ip: ip, bearer_hash: presented, ..AuditEvent::new("auth_failure") }
                    .with("reason", reason),
            );
            Err(err.into_response())
        }
    }
}

/// The response to a request turned away by a limit (metered and audited).
fn limited(state: &AppState, caller: &Caller, rejection: Rejection) -> Response {
    let (kind, err) = match rejection {
        Rejection::RateLimited { retry_after } => ("rate_limited", ApiError::RateLimited(retry_after)),
        Rejection::BearerInFlight => ("in_flight_bearer", ApiError::InFlightCap { per_bearer: true }),
        Rejection::ProcessInFlight => ("in_flight_process", ApiError::InFlightCap { per_bearer: false }),
    };
    state.metrics.rate_limited(kind);
    state.audit.record(caller.audit("rate_limited").with("limit", kind));
    err.into_response()
}

/// Supported API versions and capabilities. No auth; limited per source IP.
#[utoipa::path(get, path = "/api/versions", security(()), responses(
        (status = 200, description = "Versions and capabilities", body = openapi::Versions),
        (status = 429, description = "`rate_limited` for this source IP, with `Retry-After`", body = openapi::ErrorBody),
        (status = 503, description = "`shutting_down`", body = openapi::ErrorBody),
))]
async fn versions(State(state): State<AppState>, req: Request) -> Response {
    if let Some(ip) = source_ip(&req)
        && let Err(Rejection::RateLimited { retry_after }) = state.limiter.admit_versions(ip)
    {
        state.metrics.rate_limited("versions_ip");
        return ApiError::RateLimited(retry_after).into_response();
    }
    let v = env!("CARGO_PKG_VERSION");
    let major_minor = v.rsplit_once('.').map_or(v, |(mm, _)| mm);
    axum::Json(json!({
        "supported": ["v2"],
        "deprecated": [],
        "preferred": "v2",
        "binary": {"component": "sluice", "version": major_minor},
        "capabilities": {"tools_endpoint": true, "sql_endpoint": false, "mcp": false, "otlp_ingest": false},
        "removal_schedule": {},
    }))
    .into_response()
}

/// Liveness of the API with the full version.
#[utoipa::path(get, path = "/api/v2/health", responses(
        (status = 200, description = "Up", body = openapi::Health),
        openapi::FrontDoorErrors,
))]
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// The calling bearer: an opaque id, its clusters and capabilities (never its key name).
#[utoipa::path(get, path = "/api/v2/whoami", responses(
        (status = 200, description = "The bearer", body = openapi::WhoAmI),
        openapi::FrontDoorErrors,
))]
async fn whoami(Extension(caller): Extension<Caller>) -> impl IntoResponse {
    let id = &caller.identity;
    axum::Json(json!({
        "bearer_id": id.bearer_id(),
        "cluster_ids": id.allowed_clusters,
        "capabilities": {"sql": false, "tools": true, "admin": !id.is_scoped()},
    }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        openapi::FrontDoorErrors,
))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// Every method on `/api/v1/*`: removed.
#[utoipa::path(get, path = "/api/v1/{rest}", security(()), params(("rest" = String, Path, description = "Anything")), responses(
        (status = 410, description = "`gone`, with `removed_version`, `preferred` and `docs`", body = openapi::ErrorBody),
))]
async fn gone() -> ApiError {
    ApiError::Gone
}

/// This document.
#[utoipa::path(get, path = "/api/v2/openapi.json", responses(
        (status = 200, description = "OpenAPI 3.1", body = Object),
        openapi::FrontDoorErrors,
))]
async fn openapi_json() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOC.get_or_init(openapi::document).clone())
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
