//! The `ducklake` backend: a lake with its catalog in a real PostgreSQL and its data in a real
//! S3-compatible store (moto), both on loopback. The SQL and tenant-scope tests run on it as on
//! the file backend (`sql.rs`, `tenant.rs`); this file has what is the lake's own.

use serde_json::json;

use crate::common::{GatewayOptions, TempDir, TestGateway};
use crate::pg_server::PgServer;
use crate::moto::Moto;

/// A catalog server, an object store with a bucket, and the secrets a gateway reaches them with.
pub(crate) struct Lake {
    /// Two servers: latency-asserting tests wait while they run.
    _cpu: tokio::sync::RwLockReadGuard<'static, ()>,
    pub(crate) dir: TempDir,
    pub(crate) pg: PgServer,
    pub(crate) moto: Moto,
}

impl Lake {
    pub(crate) async fn start() -> Self {
        let _cpu = crate::common::shared_cpu().await;
        let dir = TempDir::new("lake");
        let pg_dir = dir.path().join("pg");
        std::fs::create_dir_all(&pg_dir).unwrap();
        let pg = PgServer::start(&pg_dir, "lake-catalog-pw");
        let moto = Moto::start().await;
        let r = reqwest::Client::new().put(format!("{}/lake", moto.url)).send().await.unwrap();
        assert!(r.status().is_success(), "creating the bucket: {}", r.status());
        let dsn = format!("host=127.0.0.1 port={} dbname=postgres user=postgres password={}", pg.port, pg.password);
        std::fs::write(dir.path().join("catalog"), dsn).unwrap();
        std::fs::write(dir.path().join("s3-key"), "test-key").unwrap();
        std::fs::write(dir.path().join("s3-secret"), "test-secret").unwrap();
        Self { _cpu, dir, pg, moto }
    }

    /// `[database]` for this lake, as a gateway's configuration has it.
    pub(crate) fn configure(&self) -> impl FnOnce(&mut sluice::config::Config) + 'static {
        let secret = |name: &str| format!("file:{}", self.dir.path().join(name).display());
        let (catalog, key, value) = (secret("catalog"), secret("s3-key"), secret("s3-secret"));
        let endpoint = self.moto.url.trim_start_matches("http://").to_owned();
        move |c| {
            c.database.backend = sluice::config::Backend::Ducklake;
            let lake = &mut c.database.ducklake;
            lake.catalog = catalog;
            lake.data_path = "s3://lake/fleet/".into();
            lake.s3.endpoint = endpoint;
            lake.s3.url_style = "path".into();
            lake.s3.use_ssl = false;
            lake.s3.key_id = Some(key);
            lake.s3.secret = Some(value);
        }
    }

    /// `[database]` for this lake in a configuration file (`extra` goes into `[database.ducklake]`).
    pub(crate) fn toml(&self, extra: &str) -> String {
        let secret = |name: &str| format!("file:{}", self.dir.path().join(name).display());
        format!(
            "[database]\nbackend = \"ducklake\"\n[database.ducklake]\ncatalog = {:?}\ndata_path = \"s3://lake/fleet/\"\n{extra}\n\
             [database.ducklake.s3]\nendpoint = {:?}\nurl_style = \"path\"\nuse_ssl = false\nkey_id = {:?}\nsecret = {:?}\n",
            secret("catalog"),
            self.moto.url.trim_start_matches("http://"),
            secret("s3-key"),
            secret("s3-secret"),
        )
    }

    /// Gateway options on this lake.
    pub(crate) fn options(&self, opts: GatewayOptions) -> GatewayOptions {
        let (prev, lake) = (opts.configure, self.configure());
        GatewayOptions {
            configure: Box::new(move |c| {
                prev(c);
                lake(c);
            }),
            ..opts
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_sql_and_ingest_work_on_the_lake_and_the_data_is_parquet_in_the_object_store() {
    let lake = Lake::start().await;
    let gw = TestGateway::start(lake.options(GatewayOptions::default()));
    // The demo data went into the lake: the same answers as on a file.
    let r = gw.request("POST", "/api/v2/sql", Some(&json!({"sql": "SELECT count(DISTINCT cluster_id), count(*) FROM events"}).to_string())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let expected = {
        let opts = crate::common::seed_options();
        // One row per node, metric and sample; the count must match what the file backend gets.
        let file = TestGateway::start(GatewayOptions::default());
        let f = file.request("POST", "/api/v2/sql", Some(&json!({"sql": "SELECT count(DISTINCT cluster_id), count(*) FROM events"}).to_string())).await;
        assert_eq!(f.body["rows"][0][0], opts.clusters as u64);
        f.body["rows"].clone()
    };
    assert_eq!(r.body["rows"], expected);
    let summary = gw.call("fleet.cluster.summary", json!({"cluster_id": "cluster-a"})).await;
    assert_eq!(summary.status, 200, "{}", summary.text);
    assert_eq!(summary.body["result"]["rows"].as_array().unwrap().len(), 4, "{}", summary.text);
    // Parquet files under the data path, in the bucket.
    let list = reqwest::get(format!("{}/lake?list-type=2&prefix=fleet/", lake.moto.url)).await.unwrap().text().await.unwrap();
    assert!(list.contains(".parquet</Key>"), "no Parquet file in the bucket: {list}");
    // The catalog is in PostgreSQL.
    let out = std::process::Command::new("psql")
        .env("PGPASSWORD", &lake.pg.password)
        .args(["-h", "127.0.0.1", "-p", &lake.pg.port.to_string(), "-U", "postgres", "-tAc", "SELECT count(*) FROM ducklake_table"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tables: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(tables >= 2, "events and the export state are lake tables: {tables}");

    // Ingest: a small batch lands, is read back at once, and stays in the catalog (inlined)
    // rather than becoming a Parquet file of its own.
    let files_before = list.matches(".parquet</Key>").count();
    let metrics = json!({"resourceMetrics": [{"resource": {"attributes": [
        {"key": "ingero.cluster.id", "value": {"stringValue": "cluster-z"}},
        {"key": "ingero.node.id", "value": {"stringValue": "node-1"}}]},
        "scopeMetrics": [{"metrics": [{"name": "gpu.util", "gauge": {"dataPoints": [{"asDouble": 0.5, "timeUnixNano": "1700000000000000000"}]}}]}]}]});
    let auth = format!("Bearer {}", crate::common::ADMIN_TOKEN);
    let r = gw.request_raw("POST", "/v1/metrics", &[("authorization", &auth), ("content-type", "application/json")], metrics.to_string().into_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = gw.request("POST", "/api/v2/sql", Some(&json!({"sql": "SELECT count(*) FROM events WHERE cluster_id = 'cluster-z'"}).to_string())).await;
    assert_eq!(r.body["rows"], json!([[1]]), "{}", r.text);
    let list = reqwest::get(format!("{}/lake?list-type=2&prefix=fleet/", lake.moto.url)).await.unwrap().text().await.unwrap();
    assert_eq!(list.matches(".parquet</Key>").count(), files_before, "a one-point batch became a Parquet file");

    // A second gateway on the same lake sees it (a restart, or another replica).
    drop(gw);
    let again = TestGateway::start(lake.options(GatewayOptions { seed: false, ..Default::default() }));
    let r = again.request("POST", "/api/v2/sql", Some(&json!({"sql": "SELECT count(*) FROM events WHERE cluster_id = 'cluster-z'"}).to_string())).await;
    assert_eq!(r.body["rows"], json!([[1]]), "{}", r.text);
}

#[test]
fn the_configuration_refuses_a_lake_it_cannot_reach_safely_naming_the_key() {
    let base = "[database]\nbackend = \"ducklake\"\n[database.ducklake]\ncatalog = \"env:CATALOG\"\ndata_path = \"s3://b/p/\"\n";
    for (extra, key) in [
        ("", ""),
        ("[database.ducklake.s3]\nuse_ssl = false\nendpoint = \"store.example.com:9000\"\n", "database.ducklake.s3.use_ssl"),
        ("[database.ducklake.s3]\nurl_style = \"sideways\"\n", "database.ducklake.s3.url_style"),
        ("[database.ducklake.s3]\nkey_id = \"AKIA123\"\nsecret = \"env:S\"\n", "database.ducklake.s3.key_id"),
        ("[database.ducklake.s3]\nkey_id = \"env:K\"\n", "database.ducklake.s3"),
    ] {
        let config: sluice::config::Config = toml::from_str(&format!("{base}{extra}")).unwrap();
        match config.validate() {
            Ok(()) => assert!(key.is_empty(), "{extra} was accepted"),
            Err(e) => assert!(!key.is_empty() && e.to_string().contains(key), "{extra}: {e}"),
        }
    }
    let plain: sluice::config::Config =
        toml::from_str("[database]\nbackend = \"ducklake\"\n[database.ducklake]\ncatalog = \"host=db password=hunter2\"\ndata_path = \"s3://b/\"\n").unwrap();
    assert!(plain.validate().unwrap_err().to_string().contains("database.ducklake.catalog"));
    for (extra, key) in [
        ("advertise_url = \"http://10.0.0.5:8081\"\n", "database.ducklake.advertise_url"),
        ("advertise_url = \"gw-1:8081\"\n", "database.ducklake.advertise_url"),
        ("snapshot_retention = \"30s\"\n", "database.ducklake.snapshot_retention"),
        ("advertise_url = \"https://gw-1.internal:8081\"\nsnapshot_retention = \"2h\"\n", ""),
        ("advertise_url = \"http://127.0.0.1:8081\"\n", ""),
    ] {
        let config: sluice::config::Config = toml::from_str(&format!("{base}{extra}")).unwrap();
        match config.validate() {
            Ok(()) => assert!(key.is_empty(), "{extra} was accepted"),
            Err(e) => assert!(!key.is_empty() && e.to_string().contains(key), "{extra}: {e}"),
        }
    }
    let not_s3: sluice::config::Config =
        toml::from_str("[database]\nbackend = \"ducklake\"\n[database.ducklake]\ncatalog = \"env:C\"\ndata_path = \"/var/lake\"\n").unwrap();
    assert!(not_s3.validate().unwrap_err().to_string().contains("database.ducklake.data_path"));
}

#[test]
fn export_run_from_the_command_line_refuses_a_lake_and_names_the_api_to_use() {
    let dir = TempDir::new("lake-export-run");
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[database]\nbackend = \"ducklake\"\n[database.ducklake]\ncatalog = \"env:NO_SUCH_CATALOG\"\ndata_path = \"s3://b/p/\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::common::sluice_bin())
        .current_dir(dir.path())
        .args(["export", "run", "nodes", "--config", "sluice.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POST /api/v2/exports/nodes/run") && err.contains("writer"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lake_that_cannot_be_reached_is_a_clear_error_without_the_password() {
    let lake = Lake::start().await;
    let dir = TempDir::new("lake-bad");
    std::fs::write(dir.path().join("catalog"), format!("host=127.0.0.1 port={} dbname=postgres user=postgres password=wrong-pw-123", lake.pg.port)).unwrap();
    let mut config = sluice::config::Config::default();
    (lake.configure())(&mut config);
    config.database.ducklake.catalog = format!("file:{}", dir.path().join("catalog").display());
    let err = sluice::db::Database::open(config.database.to_options()).err().expect("a wrong password must not open").to_string();
    assert!(err.contains("attaching the lake"), "{err}");
    assert!(!err.contains("wrong-pw-123"), "the password leaked into the error: {err}");
    // Extensions are taken only from the configured directory.
    let mut config = sluice::config::Config::default();
    (lake.configure())(&mut config);
    config.database.ducklake.extension_directory = Some(dir.path().join("no-extensions"));
    let err = format!("{:#}", sluice::db::Database::open(config.database.to_options()).err().expect("no extensions, no lake"));
    assert!(err.contains("loading the DuckDB extension httpfs"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upkeep_flushes_inlined_rows_to_parquet_and_expires_old_snapshots_keeping_every_row() {
    let lake = Lake::start().await;
    let gw = TestGateway::start(lake.options(GatewayOptions::default()));
    let count = "SELECT count(*), sum(value_double) FROM events";
    let before = gw.request("POST", "/api/v2/sql", Some(&json!({"sql": count}).to_string())).await.body["rows"].clone();
    // Twenty small batches: each a snapshot, each inlined in the catalog.
    let auth = format!("Bearer {}", crate::common::ADMIN_TOKEN);
    for i in 0..20 {
        let metrics = json!({"resourceMetrics": [{"resource": {"attributes": [
            {"key": "ingero.cluster.id", "value": {"stringValue": "cluster-m"}},
            {"key": "ingero.node.id", "value": {"stringValue": format!("node-{i}")}}]},
            "scopeMetrics": [{"metrics": [{"name": "gpu.util", "gauge": {"dataPoints": [
                {"asDouble": 1.0, "timeUnixNano": "1700000000000000000"}, {"asDouble": 2.0, "timeUnixNano": "1700000001000000000"}]}}]}]}]});
        let r = gw.request_raw("POST", "/v1/metrics", &[("authorization", &auth), ("content-type", "application/json")], metrics.to_string().into_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .env("PGPASSWORD", &lake.pg.password)
            .args(["-h", "127.0.0.1", "-p", &lake.pg.port.to_string(), "-U", "postgres", "-tAc", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let snapshots = |psql: &dyn Fn(&str) -> String| psql("SELECT count(*) FROM ducklake_snapshot").parse::<u64>().unwrap();
    let had = snapshots(&psql);
    assert!(had >= 20, "{had} snapshots");
    let parquet = || async {
        let list = reqwest::get(format!("{}/lake?list-type=2&prefix=fleet/", lake.moto.url)).await.unwrap().text().await.unwrap();
        list.matches(".parquet</Key>").count()
    };
    let files_before = parquet().await;

    let db = gw.gateway.db().clone();
    let done = tokio::task::spawn_blocking(move || db.maintain_lake(std::time::Duration::ZERO)).await.unwrap().unwrap();
    assert_eq!(done.flushed_rows, 40, "{done:?}");
    // Every row is still there, the history before now is gone, and the inlined rows are a
    // Parquet file now.
    let after = gw.request("POST", "/api/v2/sql", Some(&json!({"sql": count}).to_string())).await.body["rows"].clone();
    assert_eq!(after[0][0].as_u64().unwrap(), before[0][0].as_u64().unwrap() + 40);
    let kept = snapshots(&psql);
    assert!(kept < had / 4, "snapshots {had} → {kept}");
    let r = gw.request("POST", "/api/v2/sql", Some(&json!({"sql": "SELECT count(*) FROM events WHERE cluster_id = 'cluster-m'"}).to_string())).await;
    assert_eq!(r.body["rows"], json!([[40]]), "{}", r.text);
    assert!(parquet().await <= files_before + 1, "merged and cleaned up: {files_before} → {}", parquet().await);
    // A second pass finds nothing to flush.
    let db = gw.gateway.db().clone();
    let again = tokio::task::spawn_blocking(move || db.maintain_lake(std::time::Duration::ZERO)).await.unwrap().unwrap();
    assert_eq!(again.flushed_rows, 0);
}
