//! `POST /api/v2/sql`: answers, the read-only sandbox battery, the timeout, the row cap, and
//! tenant-scoped bearers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::common::{GatewayOptions, TENANT_TOKEN, TestGateway};
use sluice::config::HumanDuration;

async fn sql(gw: &TestGateway, statement: &str) -> crate::common::Reply {
    gw.request("POST", "/api/v2/sql", Some(&json!({ "sql": statement }).to_string())).await
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().display().to_string(), (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn sql_answers_positional_rows_that_match_the_tools_counts() {
    answers(GatewayOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_lake_sql_answers_like_on_a_file() {
    let lake = crate::lake::Lake::start().await;
    answers(lake.options(GatewayOptions::default())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_lake_every_statement_that_is_not_a_read_is_refused() {
    let lake = crate::lake::Lake::start().await;
    sandbox(lake.options(GatewayOptions::default())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_lake_the_timeout_the_row_cap_and_scoped_bearers_hold() {
    let lake = crate::lake::Lake::start().await;
    timeout(lake.options(GatewayOptions::default())).await;
    row_cap(lake.options(GatewayOptions::default())).await;
    refusals(lake.options(GatewayOptions::default())).await;
}

async fn answers(opts: GatewayOptions) {
    let gw = TestGateway::start(opts);
    let r = sql(&gw, "SELECT cluster_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["columns"], json!(["cluster_id", "n"]));
    assert_eq!(r.body["types"], json!(["text", "int64"]));
    assert_eq!(r.body["truncated"], false);
    let rows = r.body["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|row| row[0].as_str().unwrap()).collect::<Vec<_>>(), ["cluster-a", "cluster-b", "cluster-c"]);
    // The same counts through a tool.
    let summary = gw.call("fleet.cluster.summary", json!({})).await;
    for row in rows {
        let via_tool: i64 = summary.body["result"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["cluster_id"] == row[0])
            .map(|s| s["events"].as_i64().unwrap())
            .sum();
        assert_eq!(row[1].as_i64().unwrap(), via_tool, "{row}");
    }

    let r = sql(
        &gw,
        "SELECT TIMESTAMP '2024-01-01 00:00:00.000001' AS t, DATE '1969-12-31' AS d, 1.5::DOUBLE AS f, \
         NULL AS z, 'x'::BLOB AS b, true AS ok, 12.5::DECIMAL(4,1) AS dec",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["types"], json!(["timestamp", "date", "float64", "int64", "blob", "boolean", "other"]));
    assert_eq!(r.body["rows"], json!([["2024-01-01T00:00:00.000001Z", "1969-12-31", 1.5, null, "78", true, "12.5"]]));

    let audit = gw.audit_lines("sql_query");
    assert!(audit.iter().any(|l| l["sql"].as_str().unwrap().starts_with("SELECT cluster_id") && l["status"] == 200), "{audit:?}");
}

#[tokio::test]
async fn every_statement_that_is_not_a_read_is_refused_and_nothing_on_disk_changes() {
    sandbox(GatewayOptions::default()).await;
}

async fn sandbox(opts: GatewayOptions) {
    let gw = TestGateway::start(opts);
    let dir = gw.dir.path().to_owned();
    let count = |r: &crate::common::Reply| r.body["rows"][0][0].as_i64().unwrap();
    let before_rows = count(&sql(&gw, "SELECT count(*) FROM events").await);
    let before = snapshot(&dir);
    let out = dir.join("stolen.csv");
    let o = out.display();
    let refused = [
        "INSERT INTO events (ts, cluster_id, node_id, metric_name) VALUES (now(), 'x', 'y', 'z')".to_owned(),
        "UPDATE events SET value_double = 0".into(),
        "DELETE FROM events".into(),
        "CREATE TABLE t AS SELECT 1".into(),
        "CREATE VIEW v AS SELECT 1".into(),
        "CREATE TEMP TABLE t (a INT)".into(),
        "CREATE MACRO m() AS 1".into(),
        "DROP TABLE events".into(),
        "ALTER TABLE events ADD COLUMN x INT".into(),
        "TRUNCATE events".into(),
        format!("ATTACH '{}/other.duckdb' AS other", dir.display()),
        "DETACH sluice".into(),
        format!("COPY events TO '{o}'"),
        format!("COPY (SELECT * FROM events) TO '{o}' (FORMAT csv)"),
        format!("COPY events FROM '{o}'"),
        format!("EXPORT DATABASE '{}/export'", dir.display()),
        "INSTALL httpfs".into(),
        "LOAD httpfs".into(),
        "SET enable_external_access = true".into(),
        "SET memory_limit = '10GB'".into(),
        "RESET memory_limit".into(),
        "PRAGMA enable_profiling".into(),
        "CALL pragma_version()".into(),
        "CHECKPOINT".into(),
        "VACUUM".into(),
        "BEGIN TRANSACTION".into(),
        "PREPARE p AS SELECT 1".into(),
        "SELECT 1; DROP TABLE events".into(),
        "SELECT * FROM read_csv('/etc/passwd')".into(),
        "SELECT * FROM read_text('/etc/hostname')".into(),
        "SELECT * FROM '/etc/hosts.csv'".into(),
        "SELECT * FROM 'http://127.0.0.1:9/x.parquet'".into(),
        "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')".into(),
        "SELECT * FROM glob('/etc/*')".into(),
        // External access off still lets DuckDB read the database's own files: refused here.
        format!("SELECT * FROM read_csv('{}/sluice.duckdb')", dir.display()),
        format!("SELECT content FROM read_blob('{}/sluice.duckdb')", dir.display()),
        format!("SELECT count(*) FROM (FROM read_text('{}/sluice.duckdb'))", dir.display()),
        "SELECT * FROM query('SELECT 1')".into(),
        "SELECT * FROM query_table('events')".into(),
        // The lake's own ways out: its catalog database, its table functions, its files, and
        // PostgreSQL through the catalog's connection.
        "SELECT * FROM __ducklake_metadata_lake.ducklake_data_file".into(),
        "SELECT * FROM __ducklake_metadata_lake.public.ducklake_snapshot".into(),
        "SELECT * FROM ducklake_snapshots('lake')".into(),
        "SELECT * FROM ducklake_table_info('lake')".into(),
        "CALL ducklake_expire_snapshots('lake', older_than => now())".into(),
        "SELECT * FROM postgres_query('__ducklake_metadata_lake', 'DROP TABLE ducklake_snapshot')".into(),
        "CALL postgres_execute('__ducklake_metadata_lake', 'DROP TABLE ducklake_snapshot')".into(),
        "SELECT * FROM read_parquet('s3://lake/fleet/**/*.parquet')".into(),
        "SELECT * FROM 's3://lake/fleet/x.parquet'".into(),
        "ATTACH 'ducklake:postgres:dbname=postgres' AS other".into(),
        "DETACH lake".into(),
        "USE memory".into(),
    ];
    let mut wrong = Vec::new();
    for statement in &refused {
        let r = sql(&gw, statement).await;
        if r.status != 400 || r.body["code"] != "sql_not_read_only" {
            wrong.push(format!("{statement}: {} {}", r.status, r.text));
        }
    }
    assert!(wrong.is_empty(), "not refused as sql_not_read_only:\n{}", wrong.join("\n"));
    // Not SQL at all, or SQL about things that do not exist: a clear 400.
    for statement in ["SELEC 1", "SELECT no_such_column FROM events", "SELECT * FROM no_such_table", ""] {
        let r = sql(&gw, statement).await;
        r.assert_error(400, "invalid_request");
        assert!(r.body["error"].as_str().unwrap().len() > 10, "{}", r.text);
    }

    assert_eq!(count(&sql(&gw, "SELECT count(*) FROM events").await), before_rows);
    assert!(!out.exists());
    assert_eq!(snapshot(&dir), before, "files changed on disk");
}

#[tokio::test]
async fn a_statement_past_the_timeout_is_interrupted_and_the_next_one_runs() {
    timeout(GatewayOptions::default()).await;
}

async fn timeout(opts: GatewayOptions) {
    let prev = opts.configure;
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            prev(c);
            c.database.query_timeout = HumanDuration(Duration::from_millis(400));
        }),
        ..opts
    });
    let started = Instant::now();
    let r = sql(&gw, "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b").await;
    let took = started.elapsed();
    r.assert_error(504, "sql_timeout");
    assert_eq!(r.body["timeout_ms"], 400);
    assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(10), "took {took:?}");
    let r = sql(&gw, "SELECT 41 + 1").await;
    assert_eq!(r.body["rows"], json!([[42]]), "{}", r.text);
}

#[tokio::test]
async fn answers_stop_at_the_row_cap_and_say_so() {
    row_cap(GatewayOptions::default()).await;
}

async fn row_cap(opts: GatewayOptions) {
    let prev = opts.configure;
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            prev(c);
            c.database.max_rows = 5;
        }),
        ..opts
    });
    let r = sql(&gw, "SELECT * FROM range(10)").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["rows"], json!([[0], [1], [2], [3], [4]]));
    assert_eq!(r.body["truncated"], true);
    let r = sql(&gw, "SELECT * FROM range(5)").await;
    assert_eq!(r.body["truncated"], false);
}

#[tokio::test]
async fn tenant_scoped_bearers_and_bad_bodies_are_refused() {
    refusals(GatewayOptions::default()).await;
}

async fn refusals(opts: GatewayOptions) {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..opts });
    let body = json!({"sql": "SELECT 1"}).to_string();
    let r = gw.request_with(Some(&format!("Bearer {TENANT_TOKEN}")), "POST", "/api/v2/sql", Some(&body)).await;
    r.assert_error(403, "tenant_scoped_bearer_refused");
    for bad in ["not json", "{}", r#"{"sql": 1}"#, r#"{"sql": "SELECT 1", "limit": 3}"#, "[]"] {
        gw.request("POST", "/api/v2/sql", Some(bad)).await.assert_error(400, "invalid_request");
    }
    let big = json!({"sql": format!("SELECT '{}'", "x".repeat(2 << 20))}).to_string();
    gw.request("POST", "/api/v2/sql", Some(&big)).await.assert_error(413, "payload_too_large");
    assert_eq!(gw.request("GET", "/api/versions", None).await.body["capabilities"]["sql_endpoint"], true);
}
