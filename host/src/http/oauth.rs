//! OAuth 2.0 protected-resource metadata (RFC 9728), so MCP clients can find the identity
//! provider whose tokens Sluice takes: `GET /.well-known/oauth-protected-resource[/<path>]`, and
//! `resource_metadata="…"` in the `WWW-Authenticate` of every 401 (RFC 9728 §5.1). Only when
//! `[auth.jwt]` names issuers: static bearers have no authorization server to point at.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::auth::Refused;
use crate::auth::grant::{ADMIN_SCOPE, CLUSTER_SCOPE_PREFIX, TOOL_SCOPE_PREFIX};

/// Where the metadata is served; a resource at path `/p` has it at `WELL_KNOWN` + `/p`.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The protected-resource metadata document (RFC 9728 §2).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceMetadata {
    /// This resource's identifier: the URL clients reach it by.
    pub resource: String,
    /// The issuers whose tokens are accepted.
    pub authorization_servers: Vec<String>,
    /// The scopes Sluice reads (`sluice:tools:<pattern>`, `sluice:clusters:<id>` or `*`, `sluice:admin`).
    pub scopes_supported: Vec<String>,
    /// `header`: `Authorization: Bearer` only.
    pub bearer_methods_supported: Vec<&'static str>,
    pub resource_name: &'static str,
}

/// `https://host` (or the configured `auth.jwt.resource`) for a request with `headers`; `None`
/// without JWT issuers, or for a `Host` that cannot be quoted safely.
fn base(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let jwt = state.auth.jwt()?;
    if let Some(r) = jwt.resource() {
        return Some(r.trim_end_matches('/').to_owned());
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let safe = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    safe.then(|| format!("{}://{host}", if state.tls { "https" } else { "http" }))
}

/// The `WWW-Authenticate` value of a 401: the contract's `error="invalid_token"`, why (for a
/// refused JWT), and the metadata URL when identity providers are configured.
pub(super) fn challenge(state: &AppState, req: &Request, refused: Option<&Refused>) -> Option<HeaderValue> {
    let mut v = String::from("Bearer error=\"invalid_token\"");
    if let Some(r @ (Refused::Jwt(_) | Refused::KeysMissing { .. })) = refused {
        v += &format!(", error_description=\"{}\"", r.description().replace(['"', '\\'], "'"));
    }
    if let Some(base) = base(state, req.headers()) {
        // Two resources: the MCP endpoint at /mcp, and the API (REST, stateless MCP) at the root.
        let suffix = if req.uri().path() == "/mcp" { "/mcp" } else { "" };
        v += &format!(", resource_metadata=\"{base}{WELL_KNOWN}{suffix}\"");
    }
    HeaderValue::from_str(&v).ok()
}

/// `GET /.well-known/oauth-protected-resource[/<path>]`: the metadata of the resource at
/// `<path>` (the API root when absent). 404 `not_found` without JWT issuers.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource", security(()), responses(
        (status = 200, description = "RFC 9728 protected-resource metadata", body = ResourceMetadata),
        (status = 404, description = "`not_found`: no identity provider is configured", body = super::wire::ErrorBody),
))]
pub async fn metadata(State(state): State<AppState>, req: Request) -> Response {
    let (Some(jwt), Some(base)) = (state.auth.jwt(), base(&state, req.headers())) else {
        return ApiError::NotFound.into_response();
    };
    let path = req.uri().path().strip_prefix(WELL_KNOWN).unwrap_or_default();
    let doc = ResourceMetadata {
        resource: format!("{base}{path}"),
        authorization_servers: jwt.issuer_names().map(str::to_owned).collect(),
        scopes_supported: vec![
            ADMIN_SCOPE.into(),
            format!("{TOOL_SCOPE_PREFIX}*"),
            format!("{CLUSTER_SCOPE_PREFIX}*"),
        ],
        bearer_methods_supported: vec!["header"],
        resource_name: "Sluice",
    };
    // Public and the same for everyone: caches may keep it a while.
    ([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(doc)).into_response()
}
