//! Tool endpoints: list, call, and the plugin admin endpoints.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use serde_json::value::RawValue;
use std::sync::Arc;

use super::{ApiError, AppState, Caller, openapi};
use crate::runtime::{CallContext, CallError, LoadedTool, ToolError, WitQueryError, is_valid_tool_name};

/// `X-Sluice-Plugin-Digest`: the SHA-256 of the exact component version that answered.
pub static X_PLUGIN_DIGEST: HeaderName = HeaderName::from_static("x-sluice-plugin-digest");
/// `X-Sluice-Plugin-Version`: that version's declared version.
pub static X_PLUGIN_VERSION: HeaderName = HeaderName::from_static("x-sluice-plugin-version");

/// `GET /api/v2/tools/list`, filtered to the tools this bearer may call.
#[utoipa::path(get, path = "/api/v2/tools/list", responses(
        (status = 200, description = "Tools with their input and output JSON Schemas", body = openapi::ToolList),
        openapi::FrontDoorErrors,
))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> impl IntoResponse {
    let registry = state.runtime.registry();
    let scoped = caller.identity.is_scoped();
    let tools: Vec<Value> = registry
        .tools()
        .filter(|t| !scoped || t.allow_tenant_scoped)
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "input_schema": t.input_schema,
                "output_schema": t.output_schema,
            })
        })
        .collect();
    axum::Json(json!({ "tools": tools }))
}

/// `POST /api/v2/tools/<name>` with `{"args": {...}}`.
#[utoipa::path(post, path = "/api/v2/tools/{name}", params(("name" = String, Path, description = "Tool name, `^[a-z][a-z0-9_.]{1,127}$`")),
    request_body = openapi::ToolCall,
    responses(
        (status = 200, description = "The tool's result; headers `X-Sluice-Plugin-Version` and `X-Sluice-Plugin-Digest` name the version that answered", body = openapi::ToolResult),
        (status = 400, description = "`invalid_request` (body, name), `invalid_args` (with `path`), `sql_not_read_only`", body = openapi::ErrorBody),
        (status = 403, description = "`tenant_scoped_bearer_refused`", body = openapi::ErrorBody),
        (status = 404, description = "`tool_not_found` (with `name`)", body = openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = openapi::ErrorBody),
        (status = 500, description = "`tool_backend_failure`: scrubbed body with `tool` and `req_id`; the full error is in the audit log", body = openapi::ErrorBody),
        (status = 504, description = "`tool_timeout` (with `tool`, `deadline_ms`)", body = openapi::ErrorBody),
        openapi::FrontDoorErrors,
))]
pub async fn call(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let mut cluster_id = None;
    let result = Box::pin(dispatch(&state, &caller, &name, body, &mut cluster_id)).await;
    audit_call(&state, &caller, &name, cluster_id, result.as_ref().map(|_| ()), started, "rest");
    result
}

/// One audit line per tool call, REST or MCP: `tool_call`, or `tool_backend_failure` with the
/// full error text the caller never sees.
pub(super) fn audit_call(
    state: &AppState,
    caller: &Caller,
    name: &str,
    cluster_id: Option<String>,
    result: Result<(), &ApiError>,
    started: std::time::Instant,
    via: &'static str,
) {
    let (status, error) = super::error::audit_outcome(result);
    let mut ev = caller.audit(if error.is_some() { "tool_backend_failure" } else { "tool_call" });
    ev.tool = Some(name.to_owned());
    ev.cluster_id = cluster_id;
    ev = ev.with("status", status).with("duration_ms", started.elapsed().as_millis() as u64).with("via", via);
    if let Some(e) = error {
        ev = ev.with("error", e);
    }
    state.audit.record(ev);
}

/// A tool's successful answer and the exact version that gave it.
pub(super) struct Answer {
    pub result: Box<RawValue>,
    pub tool: Arc<LoadedTool>,
}

/// Checks a tool name and finds the tool in the current registry snapshot.
pub(super) fn find_tool(state: &AppState, name: &str) -> Result<Arc<LoadedTool>, ApiError> {
    if !is_valid_tool_name(name) {
        return Err(ApiError::InvalidRequest(format!(
            "invalid tool name {name:?}: names match ^[a-z][a-z0-9_.]{{1,127}}$"
        )));
    }
    // Snapshot the registry once: this call runs on this version whatever reloads happen.
    state.runtime.registry().get(name).cloned().ok_or_else(|| ApiError::ToolNotFound(name.to_owned()))
}

/// Runs a found tool for a caller: the argument schema, tenant scope, then the call. The same
/// for REST and MCP.
pub(super) async fn run_found(
    state: &AppState,
    caller: &Caller,
    tool: Arc<LoadedTool>,
    args: Value,
    cluster_id: &mut Option<String>,
) -> Result<Answer, ApiError> {
    let name = &tool.name;
    let req_id = caller.req_id.to_string();
    let identity = &caller.identity;
    *cluster_id = args.get("cluster_id").and_then(Value::as_str).map(str::to_owned);
    if let Some((path, err)) = tool.validate_args(&args) {
        return Err(ApiError::InvalidArgs {
            message: format!("args do not match the input schema of {name}: {err}"),
            path,
        });
    }

    // Tenant scope, before any component code runs: a tool that refuses scoped bearers, or a
    // `cluster_id` outside the bearer's clusters, is refused here. Inside the call, every query
    // the component makes sees only the bearer's clusters (the host filters them).
    if identity.is_scoped() {
        if !tool.allow_tenant_scoped {
            return Err(ApiError::TenantScopeRefused(format!("{name} refuses tenant-scoped bearers")));
        }
        if let Some(c) = cluster_id.as_deref().filter(|c| !identity.may_see(c)) {
            return Err(ApiError::TenantScopeRefused(format!("cluster_id {c:?} is outside this bearer's clusters")));
        }
    }
    let ctx = CallContext { request_id: req_id.clone(), allowed_clusters: identity.allowed_clusters.clone() };
    let out = state
        .runtime
        .call(tool.clone(), ctx, args.to_string())
        .await
        .map_err(|e| map_call_error(e, &tool, &req_id))?;
    let result: Box<RawValue> = serde_json::from_str(&out.json).map_err(|e| ApiError::ToolBackendFailure {
        tool: name.clone(),
        req_id: req_id.clone(),
        detail: format!("tool returned invalid JSON: {e}"),
    })?;
    Ok(Answer { result, tool: out.tool })
}

async fn dispatch(
    state: &AppState,
    caller: &Caller,
    name: &str,
    body: Result<Bytes, BytesRejection>,
    cluster_id: &mut Option<String>,
) -> Result<Response, ApiError> {
    let tool = find_tool(state, name)?;
    let body = super::error::read_body(body, state.max_body)?;
    let args = parse_args(&body)?;
    let Answer { result, tool } = run_found(state, caller, tool, args, cluster_id).await?;
    let mut body = String::with_capacity(result.get().len() + 12);
    body.push_str("{\"result\":");
    body.push_str(result.get());
    body.push('}');
    let mut resp = ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
    let h = resp.headers_mut();
    h.insert(X_PLUGIN_DIGEST.clone(), HeaderValue::from_str(&tool.digest).expect("hex digest"));
    if let Ok(v) = HeaderValue::from_str(&tool.version) {
        h.insert(X_PLUGIN_VERSION.clone(), v);
    }
    Ok(resp)
}

/// `{"args": {...}}` → the args object. A missing `args` means `{}`.
fn parse_args(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(ApiError::InvalidRequest("request body must be a JSON object like {\"args\": {...}}".into()));
    };
    if let Some(k) = obj.keys().find(|k| *k != "args") {
        return Err(ApiError::InvalidRequest(format!("unknown field {k:?}; the body is {{\"args\": {{...}}}}")));
    }
    match obj.remove("args") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(a @ Value::Object(_)) => Ok(a),
        Some(_) => Err(ApiError::InvalidArgs { message: "args must be a JSON object".into(), path: String::new() }),
    }
}

fn map_call_error(e: CallError, loaded: &LoadedTool, req_id: &str) -> ApiError {
    let tool = loaded.name.as_str();
    let timeout = || ApiError::ToolTimeout { tool: tool.to_owned(), deadline_ms: loaded.deadline.as_millis() as u64 };
    let backend = |detail: String| ApiError::ToolBackendFailure {
        tool: tool.to_owned(),
        req_id: req_id.to_owned(),
        detail,
    };
    match e {
        CallError::Timeout(_) => timeout(),
        CallError::Busy => ApiError::InFlightCap { per_bearer: false },
        CallError::Cancelled => ApiError::ShuttingDown,
        CallError::Tool(ToolError::InvalidArgs(m)) => ApiError::InvalidArgs { message: m, path: String::new() },
        CallError::Tool(ToolError::ScopeDenied(m)) => ApiError::TenantScopeRefused(m),
        CallError::Tool(ToolError::Query(q)) => match q {
            WitQueryError::NotReadOnly => {
                ApiError::SqlNotReadOnly("only a single read-only SELECT statement is allowed".into())
            }
            WitQueryError::Timeout => timeout(),
            WitQueryError::ScopeDenied => {
                ApiError::TenantScopeRefused("the query names data outside the bearer's clusters".into())
            }
            other => backend(format!("query failed: {other:?}")),
        },
        CallError::Tool(ToolError::Internal(m)) => backend(format!("tool reported: {m}")),
        CallError::Trap(m) => backend(m),
    }
}

pub(super) fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.identity.is_scoped() {
        return Err(ApiError::TenantScopeRefused("admin endpoints need a bearer without a cluster scope".into()));
    }
    Ok(())
}

/// `GET /api/v2/admin/plugins`: every plugin file's status. Unscoped bearers only.
#[utoipa::path(get, path = "/api/v2/admin/plugins", responses(
        (status = 200, description = "Plugin files", body = openapi::PluginList),
        (status = 403, description = "`tenant_scoped_bearer_refused`", body = openapi::ErrorBody),
        openapi::FrontDoorErrors,
))]
pub async fn plugins(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<impl IntoResponse, ApiError> {
    require_admin(&caller)?;
    let registry = state.runtime.registry();
    Ok(axum::Json(json!({ "generation": registry.generation, "plugins": registry.statuses() })))
}

/// `POST /api/v2/admin/plugins/reload`: reload the plugins directory now. Unscoped bearers only.
#[utoipa::path(post, path = "/api/v2/admin/plugins/reload", responses(
        (status = 200, description = "What the reload did", body = openapi::ReloadResult),
        (status = 403, description = "`tenant_scoped_bearer_refused`", body = openapi::ErrorBody),
        openapi::FrontDoorErrors,
))]
pub async fn reload(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Result<impl IntoResponse, ApiError> {
    require_admin(&caller)?;
    let (rt, exports) = (state.runtime.clone(), state.exports.clone());
    let report = tokio::task::spawn_blocking(move || {
        exports.reload_sinks();
        rt.reload()
    })
    .await
    .map_err(|e| {
        ApiError::ToolBackendFailure { tool: "admin.reload".into(), req_id: caller.req_id.to_string(), detail: e.to_string() }
    })?;
    state.audit.record(
        caller
            .audit("plugin_reload")
            .with("generation", report.generation)
            .with("loaded", report.loaded.len())
            .with("failed", report.failed.len()),
    );
    let failed: Vec<Value> = report.failed.iter().map(|(f, e)| json!({"file": f, "error": e})).collect();
    Ok(axum::Json(json!({
        "generation": report.generation,
        "loaded": report.loaded,
        "failed": failed,
        "removed": report.removed,
    })))
}
