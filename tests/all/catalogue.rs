//! The tool catalogue against real DuckDB data: each tool's answer equals the same figures
//! computed independently (direct SQL for the raw numbers, Rust for the statistics).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::common::{GatewayOptions, TENANT_TOKEN, TestGateway};

fn rows(r: &crate::common::Reply) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["result"]["rows"].as_array().unwrap().clone()
}

/// Per (cluster, node): the average of `metric` over the newest `window_h` hours (all data when `None`).
fn node_averages(gw: &TestGateway, metric: &str, window_h: Option<i64>) -> BTreeMap<(String, String), f64> {
    let conn = gw.gateway.db().writer();
    let mut stmt = conn
        .prepare(
            "SELECT cluster_id, node_id, avg(value_double) FROM events \
             WHERE metric_name = ?1 AND (?2 IS NULL OR ts >= (SELECT max(ts) FROM events) - to_hours(?2)) \
             GROUP BY ALL",
        )
        .unwrap();
    stmt.query_map(duckdb::params![metric, window_h], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Per cluster: (median, MAD) of the nodes' values.
fn cluster_stats(avgs: &BTreeMap<(String, String), f64>) -> BTreeMap<String, (f64, f64)> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for ((c, _), v) in avgs {
        by.entry(c.clone()).or_default().push(*v);
    }
    by.into_iter()
        .map(|(c, v)| {
            let m = median(v.clone());
            (c, (m, median(v.iter().map(|x| (x - m).abs()).collect())))
        })
        .collect()
}

/// The (cluster, node) of each row.
fn nodes_of(rows: &[Value]) -> BTreeSet<(String, String)> {
    rows.iter().map(|r| (r["cluster_id"].as_str().unwrap().to_owned(), r["node_id"].as_str().unwrap().to_owned())).collect()
}

fn count(gw: &TestGateway, sql: &str) -> i64 {
    gw.gateway.db().writer().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn find_stragglers_flags_the_nodes_below_median_minus_k_mad() {
    let gw = TestGateway::start(GatewayOptions::default().with_catalogue());
    for (args, window, k) in [(json!({}), None, 3.0), (json!({"time_window": "2h", "k": 1.5}), Some(2), 1.5)] {
        let got = rows(&gw.call("fleet.cluster.find_stragglers", args.clone()).await);
        let avgs = node_averages(&gw, "ingero.node.health_score", window);
        let stats = cluster_stats(&avgs);
        let expected: BTreeSet<(String, String)> = avgs
            .iter()
            .filter(|((c, _), v)| **v < stats[c].0 - k * stats[c].1)
            .map(|(key, _)| key.clone())
            .collect();
        let found = nodes_of(&got);
        assert_eq!(found, expected, "{args}");
        assert!(!found.is_empty(), "the demo's stragglers are found ({args})");
        for r in &got {
            let key = (r["cluster_id"].as_str().unwrap().to_owned(), r["node_id"].as_str().unwrap().to_owned());
            assert!((r["health_avg"].as_f64().unwrap() - avgs[&key]).abs() < 1e-6, "{r}");
            assert!((r["cluster_median"].as_f64().unwrap() - stats[&key.0].0).abs() < 1e-6, "{r}");
        }
    }
    // The demo's designated straggler of cluster-a (node 3) sags for most of the 3 hours.
    let a = rows(&gw.call("fleet.cluster.find_stragglers", json!({"cluster_id": "cluster-a"})).await);
    assert_eq!(a[0]["node_id"], "cluster-a-n03");
    assert!(a.iter().all(|r| r["cluster_id"] == "cluster-a"));
}

#[tokio::test]
async fn find_outlier_nodes_uses_robust_z_scores() {
    let gw = TestGateway::start(GatewayOptions::default().with_catalogue());
    for (metric, z) in [("nccl.collective.duration_ms", 3.5), ("ingero.node.health_score", 2.0)] {
        let got = rows(&gw.call("fleet.cluster.find_outlier_nodes", json!({"metric": metric, "z": z})).await);
        let avgs = node_averages(&gw, metric, None);
        let stats = cluster_stats(&avgs);
        let expected: BTreeSet<(String, String)> = avgs
            .iter()
            .filter(|((c, _), v)| {
                let (m, mad) = stats[c];
                mad > 0.0 && ((**v - m) / (1.4826 * mad)).abs() > z
            })
            .map(|(key, _)| key.clone())
            .collect();
        let found = nodes_of(&got);
        assert_eq!(found, expected, "{metric}");
        assert!(!found.is_empty(), "{metric}");
        for r in &got {
            assert_eq!(r["metric"], metric);
            let dir = if r["value"].as_f64() > r["cluster_median"].as_f64() { "high" } else { "low" };
            assert_eq!(r["direction"], dir, "{r}");
        }
    }
}

#[tokio::test]
async fn anomaly_list_counts_every_kind_and_filters_by_severity() {
    let gw = TestGateway::start(GatewayOptions::default().with_catalogue());
    for cluster in ["cluster-a", "cluster-b", "cluster-c"] {
        let args = json!({"time_window": "3h", "limit": 1000, "cluster_id": cluster});
        let got = rows(&gw.call("fleet.cluster.anomaly_list", args).await);
        let base = format!(
            "FROM events WHERE cluster_id = '{cluster}' AND ts >= (SELECT max(ts) FROM events) - INTERVAL 3 HOUR AND "
        );
        let error = count(&gw, &format!("SELECT count(*) {base} metric_name = 'ingero.node.straggler_event'"));
        let critical = count(&gw, &format!("SELECT count(*) {base} metric_name = 'ingero.node.health_score' AND value_double < 0.6"));
        let warn = count(&gw, &format!("SELECT count(*) {base} metric_name = 'ingero.node.health_score' AND value_double >= 0.6 AND value_double < 0.75"))
            + count(&gw, &format!("SELECT count(*) {base} metric_name = 'gpu.memfrag.ioctl_event_total' AND value_double > 50"))
            + count(&gw, &format!("SELECT count(*) {base} metric_name = 'nccl.collective.duration_ms' AND value_double > 60"));
        assert!(error + critical + warn < 1000, "the test needs every anomaly in one answer");
        let by = |s: &str| got.iter().filter(|r| r["severity"] == s).count() as i64;
        assert_eq!((by("error"), by("critical"), by("warn")), (error, critical, warn), "{cluster}");
        assert!(got.iter().all(|r| r["cluster_id"] == cluster && r["summary"].as_str().is_some_and(|s| !s.is_empty())));
        let ts: Vec<&str> = got.iter().map(|r| r["ts"].as_str().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first");

        let serious = rows(&gw.call("fleet.cluster.anomaly_list", json!({"time_window": "3h", "limit": 1000, "cluster_id": cluster, "severity_filter": "error"})).await);
        assert_eq!(serious.len() as i64, error + critical);
    }
    let few = rows(&gw.call("fleet.cluster.anomaly_list", json!({"time_window": "3h", "limit": 5})).await);
    assert_eq!(few.len(), 5);
    gw.call("fleet.cluster.anomaly_list", json!({})).await.assert_error(400, "invalid_args");
    gw.call("fleet.cluster.anomaly_list", json!({"time_window": "3 hours"})).await.assert_error(400, "invalid_args");
    gw.call("fleet.cluster.anomaly_list", json!({"time_window": "3h", "severity_filter": "info"})).await.assert_error(400, "invalid_args");
}

#[tokio::test]
async fn memfrag_hotspots_and_kernel_launch_summary_equal_direct_sums() {
    let gw = TestGateway::start(GatewayOptions::default().with_catalogue());
    let got = rows(&gw.call("fleet.cluster.memfrag_hotspots", json!({"limit": 1000})).await);
    let direct: BTreeMap<(String, String), (i64, f64)> = {
        let conn = gw.gateway.db().writer();
        let mut stmt = conn
            .prepare(
                "SELECT node_id, json_extract_string(attributes, '$.command'), count(*), sum(value_double) \
                 FROM events WHERE metric_name = 'gpu.memfrag.ioctl_event_total' GROUP BY ALL",
            )
            .unwrap();
        stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(got.len(), direct.len());
    for r in &got {
        let key = (r["node_id"].as_str().unwrap().to_owned(), r["command"].as_str().unwrap().to_owned());
        assert_eq!((r["samples"].as_i64().unwrap(), r["ioctl_events"].as_f64().unwrap()), direct[&key], "{r}");
    }
    let totals: Vec<f64> = got.iter().map(|r| r["ioctl_events"].as_f64().unwrap()).collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "most first");

    for (args, window) in [(json!({}), None), (json!({"cluster_id": "cluster-c", "time_window": "1h"}), Some(1))] {
        let got = rows(&gw.call("fleet.cluster.kernel_launch_summary", args.clone()).await);
        let conn = gw.gateway.db().writer();
        let mut stmt = conn
            .prepare(
                "SELECT node_id, count(*), sum(value_double), min(value_double), max(value_double) FROM events \
                 WHERE metric_name = 'gpu.kernel.launch.count' AND (?1 IS NULL OR cluster_id = ?1) \
                 AND (?2 IS NULL OR ts >= (SELECT max(ts) FROM events) - to_hours(?2)) GROUP BY ALL",
            )
            .unwrap();
        let cluster = args["cluster_id"].as_str();
        let direct: BTreeMap<String, (i64, f64, f64, f64)> = stmt
            .query_map(duckdb::params![cluster, window], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), direct.len(), "{args}");
        for r in &got {
            let d = direct[r["node_id"].as_str().unwrap()];
            let g = (r["samples"].as_i64().unwrap(), r["total"].as_f64().unwrap(), r["min"].as_f64().unwrap(), r["max"].as_f64().unwrap());
            assert_eq!(g, d, "{r}");
            let p95 = r["p95"].as_f64().unwrap();
            assert!(p95 >= d.2 && p95 <= d.3, "{r}");
        }
    }
}

#[tokio::test]
async fn every_catalogue_tool_is_listed_with_both_schemas_and_a_scoped_bearer_sees_its_cluster_only() {
    let gw = TestGateway::start(GatewayOptions::default().with_catalogue());
    let list = gw.request("GET", "/api/v2/tools/list", None).await;
    let tools: BTreeMap<String, Value> =
        list.body["tools"].as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap().to_owned(), t.clone())).collect();
    for name in [
        "fleet.cluster.summary",
        "fleet.cluster.find_stragglers",
        "fleet.cluster.find_outlier_nodes",
        "fleet.cluster.anomaly_list",
        "fleet.cluster.run_analysis",
        "fleet.cluster.memfrag_hotspots",
        "fleet.cluster.kernel_launch_summary",
    ] {
        let t = &tools[name];
        assert_eq!(t["input_schema"]["type"], "object", "{name}");
        assert_eq!(t["output_schema"]["type"], "object", "{name}");
        assert!(!t["description"].as_str().unwrap().is_empty());
    }
    // Scoped: the same tools, only cluster-a rows (the host filters their queries).
    for (name, args) in [
        ("fleet.cluster.find_stragglers", json!({"k": 0})),
        ("fleet.cluster.anomaly_list", json!({"time_window": "3h", "limit": 1000})),
        ("fleet.cluster.memfrag_hotspots", json!({})),
        ("fleet.cluster.kernel_launch_summary", json!({})),
    ] {
        let got = rows(&gw.call_as(TENANT_TOKEN, name, args).await);
        assert!(!got.is_empty(), "{name}");
        assert!(got.iter().all(|r| r["cluster_id"] == "cluster-a"), "{name}: {got:?}");
    }
}
