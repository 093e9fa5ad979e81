//! The `postgres` sink against a real PostgreSQL server (Debian's `postgresql`, started on a free
//! loopback port in a scratch directory), checked with `psql`: upsert by key, COPY for large
//! batches, pruning of absent rows, debounce, error classes, the breaker across a server outage,
//! the socket allow-list, and a gateway killed with SIGKILL in the middle of an export.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::{ByteSize, ExportBinding, ExportConfigEntry, HumanDuration, SinkConfigEntry};
use sluice::runtime::sinks::{ErrorClass, ExportRequest, NetPolicy, SinkConfig};

use crate::common::{sink_line as line, GatewayOptions, TempDir, TestGateway, component};
use crate::pg_server::PgServer;


/// A PostgreSQL server of its own in a scratch directory, stopped (immediately) on drop.
pub(crate) struct Postgres {
    // (dropped first: the server stops before its directory goes)
    server: PgServer,
    _dir: TempDir,
}

pub(crate) const PG_PASSWORD: &str = "pg-test-password";

impl Postgres {
    /// initdb (SCRAM authentication, a superuser `postgres`) and start on a free port.
    pub(crate) fn start() -> Self {
        let dir = TempDir::new("pg");
        Self { server: PgServer::start(dir.path(), PG_PASSWORD), _dir: dir }
    }
}

impl std::ops::Deref for Postgres {
    type Target = PgServer;

    fn deref(&self) -> &PgServer {
        &self.server
    }
}

/// A `[[sink]]` for the postgres sink as `user`, with its password in a file.
pub(crate) fn pg_sink(name: &str, pg: &Postgres, user: &str, password: &str, secrets: &TempDir) -> SinkConfigEntry {
    let file = secrets.path().join(format!("{name}-password"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    SinkConfigEntry {
        name: name.into(),
        component: component("postgres"),
        settings: BTreeMap::from([
            ("url".into(), pg.url(user)),
            ("table".into(), "inventory_rows".into()),
            ("key".into(), "id".into()),
        ]),
        secrets: BTreeMap::from([("password".into(), format!("file:{}", file.display()))]),
        allow_private: true,
        timeout: HumanDuration(Duration::from_secs(20)),
        breaker_open_for: HumanDuration(Duration::from_secs(2)),
        test_on_start: false,
    }
}

fn export(name: &str, sql: &str, sink: &str, min_interval: Option<Duration>) -> ExportConfigEntry {
    ExportConfigEntry {
        name: name.into(),
        sql: sql.into(),
        cadence: None,
        cluster: "cluster-a".into(),
        max_export_bytes: ByteSize(1 << 20),
        spill_to: None,
        sinks: vec![ExportBinding { name: sink.into(), min_interval: min_interval.map(HumanDuration) }],
    }
}

/// The test's own table in the gateway's DuckDB: `n` items.
const INVENTORY: &str = "CREATE OR REPLACE TABLE inventory AS \
     SELECT i AS id, 'node-' || i AS name, 'cluster-' || (i % 3) AS cluster_id, (i * 1.5)::DOUBLE AS value FROM range(100) t(i)";
const INVENTORY_SQL: &str = "SELECT id, name, cluster_id, value FROM inventory";

fn duck(gw: &TestGateway, sql: &str) {
    gw.gateway.db().writer().execute_batch(sql).unwrap();
}

/// The inventory as the sink should have it: `id → item`.
fn expected(gw: &TestGateway, filter: &str) -> BTreeMap<i64, Value> {
    let conn = gw.gateway.db().writer();
    let mut stmt = conn.prepare(&format!("SELECT id, name, cluster_id, value FROM inventory {filter}")).unwrap();
    stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, json!({"id": r.get::<_, i64>(0)?, "name": r.get::<_, String>(1)?, "cluster_id": r.get::<_, String>(2)?, "value": r.get::<_, f64>(3)?})))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What PostgreSQL holds for an export, read with psql: `item_key → payload`.
pub(crate) fn rows_in_pg(pg: &Postgres, export: &str) -> BTreeMap<String, Value> {
    let out = pg.psql(&format!("SELECT item_key, payload::text FROM inventory_rows WHERE export = '{export}' ORDER BY item_key"));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('|').unwrap();
            (k.to_owned(), serde_json::from_str(v).unwrap())
        })
        .collect()
}

fn assert_same(pg: &Postgres, export: &str, want: &BTreeMap<i64, Value>) {
    let got = rows_in_pg(pg, export);
    let want: BTreeMap<String, Value> = want.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(got.len(), want.len(), "row count in PostgreSQL");
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_sink_upserts_prunes_debounces_and_classifies_against_a_real_server() {
    let _cpu = crate::common::shared_cpu().await;
    let pg = Postgres::start();
    pg.psql("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'; CREATE ROLE writer LOGIN PASSWORD 'writer-pw'");
    let secrets = TempDir::new("pg-secrets");
    let sinks = vec![
        pg_sink("pg", &pg, "postgres", PG_PASSWORD, &secrets),
        pg_sink("pg-badpw", &pg, "postgres", "not-the-password", &secrets),
        pg_sink("pg-reader", &pg, "reader", "reader-pw", &secrets),
        pg_sink("pg-writer", &pg, "writer", "writer-pw", &secrets),
    ];
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            c.sinks = sinks;
            c.exports = vec![
                export("inventory", INVENTORY_SQL, "pg", Some(Duration::from_secs(3600))),
                export("small", "SELECT id, name, cluster_id, value FROM inventory WHERE id < 5", "pg", None),
                export("badpw", "SELECT 1 AS id", "pg-badpw", None),
                export("denied", "SELECT 1 AS id", "pg-reader", None),
                export("granted", "SELECT 1 AS id", "pg-writer", None),
                // Over the cap: parts; one item over the cap alone: PayloadTooLarge.
                ExportConfigEntry { max_export_bytes: ByteSize(2048), ..export("split", INVENTORY_SQL, "pg", None) },
                ExportConfigEntry {
                    max_export_bytes: ByteSize(2048),
                    ..export("huge", "SELECT id, repeat('x', 5000) AS name FROM inventory WHERE id < 2", "pg", None)
                },
                export("many", "SELECT i AS id FROM range(2000) t(i)", "pg", None),
            ];
        }),
        ..Default::default()
    });
    duck(&gw, INVENTORY);

    // 100 items (the COPY path): every row, once, as DuckDB has it.
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert!(line(&r.body, "pg")["message"].as_str().unwrap().contains("100 upserted, 0 deleted"), "{}", r.text);
    assert_same(&pg, "inventory", &expected(&gw, ""));
    assert_eq!(pg.psql("SELECT DISTINCT generation, cluster FROM inventory_rows"), "1|cluster-a");

    // Unchanged within the interval: debounced, nothing written.
    let written = pg.psql("SELECT max(exported_at) FROM inventory_rows");
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(line(&r.body, "pg")["synced"], "Debounced", "{}", r.text);
    assert_eq!(pg.psql("SELECT max(exported_at) FROM inventory_rows"), written);

    // Changed data: one row updated, ten gone, one new; absent rows are pruned.
    duck(&gw, "UPDATE inventory SET value = -1 WHERE id = 7; DELETE FROM inventory WHERE id >= 90; INSERT INTO inventory VALUES (200, 'node-200', 'cluster-2', 2.0)");
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(line(&r.body, "pg")["synced"], "Exported", "{}", r.text);
    assert_eq!(r.body["generation"], 2);
    assert!(line(&r.body, "pg")["message"].as_str().unwrap().contains("91 upserted, 10 deleted"), "{}", r.text);
    let want = expected(&gw, "");
    assert_eq!(want[&7]["value"], json!(-1.0));
    assert_same(&pg, "inventory", &want);

    // A small export (row by row, no COPY) in the same table; pruning stays within an export.
    let r = gw.request("POST", "/api/v2/exports/small/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert_same(&pg, "small", &expected(&gw, "WHERE id < 5"));
    assert_same(&pg, "inventory", &want);

    // Size policy: split into parts (the last one prunes), or refused whole, never half-reported.
    let r = gw.request("POST", "/api/v2/exports/split/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let parts: u64 = line(&r.body, "pg")["message"].as_str().unwrap().split(" in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(parts > 1, "{}", r.text);
    assert_same(&pg, "split", &expected(&gw, ""));
    let r = gw.request("POST", "/api/v2/exports/huge/run", None).await;
    let l = line(&r.body, "pg");
    assert_eq!((l["synced"].as_str(), l["lastError"]["class"].as_str()), (Some("ExportFailed"), Some("terminal")), "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("does not fit the 2048-byte cap"), "{l}");
    assert!(rows_in_pg(&pg, "huge").is_empty());
    let metrics = gw.request("GET", "/metrics", None).await.text;
    assert!(metrics.contains("sluice_sink_errors_total{reason=\"payload_too_large\",sink_type=\"postgres\"} 1"), "{metrics}");
    // Many items: delivered, with the shard warning in the status.
    let r = gw.request("POST", "/api/v2/exports/many/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert!(r.body["warnings"][0].as_str().unwrap().starts_with("ExportShardWarning: 2000 items"), "{}", r.text);
    assert_eq!(pg.psql("SELECT count(*) FROM inventory_rows WHERE export = 'many'"), "2000");

    // Wrong password: terminal, tried once (the server saw one failed authentication).
    let r = gw.request("POST", "/api/v2/exports/badpw/run", None).await;
    assert_eq!(r.body["condition"], "Degraded", "{}", r.text);
    let l = line(&r.body, "pg-badpw");
    assert_eq!(l["lastError"]["class"], "terminal", "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("authentication"), "{l}");
    assert_eq!(pg.log().matches("password authentication failed").count(), 1, "{}", pg.log());

    // No privilege on the table: forbidden. Granted just what it needs on the existing table
    // (no CREATE on the schema): delivered.
    let r = gw.request("POST", "/api/v2/exports/denied/run", None).await;
    let l = line(&r.body, "pg-reader");
    assert_eq!(l["lastError"]["class"], "forbidden", "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("permission denied"), "{l}");
    pg.psql("GRANT SELECT, INSERT, UPDATE, DELETE ON inventory_rows TO writer");
    let r = gw.request("POST", "/api/v2/exports/granted/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert_eq!(pg.psql("SELECT count(*) FROM inventory_rows WHERE export = 'granted'"), "1");

    // The connection test.
    let t = gw.request("POST", "/api/v2/sinks/pg/test", None).await;
    assert_eq!(t.body["verified"], true, "{}", t.text);
    assert!(t.text.contains("PostgreSQL 1"), "{}", t.text);
    let t = gw.request("POST", "/api/v2/sinks/pg-badpw/test", None).await;
    assert_eq!(t.body["verified"], false, "{}", t.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_while_postgres_is_down_and_the_half_open_trial_delivers_when_it_returns() {
    let _cpu = crate::common::shared_cpu().await;
    let pg = Postgres::start();
    let secrets = TempDir::new("pg-secrets");
    let sinks = vec![pg_sink("pg", &pg, "postgres", PG_PASSWORD, &secrets)];
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            c.sinks = sinks;
            c.exports = vec![export("inventory", INVENTORY_SQL, "pg", None)];
        }),
        ..Default::default()
    });
    duck(&gw, INVENTORY);
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);

    pg.stop_server("fast");
    duck(&gw, "UPDATE inventory SET name = 'renamed' WHERE id = 1");
    // 3 attempts, then 2 more: five transient failures in a row open the breaker.
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    let l = line(&r.body, "pg");
    assert_eq!((l["synced"].as_str(), l["lastError"]["class"].as_str()), (Some("ExportFailed"), Some("transient")), "{l}");
    assert_eq!(l["breaker"], "closed", "{l}");
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(line(&r.body, "pg")["breaker"], "open", "{}", r.text);
    // Open: fails fast without trying.
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    let l = line(&r.body, "pg");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("circuit breaker open"), "{l}");
    let metrics = gw.request("GET", "/metrics", None).await.text;
    assert!(metrics.contains("sluice_sink_breaker_state{sink=\"pg\"} 1"), "{metrics}");

    // The server returns; after the open period the one trial goes through and closes it.
    pg.start_server();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = gw.request("GET", "/api/v2/exports/inventory", None).await;
    assert_eq!(line(&r.body, "pg")["breaker"], "half_open", "{}", r.text);
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    let l = line(&r.body, "pg");
    assert_eq!((l["synced"].as_str(), l["breaker"].as_str()), (Some("Exported"), Some("closed")), "{l}");
    let want = expected(&gw, "");
    assert_eq!(want[&1]["name"], "renamed");
    assert_same(&pg, "inventory", &want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_sink_reaches_only_the_address_in_its_configuration() {
    let _cpu = crate::common::shared_cpu().await;
    let pg = Postgres::start();
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let rt = gw.gateway.runtime().clone();
    let sink = rt.load_sink(&component("postgres")).unwrap();
    let config = |url: &str| SinkConfig {
        name: "pg".into(),
        settings: vec![("url".into(), url.into())],
        secrets: vec![("password".into(), PG_PASSWORD.into())],
    };
    let request = ExportRequest {
        export: "x".into(),
        cluster: String::new(),
        generation: 1,
        checksum: "c".into(),
        part_index: 0,
        part_total: 1,
        item_count: 1,
        format: "json".into(),
        payload: br#"{"items":[{"id":1}]}"#.to_vec(),
    };
    let t = Duration::from_secs(20);
    let refused = |e: &sluice::runtime::sinks::SinkCallError| e.class() == ErrorClass::Terminal && e.to_string().contains("host refused");
    let url = pg.url("postgres");
    // Allowed: delivered.
    let ok = rt.sink_export(&sink, &config(&url), &request, Arc::new(NetPolicy::for_urls([url.as_str()], true)), t).await;
    assert!(ok.is_ok(), "{ok:?}");
    // Another port than the configured one, loopback without allow_private, metadata: refused by
    // wasi:sockets before anything is sent.
    let elsewhere = Arc::new(NetPolicy::for_urls(["postgres://postgres@127.0.0.1:1/postgres"], true));
    let err = rt.sink_export(&sink, &config(&url), &request, elsewhere, t).await.unwrap_err();
    assert!(refused(&err), "{err}");
    let strict = Arc::new(NetPolicy::for_urls([url.as_str()], false));
    let err = rt.sink_export(&sink, &config(&url), &request, strict, t).await.unwrap_err();
    assert!(refused(&err), "{err}");
    let metadata = "postgres://postgres@169.254.169.254:5432/postgres";
    let err = rt.sink_export(&sink, &config(metadata), &request, Arc::new(NetPolicy::for_urls([metadata], true)), t).await.unwrap_err();
    assert!(refused(&err), "{err}");
    // The one allowed delivery is all PostgreSQL has.
    assert_eq!(pg.psql("SELECT count(*) FROM sluice_exports"), "1");
}

/// `psql` holding an ACCESS EXCLUSIVE lock on a table until `release`.
pub(crate) struct TableLock(std::process::Child);

impl TableLock {
    pub(crate) fn take(pg: &PgServer, table: &str) -> Self {
        use std::io::{BufRead as _, Write as _};
        let mut child = pg
            .psql_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        Self(child)
    }

    pub(crate) fn release(mut self) {
        use std::io::Write as _;
        writeln!(self.0.stdin.as_mut().unwrap(), "COMMIT;").unwrap();
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_in_the_middle_of_an_export_delivers_it_once_to_postgres_and_again_with_the_same_key_to_kafka() {
    let _cpu = crate::common::shared_cpu().await;
    use crate::binary::{Server, TOKEN};
    let pg = Postgres::start();
    let broker = crate::kafka::Tansu::start().await;
    broker.create_topic("exports", 1).await;
    let dir = TempDir::new("pg-kill");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("pg-password"), PG_PASSWORD).unwrap();
    let seed = Command::new(crate::common::sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "3", "--nodes", "4", "--hours", "1"])
        .output()
        .unwrap();
    assert!(seed.status.success(), "{}", String::from_utf8_lossy(&seed.stderr));
    let sql = "SELECT node_id, cluster_id, count(*) AS events FROM events GROUP BY ALL";
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            r#"[plugins]
watch = false

[[sink]]
name = "events"
component = {kafka:?}
settings = {{ brokers = {brokers:?}, topic = "exports" }}
allow_private = true

[[sink]]
name = "pg"
component = {component:?}
settings = {{ url = {url:?}, table = "inventory_rows", key = "node_id" }}
secrets = {{ password = "file:{dir}/pg-password" }}
allow_private = true

[[export]]
name = "nodes"
sql = {sql:?}
[[export.sink]]
name = "events"
[[export.sink]]
name = "pg"
"#,
            kafka = component("kafka").display().to_string(),
            brokers = broker.addr,
            component = component("postgres").display().to_string(),
            url = pg.url("postgres"),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    pg.psql(
        "CREATE TABLE inventory_rows (export text NOT NULL, item_key text NOT NULL, cluster text NOT NULL, payload jsonb NOT NULL, \
         exported_at timestamptz NOT NULL, generation bigint NOT NULL, PRIMARY KEY (export, item_key))",
    );

    // The export goes to Kafka, then to PostgreSQL, where it blocks inside its transaction on a
    // lock we hold; then SIGKILL.
    let lock = TableLock::take(&pg, "inventory_rows");
    let server = Server::start(&dir, &["--config", "sluice.toml"]);
    let http = reqwest::Client::new();
    let expected: Value = http
        .post(format!("{}/api/v2/sql", server.api))
        .bearer_auth(TOKEN)
        .json(&json!({"sql": format!("SELECT count(*) FROM ({sql})")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = expected["rows"][0][0].as_i64().unwrap();
    assert_eq!(items, 12);
    let run = tokio::spawn(http.post(format!("{}/api/v2/exports/nodes/run", server.api)).bearer_auth(TOKEN).send());
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice' AND wait_event_type = 'Lock'";
    let started = std::time::Instant::now();
    while pg.psql(waiting) != "1" {
        assert!(started.elapsed() < Duration::from_secs(30), "the export never reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server); // SIGKILL
    assert!(run.await.unwrap().is_err(), "the killed gateway cannot have answered");
    lock.release();
    assert_eq!(pg.psql("SELECT count(*) FROM inventory_rows"), "0", "nothing of the cut-off export was committed");

    // Restarted, the gateway resumes the pending export by itself: every item once.
    let server = Server::start(&dir, &["--config", "sluice.toml"]);
    let started = std::time::Instant::now();
    let status = loop {
        let s: Value = http.get(format!("{}/api/v2/exports/nodes", server.api)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        if s["sinkExports"][0]["synced"] == "Exported" {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the pending export was not resumed: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["generation"], 1, "the same data keeps its generation across the restart: {status}");
    assert_eq!(pg.psql("SELECT count(*), count(DISTINCT item_key), min(generation), max(generation) FROM inventory_rows"), format!("{items}|{items}|1|1"));
    // Each row is the node's: its events agree with DuckDB.
    let direct: Value = http
        .post(format!("{}/api/v2/sql", server.api))
        .bearer_auth(TOKEN)
        .json(&json!({"sql": format!("SELECT node_id, events FROM ({sql}) ORDER BY node_id")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let in_pg = pg.psql("SELECT item_key, payload->>'events' FROM inventory_rows ORDER BY item_key");
    let want: Vec<String> = direct["rows"].as_array().unwrap().iter().map(|r| format!("{}|{}", r[0].as_str().unwrap(), r[1])).collect();
    assert_eq!(in_pg.lines().collect::<Vec<_>>(), want);

    // Kafka got the export before the kill and again after the restart (the state said nothing
    // of the whole export being done): at least once, both with the same idempotency key.
    let records = broker.records("exports", 0).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for (key, value, headers) in &records {
        assert_eq!(key, "/nodes");
        assert_eq!(headers["sluice-idempotency-key"], "nodes/1/0");
        let envelope: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(envelope["checksum"], status["checksum"]);
        assert_eq!(envelope["itemCount"], items);
    }
}

/// The component with a custom section appended: the same behaviour, another digest.
fn new_version(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"sluice-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    let mut n = payload.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&payload);
    out
}

fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_component_is_hot_reloaded_and_an_export_in_flight_finishes_on_its_version() {
    let _cpu = crate::common::shared_cpu().await;
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE inventory_rows (export text NOT NULL, item_key text NOT NULL, cluster text NOT NULL, payload jsonb NOT NULL, \
         exported_at timestamptz NOT NULL, generation bigint NOT NULL, PRIMARY KEY (export, item_key))",
    );
    let secrets = TempDir::new("pg-secrets");
    let sinks_dir = TempDir::new("pg-sinks");
    let file = sinks_dir.path().join("pg.wasm");
    let v1 = std::fs::read(component("postgres")).unwrap();
    std::fs::write(&file, &v1).unwrap();
    let mut sink = pg_sink("pg", &pg, "postgres", PG_PASSWORD, &secrets);
    sink.component = file.clone();
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        watch: true,
        configure: Box::new(move |c| {
            c.sinks = vec![sink];
            c.exports = vec![export("inventory", INVENTORY_SQL, "pg", None)];
        }),
        ..Default::default()
    });
    duck(&gw, INVENTORY);
    let digest = |bytes: &[u8]| crate::common::sha256_hex(bytes);
    let sink_digest = || async { gw.request("GET", "/api/v2/sinks", None).await.body["sinks"][0]["digest"].as_str().unwrap().to_owned() };
    assert_eq!(sink_digest().await, digest(&v1));

    // An export blocks in PostgreSQL; meanwhile a new version of the component is installed.
    let lock = TableLock::take(&pg, "inventory_rows");
    let gw = Arc::new(gw);
    let run = tokio::spawn({
        let gw = gw.clone();
        async move { gw.request("POST", "/api/v2/exports/inventory/run", None).await }
    });
    let started = std::time::Instant::now();
    while pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice' AND wait_event_type = 'Lock'") != "1" {
        assert!(started.elapsed() < Duration::from_secs(30), "the export never reached PostgreSQL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v2 = new_version(&v1, "2");
    replace_file(&file, &v2);
    let sink_digest = || async { gw.request("GET", "/api/v2/sinks", None).await.body["sinks"][0]["digest"].as_str().unwrap().to_owned() };
    let started = std::time::Instant::now();
    while sink_digest().await != digest(&v2) {
        assert!(started.elapsed() < Duration::from_secs(30), "the new sink component was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!run.is_finished(), "the export is still in flight");

    // The export in flight finishes, on the version it started with.
    lock.release();
    let r = run.await.unwrap();
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert_eq!(line(&r.body, "pg")["component"], format!("postgres@0.1.0 sha256:{}", &digest(&v1)[..16]), "{}", r.text);
    assert_same(&pg, "inventory", &expected(&gw, ""));
    // The next one runs on the new version.
    duck(&gw, "UPDATE inventory SET value = 0 WHERE id = 1");
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(line(&r.body, "pg")["component"], format!("postgres@0.1.0 sha256:{}", &digest(&v2)[..16]), "{}", r.text);
    assert_same(&pg, "inventory", &expected(&gw, ""));

    // A broken file never replaces the working version.
    replace_file(&file, b"not a component");
    let started = std::time::Instant::now();
    loop {
        let metrics = gw.request("GET", "/metrics", None).await.text;
        if metrics.lines().any(|l| l.starts_with("sluice_plugin_reloads_total") && l.contains("pg.wasm") && l.contains("failed")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the broken file was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink_digest().await, digest(&v2));
    duck(&gw, "UPDATE inventory SET value = 1 WHERE id = 1");
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert_same(&pg, "inventory", &expected(&gw, ""));
}
