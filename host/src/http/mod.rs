//! The HTTP surface: the API router (`/api/*`) and the health router (`/healthz`, `/readyz`).

pub mod error;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

pub use error::ApiError;

use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// Where `/api/v1` callers are sent.
pub const API_VERSIONING_DOCS: &str = "https://github.com/sluice-gateway/sluice/blob/main/docs/api-versioning.md";

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub metrics: Metrics,
    /// Largest request body.
    pub max_body: usize,
}

/// The request's id: 16 lowercase hex characters, also in every log line about the request.
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

/// The API router: everything on the API listener.
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/api/versions", get(versions))
        .route("/api/v2/health", get(health))
        .route("/api/v2/tools/list", get(tools::list))
        .route("/api/v2/tools/{name}", post(tools::call))
        .route("/api/v2/admin/plugins", get(tools::plugins))
        .route("/api/v2/admin/plugins/reload", post(tools::reload))
        .route("/api/v1", any(gone))
        .route("/api/v1/{*rest}", any(gone))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), request_id_and_metrics))
        .with_state(state)
}

/// The health router: liveness and readiness, no auth.
pub fn health_router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(|| async { axum::Json(json!({"ready": true})) }))
}

/// Gives every request an id (extension + `X-Request-Id` on the response) and records the
/// request in the metrics under its route template.
async fn request_id_and_metrics(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId::generate();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    req.extensions_mut().insert(id.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), HeaderValue::from_str(&id.0).expect("hex is a valid header value"));
    let method = match method.as_str() {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" => method,
        _ => "other".to_owned(),
    };
    state.metrics.http_request(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

async fn versions() -> impl IntoResponse {
    let v = env!("CARGO_PKG_VERSION");
    let major_minor = v.rsplit_once('.').map_or(v, |(mm, _)| mm);
    axum::Json(json!({
        "supported": ["v2"],
        "deprecated": [],
        "preferred": "v2",
        "binary": {"component": "sluice", "version": major_minor},
        "capabilities": {"tools_endpoint": true, "sql_endpoint": false},
        "removal_schedule": {},
    }))
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn gone() -> ApiError {
    ApiError::Gone
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
