//! Tenant isolation inside plugin queries: a hostile component, called by a bearer limited to
//! `cluster-a`, tries every way of naming the data it knows of. Each attempt gets only
//! `cluster-a` rows or a scope error; no attempt sees a foreign row.

use serde_json::{Value, json};

use crate::common::{GatewayOptions, TENANT_TOKEN, TestGateway};

/// What an attempt must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 200 with only `cluster-a` rows (and at least one row).
    OnlyMine,
    /// 200 with these many rows, whatever they hold (no cluster column).
    Rows(usize),
    /// 403 `tenant_scoped_bearer_refused`.
    Refused,
}

async fn run(gw: &TestGateway, token: &str, sql: &str) -> (u16, Value) {
    let r = gw.call_as(token, "test.hostile", json!({"mode": "query", "sql": sql})).await;
    (r.status.as_u16(), r.body)
}

#[tokio::test]
async fn a_scoped_bearers_plugin_queries_see_only_its_clusters_whatever_they_name() {
    scoped_queries(GatewayOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_lake_a_scoped_bearers_plugin_queries_see_only_its_clusters() {
    let lake = crate::lake::Lake::start().await;
    scoped_queries(lake.options(GatewayOptions::default())).await;
}

async fn scoped_queries(opts: GatewayOptions) {
    let gw = TestGateway::start(opts.with_hostile());
    // The database's catalog is named after its file (sluice.duckdb), or `lake` on the lake
    // (whose catalog database DuckLake attaches as __ducklake_metadata_lake).
    let attempts: &[(&str, Expect)] = &[
        ("SELECT DISTINCT cluster_id FROM events", Expect::OnlyMine),
        ("SELECT DISTINCT cluster_id FROM main.events", Expect::OnlyMine),
        ("SELECT DISTINCT cluster_id FROM \"events\"", Expect::OnlyMine),
        ("SELECT DISTINCT cluster_id FROM EVENTS", Expect::OnlyMine),
        ("FROM events SELECT DISTINCT cluster_id", Expect::OnlyMine),
        ("WITH e AS (SELECT * FROM events) SELECT DISTINCT cluster_id FROM e", Expect::OnlyMine),
        ("WITH RECURSIVE e AS (SELECT cluster_id FROM main.events) SELECT DISTINCT cluster_id FROM e", Expect::OnlyMine),
        ("SELECT DISTINCT cluster_id FROM (SELECT * FROM events WHERE cluster_id <> 'cluster-a' OR true)", Expect::OnlyMine),
        ("SELECT DISTINCT cluster_id FROM events UNION SELECT DISTINCT cluster_id FROM main.events", Expect::OnlyMine),
        ("SELECT DISTINCT a.cluster_id FROM events a JOIN main.events b USING (node_id)", Expect::OnlyMine),
        ("SELECT DISTINCT cluster_id FROM events WHERE cluster_id IN (SELECT cluster_id FROM events)", Expect::OnlyMine),
        ("SELECT count(*) AS n FROM events WHERE cluster_id <> 'cluster-a'", Expect::Rows(1)),
        ("SELECT * FROM range(3)", Expect::Rows(3)),
        ("SELECT DISTINCT cluster_id FROM sluice.main.events", Expect::Refused),
        ("SELECT DISTINCT cluster_id FROM sluice.events", Expect::Refused),
        ("SELECT (SELECT count(*) FROM sluice.main.events) AS n", Expect::Refused),
        ("SELECT DISTINCT cluster_id FROM temp.main.events", Expect::Refused),
        ("SELECT * FROM query_table('events')", Expect::Refused),
        ("SELECT * FROM query('SELECT * FROM sluice.main.events')", Expect::Refused),
        ("SELECT * FROM duckdb_tables()", Expect::Refused),
        ("SELECT estimated_size FROM duckdb_tables", Expect::Refused),
        ("SELECT * FROM sqlite_master", Expect::Refused),
        ("SELECT * FROM information_schema.tables", Expect::Refused),
        ("SELECT * FROM pg_catalog.pg_class", Expect::Refused),
        ("SELECT * FROM read_csv('/etc/passwd')", Expect::Refused),
        ("DESCRIBE sluice.main.events", Expect::Refused),
        ("SELECT DISTINCT cluster_id FROM lake.main.events", Expect::Refused),
        ("SELECT DISTINCT cluster_id FROM lake.events", Expect::Refused),
        ("SELECT * FROM __ducklake_metadata_lake.ducklake_data_file", Expect::Refused),
        ("SELECT * FROM __ducklake_metadata_lake.public.ducklake_snapshot", Expect::Refused),
        ("SELECT * FROM ducklake_snapshots('lake')", Expect::Refused),
        ("SELECT * FROM postgres_query('__ducklake_metadata_lake', 'SELECT 1')", Expect::Refused),
        ("SELECT * FROM read_parquet('s3://lake/fleet/**/*.parquet')", Expect::Refused),
        ("SUMMARIZE sluice.main.events", Expect::Refused),
    ];
    let mut failures = Vec::new();
    for &(sql, expect) in attempts {
        let (status, body) = run(&gw, TENANT_TOKEN, sql).await;
        let rows = body["result"]["rows"].as_array().cloned().unwrap_or_default();
        // Whatever was expected: never a foreign cluster in an answer.
        let foreign: Vec<&Value> =
            rows.iter().filter(|r| r.get("cluster_id").is_some_and(|c| c != "cluster-a")).collect();
        assert!(foreign.is_empty(), "{sql}: foreign rows {foreign:?}");
        let ok = match expect {
            Expect::OnlyMine => status == 200 && !rows.is_empty() && rows.iter().all(|r| r["cluster_id"] == "cluster-a"),
            Expect::Rows(n) => status == 200 && rows.len() == n,
            Expect::Refused => status == 403 && body["code"] == "tenant_scoped_bearer_refused",
        };
        if !ok {
            failures.push(format!("{sql}: expected {expect:?}, got {status} {body}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Counts through the filter equal the direct counts of cluster-a, and nothing of the others.
    let count = |token: &'static str, sql: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = run(gw, token, sql).await;
            assert_eq!(status, 200, "{sql}: {body}");
            body["result"]["rows"][0]["n"].as_i64().unwrap()
        }
    };
    let admin = crate::common::ADMIN_TOKEN;
    let direct = count(admin, "SELECT count(*) AS n FROM events WHERE cluster_id = 'cluster-a'").await;
    assert!(direct > 0);
    assert_eq!(count(TENANT_TOKEN, "SELECT count(*) AS n FROM events").await, direct);
    assert_eq!(count(TENANT_TOKEN, "SELECT count(*) AS n FROM events WHERE cluster_id <> 'cluster-a'").await, 0);
    // The same statements, unscoped, see every cluster: the filter is what made the difference.
    let (status, body) = run(&gw, admin, "SELECT DISTINCT cluster_id FROM events ORDER BY 1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"]["rows"],
        json!([{"cluster_id": "cluster-a"}, {"cluster_id": "cluster-b"}, {"cluster_id": "cluster-c"}])
    );
    assert!(count(admin, "SELECT count(*) AS n FROM events").await > direct);
}
