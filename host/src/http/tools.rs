//! Tool endpoints: list, call, and the plugin admin endpoints.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Admin, ApiError, AppState, Caller, wire};
use crate::calls::{CallFailure, Via};

/// `X-Sluice-Plugin-Digest`: the SHA-256 of the exact component version that answered.
pub static X_PLUGIN_DIGEST: HeaderName = HeaderName::from_static("x-sluice-plugin-digest");
/// `X-Sluice-Plugin-Version`: that version's declared version.
pub static X_PLUGIN_VERSION: HeaderName = HeaderName::from_static("x-sluice-plugin-version");

/// `GET /api/v2/tools/list`, filtered to the tools this bearer may call.
#[utoipa::path(get, path = "/api/v2/tools/list", responses(
        (status = 200, description = "Tools with their input and output JSON Schemas", body = wire::ToolList),
        wire::FrontDoorErrors,
))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let registry = state.runtime.registry();
    let scoped = caller.identity.is_scoped();
    let tools = registry
        .tools()
        .filter(|t| (!scoped || t.allow_tenant_scoped) && caller.identity.grants.may_call(&t.name))
        .map(|t| wire::ToolDescription {
            name: &t.name,
            description: &t.description,
            input_schema: &t.input_schema,
            output_schema: &t.output_schema,
        })
        .collect();
    axum::Json(wire::ToolList { tools }).into_response()
}

/// `POST /api/v2/tools/<name>` with `{"args": {...}}`.
#[utoipa::path(post, path = "/api/v2/tools/{name}", params(("name" = String, Path, description = "Tool name, `^[a-z][a-z0-9_.]{1,127}$`")),
    request_body = wire::ToolCall,
    responses(
        (status = 200, description = "The tool's result; headers `X-Sluice-Plugin-Version` and `X-Sluice-Plugin-Digest` name the version that answered", body = wire::ToolResult),
        (status = 400, description = "`invalid_request` (body, name), `invalid_args` (with `path`), `sql_not_read_only`", body = wire::ErrorBody),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `tool_not_permitted` (the bearer's grants do not cover the tool; `scope` names the one that would)", body = wire::ErrorBody),
        (status = 404, description = "`tool_not_found` (with `name`)", body = wire::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = wire::ErrorBody),
        (status = 500, description = "`tool_backend_failure`: scrubbed body with `tool` and `req_id`; the full error is in the audit log", body = wire::ErrorBody),
        (status = 504, description = "`tool_timeout` (with `tool`, `deadline_ms`)", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn call(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let args = || {
        let body = super::error::read_body(body, state.max_body).map_err(|e| match e {
            ApiError::PayloadTooLarge(n) => CallFailure::TooLarge(n),
            other => CallFailure::InvalidRequest(other.to_string()),
        })?;
        parse_args(&body)
    };
    let answer = Box::pin(state.calls().call_tool(&caller, &name, args, Via::Rest))
        .await
        .map_err(|f| ApiError::from_call(f, &caller))?;
    let mut resp = axum::Json(wire::ToolResult { result: &answer.result }).into_response();
    let h = resp.headers_mut();
    h.insert(X_PLUGIN_DIGEST.clone(), HeaderValue::from_str(&answer.tool.digest).expect("hex digest"));
    if let Ok(v) = HeaderValue::from_str(&answer.tool.version) {
        h.insert(X_PLUGIN_VERSION.clone(), v);
    }
    Ok(resp)
}

/// `{"args": {...}}` → the args object. An empty body, a missing `args` or `null` mean `{}`.
fn parse_args(body: &[u8]) -> Result<Value, CallFailure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let call: wire::ToolCall = serde_json::from_slice(body).map_err(|e| {
        CallFailure::InvalidRequest(format!("the body must be a JSON object like {{\"args\": {{...}}}}: {e}"))
    })?;
    match call.args {
        None | Some(Value::Null) => Ok(json!({})),
        Some(a @ Value::Object(_)) => Ok(a),
        Some(_) => Err(CallFailure::InvalidArgs { message: "args must be a JSON object".into(), path: String::new() }),
    }
}

/// `GET /api/v2/admin/plugins`: every plugin file's status. Unscoped bearers only.
#[utoipa::path(get, path = "/api/v2/admin/plugins", responses(
        (status = 200, description = "Plugin files", body = wire::PluginList),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn plugins(State(state): State<AppState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    let registry = state.runtime.registry();
    Ok(axum::Json(wire::PluginList { generation: registry.generation, plugins: registry.statuses() }))
}

/// `POST /api/v2/admin/plugins/reload`: poll the registry sources and reload the plugins
/// directory now. Unscoped bearers only.
#[utoipa::path(post, path = "/api/v2/admin/plugins/reload", responses(
        (status = 200, description = "What the reload did", body = wire::ReloadResult),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn reload(State(state): State<AppState>, Admin(caller): Admin) -> Result<impl IntoResponse, ApiError> {
    // Registry sources are asked for a new digest now rather than at their next poll.
    state.runtime.poll_sources().await;
    let (rt, exports) = (state.runtime.clone(), state.exports.clone());
    let crate::reload::Reload { tools: report, sinks } = tokio::task::spawn_blocking(move || crate::reload::reload(&rt, &exports))
        .await
        .map_err(|e| ApiError::ToolBackendFailure {
            tool: "admin.reload".into(),
            req_id: caller.req_id.to_string(),
            detail: e.to_string(),
        })?;
    state.audit.record(
        caller
            .audit("plugin_reload")
            .with("generation", report.generation)
            .with("loaded", report.loaded.len())
            .with("failed", report.failed.len())
            .with("sinks_reloaded", sinks.iter().filter(|s| s.error.is_none()).count())
            .with("sinks_failed", sinks.iter().filter(|s| s.error.is_some()).count()),
    );
    let failed = report.failed.into_iter().map(|(file, error)| wire::FailedFile { file, error }).collect();
    Ok(axum::Json(wire::ReloadResult {
        generation: report.generation,
        loaded: report.loaded,
        failed,
        removed: report.removed,
        sinks,
    }))
}

/// `POST /api/v2/admin/rollouts/{name}/promote`: the tool's canary takes all calls now.
#[utoipa::path(post, path = "/api/v2/admin/rollouts/{name}/promote", params(("name" = String, Path, description = "Tool name")), responses(
        (status = 200, description = "The rollout after the decision", body = crate::runtime::rollout::RolloutStatus),
        (status = 404, description = "`not_found`: the tool has no canary", body = wire::ErrorBody),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn promote(state: State<AppState>, admin: Admin, name: axum::extract::Path<String>) -> Result<impl IntoResponse, ApiError> {
    decide(state, admin, name, crate::runtime::rollout::Decision::Promoted).await
}

/// `POST /api/v2/admin/rollouts/{name}/rollback`: the tool's canary is dropped, the serving
/// version takes all calls and the new content is marked failed.
#[utoipa::path(post, path = "/api/v2/admin/rollouts/{name}/rollback", params(("name" = String, Path, description = "Tool name")), responses(
        (status = 200, description = "The rollout after the decision", body = crate::runtime::rollout::RolloutStatus),
        (status = 404, description = "`not_found`: the tool has no canary", body = wire::ErrorBody),
        (status = 403, description = "`tenant_scoped_bearer_refused`, or `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn rollback(state: State<AppState>, admin: Admin, name: axum::extract::Path<String>) -> Result<impl IntoResponse, ApiError> {
    decide(state, admin, name, crate::runtime::rollout::Decision::RolledBack).await
}

async fn decide(
    State(state): State<AppState>,
    Admin(caller): Admin,
    axum::extract::Path(name): axum::extract::Path<String>,
    d: crate::runtime::rollout::Decision,
) -> Result<axum::Json<crate::runtime::rollout::RolloutStatus>, ApiError> {
    let (rt, tool) = (state.runtime.clone(), name.clone());
    let by = format!("bearer {}", caller.identity.key_name);
    let status = tokio::task::spawn_blocking(move || rt.decide_rollout(&tool, d, &by)).await.map_err(|e| ApiError::ToolBackendFailure {
        tool: "admin.rollout".into(),
        req_id: caller.req_id.to_string(),
        detail: e.to_string(),
    })?;
    let status = status.ok_or(ApiError::UnknownName { what: "canary for the tool", name: name.clone() })?;
    state.audit.record(caller.audit("plugin_rollout_decided_by_admin").with("tool", name).with("state", status.state));
    Ok(axum::Json(status))
}
