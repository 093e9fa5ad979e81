//! Several gateways on one lake: real `sluice` processes sharing a catalog in a real PostgreSQL
//! and Parquet in a real S3-compatible store (moto), all on loopback. One is the writer (ingest,
//! exports, upkeep); the other forwards to it and takes over when it dies or drains.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{Server, TOKEN};
use crate::common::{TempDir, component};
use crate::lake::Lake;
use crate::postgres::TableLock;

/// The PostgreSQL sink's table, in the catalog's server.
const TABLE: &str = "CREATE TABLE inventory_rows (export text NOT NULL, item_key text NOT NULL, cluster text NOT NULL, \
     payload jsonb NOT NULL, exported_at timestamptz NOT NULL, generation bigint NOT NULL, PRIMARY KEY (export, item_key))";

/// The export both gateways configure: one row per node of the cluster `fixed`, to PostgreSQL.
fn export_config(lake: &Lake, dir: &TempDir, cadence: Option<&str>) -> String {
    std::fs::write(dir.path().join("pg-password"), &lake.pg.password).unwrap();
    let cadence = cadence.map(|c| format!("cadence = \"{c}\"\n")).unwrap_or_default();
    format!(
        r#"
[[sink]]
name = "pg"
component = {component:?}
settings = {{ url = {url:?}, table = "inventory_rows", key = "node_id" }}
secrets = {{ password = "file:{dir}/pg-password" }}
allow_private = true

[[export]]
name = "nodes"
sql = "SELECT node_id, count(*) AS points FROM events WHERE cluster_id = 'fixed' GROUP BY ALL"
{cadence}[[export.sink]]
name = "pg"
"#,
        component = component("postgres").display().to_string(),
        url = lake.pg.url("postgres"),
        dir = dir.path().display(),
    )
}

/// A gateway process on the lake.
fn replica(lake: &Lake, name: &str, cadence: Option<&str>) -> (TempDir, Server) {
    let dir = TempDir::new(name);
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    // Upkeep every second: the writer compacts while the tests run.
    let config = format!("[plugins]\nwatch = false\n{}{}", lake.toml("maintenance_interval = \"1s\""), export_config(lake, &dir, cadence));
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    let server = Server::start(&dir, &["--config", "sluice.toml"]);
    (dir, server)
}

/// An OTLP request: one gauge point per `(node, ts)` of `cluster`.
fn points(cluster: &str, nodes: &[(&str, i64)]) -> Vec<u8> {
    let resources: Vec<Value> = nodes
        .iter()
        .map(|(node, ts)| {
            json!({"resource": {"attributes": [
                {"key": "ingero.cluster.id", "value": {"stringValue": cluster}},
                {"key": "ingero.node.id", "value": {"stringValue": node}}]},
              "scopeMetrics": [{"metrics": [{"name": "gpu.util", "gauge": {"dataPoints": [
                {"asDouble": 0.5, "timeUnixNano": (ts * 1_000_000_000).to_string()}]}}]}]})
        })
        .collect();
    json!({"resourceMetrics": resources}).to_string().into_bytes()
}

async fn ingest(http: &reqwest::Client, api: &str, body: Vec<u8>) -> reqwest::Response {
    http.post(format!("{api}/v1/metrics")).bearer_auth(TOKEN).header("content-type", "application/json").body(body).send().await.unwrap()
}

async fn sql(http: &reqwest::Client, api: &str, sql: &str) -> Value {
    let r = http.post(format!("{api}/api/v2/sql")).bearer_auth(TOKEN).json(&json!({"sql": sql})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["rows"].clone()
}

async fn health(http: &reqwest::Client, api: &str) -> Value {
    http.get(format!("{api}/api/v2/health")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap()
}

/// Waits until `api` reports `role`; returns how long it took.
async fn wait_role(http: &reqwest::Client, api: &str, role: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let h = health(http, api).await;
        if h["lake"]["role"] == role {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{api} is not the {role} after {limit:?}: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of a metric's samples in a gateway's exposition.
async fn metric_sum(server: &Server, name: &str) -> f64 {
    let text = server.metrics().await;
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Which of the two is the writer once one is elected: `(writer, reader)`.
async fn elect<'a>(http: &reqwest::Client, a: &'a Server, b: &'a Server) -> (&'a Server, &'a Server) {
    let started = Instant::now();
    loop {
        let (ha, hb) = (health(http, &a.api).await, health(http, &b.api).await);
        match (ha["lake"]["role"].as_str(), hb["lake"]["role"].as_str()) {
            (Some("writer"), Some("reader")) => return (a, b),
            (Some("reader"), Some("writer")) => return (b, a),
            (Some("writer"), Some("writer")) => panic!("two writers: {ha} {hb}"),
            _ => assert!(started.elapsed() < Duration::from_secs(10), "no writer elected: {ha} {hb}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_on_one_lake_answer_each_others_ingest_within_a_second_and_a_drained_writer_hands_over() {
    let lake = Lake::start().await;
    lake.pg.psql(TABLE);
    let (_da, a) = replica(&lake, "lake-a", Some("2s"));
    let (_db, b) = replica(&lake, "lake-b", Some("2s"));
    let http = reqwest::Client::new();
    let (writer, reader) = elect(&http, &a, &b).await;
    let snapshot = health(&http, &reader.api).await["lake"]["snapshot"].as_i64().expect("a snapshot id");

    // Points through either gateway: both answer with them within a second of the acknowledgement.
    for (via, node) in [(reader, "via-reader"), (writer, "via-writer")] {
        let r = ingest(&http, &via.api, points("shared", &[(node, 1_767_225_600)])).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let acked = Instant::now();
        for seen_by in [&a, &b] {
            loop {
                let rows = sql(&http, &seen_by.api, &format!("SELECT count(*) FROM events WHERE node_id = '{node}'")).await;
                if rows == json!([[1]]) {
                    break;
                }
                assert!(acked.elapsed() < Duration::from_secs(1), "{} did not see {node} within 1 s: {rows}", seen_by.api);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(acked.elapsed() < Duration::from_secs(1));
    }
    let later = health(&http, &reader.api).await["lake"]["snapshot"].as_i64().unwrap();
    assert!(later > snapshot, "the snapshot moves with ingest: {snapshot} → {later}");
    // The reader forwarded its ingest: its metrics and audit say so.
    assert!(metric_sum(reader, "sluice_lake_forwarded_total{outcome=\"forwarded\"}").await >= 1.0);
    assert_eq!(metric_sum(writer, "sluice_lake_writer").await, 1.0);
    assert_eq!(metric_sum(reader, "sluice_lake_writer").await, 0.0);

    // One hop only: a forwarded request reaching a gateway that is not the writer is refused,
    // retryably, and nothing is written.
    let r = http
        .post(format!("{}/v1/metrics", reader.api))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("sluice-forwarded-by", "elsewhere")
        .body(points("shared", &[("double-hop", 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "writer_unavailable");
    assert_eq!(sql(&http, &writer.api, "SELECT count(*) FROM events WHERE node_id = 'double-hop'").await, json!([[0]]));

    // The export's cadence (2 s) fires once per period across both gateways.
    let r = ingest(&http, &reader.api, points("fixed", &[("n1", 1), ("n2", 1), ("n3", 1)])).await;
    assert_eq!(r.status(), 200);
    let runs = || async { metric_sum(&a, "sluice_export_duration_seconds_count").await + metric_sum(&b, "sluice_export_duration_seconds_count").await };
    let started = Instant::now();
    while lake.pg.psql("SELECT count(*) FROM inventory_rows") != "3" {
        assert!(started.elapsed() < Duration::from_secs(20), "the export never delivered the three nodes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = runs().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ran = runs().await - before;
    assert!((4.0..=6.0).contains(&ran), "a 2 s cadence over 10 s ran {ran} times across both gateways");
    // Only the writer exports; a reader's export status is the writer's (forwarded).
    assert_eq!(metric_sum(reader, "sluice_export_duration_seconds_count").await, 0.0);
    let status: Value = http.get(format!("{}/api/v2/exports/nodes", reader.api)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["sinkExports"][0]["synced"], "Exported", "{status}");

    // Upkeep runs on the writer only, and keeps every row.
    assert!(metric_sum(writer, "sluice_lake_maintenance_total{outcome=\"ok\"}").await >= 1.0);
    assert_eq!(metric_sum(writer, "sluice_lake_maintenance_total{outcome=\"failed\"}").await, 0.0);
    assert_eq!(metric_sum(reader, "sluice_lake_maintenance_total").await, 0.0);
    assert_eq!(sql(&http, &reader.api, "SELECT count(*) FROM events WHERE cluster_id IN ('shared', 'fixed')").await, json!([[5]]));

    // The writer drains: the other takes over and serves ingest and exports on its own.
    let (was_writer_a, reader_api) = (std::ptr::eq(writer, &a), reader.api.clone());
    let (mut drained, survivor) = if was_writer_a { (a, b) } else { (b, a) };
    let status = drained.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(survivor.api, reader_api);
    let took = wait_role(&http, &survivor.api, "writer", Duration::from_secs(10)).await;
    eprintln!("takeover after a drain: {took:?}");
    let r = ingest(&http, &survivor.api, points("shared", &[("after-drain", 2)])).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(sql(&http, &survivor.api, "SELECT count(*) FROM events WHERE node_id = 'after-drain'").await, json!([[1]]));
    let before = metric_sum(&survivor, "sluice_export_duration_seconds_count").await;
    let started = Instant::now();
    while metric_sum(&survivor, "sluice_export_duration_seconds_count").await <= before {
        assert!(started.elapsed() < Duration::from_secs(10), "the new writer does not run the export's cadence");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_writer_killed_mid_delivery_and_mid_ingest_is_replaced_within_seconds_losing_and_doubling_nothing() {
    let lake = Lake::start().await;
    lake.pg.psql(TABLE);
    let (_da, a) = replica(&lake, "kill-a", None);
    let (_db, b) = replica(&lake, "kill-b", None);
    let http = reqwest::Client::new();
    let (writer, reader) = elect(&http, &a, &b).await;
    let nodes: Vec<(String, i64)> = (0..12).map(|i| (format!("node-{i:02}"), 1)).collect();
    let refs: Vec<(&str, i64)> = nodes.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert_eq!(ingest(&http, &writer.api, points("fixed", &refs)).await.status(), 200);

    // An export run, asked of the reader (it forwards to the writer), blocks inside the sink's
    // transaction on a lock we hold.
    let lock = TableLock::take(&lake.pg, "inventory_rows");
    let run = tokio::spawn(http.post(format!("{}/api/v2/exports/nodes/run", reader.api)).bearer_auth(TOKEN).send());
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice' AND wait_event_type = 'Lock'";
    let started = Instant::now();
    while lake.pg.psql(waiting) != "1" {
        assert!(started.elapsed() < Duration::from_secs(30), "the export never reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Ingest keeps coming through the reader, one distinct point per request.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = tokio::spawn({
        let (http, api, stop) = (http.clone(), reader.api.clone(), stop.clone());
        async move {
            let mut outcomes = BTreeMap::new();
            let mut ts = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ts += 1;
                let r = ingest(&http, &api, points("stream", &[("s", ts)])).await;
                outcomes.insert(ts, (r.status().as_u16(), Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let was_writer_a = std::ptr::eq(writer, &a);
    let survivor = if was_writer_a {
        drop(a); // SIGKILL
        b
    } else {
        drop(b);
        a
    };
    let killed = Instant::now();
    let answered = run.await.unwrap().map(|r| r.status().as_u16());
    assert!(answered.as_ref().is_err() || answered.as_ref().is_ok_and(|s| *s == 503), "the run was cut off with its writer: {answered:?}");
    lock.release();
    let took = wait_role(&http, &survivor.api, "writer", Duration::from_secs(10)).await;
    eprintln!("takeover after kill -9: {took:?}");
    assert!(killed.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = stream.await.unwrap();

    // Every acknowledged point is there once; one that failed (the writer died under it) at most
    // once; and ingest was acknowledged again after the takeover.
    let stored: BTreeMap<i64, i64> = sql(&http, &survivor.api, "SELECT epoch(ts)::BIGINT, count(*) FROM events WHERE cluster_id = 'stream' GROUP BY ALL")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
        .collect();
    let acked: Vec<i64> = outcomes.iter().filter(|(_, (s, _))| *s == 200).map(|(t, _)| *t).collect();
    let failed: Vec<(i64, u16)> = outcomes.iter().filter(|(_, (s, _))| *s != 200).map(|(t, (s, _))| (*t, *s)).collect();
    assert!(acked.iter().any(|t| outcomes[t].1 < killed), "nothing was acknowledged before the kill");
    assert!(acked.iter().any(|t| outcomes[t].1 > killed + took), "nothing was acknowledged after the takeover");
    for t in &acked {
        assert_eq!(stored.get(t), Some(&1), "acknowledged point {t} is stored {:?} times", stored.get(t));
    }
    for (t, status) in &failed {
        assert_eq!(*status, 503, "a failed ingest is a retryable 503, not {status}");
        assert!(stored.get(t).is_none_or(|n| *n == 1), "point {t} stored {:?} times", stored.get(t));
    }
    assert!(stored.keys().all(|t| outcomes.contains_key(t)));

    // The new writer resumed the cut-off delivery: every item once, one generation.
    let started = Instant::now();
    let status = loop {
        let s: Value = http.get(format!("{}/api/v2/exports/nodes", survivor.api)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        if s["sinkExports"][0]["synced"] == "Exported" {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the pending export was not resumed: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["generation"], 1, "the same data keeps its generation across the takeover: {status}");
    assert_eq!(lake.pg.psql("SELECT count(*), count(DISTINCT item_key), min(generation), max(generation) FROM inventory_rows"), "12|12|1|1");
    assert_eq!(lake.pg.psql("SELECT string_agg(DISTINCT payload->>'points', ',') FROM inventory_rows"), "1");
}
