//! The `ducklake` backend: the `events` table (and everything else Sluice stores) in a DuckLake,
//! a catalog in PostgreSQL with the data as Parquet on S3-compatible storage, which any number
//! of gateways can attach. The DuckDB instance itself is in memory.
//!
//! Extensions come only from a local directory (DuckDB's own signed builds, pinned by
//! checksum by `scripts/dev` and the release bundle); nothing is downloaded and unsigned
//! extensions are refused. Once the lake is attached the instance is locked down as the file
//! backend is: no file or network access but the lake's data path, configuration locked.

use std::path::PathBuf;

use anyhow::Context as _;
use duckdb::{Config, Connection};

/// Where the lake is and how to reach it. Secrets are references (`env:NAME`, `file:/path`),
/// resolved when the database opens.
#[derive(Debug, Clone)]
pub struct LakeOptions {
    /// The PostgreSQL catalog's libpq connection string, as a secret reference.
    pub catalog: String,
    /// Where the Parquet files go, e.g. `s3://bucket/prefix/`.
    pub data_path: String,
    /// DuckDB's extension directory (holding `v<version>/linux_amd64/*.duckdb_extension`).
    pub extension_directory: PathBuf,
    /// Inserts of up to this many rows stay in the catalog instead of becoming a Parquet file
    /// each (DuckLake's data inlining).
    pub inline_rows: u64,
    pub s3: S3Options,
}

/// The object store (`[database.ducklake.s3]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// `host[:port]` of an S3-compatible store; empty: AWS.
    pub endpoint: String,
    pub region: String,
    /// `vhost` (AWS) or `path` (most self-hosted stores).
    pub url_style: String,
    /// TLS to the store; plain HTTP only to a loopback endpoint.
    pub use_ssl: bool,
    /// Access key id and secret, as secret references (`env:`/`file:`); both absent: anonymous
    /// access (DuckDB's default credential chain is not used).
    pub key_id: Option<String>,
    pub secret: Option<String>,
}

impl Default for S3Options {
    fn default() -> Self {
        Self { endpoint: String::new(), region: "us-east-1".into(), url_style: "vhost".into(), use_ssl: true, key_id: None, secret: None }
    }
}

/// The name the lake is attached under (and the default catalog).
pub const LAKE: &str = "lake";

/// The extensions the backend loads, in order.
const EXTENSIONS: [&str; 3] = ["httpfs", "postgres_scanner", "ducklake"];

/// Opens an in-memory DuckDB with the lake attached as the default catalog, the schema made,
/// and the instance locked down: the writer connection and `readers` read connections (the
/// default catalog is a connection's own setting, so each is made to use the lake before the
/// configuration is locked).
pub(super) fn open(lake: &LakeOptions, max_memory: &str, schema: &str, readers: usize) -> anyhow::Result<(Connection, Vec<Connection>)> {
    let dir = lake.extension_directory.to_str().context("the extension directory is not UTF-8")?;
    let config = Config::default()
        .enable_autoload_extension(false)?
        .max_memory(max_memory)?
        .with("autoinstall_known_extensions", "false")?
        .with("allow_unsigned_extensions", "false")?
        .with("extension_directory", dir)?;
    let conn = Connection::open_in_memory_with_flags(config).context("opening DuckDB in memory")?;
    for ext in EXTENSIONS {
        conn.execute_batch(&format!("LOAD {ext}")).with_context(|| {
            format!(
                "loading the DuckDB extension {ext} from {dir} (scripts/dev setup and the release bundle install \
                 DuckDB's signed builds there; database.ducklake.extension_directory or SLUICE_DUCKDB_EXTENSIONS \
                 points at it)"
            )
        })?;
    }
    let s3 = &lake.s3;
    let mut secret = format!(
        "CREATE TEMPORARY SECRET sluice_lake_s3 (TYPE s3, REGION {}, URL_STYLE {}, USE_SSL {}",
        literal(&s3.region),
        literal(&s3.url_style),
        s3.use_ssl
    );
    if !s3.endpoint.is_empty() {
        secret += &format!(", ENDPOINT {}", literal(&s3.endpoint));
    }
    if let (Some(k), Some(s)) = (&s3.key_id, &s3.secret) {
        let key = crate::secret::resolve("database.ducklake.s3.key_id", k)?;
        let value = crate::secret::resolve("database.ducklake.s3.secret", s)?;
        secret += &format!(", KEY_ID {}, SECRET {}", literal(&key), literal(&value));
    }
    secret.push(')');
    conn.execute_batch(&secret).context("setting the object store's credentials")?;
    let catalog = crate::secret::resolve("database.ducklake.catalog", &lake.catalog)?;
    let attach = format!(
        "ATTACH {} AS {LAKE} (DATA_PATH {}, DATA_INLINING_ROW_LIMIT {})",
        literal(&format!("ducklake:postgres:{catalog}")),
        literal(&lake.data_path),
        lake.inline_rows
    );
    // The connection string can carry a password: never in the error.
    conn.execute_batch(&attach).map_err(|e| {
        anyhow::anyhow!("attaching the lake (catalog {}, data {}): {}", redact(&catalog), lake.data_path, redact_err(&e.to_string(), &catalog))
    })?;
    conn.execute_batch(&format!("USE {LAKE}"))?;
    conn.execute_batch(schema).context("creating the tables in the lake")?;
    let mut pool = Vec::with_capacity(readers);
    for _ in 0..readers {
        let reader = conn.try_clone().context("opening a read connection")?;
        reader.execute_batch(&format!("USE {LAKE}"))?;
        pool.push(reader);
    }
    conn.execute_batch(&format!(
        "SET allowed_directories = [{}]; SET enable_external_access = false; SET lock_configuration = true;",
        literal(&lake.data_path)
    ))
    .context("locking the database down")?;
    Ok((conn, pool))
}

/// The file backend's schema as DuckLake takes it (it has no primary keys or unique constraints).
/// Lakes began with the column the file backend adds later, so the table is created whole: a
/// DuckLake table altered after creation, read by another gateway while the writer flushes
/// inlined rows, failed with a DuckDB internal error (DuckLake 1.5.5; the replica tests).
pub(super) fn schema(file_schema: &str) -> String {
    let (create, _alter) = file_schema.split_once("\n-- The checksum of the generation last attempted").expect("the schema's ALTER");
    create.replace(",\n    PRIMARY KEY (export, sink)", ",\n    attempted_checksum VARCHAR")
}

/// `'text'`, quotes doubled.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A libpq connection string without its password.
fn redact(conn: &str) -> String {
    conn.split_whitespace()
        .map(|kv| if kv.to_ascii_lowercase().starts_with("password=") { "password=…" } else { kv })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_err(err: &str, conn: &str) -> String {
    conn.split_whitespace()
        .filter_map(|kv| kv.strip_prefix("password=").filter(|p| !p.is_empty()))
        .fold(err.to_owned(), |e, p| e.replace(p, "…"))
}

/// What a maintenance pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Maintenance {
    pub flushed_rows: u64,
    pub merged_files: u64,
    pub deleted_files: u64,
}

impl super::Database {
    /// Compacts the lake on the writer connection: flushes inlined rows to Parquet, merges
    /// adjacent small files, expires snapshots older than `retention` and deletes the files that
    /// only expired snapshots used (and were scheduled for deletion at least `retention` ago).
    pub fn maintain_lake(&self, retention: std::time::Duration) -> anyhow::Result<Maintenance> {
        anyhow::ensure!(self.options().lake.is_some(), "not a lake");
        let conn = self.writer();
        let secs = retention.as_secs();
        let sum = |sql: &str, col: usize| -> anyhow::Result<u64> {
            let mut stmt = conn.prepare(sql).with_context(|| sql.to_owned())?;
            let rows = stmt.query_map([], |r| r.get::<_, Option<i64>>(col)).with_context(|| sql.to_owned())?;
            let mut n = 0u64;
            for r in rows {
                n += r.with_context(|| sql.to_owned())?.unwrap_or(0).max(0) as u64;
            }
            Ok(n)
        };
        let flushed_rows = sum(&format!("CALL ducklake_flush_inlined_data('{LAKE}')"), 2)?;
        let merged_files = sum(&format!("CALL ducklake_merge_adjacent_files('{LAKE}')"), 2)?;
        conn.execute_batch(&format!("CALL ducklake_expire_snapshots('{LAKE}', older_than => now() - INTERVAL '{secs} seconds')"))
            .context("expiring old snapshots")?;
        let mut stmt = conn.prepare(&format!("CALL ducklake_cleanup_old_files('{LAKE}', older_than => now() - INTERVAL '{secs} seconds')"))?;
        let deleted_files = stmt.query_map([], |_| Ok(()))?.count() as u64;
        Ok(Maintenance { flushed_rows, merged_files, deleted_files })
    }

    /// The lake's current snapshot (what the next query reads); `None` on the file backend.
    pub fn lake_snapshot(&self) -> Option<i64> {
        self.options().lake.as_ref()?;
        let conn = self.borrow_reader(std::time::Instant::now() + std::time::Duration::from_secs(2)).ok()?;
        let id = conn.query_row(&format!("SELECT id FROM {LAKE}.current_snapshot()"), [], |r| r.get(0)).ok();
        let _ = conn.execute_batch("ROLLBACK");
        self.return_reader(conn);
        id
    }
}
