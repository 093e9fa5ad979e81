//! The monitoring kit in `deploy/monitoring/`: the alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`, Debian's `prometheus` package), every alert is tested
//! firing and points at its runbook section, and every query of the rules and the dashboard
//! names only metrics Sluice exports.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

fn monitoring() -> std::path::PathBuf {
    crate::common::root().join("deploy/monitoring")
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("promtool (Debian package prometheus; .ci/run installs it)")
}

fn rules() -> Vec<Value> {
    let text = std::fs::read_to_string(monitoring().join("sluice-alerts.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    doc["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [["check", "rules", "sluice-alerts.yaml"], ["test", "rules", "sluice-alerts.test.yaml"]] {
        let out = promtool(&args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_alert_is_tested_firing_and_has_a_runbook_section() {
    let alerts: BTreeSet<String> = rules().iter().map(|r| r["alert"].as_str().unwrap().to_owned()).collect();
    let tests: Value =
        serde_norway::from_str(&std::fs::read_to_string(monitoring().join("sluice-alerts.test.yaml")).unwrap()).unwrap();
    let fired: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().clone())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(alerts, fired, "every alert needs a unit test in which it fires");
    let ops = std::fs::read_to_string(crate::common::root().join("docs/operations.md")).unwrap();
    for r in rules() {
        let name = r["alert"].as_str().unwrap();
        let anchor = format!("alert-{}", name.to_lowercase());
        assert_eq!(r["annotations"]["runbook"], format!("docs/operations.md#{anchor}"), "{name}");
        assert!(ops.contains(&format!("<a id=\"{anchor}\"></a>")), "docs/operations.md has no runbook section for {name}");
        assert!(["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or_default()), "{name}");
    }
}

/// The metric names Sluice registers (`host/src/metrics/`), with the series a histogram adds.
fn exported() -> BTreeSet<String> {
    let dir = crate::common::root().join("host/src/metrics");
    let mut src = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        src += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    let mut names = BTreeSet::new();
    for (i, _) in src.match_indices("\"sluice_") {
        let name: String = src[i + 1..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if src[..i].trim_end().ends_with("HistogramOpts::new(") {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    assert!(names.len() > 15, "{names:?}");
    names
}

/// Metric names a PromQL expression selects: identifiers before `{`, `[` or, inside
/// `label_values(`, a `,`; and every `sluice_*` word.
fn selected(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            let in_label_values = expr[..start].trim_end().ends_with("label_values(");
            if word.starts_with("sluice_") || matches!(next, Some('{') | Some('[')) || (in_label_values && next == Some(',')) {
                out.insert(word.to_owned());
            }
            // Skip a label matcher block: its words are labels, not metrics.
            if next == Some('{') {
                while i < bytes.len() && bytes[i] != b'}' {
                    i += 1;
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn every_query_of_the_rules_and_the_dashboard_names_only_metrics_sluice_exports() {
    let exported = exported();
    let known = |m: &str| m == "up" || exported.contains(m);
    for r in rules() {
        let expr = r["expr"].as_str().unwrap();
        let metrics = selected(expr);
        assert!(!metrics.is_empty(), "{expr}");
        for m in metrics {
            assert!(known(&m), "alert {}: {m} is not a metric Sluice exports", r["alert"]);
        }
    }
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(monitoring().join("sluice-dashboard.json")).unwrap()).unwrap();
    assert_eq!(dash["uid"], "sluice-gateway");
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut queries: Vec<String> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {}", p["title"]);
        queries.extend(targets.iter().map(|t| t["expr"].as_str().unwrap().to_owned()));
    }
    let mut used = BTreeSet::new();
    for q in &queries {
        let metrics = selected(q);
        assert!(!metrics.is_empty(), "{q}");
        for m in metrics {
            assert!(known(&m), "dashboard query {q}: {m} is not a metric Sluice exports");
            used.insert(m);
        }
    }
    // The dashboard shows every family Sluice exports (a histogram through its buckets).
    for name in exported.iter().filter(|n| !n.ends_with("_sum") && !n.ends_with("_count") && !n.ends_with("_bucket")) {
        let series = if exported.contains(&format!("{name}_bucket")) { format!("{name}_bucket") } else { name.clone() };
        assert!(used.contains(&series), "the dashboard does not show {name}");
    }
    // The checker itself: a misspelt metric is caught.
    assert_eq!(selected("rate(sluice_http_requestz_total{route=\"x\"}[5m])"), BTreeSet::from(["sluice_http_requestz_total".to_owned()]));
}

#[tokio::test]
async fn the_audit_writer_metrics_the_alerts_use_are_exported() {
    let gw = crate::common::TestGateway::start(crate::common::GatewayOptions { seed: false, ..Default::default() });
    let text = gw.request("GET", "/metrics", None).await.text;
    for name in ["sluice_audit_backlog_lines", "sluice_audit_write_errors_total"] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing from /metrics");
    }
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

#[tokio::test]
async fn per_plugin_metrics_follow_calls_traps_deadlines_memory_and_swaps() {
    use crate::common::{GatewayOptions, TestGateway, versioned_component};
    use serde_json::json;
    let gw = TestGateway::start(GatewayOptions { seed: false, plugins: vec![], ..Default::default() }.with_hostile());
    let file = gw.plugins_dir().join("versioned.wasm");
    std::fs::write(&file, versioned_component("test.versioned", "1.0.0")).unwrap();
    assert_eq!(gw.request("POST", "/api/v2/admin/plugins/reload", None).await.status, 200);
    assert_eq!(gw.call("test.versioned", json!({})).await.status, 200);
    for mode in ["ok", "trap", "loop", "oom"] {
        gw.call("test.hostile", json!({"mode": mode})).await;
    }
    let text = gw.request("GET", "/metrics", None).await.text;
    let v1 = "plugin=\"test.versioned\",version=\"1.0.0\"";
    let hostile = "plugin=\"test.hostile\",version=\"0.0.1\"";
    assert_eq!(sample(&text, &format!("sluice_plugin_calls_total{{outcome=\"ok\",{v1}}}")), Some(1.0), "{text}");
    for (outcome, n) in [("ok", 1.0), ("trap", 1.0), ("timeout", 1.0), ("memory_limit", 1.0)] {
        assert_eq!(sample(&text, &format!("sluice_plugin_calls_total{{outcome=\"{outcome}\",{hostile}}}")), Some(n), "{outcome}: {text}");
    }
    // Every call made an instance; each that got a memory reports its peak, the memory bomb's
    // at the limit (16 MiB for the hostile fixture in the tests).
    assert_eq!(sample(&text, &format!("sluice_plugin_instantiate_seconds_count{{{hostile}}}")), Some(4.0));
    assert_eq!(sample(&text, &format!("sluice_plugin_instantiate_seconds_count{{{v1}}}")), Some(1.0));
    let peak_sum = sample(&text, &format!("sluice_plugin_peak_memory_bytes_sum{{{hostile}}}")).unwrap();
    assert!(peak_sum > 16.0 * 1024.0 * 1024.0 * 0.9, "{peak_sum}");
    assert!(sample(&text, &format!("sluice_plugin_call_duration_seconds_count{{{hostile}}}")) == Some(4.0));

    // A new version replaces the old: the old version's series are gone, the new one's appear.
    std::fs::write(&file, versioned_component("test.versioned", "2.0.0")).unwrap();
    assert_eq!(gw.request("POST", "/api/v2/admin/plugins/reload", None).await.status, 200);
    assert_eq!(gw.call("test.versioned", json!({})).await.body["result"]["version"], "2.0.0");
    let text = gw.request("GET", "/metrics", None).await.text;
    assert!(!text.contains("version=\"1.0.0\""), "the old version's series remain: {text}");
    let v2 = "plugin=\"test.versioned\",version=\"2.0.0\"";
    assert_eq!(sample(&text, &format!("sluice_plugin_calls_total{{outcome=\"ok\",{v2}}}")), Some(1.0));
    assert_eq!(sample(&text, &format!("sluice_plugin_instantiate_seconds_count{{{v2}}}")), Some(1.0));
    // The hostile tool did not change: its series stay.
    assert_eq!(sample(&text, &format!("sluice_plugin_calls_total{{outcome=\"trap\",{hostile}}}")), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_metrics_follow_calls_and_go_with_a_replaced_component() {
    use crate::common::{GatewayOptions, TempDir, TestGateway, component};
    let dir = TempDir::new("sink-metrics");
    let file = dir.path().join("hook.wasm");
    std::fs::copy(component("http"), &file).unwrap();
    let receiver = crate::sinks::receiver().await;
    let entry = sluice::config::SinkConfigEntry { component: file.clone(), ..crate::common::http_sink("hook", &receiver.url) };
    let gw = TestGateway::start(GatewayOptions { seed: false, configure: Box::new(move |c| c.sinks.push(entry)), ..Default::default() });
    assert_eq!(gw.request("POST", "/api/v2/sinks/hook/test", None).await.body["verified"], true);
    receiver.status.store(503, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(gw.request("POST", "/api/v2/sinks/hook/test", None).await.body["verified"], false);
    let text = gw.request("GET", "/metrics", None).await.text;
    let http = format!("sink_type=\"http\",version=\"{}\"", env!("CARGO_PKG_VERSION"));
    for outcome in ["ok", "sink_error"] {
        assert_eq!(sample(&text, &format!("sluice_sink_calls_total{{outcome=\"{outcome}\",{http}}}")), Some(1.0), "{outcome}: {text}");
    }
    assert_eq!(sample(&text, &format!("sluice_sink_instantiate_seconds_count{{{http}}}")), Some(2.0));
    assert!(sample(&text, &format!("sluice_sink_peak_memory_bytes_sum{{{http}}}")).unwrap() > 0.0);

    // Another component in the file: the http sink's series go with it.
    std::fs::write(&file, std::fs::read(component("s3")).unwrap()).unwrap();
    let r = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    assert!(r.body["sinks"][0]["error"].is_null(), "{}", r.text);
    let text = gw.request("GET", "/metrics", None).await.text;
    assert!(!text.contains("sink_type=\"http\",version="), "the replaced component's series remain: {text}");
}
