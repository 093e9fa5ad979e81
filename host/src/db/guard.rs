//! The SQL guard: what a read-only statement may be and reach, judged on DuckDB's own parse
//! tree, and the tenant scope's shadow views.

use duckdb::Connection;

use super::{QueryError, internal};

/// Checks with DuckDB's own parser that `sql` is exactly one `SELECT` (including CTEs, `VALUES`,
/// set operations, `FROM`-first and `DESCRIBE`). `json_serialize_sql` serialises only `SELECT`
/// statements and reports anything else as "not implemented".
pub fn check_read_only(conn: &Connection, sql: &str) -> Result<serde_json::Value, QueryError> {
    let verdict: String = conn
        .query_row("SELECT json_serialize_sql(?::VARCHAR)", [sql], |r| r.get(0))
        .map_err(|e| QueryError::Internal(format!("parsing the statement: {e}")))?;
    let verdict: serde_json::Value = serde_json::from_str(&verdict)
        .map_err(|e| QueryError::Internal(format!("reading the parser's verdict: {e}")))?;
    if verdict["error"].as_bool() == Some(true) {
        return Err(match verdict["error_type"].as_str() {
            Some("not implemented") => QueryError::NotReadOnly,
            _ => QueryError::InvalidSql(verdict["error_message"].as_str().unwrap_or("parse error").to_owned()),
        });
    }
    match verdict["statements"].as_array().map(Vec::len) {
        Some(1) => Ok(verdict),
        Some(0) | None => Err(QueryError::InvalidSql("no statement".into())),
        Some(_) => Err(QueryError::NotReadOnly),
    }
}

/// Table functions a tenant-scoped statement may use: they read no table.
const SCOPED_TABLE_FUNCTIONS: &[&str] = &["range", "generate_series", "unnest"];

/// Table functions any statement may use, besides DuckDB's metadata functions (`duckdb_*`).
/// Everything else (`read_csv`, `read_blob`, `read_parquet`, `glob`, `query_table`, ...) is
/// refused: with external access disabled DuckDB still lets them read the database's own files.
const READ_TABLE_FUNCTIONS: &[&str] = &["range", "generate_series", "unnest", "json_each", "json_tree"];

/// Refuses what reads outside the database's tables, whoever asks: table functions that read
/// files or run SQL text, and table names that are file paths or URLs (DuckDB's replacement
/// scans read `FROM 'data.csv'` as a file).
pub fn check_no_external(ast: &serde_json::Value) -> Result<(), QueryError> {
    use serde_json::Value as J;
    match ast {
        J::Object(map) => {
            match map.get("type").and_then(J::as_str) {
                Some("BASE_TABLE" | "SHOW_REF") => {
                    let field = |k: &str| map.get(k).and_then(J::as_str).unwrap_or("");
                    if field("table_name").contains(['/', '\\', ':', '.']) {
                        return Err(QueryError::NotReadOnly);
                    }
                    // A lake's catalog database (PostgreSQL, attached by DuckLake under this
                    // prefix): where the lake keeps file paths and snapshots, not data.
                    let catalog = |k: &str| field(k).to_ascii_lowercase().starts_with("__ducklake_metadata");
                    if catalog("catalog_name") || catalog("schema_name") {
                        return Err(QueryError::NotReadOnly);
                    }
                }
                Some("TABLE_FUNCTION") => {
                    let name = map["function"]["function_name"].as_str().unwrap_or("");
                    if !(READ_TABLE_FUNCTIONS.contains(&name) || name.starts_with("duckdb_")) {
                        return Err(QueryError::NotReadOnly);
                    }
                }
                _ => {}
            }
            map.values().try_for_each(check_no_external)
        }
        J::Array(items) => items.iter().try_for_each(check_no_external),
        _ => Ok(()),
    }
}

/// Checks that a parsed statement (the output of `json_serialize_sql`) can only reach tables
/// through the names [`scope_views`] shadows: every table it names is unqualified or in schema
/// `main` (which resolves to the shadows), none is catalog-qualified (which would reach the
/// real table) or one of DuckDB's system views, and it calls no table function that reads data
/// (`query_table`, `duckdb_tables()`, file readers, ...). CTEs, subqueries, joins, set operations and `DESCRIBE`
/// nest their table references in the same tree, so walking it all covers them.
pub fn check_scoped(ast: &serde_json::Value, system_views: &[String]) -> Result<(), QueryError> {
    use serde_json::Value as J;
    match ast {
        J::Object(map) => {
            match map.get("type").and_then(J::as_str) {
                Some("BASE_TABLE" | "SHOW_REF") => {
                    let field = |k: &str| map.get(k).and_then(J::as_str).unwrap_or("");
                    let named = !field("table_name").is_empty();
                    // DuckDB's identifiers are case-insensitive: `MAIN.events` is `main.events`
                    // (and resolves to the shadow too). Any other schema, or any catalog, is refused.
                    let schema = field("schema_name");
                    let other_schema = !schema.is_empty() && !schema.eq_ignore_ascii_case("main");
                    if named && (!field("catalog_name").is_empty() || other_schema) {
                        return Err(QueryError::ScopeDenied);
                    }
                    if system_views.contains(&field("table_name").to_lowercase()) {
                        return Err(QueryError::ScopeDenied);
                    }
                }
                Some("TABLE_FUNCTION") => {
                    let f = &map["function"];
                    let name = f["function_name"].as_str().unwrap_or("");
                    let qualified = f["schema"].as_str().is_some_and(|s| !s.is_empty())
                        || f["catalog"].as_str().is_some_and(|s| !s.is_empty());
                    if qualified || !SCOPED_TABLE_FUNCTIONS.contains(&name) {
                        return Err(QueryError::ScopeDenied);
                    }
                }
                _ => {}
            }
            map.values().try_for_each(|v| check_scoped(v, system_views))
        }
        J::Array(items) => items.iter().try_for_each(|v| check_scoped(v, system_views)),
        _ => Ok(()),
    }
}

/// Within the current transaction, shadows every table and view of the database's `main`
/// schema with a temporary view of the same name: rows of `clusters` only for those with a
/// `cluster_id` column, no rows for the others. Unqualified and `main.`-qualified names resolve
/// to the temporary catalog first, so a statement that passed [`check_scoped`] reads only
/// these. Rolling the transaction back removes them.
pub(super) fn scope_views(conn: &Connection, clusters: &[String]) -> Result<(), QueryError> {
    let catalog: String = conn.query_row("SELECT current_database()", [], |r| r.get(0)).map_err(internal)?;
    let mut stmt = conn
        .prepare(
            "SELECT table_name, bool_or(column_name = 'cluster_id') FROM duckdb_columns() \
             WHERE database_name = current_database() AND schema_name = 'main' GROUP BY table_name",
        )
        .map_err(internal)?;
    let tables: Vec<(String, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(internal)?
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    let allowed = clusters.iter().map(|c| sql_literal(c)).collect::<Vec<_>>().join(", ");
    let mut ddl = String::new();
    for (table, has_cluster) in tables {
        let filter = if has_cluster { format!("cluster_id IN ({allowed})") } else { "false".into() };
        ddl.push_str(&format!(
            "CREATE TEMP VIEW {t} AS SELECT * FROM {c}.main.{t} WHERE {filter};\n",
            t = sql_ident(&table),
            c = sql_ident(&catalog),
        ));
    }
    conn.execute_batch(&ddl).map_err(internal)
}

/// `"name"`, quotes doubled.
fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'`, quotes doubled.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
