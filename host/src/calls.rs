//! The application layer: one tool call, whatever the transport (REST, MCP, `sluice call`).
//!
//! [`Calls::call_tool`] does find → validate → scope → call → audit and returns a domain
//! outcome, [`Answer`] or [`CallFailure`]; the REST and MCP adapters (`http/tools.rs`,
//! `http/mcp.rs`) and the CLI only map it to their wire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::Instrument as _;

use crate::audit::AuditLog;
use crate::caller::Caller;
use crate::db::Database;
use crate::runtime::rollout::CanarySlot;
use crate::runtime::{CallContext, CallError, LoadedTool, Runtime, ToolError, WitQueryError, is_valid_tool_name};

/// The transport a call came by, as its audit line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Rest,
    Mcp,
    Cli,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Mcp => "mcp",
            Self::Cli => "cli",
        }
    }
}

/// A tool's successful answer and the exact version that gave it.
#[derive(Debug)]
pub struct Answer {
    /// The tool's JSON output, checked to be JSON.
    pub result: Box<RawValue>,
    pub tool: Arc<LoadedTool>,
}

/// Why a call did not answer. Each transport maps it to its wire (HTTP status and code, MCP
/// protocol error or tool error, CLI message).
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// The request itself is malformed (a bad name, a body that is not JSON).
    #[error("{0}")]
    InvalidRequest(String),
    /// The request is larger than this many bytes.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// No tool of that name in the current registry.
    #[error("unknown tool {0:?}")]
    NotFound(String),
    /// The arguments do not match the input schema (`path`: JSON pointer of the failing value),
    /// or the tool refused them.
    #[error("{message}")]
    InvalidArgs { message: String, path: String },
    /// The caller's tenant scope does not allow this.
    #[error("{0}")]
    ScopeRefused(String),
    /// The caller's grants do not include this tool.
    #[error("this bearer may not call {0}")]
    NotPermitted(String),
    /// The tool's query was not a single read-only statement.
    #[error("{0}")]
    NotReadOnly(String),
    /// The tool ran past its deadline.
    #[error("tool {tool} ran past its deadline of {} ms", deadline.as_millis())]
    Timeout { tool: String, deadline: Duration },
    /// No call slot freed up in time.
    #[error("too many calls in flight; retry shortly")]
    Busy,
    /// The gateway is draining.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The tool or its query failed. `detail` goes to the audit log, never to the caller.
    #[error("tool backend failure")]
    Backend { tool: String, detail: String },
}

impl CallFailure {
    /// The HTTP status this outcome is answered with over REST; audit lines carry it for every
    /// transport, so one number means the same wherever the call came from.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) | Self::InvalidArgs { .. } | Self::NotReadOnly(_) => 400,
            Self::ScopeRefused(_) | Self::NotPermitted(_) => 403,
            Self::NotFound(_) => 404,
            Self::TooLarge(_) => 413,
            Self::Backend { .. } => 500,
            Self::Busy | Self::ShuttingDown => 503,
            Self::Timeout { .. } => 504,
        }
    }
}

impl CallFailure {
    /// A short name of the outcome (trace spans).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::TooLarge(_) => "too_large",
            Self::NotFound(_) => "not_found",
            Self::InvalidArgs { .. } => "invalid_args",
            Self::ScopeRefused(_) => "scope_refused",
            Self::NotPermitted(_) => "not_permitted",
            Self::NotReadOnly(_) => "not_read_only",
            Self::Timeout { .. } => "timeout",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting_down",
            Self::Backend { .. } => "backend_failure",
        }
    }
}

/// The span of a tool call (OpenTelemetry's `execute_tool`), when the caller's request is traced.
fn tool_span(caller: &Caller, name: &str) -> tracing::Span {
    crate::telemetry::child_of(caller.trace.as_ref(), |parent| {
        tracing::info_span!(
            target: crate::telemetry::TARGET,
            parent: parent,
            "execute_tool",
            otel.name = %format_args!("execute_tool {name}"),
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = name,
            sluice.tool.version = tracing::field::Empty,
            sluice.tool.digest = tracing::field::Empty,
            sluice.outcome = tracing::field::Empty,
        )
    })
}

/// Tool calls over a runtime, audited.
pub struct Calls<'a> {
    pub runtime: &'a Runtime,
    pub db: &'a Database,
    pub audit: &'a AuditLog,
}

impl Calls<'_> {
    /// Finds a tool in the current registry snapshot (the call runs on that version whatever
    /// reloads happen meanwhile); with a canary running, the version this call goes to.
    pub fn find(&self, name: &str) -> Result<(Arc<LoadedTool>, Option<CanarySlot>), CallFailure> {
        if !is_valid_tool_name(name) {
            return Err(CallFailure::InvalidRequest(format!(
                "invalid tool name {name:?}: names match ^[a-z][a-z0-9_.]{{1,127}}$"
            )));
        }
        self.runtime.registry().pick(name).ok_or_else(|| CallFailure::NotFound(name.to_owned()))
    }

    /// One call: find the tool, then take the arguments (`args` runs only for a tool that
    /// exists, so REST reads its body only then), validate them, check the caller's scope, call,
    /// and write one audit line (`tool_call`, or `tool_backend_failure` with the full error).
    pub async fn call_tool(
        &self,
        caller: &Caller,
        name: &str,
        args: impl FnOnce() -> Result<Value, CallFailure>,
        via: Via,
    ) -> Result<Answer, CallFailure> {
        self.call(caller, name, || self.find(name), args, via).await
    }

    /// [`Calls::call_tool`] for a tool loaded outside the registry (`sluice call FILE.wasm`).
    pub async fn call_loaded(&self, caller: &Caller, tool: Arc<LoadedTool>, args: Value, via: Via) -> Result<Answer, CallFailure> {
        let name = tool.name.clone();
        self.call(caller, &name, || Ok((tool, None)), || Ok(args), via).await
    }

    async fn call(
        &self,
        caller: &Caller,
        name: &str,
        find: impl FnOnce() -> Result<(Arc<LoadedTool>, Option<CanarySlot>), CallFailure>,
        args: impl FnOnce() -> Result<Value, CallFailure>,
        via: Via,
    ) -> Result<Answer, CallFailure> {
        let started = Instant::now();
        let mut cluster_id = None;
        let span = tool_span(caller, name);
        let result = async {
            // Before finding it: a tool the caller may not call is refused whether or not it
            // exists, so its existence does not show.
            if !caller.identity.grants.may_call(name) {
                return Err(CallFailure::NotPermitted(name.to_owned()));
            }
            // A canary's slot is held until this call ends, however it ends.
            let (tool, _slot) = find()?;
            if !span.is_none() {
                span.record("sluice.tool.version", tool.version.as_str()).record("sluice.tool.digest", tool.digest.as_str());
            }
            let args = args()?;
            cluster_id = args.get("cluster_id").and_then(Value::as_str).map(str::to_owned);
            Box::pin(self.run(caller, tool, args, cluster_id.as_deref())).await
        }
        .instrument(span.clone())
        .await;
        if !span.is_none() {
            span.record("sluice.outcome", result.as_ref().err().map_or("ok", CallFailure::outcome));
            if result.as_ref().is_err_and(|f| f.status() >= 500) {
                span.record("otel.status_code", "error");
            }
        }
        self.audit_call(caller, name, cluster_id, result.as_ref().err(), started, via);
        result
    }

    /// Validate, scope, call.
    async fn run(
        &self,
        caller: &Caller,
        tool: Arc<LoadedTool>,
        args: Value,
        cluster_id: Option<&str>,
    ) -> Result<Answer, CallFailure> {
        let name = &tool.name;
        if let Some((path, err)) = tool.validate_args(&args) {
            let message = format!("args do not match the input schema of {name}: {err}");
            return Err(CallFailure::InvalidArgs { message, path });
        }
        // Tenant scope, before any component code runs: a tool that refuses scoped bearers, or a
        // `cluster_id` outside the bearer's clusters, is refused here. Inside the call, every
        // query the component makes sees only the bearer's clusters (the host filters them).
        let identity = &caller.identity;
        if identity.is_scoped() {
            if identity.allowed_clusters.is_empty() {
                return Err(CallFailure::ScopeRefused("this bearer may see no cluster (its token grants none)".into()));
            }
            if !tool.allow_tenant_scoped {
                return Err(CallFailure::ScopeRefused(format!("{name} refuses tenant-scoped bearers")));
            }
            if let Some(c) = cluster_id.filter(|c| !identity.may_see(c)) {
                return Err(CallFailure::ScopeRefused(format!("cluster_id {c:?} is outside this bearer's clusters")));
            }
        }
        let ctx = CallContext { request_id: caller.req_id.to_string(), allowed_clusters: identity.allowed_clusters.clone() };
        let out = self.runtime.call(self.db, tool.clone(), ctx, args.to_string()).await.map_err(|e| failure(e, &tool))?;
        let result = serde_json::from_str(&out.json).map_err(|e| CallFailure::Backend {
            tool: name.clone(),
            detail: format!("tool returned invalid JSON: {e}"),
        })?;
        Ok(Answer { result, tool: out.tool })
    }

    fn audit_call(
        &self,
        caller: &Caller,
        name: &str,
        cluster_id: Option<String>,
        failure: Option<&CallFailure>,
        started: Instant,
        via: Via,
    ) {
        let backend = match failure {
            Some(CallFailure::Backend { detail, .. }) => Some(detail.clone()),
            _ => None,
        };
        let mut ev = caller.audit(if backend.is_some() { "tool_backend_failure" } else { "tool_call" });
        ev.tool = Some(name.to_owned());
        ev.cluster_id = cluster_id;
        ev = ev
            .with("status", failure.map_or(200, CallFailure::status))
            .with("duration_ms", started.elapsed().as_millis() as u64)
            .with("via", via.as_str());
        if let Some(detail) = backend {
            ev = ev.with("error", detail);
        }
        self.audit.record(ev);
    }
}

/// The runtime's error as the caller sees it.
fn failure(e: CallError, tool: &LoadedTool) -> CallFailure {
    let timeout = || CallFailure::Timeout { tool: tool.name.clone(), deadline: tool.deadline };
    let backend = |detail: String| CallFailure::Backend { tool: tool.name.clone(), detail };
    match e {
        CallError::Timeout(_) => timeout(),
        CallError::Busy => CallFailure::Busy,
        CallError::Cancelled => CallFailure::ShuttingDown,
        CallError::Tool(ToolError::InvalidArgs(m)) => CallFailure::InvalidArgs { message: m, path: String::new() },
        CallError::Tool(ToolError::ScopeDenied(m)) => CallFailure::ScopeRefused(m),
        CallError::Tool(ToolError::Query(q)) => match q {
            WitQueryError::NotReadOnly => {
                CallFailure::NotReadOnly("only a single read-only SELECT statement is allowed".into())
            }
            WitQueryError::Timeout => timeout(),
            WitQueryError::ScopeDenied => {
                CallFailure::ScopeRefused("the query names data outside the bearer's clusters".into())
            }
            other => backend(format!("query failed: {other:?}")),
        },
        CallError::Tool(ToolError::Internal(m)) => backend(format!("tool reported: {m}")),
        CallError::Trap(m) | CallError::MemoryLimit(m) => backend(m),
    }
}
