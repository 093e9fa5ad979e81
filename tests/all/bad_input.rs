//! Bad input gets a clear 4xx in the contract's envelope, and nothing breaks.

use serde_json::json;

use crate::common::{GatewayOptions, TestGateway, assert_request_id};

fn gateway() -> TestGateway {
    TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(|c| c.server.max_body = sluice::config::ByteSize(64 << 10)),
        ..Default::default()
    })
}

#[tokio::test]
async fn malformed_json_is_an_invalid_request() {
    let gw = gateway();
    for body in ["{", "{\"args\": }", "not json", "[1,2]", "\"args\"", "{\"args\": {}, \"extra\": 1}"] {
        let r = gw.request("POST", "/api/v2/tools/fleet.cluster.summary", Some(body)).await;
        r.assert_error(400, "invalid_request");
    }
}

#[tokio::test]
async fn args_that_violate_the_schema_are_invalid_args_with_the_failing_path() {
    let gw = gateway();
    let r = gw.call("fleet.cluster.summary", json!({"cluster_id": 5})).await;
    r.assert_error(400, "invalid_args");
    assert_eq!(r.body["path"], "/cluster_id");
    let r = gw.call("fleet.cluster.summary", json!({"cluster_id": "bad id with spaces"})).await;
    r.assert_error(400, "invalid_args");
    assert_eq!(r.body["path"], "/cluster_id");
    let r = gw.call("fleet.cluster.summary", json!({"surprise": true})).await;
    r.assert_error(400, "invalid_args");
    let r = gw.call("fleet.cluster.run_analysis", json!({"sql": "SELECT 1", "limit": 10001})).await;
    r.assert_error(400, "invalid_args");
    assert_eq!(r.body["path"], "/limit");
    let r = gw.request("POST", "/api/v2/tools/fleet.cluster.summary", Some("{\"args\": [1]}")).await;
    r.assert_error(400, "invalid_args");
}

#[tokio::test]
async fn an_unknown_tool_is_tool_not_found_with_its_name() {
    let gw = gateway();
    let r = gw.call("fleet.cluster.nope", json!({})).await;
    r.assert_error(404, "tool_not_found");
    assert_eq!(r.body["name"], "fleet.cluster.nope");
}

#[tokio::test]
async fn a_name_outside_the_pattern_is_an_invalid_request() {
    let gw = gateway();
    let long = format!("a{}", "b".repeat(128));
    for name in ["Fleet.summary", "1fleet", "fleet-cluster", "a", &long, "fleet%20x", "fleet.%C3%A4"] {
        let r = gw.call(name, json!({})).await;
        r.assert_error(400, "invalid_request");
        assert!(r.body["error"].as_str().unwrap().contains("^[a-z][a-z0-9_.]{1,127}$"), "{}", r.text);
    }
}

#[tokio::test]
async fn an_oversized_body_is_payload_too_large() {
    let gw = gateway();
    let big = format!("{{\"args\": {{\"cluster_id\": \"{}\"}}}}", "x".repeat(100 << 10));
    let r = gw.request("POST", "/api/v2/tools/fleet.cluster.summary", Some(&big)).await;
    r.assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn api_v1_is_gone_with_the_exact_body() {
    let gw = gateway();
    for (method, path) in [("GET", "/api/v1/tools/list"), ("POST", "/api/v1/query"), ("DELETE", "/api/v1")] {
        let r = gw.request(method, path, None).await;
        r.assert_error(410, "gone");
        assert_eq!(
            r.body,
            json!({"error": "api/v1 removed in v1.0; use /api/v2", "code": "gone", "removed_version": "v1",
                   "preferred": "v2", "docs": sluice::http::API_VERSIONING_DOCS})
        );
        assert!(r.text.starts_with("{\"error\":\"api/v1 removed in v1.0; use /api/v2\",\"code\":\"gone\""), "{}", r.text);
    }
}

#[tokio::test]
async fn every_response_has_a_request_id_and_ids_differ() {
    let gw = gateway();
    let a = gw.request("GET", "/api/v2/tools/list", None).await;
    let b = gw.request("GET", "/no/such/thing", None).await;
    b.assert_error(404, "not_found");
    assert_ne!(assert_request_id(&a), assert_request_id(&b));
    let names: Vec<&str> = a.body["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fleet.cluster.run_analysis", "fleet.cluster.summary"]);
    for t in a.body["tools"].as_array().unwrap() {
        assert_eq!(t["input_schema"]["type"], "object");
        assert!(t["output_schema"].is_object());
        assert!(t["description"].as_str().is_some_and(|d| d.len() > 10));
    }
}

#[tokio::test]
async fn every_route_limits_bodies_with_the_json_error_mcp_included() {
    let gw = gateway(); // max_body 64 KiB
    let pad = "x".repeat(100 << 10);
    let body = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{{\"pad\":\"{pad}\"}}}}");
    let auth = format!("Bearer {}", crate::common::ADMIN_TOKEN);
    let len = body.len().to_string();
    let paths = ["/", "/mcp", "/api/v2/tools/fleet.cluster.summary", "/api/v2/sql"];
    for path in paths {
        // Declared: the front door refuses it before anything reads it.
        let declared = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("content-length", len.as_str()),
        ];
        let r = gw.request_raw("POST", path, &declared, body.clone().into_bytes()).await;
        r.assert_error(413, "payload_too_large");
        assert_eq!(r.body["limit_bytes"], 64 << 10, "{path}");
        // Not declared: the limit holds as the body is read.
        let r = gw.request_raw("POST", path, &declared[..3], body.clone().into_bytes()).await;
        r.assert_error(413, "payload_too_large");
    }
    // Routes that take no body and public routes are limited too.
    for path in ["/api/v2/exports/nope/run", "/api/versions"] {
        let headers = [("authorization", auth.as_str()), ("content-length", len.as_str())];
        gw.request_raw("POST", path, &headers, body.clone().into_bytes()).await.assert_error(413, "payload_too_large");
    }
    // Under the limit, MCP answers as before.
    let small = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let headers = [
        ("authorization", auth.as_str()),
        ("host", "127.0.0.1"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let r = gw.request_raw("POST", "/", &headers, small.as_bytes().to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("fleet.cluster.summary"), "{}", r.text);
}

#[tokio::test]
async fn oversized_headers_are_431_with_the_json_error() {
    let gw = gateway();
    let auth = format!("Bearer {}", crate::common::ADMIN_TOKEN);
    let big = "x".repeat(100 << 10);
    for path in ["/api/v2/health", "/api/versions", "/", "/no/such/route"] {
        let r = gw.request_raw("GET", path, &[("authorization", &auth), ("x-padding", &big)], vec![]).await;
        r.assert_error(431, "request_header_fields_too_large");
        assert_eq!(r.body["limit_bytes"], sluice::config::DEFAULT_MAX_HEADER_BYTES, "{path}");
    }
    // Many headers add up.
    let chunk = "y".repeat(2 << 10);
    let many: Vec<(String, &str)> = (0..40).map(|i| (format!("x-pad-{i}"), chunk.as_str())).collect();
    let mut headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    headers.push(("authorization", &auth));
    gw.request_raw("GET", "/api/v2/health", &headers, vec![]).await.assert_error(431, "request_header_fields_too_large");
    // Ordinary large headers (8 KiB, e.g. a long cookie) pass.
    let fine = "z".repeat(8 << 10);
    let r = gw.request_raw("GET", "/api/v2/health", &[("authorization", &auth), ("cookie", &fine)], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The OpenAPI document names the answer on every route.
    let doc = gw.request("GET", "/api/v2/openapi.json", None).await.body;
    assert_eq!(doc["paths"]["/api/v2/health"]["get"]["responses"]["431"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody", "{}", doc["paths"]["/api/v2/health"]);
    assert!(doc.to_string().contains("request_header_fields_too_large"));
}
