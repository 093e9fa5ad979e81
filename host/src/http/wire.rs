//! The API's wire types: the bodies handlers take and answer with, which the OpenAPI document
//! (`openapi.rs`) describes. Tool arguments and results are the tools' own (their schemas are in
//! `GET /api/v2/tools/list`); these are the envelopes around them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// Every error body: `{"error": "<human text>", "code": "<machine code>", ...extra}`. What
/// [`ApiError`](super::ApiError) answers with.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
    /// The machine-readable code: `invalid_request`, `invalid_args`, `sql_not_read_only`,
    /// `missing_bearer`, `invalid_bearer`, `tenant_scoped_bearer_refused`, `tool_not_permitted`,
    /// `admin_permission_required`, `tool_not_found`,
    /// `not_found`, `gone`, `payload_too_large`, `request_header_fields_too_large`,
    /// `unsupported_media_type`, `rate_limited`, `in_flight_cap`, `tool_backend_failure`,
    /// `shutting_down`, `tool_timeout`, `sql_timeout`.
    pub code: &'static str,
    /// `invalid_args`: JSON pointer of the failing value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `invalid_bearer` for a JWT: why (`expired`, `not_yet_valid`, `wrong_issuer`,
    /// `wrong_audience`, `unknown_key`, `bad_signature`, `algorithm_refused`, `missing_claim`,
    /// `malformed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `tool_not_permitted`, `admin_permission_required`: the scope that would grant it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `tool_not_found`, `not_found`: the name asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tool_backend_failure`, `tool_timeout`: the tool (`sql`, `ingest` for those routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `tool_backend_failure`: the request id, to find the full error in the audit log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
    /// `tool_timeout`: the tool's deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// `sql_timeout`: the query timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `rate_limited`: seconds until a request may succeed (also `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// `payload_too_large`, `request_header_fields_too_large`: the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<usize>,
    /// `gone`: `v1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_version: Option<&'static str>,
    /// `gone`: `v2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred: Option<&'static str>,
    /// `gone`: where API versions are explained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docs: Option<&'static str>,
}

/// The answers every bearer-protected route may give before its handler runs.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Never built: it describes answers the front door gives.
pub enum FrontDoorErrors {
    /// `missing_bearer` / `invalid_bearer`, with `WWW-Authenticate: Bearer error="invalid_token"`
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `rate_limited` (with `Retry-After`) or `in_flight_cap` for this bearer
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// `shutting_down` (with `Retry-After: 5`) or `in_flight_cap` for the process; on a lake, for
    /// ingest and the export routes, `writer_unavailable` (with `Retry-After: 1`): no lake writer
    /// answered, nothing was written
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// `request_header_fields_too_large`: the headers together are over `server.max_header_bytes`
    #[response(status = 431)]
    HeadersTooLarge(ErrorBody),
}

/// `POST /api/v2/tools/{name}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Arguments, validated against the tool's input schema. Absent or `null` means `{}`.
    #[serde(default)]
    pub args: Option<Value>,
}

/// A tool's answer: `{"result": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolResult<'a> {
    /// The tool's output, as described by its output schema (typically `{"rows": [...]}`).
    #[schema(value_type = Object)]
    pub result: &'a RawValue,
}

/// `POST /api/v2/sql` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One read-only `SELECT` (CTEs, `VALUES`, set operations, `FROM`-first included).
    pub sql: String,
}

/// `POST /api/v2/sql` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SqlResult<'a> {
    /// Column names.
    pub columns: Vec<&'a str>,
    /// Column type families: `boolean`, `int64`, `float64`, `text`, `timestamp` (RFC 3339
    /// strings), `date` (`YYYY-MM-DD`), `blob` (hex), `other` (text).
    pub types: Vec<&'a str>,
    /// Rows, positional.
    pub rows: Vec<Value>,
    /// Whether the row cap cut the answer short.
    pub truncated: bool,
}

/// One tool of `GET /api/v2/tools/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolDescription<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub input_schema: &'a Value,
    pub output_schema: &'a Value,
}

/// `GET /api/v2/tools/list`
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList<'a> {
    pub tools: Vec<ToolDescription<'a>>,
}

/// `GET /api/v2/whoami`
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI<'a> {
    /// An opaque id of the bearer (a prefix of its token's SHA-256).
    pub bearer_id: &'a str,
    /// Clusters the bearer may see; empty means all.
    pub cluster_ids: &'a [String],
    /// What the bearer may use.
    pub capabilities: BearerCapabilities,
}

/// What a bearer may use.
#[derive(Debug, Serialize, ToSchema)]
pub struct BearerCapabilities {
    pub sql: bool,
    pub tools: bool,
    pub admin: bool,
}

/// `GET /api/v2/health`
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    /// The full version, `x.y.z`.
    pub version: &'static str,
    /// On the `ducklake` backend only: this gateway's part and the lake's snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lake: Option<LakeHealth>,
}

/// `lake` in `GET /api/v2/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LakeHealth {
    /// `writer` (takes ingest, runs exports, compacts) or `reader` (forwards those to the writer).
    pub role: &'static str,
    /// The lake's current snapshot id, as the next query reads it.
    pub snapshot: Option<i64>,
}

/// `GET /api/versions`
#[derive(Debug, Serialize, ToSchema)]
pub struct Versions {
    pub supported: Vec<&'static str>,
    pub deprecated: Vec<&'static str>,
    pub preferred: &'static str,
    pub binary: BinaryVersion,
    pub capabilities: ApiCapabilities,
    /// Versions to be removed, and when (none today).
    #[schema(value_type = Object)]
    pub removal_schedule: serde_json::Map<String, Value>,
}

/// The serving binary.
#[derive(Debug, Serialize, ToSchema)]
pub struct BinaryVersion {
    /// `sluice`.
    pub component: &'static str,
    /// `MAJOR.MINOR`.
    pub version: &'static str,
}

/// What this gateway serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiCapabilities {
    pub tools_endpoint: bool,
    pub sql_endpoint: bool,
    pub mcp: bool,
    pub otlp_ingest: bool,
}

/// `GET /api/v2/admin/plugins`
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    /// Registry generation.
    pub generation: u64,
    pub plugins: Vec<crate::runtime::PluginStatus>,
}

/// `POST /api/v2/admin/plugins/reload`
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadResult {
    /// Registry generation after the reload.
    pub generation: u64,
    /// Tool files loaded (new or changed).
    pub loaded: Vec<String>,
    /// Tool files refused, with why.
    pub failed: Vec<FailedFile>,
    /// Tool files that disappeared.
    pub removed: Vec<String>,
    /// Sink components whose file changed: with `component` when the new file loaded, with
    /// `error` when it was refused (the previous version serves on).
    pub sinks: Vec<crate::export::sink::SinkReload>,
}

/// A component file that failed to load.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedFile {
    pub file: String,
    pub error: String,
}
