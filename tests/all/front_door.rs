//! The front door: every error of the wire contract, auth and rotation, tenant scope, limits,
//! drain, audit and metrics.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::auth::{AuthSource, token_hash};

use crate::common::{ADMIN_TOKEN, GatewayOptions, TENANT_TOKEN, TempDir, TestGateway, assert_request_id};

#[tokio::test]
async fn a_missing_or_unknown_bearer_is_401_with_www_authenticate_and_an_audit_line() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    for (auth, code) in [
        (None, "missing_bearer"),
        (Some("Basic dXNlcjpwdw=="), "missing_bearer"),
        (Some("Bearer"), "missing_bearer"),
        (Some("Bearer "), "missing_bearer"),
        (Some("Bearer not-a-known-token"), "invalid_bearer"),
        (Some("Bearer test-admin-token-012345678"), "invalid_bearer"),
    ] {
        let r = gw.request_with(auth, "GET", "/api/v2/tools/list", None).await;
        r.assert_error(401, code);
        assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
        let id = assert_request_id(&r);
        let line = gw.audit_lines("auth_failure").into_iter().find(|l| l["req_id"] == id.as_str()).expect("audit line");
        assert_eq!(line["reason"], code);
        assert!(!line.to_string().contains("not-a-known-token"), "a token reached the audit log: {line}");
    }
    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let r = gw.request_with(Some(&format!("{scheme} {ADMIN_TOKEN}")), "GET", "/api/v2/whoami", None).await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.text);
    }
}

#[tokio::test]
async fn whoami_and_health_answer_the_bearer_without_its_key_name() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let r = gw.request("GET", "/api/v2/whoami", None).await;
    assert_eq!(r.body["bearer_id"], &token_hash(ADMIN_TOKEN)[..16]);
    assert_eq!(r.body["cluster_ids"], json!([]));
    assert_eq!(r.body["capabilities"]["tools"], true);
    assert_eq!(r.body["capabilities"]["sql"], true);
    assert!(!r.text.contains("ops"), "key_name leaked: {}", r.text);
    let r = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/whoami", None).await;
    assert_eq!(r.body["cluster_ids"], json!(["cluster-a"]));
    assert_eq!(r.body["capabilities"]["sql"], false);
    assert!(!r.text.contains("tenant-a"), "key_name leaked: {}", r.text);
    let r = gw.request("GET", "/api/v2/health", None).await;
    assert_eq!(r.body, json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}));
    let r = gw.request_with(None, "GET", "/api/versions", None).await;
    assert_eq!(r.status, 200);
    let keys: BTreeSet<&str> = r.body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["supported", "deprecated", "preferred", "binary", "capabilities", "removal_schedule"]));
    assert_eq!(r.body["binary"]["version"].as_str().unwrap().matches('.').count(), 1, "MAJOR.MINOR only");
}

#[tokio::test]
async fn a_tenant_scoped_bearer_sees_only_its_clusters() {
    let gw = TestGateway::start(GatewayOptions::default());
    let r = gw.call_as(TENANT_TOKEN, "fleet.cluster.summary", json!({"cluster_id": "cluster-b"})).await;
    r.assert_error(403, "tenant_scoped_bearer_refused");
    let r = gw.call_as(TENANT_TOKEN, "fleet.cluster.run_analysis", json!({"sql": "SELECT 1"})).await;
    r.assert_error(403, "tenant_scoped_bearer_refused");
    let r = gw.call_as(TENANT_TOKEN, "fleet.cluster.summary", json!({"cluster_id": "cluster-a"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["result"]["rows"].as_array().unwrap().iter().all(|row| row["cluster_id"] == "cluster-a"));
    // Without a cluster_id the tool asks for every cluster; the host's filtering answers with
    // the bearer's only (the admin sees all three).
    let mine = gw.call_as(TENANT_TOKEN, "fleet.cluster.summary", json!({})).await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    assert_eq!(mine.body["result"], r.body["result"]);
    let all = gw.call("fleet.cluster.summary", json!({})).await;
    assert_eq!(all.body["result"]["rows"].as_array().unwrap().len(), 12);

    let list = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/tools/list", None).await;
    let names: Vec<&str> = list.body["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fleet.cluster.summary"]);
    let r = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/admin/plugins", None).await;
    r.assert_error(403, "tenant_scoped_bearer_refused");
    // The refusal is audited with the cluster the request named.
    let refused = gw.audit_lines("tool_call").into_iter().filter(|l| l["status"] == 403).count();
    assert_eq!(refused, 2);
}

#[tokio::test]
async fn burst_plus_one_requests_get_429_with_retry_after_and_buckets_are_per_bearer() {
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(|c| {
            c.rate_limit.requests_per_second = 1;
            c.rate_limit.burst = 10;
        }),
        ..Default::default()
    });
    // The burst passes; then the bucket is empty (a slow machine may have refilled a token or
    // two meanwhile, at 1 per second).
    let started = Instant::now();
    let mut passed = 0;
    let r = loop {
        let r = gw.request("GET", "/api/v2/whoami", None).await;
        if r.status != 200 {
            break r;
        }
        passed += 1;
        assert!(passed <= 50, "the bucket never ran dry");
    };
    let refill = started.elapsed().as_secs() + 1;
    assert!(passed >= 10 && passed <= 10 + refill, "{passed} requests passed a burst of 10");
    r.assert_error(429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let r = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/whoami", None).await;
    assert_eq!(r.status, 200, "another bearer has its own bucket");
    assert_eq!(gw.audit_lines("rate_limited").len(), 1);
}

/// Waits until `n` requests are past the front door (and hold their limiter permits).
async fn wait_in_flight(gw: &TestGateway, n: usize) {
    let started = Instant::now();
    while gw.gateway.state.drain.in_flight() < n {
        assert!(started.elapsed() < Duration::from_secs(10), "the slow call never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_per_bearer_in_flight_cap_answers_429() {
    let gw = std::sync::Arc::new(TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(|c| {
            c.limits.max_in_flight_per_bearer = 1;
        }),
        ..GatewayOptions::default().with_hostile()
    }));
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.call("test.hostile", json!({"mode": "spin", "ms": 1500})).await })
    };
    wait_in_flight(&gw, 1).await;
    let r = gw.call("test.hostile", json!({"mode": "ok"})).await;
    r.assert_error(429, "in_flight_cap");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another bearer is not affected by this bearer's cap.
    let r = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/whoami", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn the_process_in_flight_cap_answers_503() {
    let gw = std::sync::Arc::new(TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(|c| c.limits.max_in_flight = 1),
        ..GatewayOptions::default().with_hostile()
    }));
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.call("test.hostile", json!({"mode": "spin", "ms": 1500})).await })
    };
    wait_in_flight(&gw, 1).await;
    let r = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/whoami", None).await;
    r.assert_error(503, "in_flight_cap");
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_backend_failure_is_scrubbed_and_its_full_text_is_audited_under_the_request_id() {
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let r = gw.call("test.hostile", json!({"mode": "trap"})).await;
    r.assert_error(500, "tool_backend_failure");
    let id = assert_request_id(&r);
    assert_eq!(r.body["req_id"], id.as_str());
    let line = gw.audit_lines("tool_backend_failure").into_iter().find(|l| l["req_id"] == id.as_str()).expect("audit line");
    assert_eq!(line["tool"], "test.hostile");
    assert_eq!(line["bearer_key_name"], "ops");
    assert_eq!(line["bearer_hash"], token_hash(ADMIN_TOKEN));
    assert!(line["error"].as_str().unwrap().contains("wasm"), "full error text expected: {line}");
    // Successful calls are audited too, with the cluster they named.
    let r = gw.call("fleet.cluster.summary", json!({"cluster_id": "cluster-c"})).await;
    let id = assert_request_id(&r);
    let line = gw.audit_lines("tool_call").into_iter().find(|l| l["req_id"] == id.as_str()).unwrap();
    assert_eq!((line["status"].as_u64(), line["cluster_id"].as_str()), (Some(200), Some("cluster-c")));
}

#[tokio::test]
async fn draining_refuses_new_requests_with_503_and_retry_after_5() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    gw.gateway.state.drain.start();
    let r = gw.request("GET", "/api/v2/whoami", None).await;
    r.assert_error(503, "shutting_down");
    assert_eq!(r.header("retry-after"), Some("5"));
    let r = gw.request_with(None, "GET", "/api/versions", None).await;
    r.assert_error(503, "shutting_down");
}

#[tokio::test]
async fn metrics_need_the_bearer_and_use_only_bounded_labels() {
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let r = gw.request_with(None, "GET", "/metrics", None).await;
    r.assert_error(401, "missing_bearer");
    // Traffic with raw paths, cluster ids and tokens that must not become label values.
    gw.call("fleet.cluster.summary", json!({"cluster_id": "cluster-b"})).await;
    gw.call("test.hostile", json!({"mode": "trap"})).await;
    gw.request("GET", "/api/v2/no/such/path/zq9xk", None).await;
    gw.request_with(Some("Bearer secret-token-value"), "GET", "/api/v2/whoami", None).await;
    let r = gw.request("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text.clone();
    for needle in ["cluster-b", "zq9xk", "secret-token-value", ADMIN_TOKEN] {
        assert!(!text.contains(needle), "{needle} became a label value");
    }
    let allowed: BTreeSet<&str> = [
        "route", "method", "status", "plugin", "version", "outcome", "result", "reason", "limit", "le",
    ]
    .into();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        samples += 1;
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad sample value in {line}"));
        assert!(name_labels.starts_with("sluice_"), "{line}");
        if let Some((_, labels)) = name_labels.split_once('{') {
            for pair in labels.trim_end_matches('}').split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert!(allowed.contains(k), "unexpected label {k} in {line}");
                let v = v.trim_matches('"');
                match k {
                    "route" => assert!(v == "unmatched" || v.starts_with("/api/") || v == "/metrics", "{line}"),
                    // Tool names for calls, plugin file names for reloads.
                    "plugin" => assert!(
                        v.starts_with("fleet.cluster.") || v.starts_with("test.") || v.ends_with(".wasm"),
                        "{line}"
                    ),
                    "status" => assert!(["1xx", "2xx", "3xx", "4xx", "5xx"].contains(&v), "{line}"),
                    // A loaded tool's version (its series go when the version is swapped out).
                    "version" => assert!(v == "0.1.0" || v == "0.0.1", "{line}"),
                    _ => {}
                }
            }
        }
    }
    assert!(samples > 10);
    assert!(text.contains("sluice_auth_failures_total{reason=\"invalid_bearer\"} 1"));
    assert!(text.contains("route=\"/api/v2/tools/{name}\""));
    assert!(text.contains("sluice_plugin_reloads_total{plugin=\"hostile.wasm\",result=\"loaded\"} 1"), "{text}");
    assert!(text.contains("sluice_plugin_calls_total{outcome=\"trap\",plugin=\"test.hostile\",version=\"0.0.1\"} 1"), "{text}");
}

#[tokio::test]
async fn rotation_applies_new_tokens_at_once_and_retires_old_ones_after_the_grace() {
    let dir = TempDir::new("rotation");
    let acl = dir.path().join("bearers.yaml");
    std::fs::write(&acl, "- key_name: ci\n  token: old-token-1\n").unwrap();
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        auth: Some(AuthSource::AclFile(acl.clone())),
        configure: Box::new(|c| c.auth.rotation_grace = sluice::config::HumanDuration(Duration::from_millis(2000))),
        ..Default::default()
    });
    let whoami = |token: &'static str| {
        let gw = &gw;
        async move { gw.request_with(Some(&format!("Bearer {token}")), "GET", "/api/v2/whoami", None).await.status.as_u16() }
    };
    assert_eq!(whoami("old-token-1").await, 200);
    assert_eq!(whoami("new-token-2").await, 401);

    // Replace the file the way deploy tools do: write a temporary, rename over.
    let tmp = dir.path().join(".bearers.yaml.tmp");
    std::fs::write(&tmp, "- key_name: ci\n  token: new-token-2\n").unwrap();
    std::fs::rename(&tmp, &acl).unwrap();
    let changed = Instant::now();
    while whoami("new-token-2").await != 200 {
        assert!(changed.elapsed() < Duration::from_secs(2), "new token not live within 2 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = Instant::now();
    assert_eq!(whoami("old-token-1").await, 200, "the old token works during the grace window");
    let line = gw.audit_lines("bearer_rotation_applied").pop().expect("rotation audit line");
    assert_eq!(line["live_hash"], token_hash("new-token-2"));
    assert!(!line.to_string().contains("new-token-2"));
    // Grace is 2 s from the reload, which happened just before `applied`.
    while applied.elapsed() < Duration::from_millis(1200) {
        assert_eq!(whoami("old-token-1").await, 200, "old token refused before its grace ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(applied.elapsed())).await;
    assert_eq!(whoami("old-token-1").await, 401, "old token still accepted after its grace");
    assert_eq!(whoami("new-token-2").await, 200);

    // A broken file keeps the current bearers.
    std::fs::write(&acl, "- key_name: [this is not valid\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(whoami("new-token-2").await, 200);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_every_error_code() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    gw.request_with(None, "GET", "/api/v2/openapi.json", None).await.assert_error(401, "missing_bearer");
    let r = gw.request("GET", "/api/v2/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = &r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|p| !p.starts_with("/api/v2/tools/fleet."))
        .collect();
    // Each loaded tool has a path of its own with its input and output schemas.
    let summary = &doc["paths"]["/api/v2/tools/fleet.cluster.summary"]["post"];
    let list = gw.request("GET", "/api/v2/tools/list", None).await;
    let tool = list.body["tools"].as_array().unwrap().iter().find(|t| t["name"] == "fleet.cluster.summary").unwrap().clone();
    let body_schema = &summary["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body_schema["properties"]["args"], tool["input_schema"]);
    let answer = &summary["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(answer["properties"]["result"], tool["output_schema"]);
    assert!(summary["responses"].get("403").is_some());
    assert!(doc["paths"].get("/api/v2/tools/fleet.cluster.run_analysis").is_some());
    // A tenant-scoped bearer's document lists only the tools it may call.
    let scoped = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "GET", "/api/v2/openapi.json", None).await;
    assert!(scoped.body["paths"].get("/api/v2/tools/fleet.cluster.summary").is_some());
    assert!(scoped.body["paths"].get("/api/v2/tools/fleet.cluster.run_analysis").is_none());
    let expected = BTreeSet::from([
        "/api/versions",
        "/api/v1/{rest}",
        "/api/v2/health",
        "/api/v2/whoami",
        "/api/v2/openapi.json",
        "/api/v2/tools/list",
        "/api/v2/tools/{name}",
        "/api/v2/sql",
        "/v1/metrics",
        "/mcp",
        "/",
        "/api/v2/exports",
        "/api/v2/exports/{name}",
        "/api/v2/exports/{name}/run",
        "/api/v2/sinks",
        "/api/v2/sinks/{name}/test",
        "/api/v2/admin/plugins",
        "/api/v2/admin/plugins/reload",
        "/api/v2/admin/rollouts/{name}/promote",
        "/api/v2/admin/rollouts/{name}/rollback",
        "/metrics",
        "/.well-known/oauth-protected-resource",
    ]);
    assert_eq!(paths, expected);
    // Every route the document names answers (not the router's 404 fallback).
    for p in ["/api/v2/health", "/api/v2/whoami", "/api/v2/tools/list", "/api/v2/admin/plugins", "/metrics"] {
        assert_eq!(gw.request("GET", p, None).await.status, 200, "{p}");
    }
    let text = doc.to_string();
    for code in [
        "invalid_request", "invalid_args", "sql_not_read_only", "missing_bearer", "invalid_bearer",
        "tenant_scoped_bearer_refused", "tool_not_found", "gone", "payload_too_large", "rate_limited",
        "in_flight_cap", "tool_backend_failure", "shutting_down", "tool_timeout", "sql_timeout",
        "tool_not_permitted", "admin_permission_required",
    ] {
        assert!(text.contains(code), "error code {code} is not documented");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["paths"]["/api/versions"]["get"]["security"], json!([{}]));
    let call = &doc["paths"]["/api/v2/tools/{name}"]["post"]["responses"];
    for status in ["200", "400", "401", "403", "404", "413", "429", "500", "503", "504"] {
        assert!(call.get(status).is_some(), "tool call lacks a {status} response");
    }
}

/// Makes `dir` look like a Kubernetes Secret volume holding `files`: the data in a timestamped
/// directory, `..data` a symlink to it, each file a symlink through `..data`. Calling it again
/// swaps `..data` atomically, as the kubelet does on a Secret update.
fn kubernetes_secret_volume(dir: &std::path::Path, generation: u32, files: &[(&str, &str)]) {
    let data = dir.join(format!("..2026_11_29_{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, body) in files {
        std::fs::write(data.join(name), body).unwrap();
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn a_bearer_acl_in_a_kubernetes_secret_volume_rotates_when_the_secret_changes() {
    let dir = TempDir::new("k8s-secret");
    kubernetes_secret_volume(dir.path(), 1, &[("bearers.yaml", "- key_name: ci\n  token: k8s-token-1\n")]);
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        auth: Some(AuthSource::AclFile(dir.path().join("bearers.yaml"))),
        ..Default::default()
    });
    let whoami = |token: &'static str| {
        let gw = &gw;
        async move { gw.request_with(Some(&format!("Bearer {token}")), "GET", "/api/v2/whoami", None).await.status.as_u16() }
    };
    assert_eq!(whoami("k8s-token-1").await, 200);
    assert_eq!(whoami("k8s-token-2").await, 401);
    // The kubelet's update: a new data directory, `..data` swapped; `bearers.yaml` itself is an
    // unchanged symlink, so no event names it.
    kubernetes_secret_volume(dir.path(), 2, &[("bearers.yaml", "- key_name: ci\n  token: k8s-token-2\n")]);
    let changed = Instant::now();
    while whoami("k8s-token-2").await != 200 {
        assert!(changed.elapsed() < Duration::from_secs(2), "the Secret's new token is not live within 2 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
