//! Exports and sinks over the API (unscoped bearers only): status, a run now, the sinks and their
//! connection test.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::json;

use super::{Admin, ApiError, AppState, wire};

fn unknown(what: &'static str, name: String) -> ApiError {
    ApiError::UnknownName { what, name }
}

/// `GET /api/v2/exports`: every export's status.
#[utoipa::path(get, path = "/api/v2/exports", responses(
        (status = 200, description = "`{\"exports\": [status]}`: condition, generation, checksum, and per sink `synced`, `lastExportTime`, `lastChecksum`, `lastError`, `breaker`", body = Object),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn list(State(state): State<AppState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(json!({ "exports": state.exports.statuses() })))
}

/// `GET /api/v2/exports/{name}`: one export's status.
#[utoipa::path(get, path = "/api/v2/exports/{name}", params(("name" = String, Path, description = "Export name")), responses(
        (status = 200, description = "The export's status", body = Object),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        (status = 404, description = "`not_found` (with `name`)", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn show(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    state.exports.status(&name).map(axum::Json).ok_or_else(|| unknown("export", name))
}

/// `POST /api/v2/exports/{name}/run`: runs the export now and answers its status.
#[utoipa::path(post, path = "/api/v2/exports/{name}/run", params(("name" = String, Path, description = "Export name")), responses(
        (status = 200, description = "The export's status after the run (sink failures are in it, not errors)", body = Object),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        (status = 404, description = "`not_found` (with `name`)", body = wire::ErrorBody),
        (status = 500, description = "`tool_backend_failure` with `tool` = `export`: the export's query failed", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn run(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let result = state.exports.run(&name).await.ok_or_else(|| unknown("export", name.clone()))?;
    let status = result.map_err(|e| ApiError::ToolBackendFailure {
        tool: "export".into(),
        req_id: caller.req_id.to_string(),
        detail: format!("{e:#}"),
    });
    let mut ev = caller.audit("export_run").with("export", name);
    if let Err(ApiError::ToolBackendFailure { detail, .. }) = &status {
        ev = ev.with("error", detail.clone());
    }
    state.audit.record(ev);
    status.map(axum::Json)
}

/// `GET /api/v2/sinks`: the configured sinks.
#[utoipa::path(get, path = "/api/v2/sinks", responses(
        (status = 200, description = "`{\"sinks\": [{name, type, family, version, capabilities, formats, allowPrivate, digest}]}`", body = Object),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn sinks(State(state): State<AppState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    let sinks: Vec<_> = state
        .exports
        .sinks()
        .map(|s| {
            let loaded = s.loaded();
            let i = &loaded.info;
            json!({
                "name": s.entry.name,
                "type": i.sink_type,
                "family": format!("{:?}", i.family).to_lowercase(),
                "version": i.version,
                "description": i.description,
                "capabilities": {
                    "stream": i.capabilities.stream,
                    "supportsDelete": i.capabilities.supports_delete,
                    "objectStore": i.capabilities.object_store,
                    "acceptsParts": i.capabilities.accepts_parts,
                },
                "formats": i.formats,
                "allowPrivate": s.entry.allow_private,
                "digest": loaded.digest,
                "connection": s.connection(),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "sinks": sinks })))
}

/// `POST /api/v2/sinks/{name}/test`: the sink's connection test, with its credentials and network
/// path, writing nothing.
#[utoipa::path(post, path = "/api/v2/sinks/{name}/test", params(("name" = String, Path, description = "Sink name")), responses(
        (status = 200, description = "`{sink, verified, latencyMs, detail}`: `verified` false with the reason when the sink is unreachable", body = Object),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        (status = 404, description = "`not_found` (with `name`)", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn test(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let sink = state.exports.sink(&name).cloned().ok_or_else(|| unknown("sink", name.clone()))?;
    let (verified, latency, detail) = state.exports.probe(&sink).await;
    state.audit.record(caller.audit("sink_test").with("sink", name.clone()).with("verified", verified));
    Ok(axum::Json(json!({ "sink": name, "verified": verified, "latencyMs": latency.as_millis() as u64, "detail": detail })))
}
