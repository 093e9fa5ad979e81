//! The bundled tools against real DuckDB data: counts equal direct SQL, the SQL sandbox holds.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::{GatewayOptions, TestGateway};

fn direct_counts(gw: &TestGateway, cluster: Option<&str>) -> BTreeMap<String, (i64, i64, i64, f64)> {
    let db = gw.gateway.db();
    let conn = db.writer();
    let mut stmt = conn
        .prepare(
            "SELECT node_id,
                    count(*) FILTER (WHERE metric_name = 'ingero.node.health_score'),
                    count(*) FILTER (WHERE metric_name = 'ingero.node.straggler_event'),
                    count(*),
                    coalesce(sum(value_double) FILTER (WHERE metric_name = 'gpu.kernel.launch.count'), 0)
             FROM events WHERE ?1 IS NULL OR cluster_id = ?1 GROUP BY node_id",
        )
        .unwrap();
    stmt.query_map([cluster], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn summary_counts_equal_direct_sql() {
    let gw = TestGateway::start(GatewayOptions::default());
    for cluster in [None, Some("cluster-b")] {
        let args = cluster.map_or(json!({}), |c| json!({"cluster_id": c}));
        let r = gw.call("fleet.cluster.summary", args).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let rows = r.body["result"]["rows"].as_array().unwrap();
        let direct = direct_counts(&gw, cluster);
        assert_eq!(rows.len(), direct.len());
        assert_eq!(rows.len(), if cluster.is_some() { 4 } else { 12 });
        let mut stragglers = 0;
        for row in rows {
            let node = row["node_id"].as_str().unwrap();
            let (health, straggler, events, launches) = direct[node];
            assert_eq!(row["health_samples"], health, "{node}");
            assert_eq!(row["straggler_events"], straggler, "{node}");
            assert_eq!(row["events"], events, "{node}");
            assert_eq!(row["kernel_launches"].as_f64().unwrap(), launches, "{node}");
            if let Some(c) = cluster {
                assert_eq!(row["cluster_id"], c);
            }
            stragglers += straggler;
            let avg = row["health_avg"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&avg), "{row}");
        }
        assert!(stragglers > 0, "the demo data must contain straggler events");
    }
}

#[tokio::test]
async fn run_analysis_returns_positional_rows_equal_to_direct_sql() {
    let gw = TestGateway::start(GatewayOptions::default());
    let sql = "SELECT cluster_id, count(*) AS n FROM events GROUP BY cluster_id ORDER BY cluster_id";
    let r = gw.call("fleet.cluster.run_analysis", json!({"sql": sql})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["columns"], json!(["cluster_id", "n"]));
    let direct: Vec<(String, i64)> = {
        let conn = gw.gateway.db().writer();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let got: Vec<(String, i64)> = r.body["result"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().to_owned(), row[1].as_i64().unwrap()))
        .collect();
    assert_eq!(got, direct);
    assert_eq!(r.body["result"]["truncated"], false);

    let r = gw.call("fleet.cluster.run_analysis", json!({"sql": "SELECT * FROM events", "limit": 7})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["rows"].as_array().unwrap().len(), 7);
    assert_eq!(r.body["result"]["truncated"], true);
    assert_eq!(r.body["result"]["columns"].as_array().unwrap().len(), 8);
    // Timestamps arrive as RFC 3339 strings.
    assert!(r.body["result"]["rows"][0][0].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn run_analysis_refuses_everything_but_a_select_and_changes_nothing() {
    let gw = TestGateway::start(GatewayOptions::default());
    let count = |gw: &TestGateway| -> i64 {
        gw.gateway.db().writer().query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap()
    };
    let files_before: Vec<_> = std::fs::read_dir(gw.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let before = count(&gw);
    for sql in [
        "DROP TABLE events",
        "UPDATE events SET value_double = 0",
        "CREATE TABLE copy AS SELECT * FROM events",
        "ATTACH 'x.duckdb'",
        "COPY events TO 'x.parquet'",
        "INSTALL httpfs",
        "LOAD json",
        "SET threads = 1",
        "PRAGMA database_size",
        "SELECT * FROM read_parquet('x.parquet')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT 1; DELETE FROM events",
    ] {
        let r = gw.call("fleet.cluster.run_analysis", json!({"sql": sql})).await;
        r.assert_error(400, "sql_not_read_only");
    }
    let r = gw.call("fleet.cluster.run_analysis", json!({"sql": "SELEKT nothing"})).await;
    r.assert_error(400, "invalid_args");
    assert!(r.body["error"].as_str().unwrap().contains("syntax error"), "{}", r.text);
    assert_eq!(count(&gw), before);
    let files_after: Vec<_> = std::fs::read_dir(gw.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files_before, files_after, "nothing new on disk");
}

#[tokio::test]
async fn tools_list_publishes_both_schemas() {
    let gw = TestGateway::start(GatewayOptions::default());
    let r = gw.request("GET", "/api/v2/tools/list", None).await;
    let tools: BTreeMap<String, Value> =
        r.body["tools"].as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap().to_owned(), t.clone())).collect();
    assert_eq!(tools["fleet.cluster.run_analysis"]["input_schema"]["required"], json!(["sql"]));
    assert_eq!(tools["fleet.cluster.summary"]["output_schema"]["required"], json!(["rows"]));
}

#[tokio::test]
async fn the_guides_name_the_plugin_headers_the_gateway_sends() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let r = gw.call("fleet.cluster.summary", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut named = 0;
    for guide in ["docs/writing-a-tool.md", "docs/operations.md", "README.md"] {
        let text = std::fs::read_to_string(crate::common::root().join(guide)).unwrap();
        // Every `X-…Plugin…` header a guide names in backticks.
        for header in text.split('`').skip(1).step_by(2).filter(|w| w.starts_with("X-") && w.contains("Plugin")) {
            named += 1;
            assert!(r.header(header).is_some_and(|v| !v.is_empty()), "{guide} names {header}, which the gateway does not send");
        }
    }
    assert!(named >= 2, "the guides should name the version and digest headers");
}
