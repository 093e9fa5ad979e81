//! MCP with a real MCP client (rmcp's streamable HTTP client) against the real binary:
//! initialize, tools/list with both schemas, tools/call with structured content, prompts, and
//! the bearer required as for REST.

use std::process::Command;
use std::sync::Arc;

use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, GetPromptRequestParams, JsonObject};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use crate::binary::{Server, TOKEN};
use crate::common::{TempDir, component, sluice_bin};

/// A client that hears `notifications/tools/list_changed`.
#[derive(Clone)]
struct ListWatcher(Arc<tokio::sync::Notify>);

impl rmcp::ClientHandler for ListWatcher {
    async fn on_tool_list_changed(&self, _ctx: rmcp::service::NotificationContext<rmcp::RoleClient>) {
        self.0.notify_one();
    }
}

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

async fn connect(url: &str, token: Option<&str>) -> Result<rmcp::service::RunningService<rmcp::RoleClient, ()>, String> {
    // rmcp's HTTP client is reqwest 0.13, whose rustls (as the OCI client enables it) uses the
    // process-wide provider.
    sluice::tls::install_provider();
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    ().serve(StreamableHttpClientTransport::from_config(config)).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_mcp_client_initializes_lists_and_calls_tools_with_the_bearer() {
    let dir = TempDir::new("mcp");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for c in ["fleet-cluster-summary", "fleet-cluster-find-stragglers"] {
        std::fs::copy(component(c), plugins.join(format!("{c}.wasm"))).unwrap();
    }
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let seed = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "2", "--nodes", "4", "--hours", "3"])
        .output()
        .unwrap();
    assert!(seed.status.success(), "{}", String::from_utf8_lossy(&seed.stderr));
    let server = Server::start(&dir, &[]);

    for path in ["/mcp", "/"] {
        let url = format!("{}{path}", server.api);
        let client = connect(&url, Some(TOKEN)).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let info = client.peer_info().expect("the server introduced itself");
        assert_eq!(info.server_info.as_ref().map(|s| s.name.as_str()), Some("sluice"));
        assert!(info.capabilities.tools.is_some() && info.capabilities.prompts.is_some());

        let tools = client.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["fleet.cluster.find_stragglers", "fleet.cluster.summary"]);
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.output_schema.as_ref().expect("outputSchema")["type"], "object", "{}", t.name);
            // What the host guarantees of every tool, as MCP hints.
            let a = t.annotations.as_ref().expect("annotations");
            let hints = (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint);
            assert_eq!(hints, (Some(true), Some(false), Some(true), Some(false)), "{}", t.name);
            // The bundled tools name themselves for people (the input schema's `title`).
            let title = t.title.as_deref().unwrap_or_default();
            assert!(!title.is_empty() && title != t.name, "{}: title {title:?}", t.name);
            assert_eq!(a.title.as_deref(), Some(title), "{}", t.name);
        }

        let r = client
            .call_tool(CallToolRequestParams::new("fleet.cluster.summary").with_arguments(object(json!({"cluster_id": "cluster-b"}))))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(false));
        let structured = r.structured_content.expect("structuredContent");
        let rows = structured["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|row| row["cluster_id"] == "cluster-b"));
        // The text content is the same JSON.
        let text = r.content[0].as_text().expect("text content").text.clone();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), structured);

        // A tool error is the tool's result, with the REST error body as text.
        let bad = client
            .call_tool(CallToolRequestParams::new("fleet.cluster.summary").with_arguments(object(json!({"cluster_id": 7}))))
            .await
            .unwrap();
        assert_eq!(bad.is_error, Some(true));
        let body: Value = serde_json::from_str(&bad.content[0].as_text().unwrap().text).unwrap();
        assert_eq!(body["code"], "invalid_args");
        // An unknown tool is a protocol error.
        let unknown = client.call_tool(CallToolRequestParams::new("no.such_tool")).await;
        assert!(unknown.is_err(), "{unknown:?}");

        let prompts = client.list_prompts(None).await.unwrap();
        assert_eq!(prompts.prompts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["investigate"]);
        let p = client
            .get_prompt(GetPromptRequestParams::new("investigate").with_arguments(object(json!({"cluster_id": "cluster-a"}))))
            .await
            .unwrap();
        let text = serde_json::to_string(&p.messages).unwrap();
        assert!(text.contains("cluster-a") && text.contains("fleet.cluster.find_stragglers"), "{text}");
        client.cancel().await.unwrap();
    }

    // The tool list follows hot reloads: an open session is told, and lists the new tool.
    let changed = Arc::new(tokio::sync::Notify::new());
    sluice::tls::install_provider();
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.api));
    config = config.auth_header(TOKEN);
    let client = ListWatcher(changed.clone()).serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
    assert_eq!(client.list_all_tools().await.unwrap().len(), 2);
    std::fs::copy(component("fleet-cluster-anomaly-list"), plugins.join("fleet-cluster-anomaly-list.wasm")).unwrap();
    let reload = reqwest::Client::new()
        .post(format!("{}/api/v2/admin/plugins/reload", server.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    tokio::time::timeout(std::time::Duration::from_secs(10), changed.notified())
        .await
        .expect("notifications/tools/list_changed within 10 s");
    let names: Vec<String> = client.list_all_tools().await.unwrap().iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["fleet.cluster.anomaly_list", "fleet.cluster.find_stragglers", "fleet.cluster.summary"]);
    client.cancel().await.unwrap();

    // Without a bearer, or with a wrong one, the client cannot even initialize.
    for token in [None, Some("not-the-token")] {
        let Err(err) = connect(&format!("{}/mcp", server.api), token).await else { panic!("connected without a valid bearer") };
        assert!(err.contains("401") || err.to_lowercase().contains("auth"), "{err}");
    }
    // Each MCP call is audited like a REST call; the HTTP requests went through the front door.
    let metrics = server.metrics().await;
    assert!(metrics.contains("route=\"/mcp\""), "{metrics}");
}

/// The real binary serving no plugins, with the test bearer.
fn empty_server(tag: &str) -> (TempDir, Server) {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&dir, &[]);
    (dir, server)
}

/// One MCP POST with the bearer, in a session or not.
fn mcp_post(
    http: &reqwest::Client,
    api: &str,
    path: &str,
    session: Option<&str>,
    body: &Value,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    let mut r = http.post(format!("{api}{path}")).bearer_auth(TOKEN).header("accept", "application/json, text/event-stream").json(body);
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    r.send()
}

/// A JSON-RPC `initialize` as a raw client sends it.
fn initialize_request() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_has_sessions_and_event_streams_at_mcp_and_plain_json_at_the_root() {
    let (_dir, server) = empty_server("mcp-raw");
    let http = reqwest::Client::new();
    let init = initialize_request();
    let post = |path: &str, session: Option<&str>, body: &Value| mcp_post(&http, &server.api, path, session, body);

    // /mcp: a session, answers as an event stream.
    let resp = post("/mcp", None, &init).await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers().get("mcp-session-id").expect("mcp-session-id").to_str().unwrap().to_owned();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = resp.text().await.unwrap();
    let answer: Value = events
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .find(|v: &Value| v["id"] == 1)
        .unwrap_or_else(|| panic!("no answer in the stream: {events}"));
    assert_eq!(answer["result"]["serverInfo"]["name"], "sluice", "{answer}");
    let r = post("/mcp", Some(&session), &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let stream = http
        .get(format!("{}/mcp", server.api))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    drop(stream);

    // /: no session, a plain JSON answer.
    let resp = post("/", None, &init).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("mcp-session-id").is_none());
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["result"]["serverInfo"]["name"], "sluice", "{answer}");

    // Without the bearer, the front door answers before MCP does.
    let r = http.post(format!("{}/mcp", server.api)).json(&init).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "missing_bearer");
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_session_is_200_and_oversized_requests_get_the_json_errors() {
    let (_dir, server) = empty_server("mcp-close");
    let http = reqwest::Client::new();
    let post = |path: &str, session: Option<&str>, body: &Value| mcp_post(&http, &server.api, path, session, body);
    let resp = post("/mcp", None, &initialize_request()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(resp.text().await);
    // The official SDKs expect 200 for a session's DELETE.
    let close = |s: String| http.delete(format!("{}/mcp", server.api)).bearer_auth(TOKEN).header("mcp-session-id", s).send();
    let r = close(session.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // The session is gone.
    let r = post("/mcp", Some(&session), &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).await.unwrap();
    assert!(r.status().is_client_error(), "a closed session must not answer: {}", r.status());

    // A 2 MiB JSON-RPC body (over the default 1 MiB server.max_body) at either MCP path.
    let pad = "x".repeat(2 << 20);
    for path in ["/", "/mcp"] {
        let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"pad": pad}});
        let r = post(path, None, &body).await.unwrap();
        assert_eq!(r.status(), 413, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "payload_too_large", "{v}");
    }
    // A 300 KB header (hyper itself answers a bare 431 past about 408 KiB of request head).
    let r = http
        .get(format!("{}/api/v2/health", server.api))
        .bearer_auth(TOKEN)
        .header("x-padding", "h".repeat(300_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "request_header_fields_too_large", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_stateless_mcp_requests_log_nothing_at_info_or_above() {
    let dir = TempDir::new("mcp-quiet");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("trivial"), dir.path().join("plugins/trivial.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    // Audit lines to their own file; the log (stderr) as an operator gets it, with the default
    // filter (no SLUICE_LOG) and limits that 1 000 quick calls stay under.
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[audit]\ndestination = \"audit.log\"\n[rate_limit]\nrequests_per_second = 100000\nburst = 100000\n",
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut cmd = Server::command(&dir, &["--insecure-no-tls"], &["--config", "sluice.toml"]);
    cmd.env_remove("SLUICE_LOG").stderr(std::fs::File::create(&log).unwrap());
    let server = Server::spawn(cmd);
    let before = std::fs::read_to_string(&log).unwrap();
    assert!(before.contains("INFO"), "the default filter logs Sluice's own INFO lines: {before}");

    let http = reqwest::Client::new();
    // Calls (the fast path) and lists (through the MCP library) in turn: neither logs.
    for i in 0..1000 {
        let call = if i % 2 == 0 {
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "test.trivial", "arguments": {}}})
        } else {
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/list", "params": {}})
        };
        let r = http
            .post(format!("{}/", server.api))
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&call)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert!(answer["result"]["isError"] != json!(true) && answer["result"].is_object(), "{answer}");
        if i % 2 == 1 {
            assert_eq!(answer["result"]["tools"][0]["name"], "test.trivial", "{answer}");
        }
    }
    let after = std::fs::read_to_string(&log).unwrap();
    let new = &after[before.len()..];
    assert!(new.is_empty(), "1 000 stateless MCP requests logged: {}", new.lines().take(5).collect::<Vec<_>>().join("\n"));
    // Each call is audited (the audit writer runs behind the requests: wait for it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let calls = audit.lines().filter(|l| l.contains("\"event\":\"tool_call\"")).count();
        if calls >= 500 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{calls} of 500 calls audited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The `_meta` a 2026-07-28 request carries instead of a session.
pub(crate) fn meta_2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raw_2026_07_28_exchange_discovers_and_calls_without_a_session() {
    let dir = TempDir::new("mcp-2026");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("trivial"), dir.path().join("plugins/trivial.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&dir, &[]);
    let http = reqwest::Client::new();
    let post = |path: &str, method: &str, params: Value| {
        let mut r = http
            .post(format!("{}{path}", server.api))
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method);
        if let Some(name) = params.get("name").and_then(Value::as_str) {
            r = r.header("mcp-name", name);
        }
        r.json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})).send()
    };
    for path in ["/", "/mcp"] {
        let r = post(path, "server/discover", json!({"_meta": meta_2026()})).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers().get("mcp-session-id").is_none(), "{path}: no session in 2026-07-28");
        let v: Value = r.json().await.unwrap();
        let versions: Vec<&str> = v["result"]["supportedVersions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        for want in ["2025-06-18", "2025-11-25", "2026-07-28"] {
            assert!(versions.contains(&want), "{path}: {want} not offered: {v}");
        }
        assert_eq!(v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "sluice", "{v}");

        let r = post(path, "tools/list", json!({"_meta": meta_2026()})).await.unwrap();
        let v: Value = r.json().await.unwrap();
        let tool = &v["result"]["tools"][0];
        assert_eq!(tool["name"], "test.trivial", "{v}");
        assert_eq!(tool["annotations"]["readOnlyHint"], true, "{v}");

        let r = post(path, "tools/call", json!({"name": "test.trivial", "arguments": {}, "_meta": meta_2026()})).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["result"]["structuredContent"], json!({"ok": true}), "{v}");
        assert_eq!(v["result"]["isError"], false);
    }
    // A 2026-07-28 request without its per-request metadata is refused, as the revision says.
    let r = post("/", "tools/call", json!({"name": "test.trivial", "arguments": {}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}))
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("_meta"), "{v}");
    assert!(v.get("result").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_and_rmcp_work_with_every_revision_they_speak() {
    sluice::tls::install_provider();
    let _cpu = crate::common::shared_cpu().await;
    use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
    let dir = TempDir::new("mcp-revisions");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("trivial"), dir.path().join("plugins/trivial.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&dir, &[]);
    let sdk = std::env::var("SLUICE_MCP_PYTHON").expect("SLUICE_MCP_PYTHON is not set: run the tests with `scripts/dev test`");
    let script = crate::common::root().join("tests/mcp/python_client.py");

    for path in ["/", "/mcp"] {
        let url = format!("{}{path}", server.api);
        // The Python SDK: the handshake (it offers its newest handshake revision), discovery
        // first ("auto", which picks the newest revision), and 2026-07-28 pinned.
        for (mode, want) in [("legacy", "2025-11-25"), ("auto", "2026-07-28"), ("2026-07-28", "2026-07-28")] {
            let out = Command::new("python3")
                .arg(&script)
                .args([url.as_str(), TOKEN, mode, "test.trivial"])
                .env("SLUICE_MCP_PYTHON", &sdk)
                .output()
                .unwrap();
            assert!(out.status.success(), "{path} {mode}: {}", String::from_utf8_lossy(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["protocol_version"], want, "{path} {mode}: {v}");
            assert_eq!(v["tools"], json!(["test.trivial"]), "{path} {mode}");
            assert_eq!(v["read_only"], json!([true]), "{path} {mode}");
            assert_eq!((&v["is_error"], &v["structured"]), (&json!(false), &json!({"ok": true})), "{path} {mode}");
        }
        // rmcp's client: the handshake at each revision, and discovery.
        let lifecycles = [
            ("2025-06-18", ClientLifecycleMode::Initialize),
            ("2025-11-25", ClientLifecycleMode::Initialize),
            ("2026-07-28", ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] }),
        ];
        for (version, lifecycle) in lifecycles {
            let wanted: ProtocolVersion = serde_json::from_value(json!(version)).unwrap();
            let info = ClientConfig::new(ClientCapabilities::default(), Implementation::new("rmcp-test", "0"))
                .with_protocol_version(wanted.clone());
            let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(TOKEN));
            let client = info.serve_with_lifecycle(transport, lifecycle).await.unwrap_or_else(|e| panic!("{path} {version}: {e}"));
            assert_eq!(client.peer_info().map(|i| i.protocol_version.clone()), Some(wanted), "{path} {version}");
            let tools = client.list_all_tools().await.unwrap();
            assert_eq!(tools.iter().map(|t| t.name.as_ref()).collect::<Vec<_>>(), ["test.trivial"], "{path} {version}");
            let r = client.call_tool(CallToolRequestParams::new("test.trivial")).await.unwrap();
            assert_eq!(r.structured_content, Some(json!({"ok": true})), "{path} {version}");
            let _ = client.cancel().await;
        }
    }
}

/// The JSON-RPC answer with `id` in an event stream or a JSON body.
fn answer_with_id(text: &str, id: &Value) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| &v["id"] == id)
        .unwrap_or_else(|| panic!("no answer {id} in {text}"))
}

/// A request id differs between two requests; everything else must not.
fn without_request_ids(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| k.as_str() != "request_id").map(|(k, v)| (k.clone(), without_request_ids(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_request_ids).collect()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(inner @ Value::Object(_)) => Value::String(without_request_ids(&inner).to_string()),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stateless_tool_calls_answer_exactly_what_the_mcp_library_answers() {
    let dir = TempDir::new("mcp-parity");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(component("trivial"), plugins.join("trivial.wasm")).unwrap();
    std::fs::copy(component("fleet-cluster-summary"), plugins.join("summary.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let seed = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "2", "--nodes", "2", "--hours", "1"])
        .output()
        .unwrap();
    assert!(seed.status.success());
    let server = Server::start(&dir, &[]);
    let http = reqwest::Client::new();
    let post = |path: &str, headers: Vec<(&'static str, String)>, body: Value| {
        let mut r = http
            .post(format!("{}{path}", server.api))
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    // The library's own answers: a session at /mcp.
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "parity", "version": "0"}}});
    let r = post("/mcp", vec![], init).await.unwrap();
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    let session_headers = || vec![("mcp-session-id", session.clone()), ("mcp-protocol-version", "2025-11-25".to_owned())];
    post("/mcp", session_headers(), json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await.unwrap();

    let calls = [
        (json!(1), json!({"name": "test.trivial", "arguments": {}})),
        (json!("two"), json!({"name": "test.trivial"})),
        (json!(3), json!({"name": "fleet.cluster.summary", "arguments": {"cluster_id": "cluster-b"}})),
        (json!(4), json!({"name": "fleet.cluster.summary", "arguments": {"cluster_id": 7}})),
        (json!(5), json!({"name": "no.such_tool", "arguments": {}})),
    ];
    for (id, params) in calls {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        let reference = post("/mcp", session_headers(), body.clone()).await.unwrap().text().await.unwrap();
        let reference = without_request_ids(&answer_with_id(&reference, &id));
        for headers in [vec![], vec![("mcp-protocol-version", "2025-11-25".to_owned())], vec![("mcp-protocol-version", "2025-06-18".to_owned())]] {
            let r = post("/", headers.clone(), body.clone()).await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
            let fast = without_request_ids(&r.json::<Value>().await.unwrap());
            assert_eq!(fast, reference, "{params} with {headers:?}");
        }
    }
}
