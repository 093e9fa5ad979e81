//! The HTTP surface: the API router (`/api/*`, `/metrics`) and the health router (`/healthz`,
//! `/readyz`).
//!
//! Layers, outermost first: drain gate → request id + metrics → auth → per-bearer limits →
//! routes. `/api/versions` and `/api/v1/*` are public; everything else needs a bearer.

pub mod error;
mod exports;
mod forward;
mod front_door;
mod mcp;
mod mcp_fast;
mod oauth;
mod status;
pub mod openapi;
pub mod wire;
mod otlp;
mod sql;
mod tools;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;

pub use error::ApiError;
pub use front_door::{Caller, FrontDoor, RequestId};

use crate::audit::AuditLog;
use crate::auth::AuthStore;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Rejection};
use crate::runtime::Runtime;

/// Where `/api/v1` callers are sent.
pub const API_VERSIONING_DOCS: &str = "https://github.com/sluice-gateway/sluice/blob/main/docs/api-versioning.md";

/// The OTLP ingest route, whose body limit is `ingest.max_body`.
pub(crate) const OTLP_ROUTE: &str = "/v1/metrics";

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of every handler: one `Arc`, so each layer's clone is a single refcount bump.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }

    /// The application layer's tool calls over this state.
    pub fn calls(&self) -> crate::calls::Calls<'_> {
        crate::calls::Calls { runtime: &self.runtime, db: &self.db, audit: &self.audit }
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// An admin caller: what admin routes (plugins, exports, sinks) extract instead of [`Caller`].
/// A bearer with a cluster scope gets 403 `tenant_scoped_bearer_refused`; one of every cluster
/// without the admin grant (an ACL entry's `admin: false`, a JWT without `sluice:admin`) gets 403
/// `admin_permission_required`.
pub struct Admin(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        let caller = parts.extensions.get::<Caller>().cloned().ok_or(ApiError::MissingBearer)?;
        if caller.identity.is_scoped() {
            return Err(ApiError::TenantScopeRefused("admin endpoints need a bearer without a cluster scope".into()));
        }
        if !caller.identity.is_admin() {
            return Err(ApiError::AdminRequired("admin endpoints need a bearer with the admin permission".into()));
        }
        Ok(Self(caller))
    }
}

/// What [`AppState`] holds.
pub struct AppInner {
    /// The database: what tools, SQL and exports read, where ingest writes.
    pub db: crate::db::Database,
    pub runtime: Arc<Runtime>,
    pub metrics: Metrics,
    pub auth: Arc<AuthStore>,
    pub limiter: Arc<Limiter>,
    pub drain: Arc<Drain>,
    pub audit: AuditLog,
    /// Largest request body (`/v1/metrics` has its own, `ingest.max_body`).
    pub max_body: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// OTLP ingest limits.
    pub ingest: crate::config::IngestConfig,
    /// Exports and sinks.
    pub exports: Arc<crate::export::engine::ExportEngine>,
    /// Served over TLS (for URLs the gateway gives of itself).
    pub tls: bool,
    /// Browser sessions of the status page.
    pub status_sessions: status::Sessions,
    /// The trace pipeline, when `[traces]` is on.
    pub traces: Option<&'static crate::telemetry::Traces>,
    /// Cancelled at the end of a drain: closes MCP sessions and their event streams, which would
    /// otherwise keep connections (and the shutdown) open.
    pub mcp_shutdown: tokio_util::sync::CancellationToken,
    /// On a lake: the writer election (ingest and exports are forwarded to the writer).
    pub lake: Option<crate::lake::Coordinator>,
}

/// Route templates of the API listener and whether each is public (served without a bearer).
/// The router and the front door's route table are both built from it.
const ROUTES: &[(&str, bool)] = &[
    ("/api/versions", true),
    ("/api/v1", true),
    ("/api/v1/{*rest}", true),
    ("/api/v2/health", false),
    ("/api/v2/whoami", false),
    ("/api/v2/openapi.json", false),
    ("/api/v2/tools/list", false),
    ("/api/v2/tools/{name}", false),
    ("/api/v2/sql", false),
    (OTLP_ROUTE, false),
    ("/", false),
    ("/mcp", false),
    ("/api/v2/exports", false),
    ("/api/v2/exports/{name}", false),
    ("/api/v2/exports/{name}/run", false),
    ("/api/v2/sinks", false),
    ("/api/v2/sinks/{name}/test", false),
    ("/api/v2/admin/plugins", false),
    ("/api/v2/admin/plugins/reload", false),
    ("/api/v2/admin/rollouts/{name}/promote", false),
    ("/api/v2/admin/rollouts/{name}/rollback", false),
    ("/metrics", false),
    (oauth::WELL_KNOWN, true),
    // The status page authenticates itself (a bearer, or its session cookie).
    ("/status", true),
    ("/status/session", true),
    ("/.well-known/oauth-protected-resource/{*path}", true),
];

/// The API service: the front door around the router of everything on the API listener.
pub fn api_service(state: AppState, max_body: usize) -> FrontDoor {
    let mut router = Router::new();
    // On a lake, the routes only the writer serves: see `forward`.
    let writer_only = || axum::middleware::from_fn_with_state(state.clone(), forward::to_writer);
    for &(path, _) in ROUTES {
        let handler = match path {
            "/api/versions" => get(versions),
            "/api/v1" | "/api/v1/{*rest}" => any(gone),
            "/api/v2/health" => get(health),
            "/api/v2/whoami" => get(whoami),
            "/api/v2/openapi.json" => get(openapi_json),
            "/api/v2/tools/list" => get(tools::list),
            "/api/v2/tools/{name}" => post(tools::call),
            "/api/v2/sql" => post(sql::sql),
            OTLP_ROUTE => post(otlp::ingest)
                .layer(axum::extract::DefaultBodyLimit::max(state.ingest.max_body.0))
                .layer(writer_only()),
            "/api/v2/exports" => get(exports::list).layer(writer_only()),
            "/api/v2/exports/{name}" => get(exports::show).layer(writer_only()),
            "/api/v2/exports/{name}/run" => post(exports::run).layer(writer_only()),
            "/api/v2/sinks" => get(exports::sinks),
            "/api/v2/sinks/{name}/test" => post(exports::test),
            "/api/v2/admin/plugins" => get(tools::plugins),
            "/api/v2/admin/plugins/reload" => post(tools::reload),
            "/api/v2/admin/rollouts/{name}/promote" => post(tools::promote),
            "/api/v2/admin/rollouts/{name}/rollback" => post(tools::rollback),
            "/metrics" => get(metrics),
            oauth::WELL_KNOWN | "/.well-known/oauth-protected-resource/{*path}" => get(oauth::metadata),
            "/status" => get(status::page),
            "/status/session" => post(status::open_session),
            "/" | "/mcp" => continue,
            other => unreachable!("no handler for route {other}"),
        };
        router = router.route(path, handler);
    }
    let (mcp_sessions, mcp_stateless) = mcp::services(&state);
    let router = router
        .route("/mcp", mcp::route(mcp_sessions, max_body, None))
        .route("/", mcp::route(mcp_stateless, max_body, Some(state.clone())));
    let router = router
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state.clone());
    FrontDoor::new(state, router, ROUTES)
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

/// Supported API versions and capabilities. No auth; limited per source IP.
#[utoipa::path(get, path = "/api/versions", security(()), responses(
        (status = 200, description = "Versions and capabilities", body = wire::Versions),
        (status = 429, description = "`rate_limited` for this source IP, with `Retry-After`", body = wire::ErrorBody),
        (status = 503, description = "`shutting_down`", body = wire::ErrorBody),
))]
async fn versions(State(state): State<AppState>, req: Request) -> Response {
    if let Some(ip) = front_door::source_ip(&req)
        && let Err(Rejection::RateLimited { retry_after }) = state.limiter.admit_versions(ip)
    {
        state.metrics.rate_limited("versions_ip");
        return ApiError::RateLimited(retry_after).into_response();
    }
    let v = env!("CARGO_PKG_VERSION");
    let major_minor = v.rsplit_once('.').map_or(v, |(mm, _)| mm);
    axum::Json(wire::Versions {
        supported: vec!["v2"],
        deprecated: vec![],
        preferred: "v2",
        binary: wire::BinaryVersion { component: "sluice", version: major_minor },
        capabilities: wire::ApiCapabilities { tools_endpoint: true, sql_endpoint: true, mcp: true, otlp_ingest: true },
        removal_schedule: serde_json::Map::new(),
    })
    .into_response()
}

/// Liveness of the API with the full version.
#[utoipa::path(get, path = "/api/v2/health", responses(
        (status = 200, description = "Up", body = wire::Health),
        wire::FrontDoorErrors,
))]
async fn health(State(state): State<AppState>) -> axum::Json<wire::Health> {
    let lake = match &state.lake {
        None => None,
        Some(lake) => {
            let db = state.db.clone();
            let snapshot = tokio::task::spawn_blocking(move || db.lake_snapshot()).await.ok().flatten();
            Some(wire::LakeHealth { role: lake.role().as_str(), snapshot })
        }
    };
    axum::Json(wire::Health { status: "ok", version: env!("CARGO_PKG_VERSION"), lake })
}

/// The calling bearer: an opaque id, its clusters and capabilities (never its key name).
#[utoipa::path(get, path = "/api/v2/whoami", responses(
        (status = 200, description = "The bearer", body = wire::WhoAmI),
        wire::FrontDoorErrors,
))]
async fn whoami(Extension(caller): Extension<Caller>) -> Response {
    let id = &caller.identity;
    let sees_something = !(id.is_scoped() && id.allowed_clusters.is_empty());
    let tools = sees_something && id.grants.tools.as_ref().is_none_or(|t| !t.is_empty());
    let capabilities = wire::BearerCapabilities { sql: id.is_admin(), tools, admin: id.is_admin() };
    axum::Json(wire::WhoAmI { bearer_id: id.bearer_id(), cluster_ids: &id.allowed_clusters, capabilities }).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
        wire::FrontDoorErrors,
))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// Every method on `/api/v1/*`: removed.
#[utoipa::path(get, path = "/api/v1/{rest}", security(()), params(("rest" = String, Path, description = "Anything")), responses(
        (status = 410, description = "`gone`, with `removed_version`, `preferred` and `docs`", body = wire::ErrorBody),
))]
async fn gone() -> ApiError {
    ApiError::Gone
}

/// This document, with a path of its own for every tool the caller may call (its input and
/// output schemas), read from the registry on each request so it follows hot reloads.
#[utoipa::path(get, path = "/api/v2/openapi.json", responses(
        (status = 200, description = "OpenAPI 3.1", body = Object),
        wire::FrontDoorErrors,
))]
async fn openapi_json(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> impl IntoResponse {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let mut doc = DOC.get_or_init(openapi::document).clone();
    let registry = state.runtime.registry();
    let scoped = caller.identity.is_scoped();
    let grants = &caller.identity.grants;
    let visible = registry.tools().filter(|t| (!scoped || t.allow_tenant_scoped) && grants.may_call(&t.name));
    openapi::add_tools(&mut doc, visible.map(|t| &**t));
    axum::Json(doc)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
