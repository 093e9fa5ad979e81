//! Exports end to end: the engine runs the query, builds the envelope and delivers it with the
//! `http` sink to real receivers on loopback; debounce, a failing sink that does not block the
//! other, retries and the breaker, per-sink status, the connection test, and state that
//! survives a restart.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use sluice::config::SinkConfigEntry;

use crate::common::{sink_line as line, GatewayOptions, TENANT_TOKEN, TempDir, TestGateway, component, event_counts_export, http_sink};
use crate::sinks::receiver;

/// The export's query (see [`event_counts_export`]).
const SQL: &str = "SELECT cluster_id, count(*) AS events FROM events GROUP BY cluster_id ORDER BY cluster_id";

fn options(db_dir: &TempDir, hook: &str, flaky: &str) -> GatewayOptions {
    let (hook, flaky) = (hook.to_owned(), flaky.to_owned());
    let db = db_dir.path().join("exports.duckdb");
    let seed = !db.exists();
    GatewayOptions {
        seed,
        configure: Box::new(move |c| {
            c.database.path = db;
            c.sinks = vec![http_sink("hook", &hook), http_sink("flaky", &flaky)];
            c.exports = vec![event_counts_export()];
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_are_delivered_debounced_retried_and_survive_a_restart() {
    let (hook, flaky) = (receiver().await, receiver().await);
    let db_dir = TempDir::new("exports-db");
    let gw = TestGateway::start(options(&db_dir, &hook.url, &flaky.url));

    // First run: both sinks get the same envelope; its items are the query's rows.
    let r = gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert_eq!(r.body["generation"], 1);
    let direct = gw.request("POST", "/api/v2/sql", Some(&json!({"sql": SQL}).to_string())).await;
    for (rx, name) in [(&hook, "hook"), (&flaky, "flaky")] {
        assert_eq!(line(&r.body, name)["synced"], "Exported");
        let body = {
            let seen = rx.seen.lock().unwrap();
            assert_eq!(seen.len(), 1, "{name}");
            seen[0].2.clone()
        };
        let envelope: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(envelope["schemaVersion"], "sluice.export/v1");
        assert_eq!(envelope["export"], "event-counts");
        assert_eq!(envelope["checksum"], r.body["checksum"]);
        let items: Vec<Value> = direct.body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| json!({"cluster_id": row[0], "events": row[1]}))
            .collect();
        assert_eq!(envelope["items"], Value::Array(items));
    }

    // Unchanged data: the hook (1 h interval) is debounced; flaky (no interval) gets it again.
    let r = gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    assert_eq!(line(&r.body, "hook")["synced"], "Debounced");
    assert_eq!(line(&r.body, "flaky")["synced"], "Exported");
    assert_eq!(r.body["generation"], 1, "same data, same generation");
    assert_eq!((hook.seen.lock().unwrap().len(), flaky.seen.lock().unwrap().len()), (1, 2));

    // The flaky receiver fails: retried (3 attempts), reported, and the hook is not held up.
    flaky.status.store(503, Ordering::SeqCst);
    let r = gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    assert_eq!(r.body["condition"], "PartiallySynced", "{}", r.text);
    let f = line(&r.body, "flaky");
    assert_eq!(f["synced"], "ExportFailed");
    assert_eq!(f["lastError"]["class"], "transient");
    assert!(f["lastError"]["message"].as_str().unwrap().contains("503"), "{f}");
    assert_eq!(flaky.seen.lock().unwrap().len(), 2 + 3);
    assert_eq!(line(&r.body, "hook")["synced"], "Debounced");
    // Two more failures open the breaker (5 in a row); then calls fail fast.
    gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    let r = gw.request("GET", "/api/v2/exports/event-counts", None).await;
    assert_eq!(line(&r.body, "flaky")["breaker"], "open", "{}", r.text);
    let before = flaky.seen.lock().unwrap().len();
    let r = gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    assert!(line(&r.body, "flaky")["lastError"]["message"].as_str().unwrap().contains("circuit breaker open"), "{}", r.text);
    assert_eq!(flaky.seen.lock().unwrap().len(), before, "an open breaker sends nothing");

    // The connection test.
    let t = gw.request("POST", "/api/v2/sinks/hook/test", None).await;
    assert_eq!((t.status.as_u16(), t.body["verified"].clone()), (200, json!(true)), "{}", t.text);
    let t = gw.request("POST", "/api/v2/sinks/flaky/test", None).await;
    assert_eq!(t.body["verified"], false, "{}", t.text);
    let sinks = gw.request("GET", "/api/v2/sinks", None).await;
    assert_eq!(sinks.body["sinks"].as_array().unwrap().len(), 2);
    assert_eq!(sinks.body["sinks"][0]["type"], "http");
    gw.request("GET", "/api/v2/exports/nope", None).await.assert_error(404, "not_found");
    gw.request("POST", "/api/v2/sinks/nope/test", None).await.assert_error(404, "not_found");
    for (m, p) in [("GET", "/api/v2/exports"), ("POST", "/api/v2/exports/event-counts/run"), ("GET", "/api/v2/sinks")] {
        gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), m, p, None).await.assert_error(403, "tenant_scoped_bearer_refused");
    }
    let metrics = gw.request("GET", "/metrics", None).await.text;
    assert!(metrics.contains("sluice_export_debounced_total{export=\"event-counts\"}"), "{metrics}");
    assert!(metrics.contains("sluice_sink_errors_total{reason=\"transient\",sink_type=\"http\"}"), "{metrics}");
    assert!(metrics.contains("sluice_sink_breaker_state{sink=\"flaky\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_sink_breaker_state{sink=\"hook\"} 0"), "{metrics}");
    drop(gw);

    // A restart: what was delivered is remembered, what is owed is still owed.
    flaky.status.store(200, Ordering::SeqCst);
    let gw = TestGateway::start(options(&db_dir, &hook.url, &flaky.url));
    let r = gw.request("GET", "/api/v2/exports/event-counts", None).await;
    assert_eq!(line(&r.body, "flaky")["synced"], "ExportFailed", "{}", r.text);
    assert!(line(&r.body, "hook")["lastChecksum"].is_string(), "{}", r.text);
    let r = gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    assert_eq!(line(&r.body, "hook")["synced"], "Debounced", "{}", r.text);
    assert_eq!(line(&r.body, "flaky")["synced"], "Exported", "the owed delivery is made: {}", r.text);
    assert_eq!(r.body["condition"], "PartiallySynced");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_reload_reports_sink_components_too() {
    let dir = TempDir::new("reload-sinks");
    let file = dir.path().join("hook.wasm");
    std::fs::copy(component("http"), &file).unwrap();
    let entry = SinkConfigEntry { component: file.clone(), ..http_sink("hook", "http://127.0.0.1:9/x") };
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| c.sinks.push(entry)),
        ..Default::default()
    });
    // Nothing changed: no sink in the report.
    let r = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["sinks"], serde_json::json!([]), "{}", r.text);
    // A broken file: refused, named, and the working version stays.
    std::fs::write(&file, b"not a component").unwrap();
    let r = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    let line = &r.body["sinks"][0];
    assert_eq!((line["sink"].as_str(), line["component"].as_str()), (Some("hook"), None), "{}", r.text);
    assert!(line["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", r.text);
    let sinks = gw.request("GET", "/api/v2/sinks", None).await;
    let http_digest = crate::common::sha256_hex(&std::fs::read(component("http")).unwrap());
    assert_eq!(sinks.body["sinks"][0]["type"], "http", "the previous version serves on: {}", sinks.text);
    assert_eq!(sinks.body["sinks"][0]["digest"], http_digest.as_str(), "{}", sinks.text);
    // A new component loads and is named with its digest.
    let s3 = std::fs::read(component("s3")).unwrap();
    std::fs::write(&file, &s3).unwrap();
    let r = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    let line = &r.body["sinks"][0];
    assert!(line["error"].is_null(), "{}", r.text);
    let digest = crate::common::sha256_hex(&s3);
    assert!(line["component"].as_str().unwrap().ends_with(&format!("sha256:{digest}")), "{}", r.text);
    let audit = gw.audit_lines("plugin_reload");
    assert_eq!(audit.last().unwrap()["sinks_reloaded"], 1, "{audit:?}");
}
