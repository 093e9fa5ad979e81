//! The `tool` world on the host side: bindings, the per-call store state, the host interfaces
//! (`query`, `log`) and one call of a tool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::db::{self, Database, RowLimit};

#[doc(hidden)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "tool",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::sluice::plugin::query::{
    Column as WitColumn, ColumnType as WitColumnType, QueryError as WitQueryError, QueryResult as WitQueryResult,
    Value as WitValue,
};
pub use bindings::sluice::plugin::tool_types::{CallContext, ToolError, ToolInfo};
pub use bindings::{Tool, ToolPre};

use bindings::sluice::plugin::{log, query};

/// Longest message a plugin may log; the rest is cut.
const MAX_LOG_MESSAGE: usize = 4096;

/// Everything one call's [`Store`] holds. Built fresh for every call and dropped after it.
pub struct ToolState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: super::component::CallLimits,
    /// The database its queries read; `None` while loading (`describe` queries nothing).
    db: Option<Database>,
    deadline: Instant,
    plugin: Arc<str>,
    request_id: String,
    /// The caller's clusters: every query of this call sees only their rows (empty: all).
    clusters: Vec<String>,
    /// The call's trace span (its queries' spans go under it), when the call is traced.
    trace: Option<tracing::Span>,
}

impl ToolState {
    /// A store state granting nothing but the host interfaces: no preopened directories, no
    /// environment, no arguments, no sockets, no name lookup, stdio closed.
    pub fn new(db: Option<Database>, plugin: Arc<str>, request_id: String, memory_limit: usize, deadline: Instant) -> Self {
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let limits = super::component::limits(memory_limit);
        // Made inside the call's span when the call is traced (`calls.rs`).
        let trace = crate::telemetry::active().and_then(|_| {
            let current = tracing::Span::current();
            (current.metadata().map(|m| m.target()) == Some(crate::telemetry::TARGET)).then_some(current)
        });
        Self { wasi, table: ResourceTable::new(), limits, db, deadline, plugin, request_id, clusters: Vec::new(), trace }
    }

    /// What the call's memories used, and whether one hit the limit.
    pub fn memory(&self) -> (usize, bool) {
        (self.limits.peak, self.limits.hit)
    }

    /// Limits every query of the call to these clusters (a tenant-scoped caller's).
    pub fn scoped(mut self, clusters: Vec<String>) -> Self {
        self.clusters = clusters;
        self
    }
}

impl super::component::Limited for ToolState {
    fn limits(&mut self) -> &mut super::component::CallLimits {
        &mut self.limits
    }
}

impl WasiView for ToolState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The linker every tool is instantiated with: WASI (as granted by [`ToolState::new`]) and the
/// Sluice host interfaces.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<ToolState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Tool::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// How a call failed, before it is mapped to an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline.
    #[error("tool ran past its deadline of {0:?}")]
    Timeout(Duration),
    /// The component returned a typed error.
    #[error("tool error: {0:?}")]
    Tool(ToolError),
    /// The component trapped or could not be instantiated.
    #[error("tool failed: {0}")]
    Trap(String),
    /// The component asked for more linear memory than its limit (and trapped).
    #[error("tool failed: {0}")]
    MemoryLimit(String),
    /// No call slot became free before the deadline.
    #[error("no free call slot within the deadline")]
    Busy,
    /// The gateway is shutting down and cancelled the call.
    #[error("call cancelled by shutdown")]
    Cancelled,
}

impl CallError {
    /// The outcome label of `sluice_plugin_calls_total` for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Tool(_) => "tool_error",
            Self::Timeout(_) => "timeout",
            Self::Trap(_) => "trap",
            Self::MemoryLimit(_) => "memory_limit",
            Self::Busy => "busy",
            Self::Cancelled => "cancelled",
        }
    }
}

impl From<super::component::RunError> for CallError {
    fn from(e: super::component::RunError) -> Self {
        use super::component::RunError;
        match e {
            RunError::Timeout(d) => Self::Timeout(d),
            RunError::Cancelled => Self::Cancelled,
            RunError::Trap(m) => Self::Trap(m),
        }
    }
}

impl query::Host for ToolState {
    async fn query(&mut self, sql: String, params: Vec<WitValue>) -> Result<WitQueryResult, WitQueryError> {
        self.run(sql, params, RowLimit::Cap).await
    }

    async fn query_at_most(
        &mut self,
        sql: String,
        params: Vec<WitValue>,
        max_rows: u32,
    ) -> Result<WitQueryResult, WitQueryError> {
        self.run(sql, params, RowLimit::AtMost(u64::from(max_rows))).await
    }
}

impl ToolState {
    /// Runs a query on the blocking pool (DuckDB blocks), bounded by the call's deadline.
    async fn run(&mut self, sql: String, params: Vec<WitValue>, limit: RowLimit) -> Result<WitQueryResult, WitQueryError> {
        let params: Vec<db::Value> = params.into_iter().map(from_wit).collect();
        let Some(db) = self.db.clone() else {
            return Err(WitQueryError::Internal("no database while the component is being loaded".into()));
        };
        let (deadline, clusters) = (self.deadline, self.clusters.clone());
        let span = match &self.trace {
            Some(parent) => query_span(parent, &sql),
            None => tracing::debug_span!("host_query", plugin = %self.plugin, req_id = %self.request_id),
        };
        let traced = self.trace.is_some();
        let result = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let result = db.query_scoped(&sql, &params, limit, Some(deadline), &clusters);
            if traced {
                record_query(&span, &result);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(db::QueryError::Internal(format!("query task failed: {e}"))));
        match result {
            Ok(r) => Ok(to_wit(r)),
            Err(e) => {
                tracing::debug!(error = %e, "Plugin query refused or failed.");
                Err(match e {
                    db::QueryError::NotReadOnly => WitQueryError::NotReadOnly,
                    db::QueryError::Timeout => WitQueryError::Timeout,
                    db::QueryError::ScopeDenied => WitQueryError::ScopeDenied,
                    db::QueryError::InvalidSql(m) => WitQueryError::InvalidSql(m),
                    db::QueryError::TooManyRows(n) => WitQueryError::TooManyRows(n),
                    db::QueryError::InvalidParams(m) => WitQueryError::InvalidParams(m),
                    db::QueryError::Internal(m) => {
                        tracing::warn!(plugin = %self.plugin, req_id = %self.request_id, error = %m, "Database error in a plugin query.");
                        WitQueryError::Internal("database error".into())
                    }
                })
            }
        }
    }
}

/// A plugin query's span: the database, and the SQL text only when `[traces] record_sql` says
/// so; never the parameters.
fn query_span(parent: &tracing::Span, sql: &str) -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        parent: parent,
        "host_query",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "duckdb",
        db.query.text = tracing::field::Empty,
        db.response.returned_rows = tracing::field::Empty,
        sluice.outcome = tracing::field::Empty,
    );
    if crate::telemetry::active().is_some_and(|t| t.record_sql()) {
        span.record("db.query.text", sql);
    }
    span
}

fn record_query(span: &tracing::Span, result: &Result<db::QueryResult, db::QueryError>) {
    match result {
        Ok(r) => span.record("db.response.returned_rows", r.rows.len() as u64).record("sluice.outcome", "ok"),
        Err(e) => span.record("sluice.outcome", e.outcome()).record("otel.status_code", "error"),
    };
}

impl log::Host for ToolState {
    async fn log(&mut self, level: log::Level, message: String) {
        plugin_log(&self.plugin, &self.request_id, level, message);
    }
}

/// Writes a plugin's log message into the host's log (cut at [`MAX_LOG_MESSAGE`]).
pub(crate) fn plugin_log(plugin: &str, req_id: &str, level: log::Level, mut message: String) {
    if message.len() > MAX_LOG_MESSAGE {
        let mut cut = MAX_LOG_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    match level {
        log::Level::Trace => tracing::trace!(target: "sluice::plugin", plugin, req_id, "{message}"),
        log::Level::Debug => tracing::debug!(target: "sluice::plugin", plugin, req_id, "{message}"),
        log::Level::Info => tracing::info!(target: "sluice::plugin", plugin, req_id, "{message}"),
        log::Level::Warn => tracing::warn!(target: "sluice::plugin", plugin, req_id, "{message}"),
        log::Level::Error => tracing::error!(target: "sluice::plugin", plugin, req_id, "{message}"),
    }
}

impl bindings::sluice::plugin::tool_types::Host for ToolState {}

fn from_wit(v: WitValue) -> db::Value {
    match v {
        WitValue::Null => db::Value::Null,
        WitValue::Boolean(b) => db::Value::Boolean(b),
        WitValue::Int64(i) => db::Value::Int64(i),
        WitValue::Float64(f) => db::Value::Float64(f),
        WitValue::Text(s) => db::Value::Text(s),
        WitValue::Timestamp(t) => db::Value::Timestamp(t),
        WitValue::Date(d) => db::Value::Date(d),
        WitValue::Blob(b) => db::Value::Blob(b),
    }
}

fn to_wit(r: db::QueryResult) -> WitQueryResult {
    WitQueryResult {
        columns: r
            .columns
            .into_iter()
            .map(|(name, t)| WitColumn {
                name,
                type_: match t {
                    db::ColumnType::Boolean => WitColumnType::Boolean,
                    db::ColumnType::Int64 => WitColumnType::Int64,
                    db::ColumnType::Float64 => WitColumnType::Float64,
                    db::ColumnType::Text => WitColumnType::Text,
                    db::ColumnType::Timestamp => WitColumnType::Timestamp,
                    db::ColumnType::Date => WitColumnType::Date,
                    db::ColumnType::Blob => WitColumnType::Blob,
                    db::ColumnType::Other => WitColumnType::Other,
                },
            })
            .collect(),
        rows: r
            .rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| match v {
                        db::Value::Null => WitValue::Null,
                        db::Value::Boolean(b) => WitValue::Boolean(b),
                        db::Value::Int64(i) => WitValue::Int64(i),
                        db::Value::Float64(f) => WitValue::Float64(f),
                        db::Value::Text(s) => WitValue::Text(s),
                        db::Value::Timestamp(t) => WitValue::Timestamp(t),
                        db::Value::Date(d) => WitValue::Date(d),
                        db::Value::Blob(b) => WitValue::Blob(b),
                    })
                    .collect()
            })
            .collect(),
        truncated: r.truncated,
    }
}
