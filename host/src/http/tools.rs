//! Tool endpoints: list, call, and the plugin admin endpoints.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use serde_json::value::RawValue;

use super::{ApiError, AppState, RequestId};
use crate::runtime::{CallContext, CallError, LoadedTool, ToolError, WitQueryError, is_valid_tool_name};

/// `X-Sluice-Plugin-Digest`: the SHA-256 of the exact component version that answered.
pub static X_PLUGIN_DIGEST: HeaderName = HeaderName::from_static("x-sluice-plugin-digest");
/// `X-Sluice-Plugin-Version`: that version's declared version.
pub static X_PLUGIN_VERSION: HeaderName = HeaderName::from_static("x-sluice-plugin-version");

/// `GET /api/v2/tools/list`
pub async fn list(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.runtime.registry();
    let tools: Vec<Value> = registry
        .tools()
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
pub async fn call(
    State(state): State<AppState>,
    Extension(req_id): Extension<RequestId>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !is_valid_tool_name(&name) {
        return Err(ApiError::InvalidRequest(format!(
            "invalid tool name {name:?}: names match ^[a-z][a-z0-9_.]{{1,127}}$"
        )));
    }
    // Snapshot the registry once: this call runs on this version whatever reloads happen.
    let registry = state.runtime.registry();
    let tool = registry.get(&name).cloned().ok_or_else(|| ApiError::ToolNotFound(name.clone()))?;
    drop(registry);

    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.max_body)
        } else {
            ApiError::InvalidRequest(format!("could not read the request body: {e}"))
        }
    })?;
    let args = parse_args(&body)?;
    if let Some((path, err)) = tool.validate_args(&args) {
        return Err(ApiError::InvalidArgs {
            message: format!("args do not match the input schema of {name}: {err}"),
            path,
        });
    }

    let ctx = CallContext { request_id: req_id.0.clone(), allowed_clusters: Vec::new() };
    let out = state
        .runtime
        .call(tool.clone(), ctx, args.to_string())
        .await
        .map_err(|e| map_call_error(e, &tool, &req_id.0))?;
    let result: Box<RawValue> = serde_json::from_str(&out.json).map_err(|e| ApiError::ToolBackendFailure {
        tool: name.clone(),
        req_id: req_id.0.clone(),
        detail: format!("tool returned invalid JSON: {e}"),
    })?;
    let mut body = String::with_capacity(out.json.len() + 12);
    body.push_str("{\"result\":");
    body.push_str(result.get());
    body.push('}');
    let mut resp = ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
    let h = resp.headers_mut();
    h.insert(X_PLUGIN_DIGEST.clone(), HeaderValue::from_str(&out.tool.digest).expect("hex digest"));
    if let Ok(v) = HeaderValue::from_str(&out.tool.version) {
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
        CallError::Busy => ApiError::InFlightCap,
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

/// `GET /api/v2/admin/plugins`
pub async fn plugins(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.runtime.registry();
    axum::Json(json!({ "generation": registry.generation, "plugins": registry.statuses() }))
}

/// `POST /api/v2/admin/plugins/reload`
pub async fn reload(
    State(state): State<AppState>,
    Extension(req_id): Extension<RequestId>,
) -> Result<impl IntoResponse, ApiError> {
    let rt = state.runtime.clone();
    let report = tokio::task::spawn_blocking(move || rt.reload()).await.map_err(|e| {
        ApiError::ToolBackendFailure { tool: "admin.reload".into(), req_id: req_id.0.clone(), detail: e.to_string() }
    })?;
    let failed: Vec<Value> = report.failed.iter().map(|(f, e)| json!({"file": f, "error": e})).collect();
    Ok(axum::Json(json!({
        "generation": report.generation,
        "loaded": report.loaded,
        "failed": failed,
        "removed": report.removed,
    })))
}
