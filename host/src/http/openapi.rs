//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations
//! (`GET /api/v2/openapi.json`). Tool argument and result schemas are the tools' own and are
//! published by `GET /api/v2/tools/list`; this document describes the envelope.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error body: `{"error": "<human text>", "code": "<machine code>", ...extra}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    error: String,
    /// The machine-readable code: `invalid_request`, `invalid_args`, `sql_not_read_only`,
    /// `missing_bearer`, `invalid_bearer`, `tenant_scoped_bearer_refused`, `tool_not_found`,
    /// `not_found`, `gone`, `payload_too_large`, `rate_limited`, `in_flight_cap`,
    /// `tool_backend_failure`, `shutting_down`, `tool_timeout`.
    code: String,
    /// `invalid_args`: JSON pointer of the failing value.
    path: Option<String>,
    /// `tool_not_found`: the name asked for.
    name: Option<String>,
    /// `tool_backend_failure`, `tool_timeout`: the tool.
    tool: Option<String>,
    /// `tool_backend_failure`: the request id, to find the full error in the audit log.
    req_id: Option<String>,
}

/// The answers every bearer-protected route may give before its handler runs.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum FrontDoorErrors {
    /// `missing_bearer` / `invalid_bearer`, with `WWW-Authenticate: Bearer error="invalid_token"`
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `rate_limited` (with `Retry-After`) or `in_flight_cap` for this bearer
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// `shutting_down` (with `Retry-After: 5`) or `in_flight_cap` for the process
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `POST /api/v2/tools/{name}` body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ToolCall {
    /// Arguments, validated against the tool's input schema. Absent means `{}`.
    args: Option<Value>,
}

/// A tool's answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ToolResult {
    /// The tool's output, as described by its output schema (typically `{"rows": [...]}`).
    result: Value,
}

/// `POST /api/v2/sql` body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SqlRequest {
    /// One read-only `SELECT` (CTEs, `VALUES`, set operations, `FROM`-first included).
    sql: String,
}

/// `POST /api/v2/sql` answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SqlResult {
    /// Column names.
    columns: Vec<String>,
    /// Column type families: `boolean`, `int64`, `float64`, `text`, `timestamp` (RFC 3339
    /// strings), `date` (`YYYY-MM-DD`), `blob` (hex), `other` (text).
    types: Vec<String>,
    /// Rows, positional.
    rows: Vec<Vec<Value>>,
    /// Whether the row cap cut the answer short.
    truncated: bool,
}

/// One tool of `GET /api/v2/tools/list`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ToolDescription {
    name: String,
    description: String,
    input_schema: Value,
    output_schema: Value,
}

/// `GET /api/v2/tools/list`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ToolList {
    tools: Vec<ToolDescription>,
}

/// `GET /api/v2/whoami`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WhoAmI {
    /// An opaque id of the bearer (a prefix of its token's SHA-256).
    bearer_id: String,
    /// Clusters the bearer may see; empty means all.
    cluster_ids: Vec<String>,
    /// What the bearer may use: `sql`, `tools`, `admin`.
    capabilities: Value,
}

/// `GET /api/v2/health`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    status: String,
    /// The full version, `x.y.z`.
    version: String,
}

/// `GET /api/versions`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Versions {
    supported: Vec<String>,
    deprecated: Vec<String>,
    preferred: String,
    /// `{"component": "sluice", "version": "MAJOR.MINOR"}`
    binary: Value,
    capabilities: Value,
    removal_schedule: Value,
}

/// `GET /api/v2/admin/plugins`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PluginList {
    /// Registry generation.
    generation: u64,
    /// Per plugin file: `file`, `name`, `version`, `digest`, `loaded_at`, `status`
    /// (`loaded`|`failed`), `last_error`, `rejected_digest`.
    plugins: Vec<Value>,
}

/// `POST /api/v2/admin/plugins/reload`
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReloadResult {
    generation: u64,
    loaded: Vec<String>,
    /// `{"file", "error"}` per refused file.
    failed: Vec<Value>,
    removed: Vec<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice API", description = "A gateway in front of DuckDB with WebAssembly tools. Every response carries X-Request-Id."),
    paths(
        super::versions,
        super::health,
        super::whoami,
        super::openapi_json,
        super::metrics,
        super::gone,
        super::tools::list,
        super::tools::call,
        super::tools::plugins,
        super::tools::reload,
        super::sql::sql,
        super::otlp::ingest,
        super::exports::list,
        super::exports::show,
        super::exports::run,
        super::exports::sinks,
        super::exports::test,
        super::mcp::mcp_doc,
        super::mcp::mcp_root_doc,
    ),
    components(schemas(ErrorBody, SqlRequest, SqlResult, ToolCall, ToolResult, ToolList, ToolDescription, WhoAmI, Health, Versions, PluginList, ReloadResult)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document as JSON.
/// Adds `POST /api/v2/tools/<name>` for each tool: the request body `{"args": <input schema>}`,
/// the answer `{"result": <output schema>}`, the same errors as the generic route.
pub fn add_tools<'a>(doc: &mut Value, tools: impl Iterator<Item = &'a crate::runtime::LoadedTool>) {
    let generic = doc["paths"]["/api/v2/tools/{name}"]["post"].clone();
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for t in tools {
        let mut op = generic.clone();
        op["summary"] = Value::from(t.name.clone());
        op["description"] = Value::from(t.description.clone());
        op["operationId"] = Value::from(format!("tool.{}", t.name));
        if let Some(o) = op.as_object_mut() {
            o.remove("parameters");
        }
        op["requestBody"] = serde_json::json!({
            "required": true,
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"args": t.input_schema},
                "additionalProperties": false
            }}}
        });
        op["responses"]["200"] = serde_json::json!({
            "description": format!("The answer of {} {}", t.name, t.version),
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["result"],
                "properties": {"result": t.output_schema}
            }}}
        });
        paths.insert(format!("/api/v2/tools/{}", t.name), serde_json::json!({ "post": op }));
    }
}

pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    doc
}
