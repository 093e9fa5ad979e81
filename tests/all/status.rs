//! The status page in a real browser: Debian's Chromium (headless, driven by playwright-core)
//! signs in through the page's form, and the page shows the tools with their recent calls, a
//! failing sink and a debounced one with the conditions operators read, without console errors
//! and without scripts. The screenshot is kept as an artifact.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, GatewayOptions, TENANT_TOKEN, TestGateway, event_counts_export, http_sink};
use crate::sinks::receiver;

/// Serves the gateway's API on loopback, as `sluice serve` does.
async fn serve(gw: &TestGateway) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(gw.gateway.api());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_chromium_shows_tools_a_failing_sink_and_a_debounced_one() {
    let _cpu = crate::common::shared_cpu().await;
    let (hook, flaky) = (receiver().await, receiver().await);
    flaky.status.store(503, Ordering::SeqCst);
    let (hook_url, flaky_url) = (hook.url.clone(), flaky.url.clone());
    let gw = TestGateway::start(GatewayOptions {
        configure: Box::new(move |c| {
            c.sinks = vec![http_sink("hook", &hook_url), http_sink("flaky", &flaky_url)];
            c.exports = vec![event_counts_export()];
        }),
        ..Default::default()
    });
    // Two runs: the hook is debounced the second time, the flaky sink fails both times.
    for _ in 0..2 {
        assert_eq!(gw.request("POST", "/api/v2/exports/event-counts/run", None).await.status, 200);
    }
    assert_eq!(gw.request("POST", "/api/v2/sinks/flaky/test", None).await.body["verified"], false);
    assert_eq!(gw.call("fleet.cluster.summary", json!({})).await.status, 200);
    assert_eq!(gw.call("fleet.cluster.summary", json!({})).await.status, 200);
    assert_ne!(gw.call("fleet.cluster.run_analysis", json!({"sql": "SELECT nope FROM nowhere"})).await.status, 200);
    let base = serve(&gw).await;

    // Without a bearer: the sign-in form; a bearer without the admin permission is refused; the
    // admin bearer in the header gets the page.
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let form = r.text().await.unwrap();
    assert!(form.contains("name=\"token\"") && !form.contains("<table"), "{form}");
    let r = http.post(format!("{base}/status/session")).form(&[("token", TENANT_TOKEN)]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = http.get(format!("{base}/status")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(!html.contains(ADMIN_TOKEN) && !html.contains("settings"), "the page shows no secrets");

    // In the browser, through the form and the session cookie.
    let artifacts = std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()))
        .join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let playwright = std::env::var("SLUICE_PLAYWRIGHT").expect("SLUICE_PLAYWRIGHT is not set: run the tests with `scripts/dev test`");
    let out = Command::new("node")
        .arg(crate::common::root().join("tests/status/page_check.mjs"))
        .args([base.as_str(), ADMIN_TOKEN])
        .arg(&shot)
        .env("SLUICE_PLAYWRIGHT", playwright)
        .output()
        .expect("node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((page["signInStatus"].as_u64(), page["status"].as_u64()), (Some(200), Some(200)), "{page}");
    assert!(page["url"].as_str().unwrap().ends_with("/status"), "{page}");
    assert_eq!(page["problems"], json!([]), "console errors or warnings");
    assert_eq!((page["scripts"].as_u64(), page["refresh"].as_str()), (Some(0), Some("10")));
    let rows: Vec<Vec<String>> = serde_json::from_value(page["rows"].clone()).unwrap();
    let row = |first: &str| rows.iter().find(|r| r.first().map(String::as_str) == Some(first)).cloned().unwrap_or_else(|| panic!("no row {first}: {rows:?}"));
    // Tools: version, digest, and the calls of the last minutes (one of run_analysis's failed).
    let summary = row("fleet.cluster.summary");
    assert_eq!((summary[1].as_str(), summary[4].as_str(), summary[5].as_str()), ("0.1.0", "2", "0"), "{summary:?}");
    let analysis = row("fleet.cluster.run_analysis");
    assert_eq!((analysis[4].as_str(), analysis[5].as_str()), ("1", "1"), "{analysis:?}");
    assert!(analysis[6].starts_with("tool error") && analysis[6].contains("nowhere"), "{analysis:?}");
    assert_eq!(summary[6], "—", "{summary:?}");
    // Exports: each sink's condition as operators read it.
    let exports: Vec<&Vec<String>> = rows.iter().filter(|r| r.len() == 5 && r[1] != "http" && (r[0] == "hook" || r[0] == "flaky")).collect();
    let hook_line = exports.iter().find(|r| r[0] == "hook").unwrap();
    let flaky_line = exports.iter().find(|r| r[0] == "flaky").unwrap();
    assert_eq!(hook_line[1], "Debounced", "{hook_line:?}");
    assert_eq!(flaky_line[1], "ExportFailed", "{flaky_line:?}");
    // Six failed tries in two runs: the breaker opened at the fifth, and the page says so.
    assert_eq!((flaky_line[3].as_str(), flaky_line[4].starts_with("transient:")), ("open", true), "{flaky_line:?}");
    assert_eq!(hook_line[3], "closed", "{hook_line:?}");
    // Sinks: the breaker and the failed connection test.
    let sink_row = |name: &str| rows.iter().find(|r| r.len() == 5 && r[0] == name && r[1] == "http").cloned().unwrap();
    let flaky_sink = sink_row("flaky");
    assert_eq!(flaky_sink[3], "open", "{flaky_sink:?}");
    assert!(flaky_sink[4].starts_with("failed"), "{flaky_sink:?}");
    assert_eq!((sink_row("hook")[3].as_str(), sink_row("hook")[4].as_str()), ("closed", "not run"));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "the screenshot at {}", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
    // Signing in is audited (never with the token).
    let opened = gw.audit_lines("status_session");
    assert!(opened.iter().any(|l| l["result"] == "opened" && l["bearer_key_name"] == "ops"), "{opened:?}");
    assert!(!serde_json::to_string(&opened).unwrap().contains(ADMIN_TOKEN));
}
