//! MCP (JSON-RPC 2.0 over streamable HTTP, with the `rmcp` crate) at `/` and `/mcp` on the API
//! listener: `initialize`, `tools/list` (with `inputSchema` and `outputSchema`), `tools/call`
//! (text `content` and `structuredContent`), `prompts/list` and `prompts/get` for
//! `investigate`.
//!
//! Requests pass the front door like any other (bearer, limits, request id, metrics), so MCP has
//! the same bearers, tenant scope, limits and audit as REST. The MCP tool list is built once per
//! registry generation (a hot reload makes a new one) and shared by every request.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorData, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, InitializeResult, JsonObject, ListPromptsResult,
    ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument, PromptMessage, Role, ServerCapabilities, Tool,
    ToolAnnotations,
};
use rmcp::service::{NotificationContext, Peer, RequestContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use serde_json::Value;

use super::{ApiError, AppState, Caller};

/// `POST /mcp`: MCP JSON-RPC (documentation only; `rmcp` serves the route).
#[utoipa::path(post, path = "/mcp", request_body(content = Object, description = "A JSON-RPC 2.0 message: initialize, tools/list, tools/call, prompts/list, prompts/get", content_type = "application/json"),
    responses(
        (status = 200, description = "A JSON-RPC answer, as `application/json` or a `text/event-stream`; `mcp-session-id` after initialize"),
        super::wire::FrontDoorErrors,
))]
#[allow(dead_code)]
fn mcp_doc() {}

/// `POST /`: the same MCP endpoint as `/mcp` (documentation only).
#[utoipa::path(post, path = "/", request_body(content = Object, description = "As for /mcp", content_type = "application/json"),
    responses(
        (status = 200, description = "As for /mcp"),
        super::wire::FrontDoorErrors,
))]
#[allow(dead_code)]
fn mcp_root_doc() {}

/// Builds the MCP services. At `/mcp` (the first), `initialize` opens a session
/// (`mcp-session-id`) and answers come as event streams (SSE), with a server-to-client stream
/// on `GET`; at `/` (the second), every request stands alone and simple answers come as plain
/// JSON. Both are streamable HTTP, and MCP clients handle both. Host-header checks are off:
/// every request carries a bearer, which a DNS-rebinding page cannot supply.
pub fn services(
    state: &AppState,
) -> (StreamableHttpService<Mcp, LocalSessionManager>, StreamableHttpService<Mcp, NeverSessionManager>) {
    let config = |sessions: bool| {
        let mut c = StreamableHttpServerConfig::default().disable_allowed_hosts().with_legacy_session_mode(sessions);
        c.json_response = true;
        c.cancellation_token = state.mcp_shutdown.child_token();
        c
    };
    let peers = Peers::default();
    spawn_list_changed_notifier(state, peers.clone());
    let tools = ToolLists::default();
    let factory = |state: AppState| {
        let (peers, tools) = (peers.clone(), tools.clone());
        move || Ok(Mcp { state: state.clone(), peers: peers.clone(), tools: tools.clone() })
    };
    (
        StreamableHttpService::new(factory(state.clone()), Arc::new(LocalSessionManager::default()), config(true)),
        StreamableHttpService::new(factory(state.clone()), Arc::new(NeverSessionManager::default()), config(false)),
    )
}

/// An MCP service as a route: the body is read here, under `max_body`, so an oversized one gets
/// the contract's JSON 413 like every other route (rmcp would read any size); and a session's
/// `DELETE` is answered 200, as MCP clients expect (rmcp says 202).
pub fn route<S, B>(service: S, max_body: usize, fast: Option<AppState>) -> axum::routing::MethodRouter<AppState>
where
    S: tower::Service<axum::extract::Request, Response = axum::http::Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use axum::http::{Method, StatusCode};
    use axum::response::IntoResponse as _;
    use tower::ServiceExt as _;
    axum::routing::any(move |req: axum::extract::Request| {
        let (service, fast) = (service.clone(), fast.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = match read_limited(body, max_body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            if let Some(state) = fast
                && let Some(call) = super::mcp_fast::plain_tool_call(&parts, &body)
            {
                return super::mcp_fast::answer(&state, &parts, call).await;
            }
            let delete = parts.method == Method::DELETE;
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
            let Ok(resp) = service.oneshot(req).await;
            let mut resp = resp.map(axum::body::Body::new);
            if delete && resp.status() == StatusCode::ACCEPTED {
                *resp.status_mut() = StatusCode::OK;
            }
            resp
        }
    })
}

/// The whole body, or 413 when it is over `limit` (the rest is read and dropped in the
/// background, so the client gets the answer), or 400 when it cannot be read.
async fn read_limited(mut body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::InvalidRequest(format!("could not read the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                super::front_door::discard_in_background(body, limit);
                return Err(ApiError::PayloadTooLarge(limit));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.into())
}

/// The sessions to tell when the tool list changes.
type Peers = Arc<std::sync::Mutex<Vec<Peer<RoleServer>>>>;

/// Sends `notifications/tools/list_changed` to every open session after each reload that
/// changed the registry, until the end of a drain.
fn spawn_list_changed_notifier(state: &AppState, peers: Peers) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    let mut changes = state.runtime.subscribe();
    let shutdown = state.mcp_shutdown.clone();
    handle.spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            let open: Vec<Peer<RoleServer>> = {
                let mut peers = peers.lock().unwrap_or_else(|p| p.into_inner());
                peers.retain(|p| !p.is_transport_closed());
                peers.clone()
            };
            for peer in open {
                let _ = peer.notify_tool_list_changed().await;
            }
        }
    });
}

/// The MCP server of one session.
#[derive(Clone)]
pub struct Mcp {
    state: AppState,
    peers: Peers,
    tools: ToolLists,
}

/// The MCP tool lists of the registry generation they were built from: every tool, and the
/// tools a tenant-scoped bearer may call.
type ToolLists = Arc<std::sync::Mutex<Option<BuiltLists>>>;

struct BuiltLists {
    generation: std::sync::Weak<crate::runtime::registry::Registry>,
    all: Arc<Vec<Tool>>,
    scoped: Arc<Vec<Tool>>,
}

/// One tool as MCP lists it. Every tool reads the database through the host's read-only,
/// tenant-scoped interface and has no network, so the hints are facts the host guarantees:
/// read-only, not destructive, idempotent, closed world. The title is the input schema's `title`,
/// when the tool gives one.
fn mcp_tool(t: &crate::runtime::registry::LoadedTool) -> Tool {
    let mut annotations = ToolAnnotations::new().read_only(true).destructive(false).idempotent(true).open_world(false);
    let mut tool = Tool::new(t.name.clone(), t.description.clone(), Arc::new(object(&t.input_schema)))
        .with_raw_output_schema(Arc::new(object(&t.output_schema)));
    if let Some(title) = t.input_schema.get("title").and_then(Value::as_str) {
        annotations.title = Some(title.to_owned());
        tool = tool.with_title(title);
    }
    tool.with_annotations(annotations)
}

impl Mcp {
    /// The tool list for a caller, built at most once per registry generation.
    fn tool_list(&self, scoped: bool) -> Arc<Vec<Tool>> {
        let registry = self.state.runtime.registry();
        let mut cache = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cache.as_ref().is_some_and(|c| std::ptr::eq(c.generation.as_ptr(), Arc::as_ptr(&registry)));
        if !fresh {
            let all: Vec<Tool> = registry.tools().map(|t| mcp_tool(t)).collect();
            let scoped = registry.tools().zip(&all).filter(|(t, _)| t.allow_tenant_scoped).map(|(_, m)| m.clone()).collect();
            *cache = Some(BuiltLists { generation: Arc::downgrade(&registry), all: Arc::new(all), scoped: Arc::new(scoped) });
        }
        let built = cache.as_ref().expect("just built");
        if scoped { built.scoped.clone() } else { built.all.clone() }
    }
}

/// The caller the front door authenticated, from the HTTP request rmcp hands over.
fn caller(ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("no authenticated caller on this request", None))
}

fn object(v: &Value) -> JsonObject {
    match v {
        Value::Object(m) => m.clone(),
        _ => JsonObject::new(),
    }
}

const INVESTIGATE: &str = "investigate";

impl ServerHandler for Mcp {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().enable_prompts().build())
            .with_server_info(Implementation::new("sluice", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Sluice answers questions about a GPU fleet's telemetry stored in DuckDB. Call \
                 fleet.cluster.summary first, then find_stragglers, find_outlier_nodes, anomaly_list, \
                 memfrag_hotspots or kernel_launch_summary; the `investigate` prompt walks through it.",
            )
    }

    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).push(ctx.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&ctx)?;
        let list = self.tool_list(caller.identity.is_scoped());
        let grants = &caller.identity.grants;
        // Only the tools this bearer may call (the cached list is every tool of its scope).
        let tools = list.iter().filter(|t| grants.may_call(&t.name)).cloned().collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&ctx)?;
        let args = Value::Object(request.arguments.unwrap_or_default());
        super::mcp_fast::call_tool(&self.state, &caller, &request.name, args, Some(&ctx.meta)).await.map(Into::into)
    }


    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let args = vec![
            PromptArgument::new("cluster_id").with_description("The cluster to investigate.").with_required(true),
            PromptArgument::new("time_window")
                .with_description("How far back from the newest event, e.g. 24h (default 24h).")
                .with_required(false),
        ];
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            INVESTIGATE,
            Some("Investigate a cluster's health: stragglers, outliers, anomalies, memory fragmentation."),
            Some(args),
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != INVESTIGATE {
            return Err(ErrorData::invalid_params(format!("no prompt {:?}; there is `investigate`", request.name), None));
        }
        let args = request.arguments.unwrap_or_default();
        let Some(cluster) = args.get("cluster_id").and_then(Value::as_str).filter(|c| !c.is_empty()) else {
            return Err(ErrorData::invalid_params("investigate needs a cluster_id", None));
        };
        let window = args.get("time_window").and_then(Value::as_str).unwrap_or("24h");
        let text = format!(
            "Investigate the health of cluster {cluster} over the last {window}.\n\
             1. Call fleet.cluster.summary with {{\"cluster_id\": \"{cluster}\"}} for the per-node picture.\n\
             2. Call fleet.cluster.find_stragglers with {{\"cluster_id\": \"{cluster}\", \"time_window\": \"{window}\"}}.\n\
             3. Call fleet.cluster.anomaly_list with {{\"cluster_id\": \"{cluster}\", \"time_window\": \"{window}\", \
                \"severity_filter\": \"error\"}} to see when it went wrong.\n\
             4. For each straggler, check fleet.cluster.find_outlier_nodes on nccl.collective.duration_ms and \
                fleet.cluster.memfrag_hotspots for memory fragmentation.\n\
             Report the affected nodes, since when, the likely cause, and what to do next. Quote the numbers \
             the tools returned; do not invent any."
        );
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("Investigate cluster {cluster}"))
            .into())
    }
}
