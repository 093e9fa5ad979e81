//! OpenTelemetry traces from the real binary to a test OTLP/HTTP receiver on loopback, decoded
//! with `opentelemetry-proto`: one trace per tool call (REST and MCP), joined to the caller's
//! `traceparent`; exports and ingest; a collector that is down or stuck costs requests nothing
//! and its dropped spans are counted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::{Value, json};

use crate::binary::{Server, TOKEN};
use crate::common::{TempDir, component};
use crate::sinks::{Receiver, receiver};

/// A decoded span: what the tests look at.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    trace_state: String,
    name: String,
    kind: i32,
    attrs: HashMap<String, String>,
    error: bool,
    service: String,
}

/// Every span the receiver got so far.
fn spans(rx: &Receiver) -> Vec<Span> {
    let mut out = Vec::new();
    for (method, headers, body) in rx.seen.lock().unwrap().iter() {
        assert_eq!(method, "POST");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP traces request");
        for rs in req.resource_spans {
            let service = rs.resource.iter().flat_map(|r| &r.attributes).find(|a| a.key == "service.name");
            let service = service.and_then(|a| text(a.value.as_ref()?.value.as_ref()?)).unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attrs = s.attributes.iter().filter_map(|a| Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?))).collect();
                out.push(Span {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    trace_state: s.trace_state,
                    name: s.name,
                    kind: s.kind,
                    attrs,
                    error: s.status.is_some_and(|st| st.code == 2),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

fn text(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        Any::BoolValue(b) => Some(b.to_string()),
        Any::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// The spans of `trace_id`, once `want` of them arrived (within 10 s).
async fn trace(rx: &Receiver, trace_id: &str, want: usize) -> Vec<Span> {
    let started = Instant::now();
    loop {
        let got: Vec<Span> = spans(rx).into_iter().filter(|s| s.trace_id == trace_id).collect();
        if got.len() >= want {
            return got;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{} of {want} spans of {trace_id}: {got:#?}", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {spans:#?}");
    found[0]
}

/// A gateway serving the demo data and the summary tool, tracing to `endpoint`.
fn gateway(dir: &TempDir, traces: &str) -> Server {
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("fleet-cluster-summary"), dir.path().join("plugins/summary.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let out = std::process::Command::new(crate::common::sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "2", "--nodes", "3", "--hours", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = format!("[plugins]\nwatch = false\n[audit]\ndestination = \"audit.log\"\n{traces}");
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    Server::start(dir, &["--config", "sluice.toml"])
}

fn traces_config(endpoint: &str, extra: &str) -> String {
    format!("[traces]\nendpoint = \"{endpoint}\"\nsample_ratio = 0.0\ninterval = \"100ms\"\ntimeout = \"2s\"\n{extra}")
}

fn otlp_url(rx: &Receiver) -> String {
    rx.url.replace("/exports", "/v1/traces")
}

async fn summary(server: &Server, traceparent: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}/api/v2/tools/fleet.cluster.summary", server.api))
        .bearer_auth(TOKEN)
        .json(&json!({"args": {"cluster_id": "cluster-a"}}));
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp).header("tracestate", "vendor=abc");
    }
    r.send().await.unwrap()
}

fn audit_lines(dir: &TempDir, event: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["event"] == event).collect()
}

async fn audit_line(dir: &TempDir, event: &str, trace_id: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(l) = audit_lines(dir, event).into_iter().find(|l| l["trace_id"] == trace_id) {
            return l;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no {event} audit line with trace_id {trace_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rest_tool_call_is_one_trace_joined_to_the_callers_traceparent() {
    let _cpu = crate::common::shared_cpu().await;
    let rx = receiver().await;
    let dir = TempDir::new("traces-rest");
    let server = gateway(&dir, &traces_config(&otlp_url(&rx), ""));
    let mut seen_traces = Vec::new();
    for (trace_id, parent) in [("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"), ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")] {
        let r = summary(&server, Some(&format!("00-{trace_id}-{parent}-01"))).await;
        assert_eq!(r.status(), 200);
        let header = r.headers()["traceresponse"].to_str().unwrap().to_owned();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["result"]["rows"].as_array().unwrap().len(), 3, "{body}");

        let spans = trace(&rx, trace_id, 4).await;
        let request = one(&spans, "POST /api/v2/tools/{name}");
        assert_eq!(request.parent, parent, "the request span is a child of the caller's span");
        assert_eq!(request.kind, SpanKind::Server as i32);
        assert_eq!(request.attrs["http.route"], "/api/v2/tools/{name}");
        assert_eq!(request.attrs["http.request.method"], "POST");
        assert_eq!(request.attrs["http.response.status_code"], "200");
        assert_eq!(request.service, "sluice");
        assert_eq!(request.trace_state, "vendor=abc", "the caller's tracestate goes on with its trace");
        assert_eq!(header, format!("00-{trace_id}-{}-01", request.span_id), "traceresponse names the trace and the request span");

        let auth = one(&spans, "authenticate");
        assert_eq!((auth.parent.as_str(), auth.attrs["sluice.auth.method"].as_str()), (request.span_id.as_str(), "static"));
        assert_eq!(auth.attrs["sluice.auth.outcome"], "ok");
        let tool = one(&spans, "execute_tool fleet.cluster.summary");
        assert_eq!(tool.parent, request.span_id);
        assert_eq!(tool.attrs["gen_ai.tool.name"], "fleet.cluster.summary");
        assert_eq!(tool.attrs["sluice.outcome"], "ok");
        assert!(!tool.attrs["sluice.tool.version"].is_empty());
        assert_eq!(tool.attrs["sluice.tool.digest"].len(), 64, "{:?}", tool.attrs);
        let queries: Vec<&Span> = spans.iter().filter(|s| s.name == "host_query").collect();
        assert!(!queries.is_empty(), "the tool's queries have spans: {spans:#?}");
        for q in &queries {
            assert_eq!(q.parent, tool.span_id, "a query is a child of its tool call");
            assert_eq!((q.kind, q.attrs["db.system.name"].as_str()), (SpanKind::Client as i32, "duckdb"));
            assert_eq!(q.attrs["sluice.outcome"], "ok");
            assert!(q.attrs.contains_key("db.response.returned_rows"));
            assert!(!q.attrs.contains_key("db.query.text"), "no SQL text unless record_sql is on: {:?}", q.attrs);
        }
        assert!(spans.iter().all(|s| !s.error), "{spans:#?}");
        // The audit line carries the trace id.
        let line = audit_line(&dir, "tool_call", trace_id).await;
        assert_eq!(line["tool"], "fleet.cluster.summary");
        seen_traces.push(trace_id);
    }
    // One trace per call, nothing else: every span belongs to one of the two calls.
    let all = spans(&rx);
    assert!(all.iter().all(|s| seen_traces.contains(&s.trace_id.as_str())), "{all:#?}");

    // Not sampled by its caller: no span, but the trace id is still in the header and audit line.
    let quiet = "5c1c63257de34c67a54b3e0c7e6f8d11";
    let r = summary(&server, Some(&format!("00-{quiet}-1111111111111111-00"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["traceresponse"], format!("00-{quiet}-1111111111111111-00").as_str());
    audit_line(&dir, "tool_call", quiet).await;
    // No traceparent at sample_ratio 0: nothing traced, no header.
    let r = summary(&server, None).await;
    assert!(r.headers().get("traceresponse").is_none());
    // A malformed traceparent is ignored (the request is not refused).
    let r = summary(&server, Some("00-zz-11-01")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("traceresponse").is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = spans(&rx);
    assert!(all.iter().all(|s| seen_traces.contains(&s.trace_id.as_str())), "untraced calls made spans: {all:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_call_joins_the_trace_of_its_meta_traceparent() {
    let _cpu = crate::common::shared_cpu().await;
    let rx = receiver().await;
    let dir = TempDir::new("traces-mcp");
    let server = gateway(&dir, &traces_config(&otlp_url(&rx), "record_sql = true\n"));
    let trace_id = "11112222333344445555666677778888";
    let parent = "aaaabbbbccccdddd";
    let mut meta = crate::mcp::meta_2026();
    meta["traceparent"] = json!(format!("00-{trace_id}-{parent}-01"));
    let params = json!({"name": "fleet.cluster.summary", "arguments": {"cluster_id": "cluster-b"}, "_meta": meta});
    let r = reqwest::Client::new()
        .post(format!("{}/mcp", server.api))
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "fleet.cluster.summary")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("cluster-b") && !text.contains("\"isError\":true"), "{text}");

    let spans = trace(&rx, trace_id, 3).await;
    let mcp = one(&spans, "tools/call fleet.cluster.summary");
    assert_eq!(mcp.parent, parent, "the MCP request span is a child of _meta's traceparent");
    assert_eq!((mcp.kind, mcp.attrs["mcp.method.name"].as_str()), (SpanKind::Server as i32, "tools/call"));
    let tool = one(&spans, "execute_tool fleet.cluster.summary");
    assert_eq!(tool.parent, mcp.span_id);
    let query = spans.iter().find(|s| s.name == "host_query").expect("a query span");
    assert_eq!(query.parent, tool.span_id);
    assert!(query.attrs["db.query.text"].to_lowercase().contains("select"), "record_sql puts the SQL on the span: {:?}", query.attrs);
    let line = audit_line(&dir, "tool_call", trace_id).await;
    assert_eq!(line["via"], "mcp");
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_and_ingest_are_traced_with_each_sink_delivery_and_part() {
    let _cpu = crate::common::shared_cpu().await;
    let (rx, hook, down) = (receiver().await, receiver().await, receiver().await);
    down.status.store(503, Ordering::SeqCst);
    let dir = TempDir::new("traces-export");
    let sink = |name: &str, url: &str| {
        format!(
            "[[sink]]\nname = \"{name}\"\ncomponent = \"{}\"\nallow_private = true\ntimeout = \"2s\"\n[sink.settings]\nurl = \"{url}\"\n",
            component("http").display()
        )
    };
    let config = format!(
        "{}{}{}[[export]]\nname = \"counts\"\nsql = \"SELECT cluster_id, count(*) AS n FROM events GROUP BY cluster_id ORDER BY cluster_id\"\nsink = [{{ name = \"hook\" }}, {{ name = \"down\" }}]\n",
        traces_config(&otlp_url(&rx), ""),
        sink("hook", &hook.url),
        sink("down", &down.url),
    );
    let server = gateway(&dir, &config);
    let http = reqwest::Client::new();
    let trace_id = "99990000aaaabbbbccccddddeeeeffff";
    let r = http
        .post(format!("{}/api/v2/exports/counts/run", server.api))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{trace_id}-0123456789abcdef-01"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");

    // request → export → one delivery per sink → its parts (the failing one retried, failed).
    let spans = trace(&rx, trace_id, 6).await;
    let request = one(&spans, "POST /api/v2/exports/{name}/run");
    let export = one(&spans, "export counts");
    assert_eq!(export.parent, request.span_id);
    assert_eq!(export.attrs["sluice.export.items"], "2");
    let hook_span = one(&spans, "deliver hook");
    assert_eq!((hook_span.parent.as_str(), hook_span.attrs["sluice.outcome"].as_str()), (export.span_id.as_str(), "Exported"));
    assert_eq!(hook_span.attrs["sluice.sink.type"], "http");
    assert!(!hook_span.error);
    let down_span = one(&spans, "deliver down");
    assert_eq!(down_span.attrs["sluice.outcome"], "ExportFailed");
    assert_eq!(down_span.attrs["error.type"], "transient");
    assert!(down_span.error);
    let parts: Vec<&Span> = spans.iter().filter(|s| s.name == "sink_part").collect();
    let hook_part = parts.iter().find(|p| p.parent == hook_span.span_id).expect("the hook's part");
    assert_eq!((hook_part.attrs["sluice.outcome"].as_str(), hook_part.attrs["sluice.part.total"].as_str()), ("ok", "1"));
    let down_part = parts.iter().find(|p| p.parent == down_span.span_id).expect("the failing sink's part");
    assert_eq!((down_part.attrs["error.type"].as_str(), down_part.error), ("transient", true));

    // Ingest: request → ingest, with the counts.
    let trace_id = "abababababababababababababababab";
    let metrics = json!({"resourceMetrics": [{"resource": {"attributes": [
        {"key": "ingero.cluster.id", "value": {"stringValue": "cluster-a"}},
        {"key": "ingero.node.id", "value": {"stringValue": "node-1"}}]},
        "scopeMetrics": [{"metrics": [{"name": "gpu.util", "gauge": {"dataPoints": [{"asDouble": 0.5, "timeUnixNano": "1700000000000000000"}]}}]}]}]});
    let r = http
        .post(format!("{}/v1/metrics", server.api))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{trace_id}-0123456789abcdef-01"))
        .json(&metrics)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let spans = trace(&rx, trace_id, 3).await;
    let ingest = one(&spans, "ingest");
    assert_eq!(ingest.parent, one(&spans, "POST /v1/metrics").span_id);
    assert_eq!((ingest.attrs["sluice.ingest.accepted"].as_str(), ingest.attrs["sluice.ingest.rejected"].as_str()), ("1", "0"));
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn metric_reaches(server: &Server, name: &str, at_least: f64) -> f64 {
    let started = Instant::now();
    loop {
        let v = metric(server, name).await;
        if v >= at_least {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{name} = {v}, expected at least {at_least}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_or_stuck_costs_calls_nothing_and_dropped_spans_are_counted() {
    let _cpu = crate::common::shared_cpu().await;
    // Down: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = TempDir::new("traces-down");
    let server = gateway(&dir, &traces_config(&format!("http://127.0.0.1:{port}/v1/traces"), ""));
    for i in 0..3 {
        let r = summary(&server, Some(&format!("00-{:032x}-00f067aa0ba902b7-01", i + 1))).await;
        assert_eq!(r.status(), 200, "a call succeeds while the collector is down");
    }
    // 3 calls × (request, authenticate, execute_tool, at least one query).
    metric_reaches(&server, "sluice_trace_spans_dropped_total{reason=\"export_failed\"}", 12.0).await;
    assert_eq!(metric(&server, "sluice_trace_spans_exported_total").await, 0.0);
    drop(server);

    // Stuck: a collector that accepts and never answers holds the exporter for the whole
    // timeout; with a queue of one span, a call's other spans are dropped, not waited for.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stuck.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = stuck.accept().await {
            conns.push(c);
        }
    });
    let dir = TempDir::new("traces-stuck");
    let config = format!(
        "[traces]\nendpoint = \"http://{addr}/v1/traces\"\nsample_ratio = 1.0\nqueue = 1\nbatch = 1\ninterval = \"100ms\"\ntimeout = \"5s\"\n"
    );
    let server = gateway(&dir, &config);
    for _ in 0..3 {
        let started = Instant::now();
        let r = summary(&server, None).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("traceresponse").is_some(), "sample_ratio 1.0 traces every request");
        assert!(started.elapsed() < Duration::from_secs(2), "a call waited for the stuck collector: {:?}", started.elapsed());
    }
    metric_reaches(&server, "sluice_trace_spans_dropped_total{reason=\"queue_full\"}", 2.0).await;
    held.abort();
}

#[test]
fn the_configuration_refuses_unsafe_or_impossible_trace_settings_naming_the_key() {
    for (traces, key) in [
        ("endpoint = \"http://collector.example.com:4318/v1/traces\"", "traces.endpoint"),
        ("endpoint = \"ftp://127.0.0.1/v1/traces\"", "traces.endpoint"),
        ("endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample_ratio = 1.5", "traces.sample_ratio"),
        ("endpoint = \"http://127.0.0.1:4318/v1/traces\"\nqueue = 10\nbatch = 20", "traces.queue"),
        ("endpoint = \"http://127.0.0.1:4318/v1/traces\"\nheaders = { authorization = \"Bearer x\" }", "traces.headers.authorization"),
    ] {
        let config: sluice::config::Config = toml::from_str(&format!("[traces]\n{traces}\n")).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{traces}: {err}");
    }
    let ok: sluice::config::Config =
        toml::from_str("[traces]\nendpoint = \"https://collector.example.com/v1/traces\"\nheaders = { authorization = \"env:OTLP_AUTH\" }\n").unwrap();
    ok.validate().unwrap();
}
