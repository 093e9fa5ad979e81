//! `POST /api/v2/sql`: one read-only statement over the database, for unscoped bearers.
//!
//! The statement is checked with DuckDB's own parser (exactly one `SELECT`), runs in a
//! transaction that is rolled back, with external access disabled and the configuration locked
//! for the whole database, under the configured timeout (60 s) and memory cap (1 GB), and
//! answers at most the configured number of rows (`truncated` says when there were more).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{ApiError, AppState, Caller, wire};
use crate::db::{QueryError, RowLimit};

/// Longest statement text kept in an audit line.
const AUDIT_SQL_CHARS: usize = 1000;

/// `POST /api/v2/sql` with `{"sql": "..."}`.
#[utoipa::path(post, path = "/api/v2/sql", request_body = wire::SqlRequest,
    responses(
        (status = 200, description = "`columns` (names), `types` (type families), positional `rows`, `truncated`", body = wire::SqlResult),
        (status = 400, description = "`sql_not_read_only` (a write, DDL, ATTACH, COPY, INSTALL/LOAD, SET/PRAGMA, a file or URL reader, several statements), `invalid_request` (body, or SQL DuckDB cannot parse or bind)", body = wire::ErrorBody),
        (status = 403, description = "`tenant_scoped_bearer_refused`: tenant-scoped bearers have no SQL access; `admin_permission_required` without the admin permission", body = wire::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = wire::ErrorBody),
        (status = 500, description = "`tool_backend_failure` with `tool` = `sql`: scrubbed; the full error is in the audit log", body = wire::ErrorBody),
        (status = 504, description = "`sql_timeout` (with `timeout_ms`): interrupted at the query timeout", body = wire::ErrorBody),
        wire::FrontDoorErrors,
))]
pub async fn sql(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let mut text = None;
    let result = run(&state, &caller, body, &mut text).await;
    let (status, error) = super::error::audit_outcome(result.as_ref().map(|_| ()));
    let mut ev = caller.audit(if error.is_some() { "sql_backend_failure" } else { "sql_query" });
    if let Some(t) = text {
        let cut: String = t.chars().take(AUDIT_SQL_CHARS).collect();
        ev = ev.with("sql", cut);
    }
    ev = ev.with("status", status).with("duration_ms", started.elapsed().as_millis() as u64);
    if let Some(e) = error {
        ev = ev.with("error", e);
    }
    state.audit.record(ev);
    result
}

async fn run(
    state: &AppState,
    caller: &Caller,
    body: Result<Bytes, BytesRejection>,
    text: &mut Option<String>,
) -> Result<Response, ApiError> {
    if caller.identity.is_scoped() {
        return Err(ApiError::TenantScopeRefused("tenant-scoped bearers have no SQL access; use the tools".into()));
    }
    if !caller.identity.is_admin() {
        return Err(ApiError::AdminRequired("SQL needs a bearer with the admin permission".into()));
    }
    let body = super::error::read_body(body, state.max_body)?;
    let wire::SqlRequest { sql } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidRequest(format!("the body must be {{\"sql\": \"SELECT ...\"}}: {e}"))
    })?;
    *text = Some(sql.clone());
    let db = state.db.clone();
    let max_rows = db.options().max_rows;
    let timeout = db.options().query_timeout;
    let result = tokio::task::spawn_blocking(move || db.query_read_only(&sql, &[], RowLimit::AtMost(max_rows), None))
        .await
        .unwrap_or_else(|e| Err(QueryError::Internal(format!("query task failed: {e}"))));
    let backend = |detail: String| ApiError::ToolBackendFailure {
        tool: "sql".into(),
        req_id: caller.req_id.to_string(),
        detail,
    };
    let r = result.map_err(|e| match e {
        QueryError::NotReadOnly => ApiError::SqlNotReadOnly(
            "only one read-only SELECT is allowed: no writes, DDL, ATTACH, COPY, INSTALL/LOAD, SET/PRAGMA, \
             or file and URL readers"
                .into(),
        ),
        QueryError::Timeout => ApiError::SqlTimeout { timeout_ms: timeout.as_millis() as u64 },
        QueryError::InvalidSql(m) => ApiError::InvalidRequest(format!("invalid SQL: {m}")),
        QueryError::InvalidParams(m) => ApiError::InvalidRequest(m),
        QueryError::ScopeDenied => ApiError::TenantScopeRefused("the statement names data outside this bearer's scope".into()),
        QueryError::TooManyRows(n) => backend(format!("more than {n} rows despite the row limit")),
        QueryError::Internal(m) => backend(m),
    })?;
    let columns = r.columns.iter().map(|(name, _)| name.as_str()).collect();
    let types = r.columns.iter().map(|(_, t)| t.name()).collect();
    let rows = r.rows.iter().map(|row| Value::Array(row.iter().map(|v| v.to_json()).collect())).collect();
    Ok(axum::Json(wire::SqlResult { columns, types, rows, truncated: r.truncated }).into_response())
}
