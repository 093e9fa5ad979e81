//! DuckDB: the database file, the `events` schema, and the read-only query path that tools (and
//! later the SQL endpoint) use.
//!
//! One DuckDB instance per process, opened with external access disabled and its configuration
//! locked, so no statement can read or write files, reach the network, load extensions or change
//! settings. Writers (the demo seeder, ingest) use [`Database::writer`]; readers borrow a
//! connection from a small pool and go through [`Database::query_read_only`], which accepts exactly
//! one `SELECT` as judged by DuckDB's own parser, runs it inside a transaction that is always
//! rolled back, caps the rows, and interrupts it at its deadline.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use duckdb::types::Value as DuckValue;
use duckdb::{Config, Connection};

mod commit;
mod guard;
pub mod lake;
mod values;
mod watchdog;

pub use guard::{check_no_external, check_read_only, check_scoped};
pub use values::{ColumnType, QueryResult, Value};
use guard::scope_views;
use values::{column_type, from_duck, to_duck};
use watchdog::Watchdog;

/// The schema of the tables the gateway owns: `events` (data arrives as metrics, one row per
/// point) and `sluice_export_state` (what each export last delivered to each sink, so a restart
/// resumes; see the export engine's state).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    ts           TIMESTAMP NOT NULL,
    cluster_id   VARCHAR   NOT NULL,
    node_id      VARCHAR   NOT NULL,
    metric_name  VARCHAR   NOT NULL,
    value_double DOUBLE,
    host_attr    VARCHAR,
    event_type   VARCHAR,
    attributes   VARCHAR
);
CREATE TABLE IF NOT EXISTS sluice_export_state (
    export           VARCHAR NOT NULL,
    sink             VARCHAR NOT NULL,
    generation       UBIGINT NOT NULL,
    checksum         VARCHAR,
    last_success     TIMESTAMP,
    last_error_class VARCHAR,
    last_error       VARCHAR,
    pending          BOOLEAN NOT NULL,
    PRIMARY KEY (export, sink)
);
-- The checksum of the generation last attempted (added after the first release of the table).
ALTER TABLE sluice_export_state ADD COLUMN IF NOT EXISTS attempted_checksum VARCHAR;";

/// Settings for the database, from the `[database]` config section.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Database file; created when missing.
    pub path: PathBuf,
    /// Read connections kept in the pool.
    pub read_pool_size: usize,
    /// DuckDB's memory cap (`max_memory`), e.g. `1GB`.
    pub max_memory: String,
    /// Longest a single read-only query may run.
    pub query_timeout: Duration,
    /// Most rows a read-only query may return.
    pub max_rows: u64,
    /// The `ducklake` backend's lake; `None`: the DuckDB file at `path`.
    pub lake: Option<lake::LakeOptions>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            path: PathBuf::from("sluice.duckdb"),
            read_pool_size: 4,
            max_memory: "1GB".into(),
            query_timeout: Duration::from_secs(60),
            max_rows: 10_000,
            lake: None,
        }
    }
}

/// How many rows a read-only query may return.
#[derive(Debug, Clone, Copy)]
pub enum RowLimit {
    /// More than the host's cap is an error.
    Cap,
    /// Stop at this many (never more than the cap) and report truncation.
    AtMost(u64),
}

/// Why a read-only query failed (mirrors WIT `query-error`).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("only a single read-only SELECT statement is allowed")]
    NotReadOnly,
    #[error("query interrupted at its deadline")]
    Timeout,
    #[error("query names data outside the caller's scope")]
    ScopeDenied,
    #[error("invalid SQL: {0}")]
    InvalidSql(String),
    #[error("result has more than {0} rows")]
    TooManyRows(u64),
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("database error: {0}")]
    Internal(String),
}

/// The file backend: the DuckDB file at `opts.path`, created with the schema when missing, no
/// file or network access, configuration locked.
fn open_file(opts: &DbOptions) -> anyhow::Result<Connection> {
    use anyhow::Context as _;
    if let Some(parent) = opts.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating the directory for {}", opts.path.display()))?;
    }
    let config = Config::default()
        .enable_external_access(false)?
        .enable_autoload_extension(false)?
        .max_memory(&opts.max_memory)?
        .with("autoinstall_known_extensions", "false")?
        .with("lock_configuration", "true")?;
    let writer = Connection::open_with_flags(&opts.path, config).with_context(|| {
        format!("opening DuckDB database {} (is another sluice process using it?)", opts.path.display())
    })?;
    writer.execute_batch(SCHEMA).context("creating the events table")?;
    Ok(writer)
}

impl QueryError {
    /// A short name of the error's class (trace spans).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotReadOnly => "not_read_only",
            Self::Timeout => "timeout",
            Self::ScopeDenied => "scope_denied",
            Self::InvalidSql(_) => "invalid_sql",
            Self::TooManyRows(_) => "too_many_rows",
            Self::InvalidParams(_) => "invalid_params",
            Self::Internal(_) => "internal",
        }
    }
}

/// The database and its read pool. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<DbInner>,
}

struct DbInner {
    /// Names of DuckDB's built-in views (`duckdb_tables`, `sqlite_master`, ...): metadata about
    /// every tenant's data, refused to tenant-scoped statements.
    system_views: Vec<String>,
    writer: Mutex<Connection>,
    pool: Mutex<Vec<Connection>>,
    pool_cv: Condvar,
    watchdog: Watchdog,
    opts: DbOptions,
    /// The ingest writer thread's queue, started on first use (see `commit`).
    ingest: std::sync::OnceLock<std::sync::mpsc::Sender<commit::Job>>,
    ingest_commits: std::sync::atomic::AtomicU64,
}

impl Database {
    /// Opens (or creates) the database file and makes sure the schema exists.
    pub fn open(opts: DbOptions) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let pool_size = opts.read_pool_size.max(1);
        let (writer, pool) = match &opts.lake {
            Some(lake) => lake::open(lake, &opts.max_memory, &lake::schema(SCHEMA), pool_size)?,
            None => {
                let writer = open_file(&opts)?;
                let pool = (0..pool_size).map(|_| writer.try_clone().context("opening a read connection")).collect::<Result<_, _>>()?;
                (writer, pool)
            }
        };
        let system_views: Vec<String> = writer
            .prepare("SELECT lower(view_name) FROM duckdb_views() WHERE database_name = 'system'")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .context("listing DuckDB's system views")?;
        Ok(Self {
            inner: Arc::new(DbInner {
                system_views,
                writer: Mutex::new(writer),
                pool: Mutex::new(pool),
                pool_cv: Condvar::new(),
                watchdog: Watchdog::start(),
                opts,
                ingest: std::sync::OnceLock::new(),
                ingest_commits: Default::default(),
            }),
        })
    }

    /// The database file (of the file backend).
    pub fn path(&self) -> &Path {
        &self.inner.opts.path
    }

    /// The options the database was opened with.
    pub fn options(&self) -> &DbOptions {
        &self.inner.opts
    }

    /// The single writer connection (seeding, ingest, maintenance).
    pub fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends rows to `events`, all or none (one transaction).
    pub fn append_events(&self, rows: &[crate::ingest::EventRow]) -> anyhow::Result<usize> {
        use anyhow::Context as _;
        use duckdb::types::{TimeUnit, Value as V};
        let conn = self.writer();
        conn.execute_batch("BEGIN TRANSACTION").context("starting the ingest transaction")?;
        let appended = (|| -> anyhow::Result<()> {
            let mut app = conn.appender("events").context("opening the appender on events")?;
            for r in rows {
                app.append_row(duckdb::params![
                    V::Timestamp(TimeUnit::Microsecond, r.ts),
                    &*r.cluster_id,
                    &*r.node_id,
                    &*r.metric_name,
                    r.value,
                    r.host.as_deref(),
                    None::<&str>,
                    r.attributes,
                ])?;
            }
            app.flush()?;
            Ok(())
        })();
        match appended {
            Ok(()) => {
                conn.execute_batch("COMMIT").context("committing the ingest transaction")?;
                Ok(rows.len())
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.context("appending to events"))
            }
        }
    }

    /// Runs one read-only statement. `deadline` bounds it in addition to the configured query
    /// timeout; whichever comes first interrupts the query.
    pub fn query_read_only(
        &self,
        sql: &str,
        params: &[Value],
        limit: RowLimit,
        deadline: Option<Instant>,
    ) -> Result<QueryResult, QueryError> {
        self.query_scoped(sql, params, limit, deadline, &[])
    }

    /// [`Database::query_read_only`] for a caller limited to `clusters` (empty: no limit). The
    /// statement then sees only those clusters' rows, whatever it names: see [`scope_views`].
    pub fn query_scoped(
        &self,
        sql: &str,
        params: &[Value],
        limit: RowLimit,
        deadline: Option<Instant>,
        clusters: &[String],
    ) -> Result<QueryResult, QueryError> {
        let now = Instant::now();
        let mut until = now + self.inner.opts.query_timeout;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        if until <= now || self.inner.watchdog.all_fired() {
            return Err(QueryError::Timeout);
        }
        let conn = self.borrow_reader(until)?;
        let guard = self.inner.watchdog.arm(until, conn.interrupt_handle());
        let scope = (!clusters.is_empty()).then_some(Scope { clusters, system_views: &self.inner.system_views });
        let result = run_read_only(&conn, sql, params, limit, self.inner.opts.max_rows, scope);
        let fired = guard.disarm();
        // Whatever happened, leave the connection outside any transaction before reuse.
        let _ = conn.execute_batch("ROLLBACK");
        self.return_reader(conn);
        match result {
            Err(_) if fired => Err(QueryError::Timeout),
            other => other,
        }
    }

    /// Interrupts every running read-only query and fails new ones: the end of a drain.
    pub fn interrupt_all(&self) {
        self.inner.watchdog.fire_all();
    }

    fn borrow_reader(&self, until: Instant) -> Result<Connection, QueryError> {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = pool.pop() {
                return Ok(conn);
            }
            let now = Instant::now();
            if now >= until {
                return Err(QueryError::Timeout);
            }
            pool = self
                .inner
                .pool_cv
                .wait_timeout(pool, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn return_reader(&self, conn: Connection) {
        self.inner.pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        self.inner.pool_cv.notify_one();
    }
}

/// A tenant-scoped statement's limits.
struct Scope<'a> {
    clusters: &'a [String],
    system_views: &'a [String],
}

fn run_read_only(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    limit: RowLimit,
    cap: u64,
    scope: Option<Scope<'_>>,
) -> Result<QueryResult, QueryError> {
    let ast = check_read_only(conn, sql)?;
    if let Some(s) = &scope {
        check_scoped(&ast, s.system_views)?;
    }
    check_no_external(&ast)?;
    conn.execute_batch("BEGIN TRANSACTION").map_err(internal)?;
    if let Some(s) = &scope {
        scope_views(conn, s.clusters)?;
    }
    let mut stmt = conn.prepare(sql).map_err(sql_error)?;
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(QueryError::InvalidParams(format!(
            "the statement has {expected} parameter(s), {} given",
            params.len()
        )));
    }
    let params: Vec<DuckValue> = params.iter().map(to_duck).collect();
    let mut rows = stmt.query(duckdb::params_from_iter(params)).map_err(sql_error)?;
    let (max, truncate) = match limit {
        RowLimit::Cap => (cap, false),
        RowLimit::AtMost(n) => (n.min(cap), true),
    };
    let mut out = QueryResult::default();
    if let Some(s) = rows.as_ref() {
        let n = s.column_count();
        out.columns = (0..n)
            .map(|i| {
                let name = s.column_name(i).cloned().unwrap_or_default();
                (name, column_type(&s.column_type(i)))
            })
            .collect();
    }
    while let Some(row) = rows.next().map_err(sql_error)? {
        if out.rows.len() as u64 == max {
            if truncate {
                out.truncated = true;
                break;
            }
            return Err(QueryError::TooManyRows(cap));
        }
        let mut values = Vec::with_capacity(out.columns.len());
        for i in 0..out.columns.len() {
            values.push(from_duck(row.get_ref(i).map_err(internal)?));
        }
        out.rows.push(values);
    }
    Ok(out)
}

pub(super) fn internal(e: duckdb::Error) -> QueryError {
    QueryError::Internal(e.to_string())
}

fn sql_error(e: duckdb::Error) -> QueryError {
    let msg = e.to_string();
    if msg.contains("INTERRUPT") || msg.contains("Interrupted") {
        QueryError::Timeout
    } else if msg.contains("Permission Error") || msg.contains("disabled by configuration") {
        // A file reader or another external access: as much a non-read-only request as a write.
        QueryError::NotReadOnly
    } else if ["Out of Memory Error", "IO Error", "INTERNAL Error", "FATAL Error"].iter().any(|k| msg.contains(k)) {
        // The database's trouble, not the statement's.
        QueryError::Internal(msg)
    } else {
        QueryError::InvalidSql(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempdir::Dir, Database) {
        let dir = tempdir::Dir::new();
        let db = Database::open(DbOptions { path: dir.path().join("t.duckdb"), ..Default::default() }).unwrap();
        (dir, db)
    }

    #[test]
    fn refuses_everything_but_one_select() {
        let (_d, db) = db();
        for sql in [
            "DROP TABLE events",
            "INSERT INTO events (ts, cluster_id, node_id, metric_name) VALUES (now(), 'a', 'b', 'c')",
            "ATTACH 'other.duckdb'",
            "COPY events TO 'out.csv'",
            "INSTALL httpfs",
            "LOAD httpfs",
            "SET threads = 1",
            "PRAGMA version",
            "SELECT 1; DROP TABLE events",
            "CREATE TABLE t AS SELECT 1",
            "CHECKPOINT",
        ] {
            let err = db.query_read_only(sql, &[], RowLimit::Cap, None).unwrap_err();
            assert!(matches!(err, QueryError::NotReadOnly), "{sql}: {err:?}");
        }
        let err = db.query_read_only("SELECT * FROM read_csv('/etc/passwd')", &[], RowLimit::Cap, None).unwrap_err();
        assert!(matches!(err, QueryError::NotReadOnly), "{err:?}");
        // DuckDB lets even a locked-down database read its own files; the host does not.
        let own = format!("SELECT content FROM read_blob('{}')", db.path().display());
        let err = db.query_read_only(&own, &[], RowLimit::Cap, None).unwrap_err();
        assert!(matches!(err, QueryError::NotReadOnly), "{err:?}");
        let ok = db.query_read_only("SELECT count(*) FROM range(3), duckdb_tables()", &[], RowLimit::Cap, None);
        assert!(ok.is_ok(), "{ok:?}");
        let err = db.query_read_only("SELEC 1", &[], RowLimit::Cap, None).unwrap_err();
        assert!(matches!(err, QueryError::InvalidSql(_)), "{err:?}");
        let n = db.query_read_only("SELECT count(*) FROM events", &[], RowLimit::Cap, None).unwrap();
        assert_eq!(n.rows, vec![vec![Value::Int64(0)]]);
    }

    #[test]
    fn converts_values_and_binds_parameters() {
        let (_d, db) = db();
        let r = db
            .query_read_only(
                "SELECT ?::BIGINT AS i, ?::DOUBLE AS f, ?::VARCHAR AS s, TIMESTAMP '2024-01-01 00:00:01' AS t, \
                 DATE '1970-01-02' AS d, NULL AS n, true AS b, 1.5::DECIMAL(4,2) AS dec",
                &[Value::Int64(7), Value::Float64(0.5), Value::Text("x".into())],
                RowLimit::Cap,
                None,
            )
            .unwrap();
        let types: Vec<ColumnType> = r.columns.iter().map(|c| c.1).collect();
        // (The type DuckDB gives a bare NULL is its own business; column 5 is not checked.)
        assert_eq!(
            [types[0], types[1], types[2], types[3], types[4], types[6], types[7]],
            [
                ColumnType::Int64,
                ColumnType::Float64,
                ColumnType::Text,
                ColumnType::Timestamp,
                ColumnType::Date,
                ColumnType::Boolean,
                ColumnType::Other
            ]
        );
        assert_eq!(
            r.rows[0],
            vec![
                Value::Int64(7),
                Value::Float64(0.5),
                Value::Text("x".into()),
                Value::Timestamp(1_704_067_201_000_000),
                Value::Date(1),
                Value::Null,
                Value::Boolean(true),
                Value::Text("1.50".into()),
            ]
        );
        let err = db.query_read_only("SELECT ?", &[], RowLimit::Cap, None).unwrap_err();
        assert!(matches!(err, QueryError::InvalidParams(_)), "{err:?}");
    }

    #[test]
    fn caps_rows_or_truncates_on_request() {
        let (_d, db) = db();
        let err = db.query_read_only("SELECT * FROM range(20000)", &[], RowLimit::Cap, None).unwrap_err();
        assert!(matches!(err, QueryError::TooManyRows(10_000)), "{err:?}");
        let r = db.query_read_only("SELECT * FROM range(20000)", &[], RowLimit::AtMost(5), None).unwrap();
        assert_eq!(r.rows.len(), 5);
        assert!(r.truncated);
        let r = db.query_read_only("SELECT * FROM range(5)", &[], RowLimit::AtMost(5), None).unwrap();
        assert!(!r.truncated);
    }

    #[test]
    fn interrupts_a_query_at_its_deadline_and_reuses_the_connection() {
        let (_d, db) = db();
        let started = Instant::now();
        let err = db
            .query_read_only(
                "SELECT count(*) FROM range(10000000000) a WHERE a.range % 7 = 3",
                &[],
                RowLimit::Cap,
                Some(Instant::now() + Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(err, QueryError::Timeout), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // Every pooled connection still works afterwards.
        for _ in 0..8 {
            db.query_read_only("SELECT 1", &[], RowLimit::Cap, None).unwrap();
        }
    }

    #[test]
    fn scoped_queries_see_only_the_callers_clusters_and_views_vanish_after() {
        let (_d, db) = db();
        db.writer()
            .execute_batch(
                "INSERT INTO events (ts, cluster_id, node_id, metric_name, value_double) VALUES \
                 (now(), 'a''b', 'n1', 'm', 1), (now(), 'c', 'n2', 'm', 2), (now(), 'c', 'n3', 'm', 3); \
                 CREATE TABLE notes (body VARCHAR); INSERT INTO notes VALUES ('secret');",
            )
            .unwrap();
        let scoped = ["a'b".to_owned()];
        let q = |sql: &str| db.query_scoped(sql, &[], RowLimit::Cap, None, &scoped);
        let r = q("SELECT cluster_id, count(*) FROM events GROUP BY ALL").unwrap();
        assert_eq!(r.rows, vec![vec![Value::Text("a'b".into()), Value::Int64(1)]]);
        // A table without cluster_id looks empty to a scoped caller.
        assert_eq!(q("SELECT * FROM notes").unwrap().rows.len(), 0);
        assert!(matches!(q("SELECT * FROM t.main.notes"), Err(QueryError::ScopeDenied)));
        // Schema names are case-insensitive in DuckDB, so in the scope check too: `MAIN.events`
        // is allowed and reads the same shadow, while other schemas stay refused in any case.
        for sql in ["SELECT cluster_id, count(*) FROM MAIN.events GROUP BY ALL",
                    "SELECT cluster_id, count(*) FROM \"Main\".\"EVENTS\" GROUP BY ALL"] {
            assert_eq!(q(sql).unwrap().rows, vec![vec![Value::Text("a'b".into()), Value::Int64(1)]], "{sql}");
        }
        assert_eq!(q("SELECT * FROM MAIN.notes").unwrap().rows.len(), 0);
        for sql in ["SELECT * FROM INFORMATION_SCHEMA.tables", "SELECT * FROM Pg_Catalog.pg_tables",
                    "SELECT * FROM T.MAIN.notes", "SELECT * FROM TEMP.MAIN.events"] {
            assert!(matches!(q(sql), Err(QueryError::ScopeDenied)), "{sql} must be refused");
        }
        // The shadows live only inside the scoped statement's transaction.
        let all = db.query_read_only("SELECT count(*) FROM events", &[], RowLimit::Cap, None).unwrap();
        assert_eq!(all.rows, vec![vec![Value::Int64(3)]]);
        assert_eq!(db.query_read_only("SELECT * FROM notes", &[], RowLimit::Cap, None).unwrap().rows.len(), 1);
    }
}

/// A scratch directory for tests, removed on drop.
#[cfg(test)]
pub(crate) mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "sluice-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
