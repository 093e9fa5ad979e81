//! The stateless MCP fast path at `/`: a plain `tools/call` answered without the MCP library's
//! per-request service (a task, a peer and channels for every request, which made a stateless
//! call cost about twice a REST call).
//!
//! Only the simplest, most frequent request takes it: one JSON-RPC request object with
//! `method: "tools/call"` and params of just `name` and `arguments`, no session, no per-request
//! `_meta`, no `Mcp-Method`/`Mcp-Name` headers, a protocol version from the handshake era (or
//! none), `Content-Type: application/json` and an `Accept` of both JSON and event streams.
//! Anything else (2026-07-28 requests, batches, other methods, malformed bodies, missing
//! headers) goes to the library as before, which also answers its errors. The answer is the
//! one the library gives for the same request (same types, same serialisation); a test compares
//! the two. `call_tool`, the MCP answer to one `tools/call`, is here and shared with the
//! library's handler in `mcp.rs`.

use axum::http::request::Parts;
use axum::response::{IntoResponse as _, Response};
use rmcp::model::{CallToolResult, ContentBlock, ErrorData, JsonRpcError, NumberOrString, ServerJsonRpcMessage, ServerResult};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, AppState, Caller};
use crate::calls::{CallFailure, Via};

/// The revisions whose stateless requests the fast path answers; others go to the library.
const HANDSHAKE_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// A `tools/call` the fast path can answer.
pub(super) struct PlainCall {
    id: NumberOrString,
    name: String,
    arguments: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    jsonrpc: String,
    id: NumberOrString,
    method: String,
    params: Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    #[serde(default)]
    arguments: Option<serde_json::Map<String, Value>>,
}

/// The request, when it is a plain stateless `tools/call` (see the module's documentation).
pub(super) fn plain_tool_call(parts: &Parts, body: &[u8]) -> Option<PlainCall> {
    use axum::http::{Method, header};
    let h = &parts.headers;
    if parts.method != Method::POST
        || ["mcp-session-id", "mcp-method", "mcp-name", "last-event-id"].iter().any(|n| h.contains_key(*n))
    {
        return None;
    }
    if let Some(v) = h.get("mcp-protocol-version")
        && !HANDSHAKE_REVISIONS.iter().any(|r| v.as_bytes() == r.as_bytes())
    {
        return None;
    }
    let content_type = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    if !content_type.split(';').next()?.trim().eq_ignore_ascii_case("application/json") {
        return None;
    }
    let accepts = |mime: &str| {
        h.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|m| {
            m.split(';').next().is_some_and(|essence| essence.trim().eq_ignore_ascii_case(mime))
        })
    };
    if !accepts("application/json") || !accepts("text/event-stream") {
        return None;
    }
    let req: Request = serde_json::from_slice(body).ok()?;
    if req.jsonrpc != "2.0" || req.method != "tools/call" {
        return None;
    }
    Some(PlainCall { id: req.id, name: req.params.name, arguments: req.params.arguments.unwrap_or_default() })
}

/// One `tools/call` as MCP answers it, for the session, stateless and fast paths alike. `meta`
/// is the request's `_meta`: its `traceparent` (SEP-414) puts the call in the client's trace.
pub(super) async fn call_tool(
    state: &AppState,
    caller: &Caller,
    name: &str,
    args: Value,
    meta: Option<&serde_json::Map<String, Value>>,
) -> Result<CallToolResult, ErrorData> {
    let traced;
    let caller = match mcp_trace(state, caller, name, meta) {
        Some(trace) => {
            traced = Caller { trace: Some(trace), ..caller.clone() };
            &traced
        }
        None => caller,
    };
    match Box::pin(state.calls().call_tool(caller, name, || Ok(args), Via::Mcp)).await {
        Ok(answer) => {
            let value: Value = serde_json::from_str(answer.result.get())
                .map_err(|e| ErrorData::internal_error(format!("tool answer: {e}"), None))?;
            Ok(CallToolResult::structured(value))
        }
        // An unknown tool or a malformed name is the request's fault: a protocol error.
        Err(f @ (CallFailure::NotFound(_) | CallFailure::InvalidRequest(_))) => {
            let e = ApiError::from_call(f, caller);
            Err(ErrorData::invalid_params(e.to_string(), Some(e.body())))
        }
        // Everything else happened in the tool: the caller sees the same body REST answers.
        Err(f) => {
            let body = ApiError::from_call(f, caller).body();
            Ok(CallToolResult::error(vec![ContentBlock::text(body.to_string())]))
        }
    }
}

/// The MCP request's span (`tools/call <tool>`, OpenTelemetry's MCP conventions) in the trace
/// of `_meta.traceparent`, else of the HTTP request; `None` when neither is traced or carries
/// a trace context.
fn mcp_trace(state: &AppState, caller: &Caller, name: &str, meta: Option<&serde_json::Map<String, Value>>) -> Option<crate::telemetry::Trace> {
    let traces = state.traces?;
    let meta = meta.filter(|m| m.contains_key("traceparent"));
    if meta.is_none() && !caller.trace.as_ref().is_some_and(crate::telemetry::Trace::traced) {
        return None;
    }
    let empty = serde_json::Map::new();
    traces.mcp_request(meta.unwrap_or(&empty), caller.trace.as_ref(), |parent| {
        tracing::info_span!(
            target: crate::telemetry::TARGET,
            parent: parent,
            "mcp",
            otel.name = %format_args!("tools/call {name}"),
            otel.kind = "server",
            mcp.method.name = "tools/call",
            gen_ai.tool.name = name,
        )
    })
}

/// Calls the tool and answers as the library would: 200 with the JSON-RPC response or error.
pub(super) async fn answer(state: &AppState, parts: &Parts, call: PlainCall) -> Response {
    let Some(caller) = parts.extensions.get::<Caller>() else {
        let error = ErrorData::internal_error("no authenticated caller on this request", None);
        return json(&ServerJsonRpcMessage::Error(JsonRpcError::new(Some(call.id), error)));
    };
    let message = match call_tool(state, caller, &call.name, Value::Object(call.arguments), None).await {
        Ok(result) => {
            // As the library answers a peer of a handshake-era revision: no `resultType`.
            let mut result = ServerResult::CallToolResult(result);
            result.strip_result_type_for_legacy_peer();
            ServerJsonRpcMessage::response(result, call.id)
        }
        Err(error) => ServerJsonRpcMessage::Error(JsonRpcError::new(Some(call.id), error)),
    };
    json(&message)
}

fn json(message: &ServerJsonRpcMessage) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            let error = serde_json::json!({"jsonrpc": "2.0", "error": {"code": -32603, "message": format!("serialising the answer: {e}")}});
            axum::Json(error).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder().method("POST").uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
    const CALL: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t.x","arguments":{"a":1}}}"#;

    #[test]
    fn only_plain_stateless_tool_calls_take_the_fast_path() {
        let call = plain_tool_call(&parts(&[JSON, ACCEPT]), CALL.as_bytes()).expect("a plain call");
        assert_eq!((call.name.as_str(), call.arguments["a"].as_i64()), ("t.x", Some(1)));
        assert!(plain_tool_call(&parts(&[JSON, ACCEPT, ("mcp-protocol-version", "2025-06-18")]), CALL.as_bytes()).is_some());
        let no_args = r#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":{"name":"t.x"}}"#;
        assert!(plain_tool_call(&parts(&[JSON, ACCEPT]), no_args.as_bytes()).is_some());
        // Everything else is the library's.
        for (headers, body) in [
            (vec![JSON, ACCEPT, ("mcp-protocol-version", "2026-07-28")], CALL),
            (vec![JSON, ACCEPT, ("mcp-protocol-version", "1999-01-01")], CALL),
            (vec![JSON, ACCEPT, ("mcp-session-id", "abc")], CALL),
            (vec![JSON, ACCEPT, ("mcp-method", "tools/call")], CALL),
            (vec![JSON, ("accept", "application/json")], CALL),
            (vec![("content-type", "text/plain"), ACCEPT], CALL),
            (vec![JSON, ACCEPT], r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{}}"#),
            (vec![JSON, ACCEPT], r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t.x","_meta":{}}}"#),
            (vec![JSON, ACCEPT], r#"[{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t.x"}}]"#),
            (vec![JSON, ACCEPT], r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t.x"}}"#),
            (vec![JSON, ACCEPT], "{not json"),
        ] {
            assert!(plain_tool_call(&parts(&headers), body.as_bytes()).is_none(), "{headers:?} {body}");
        }
    }
}
