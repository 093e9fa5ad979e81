//! The `postgres` sink: keeps an export's items as rows of a PostgreSQL table.
//!
//! The table (created if missing) is
//! `(export text, item_key text, cluster text, payload jsonb, exported_at timestamptz,
//! generation bigint, PRIMARY KEY (export, item_key))`. Each delivery is one transaction: the
//! items are upserted by key (through `COPY` into a staging table for 32 items or more), and the
//! last part of an export deletes the export's rows that are not in its snapshot (those not
//! written by this generation). Delivering the same generation twice leaves the same rows.
//!
//! Settings: `url` (`postgres://user@host:port/database`), `table` (default `sluice_exports`,
//! optionally `schema.table`), `key` (comma-separated item fields that identify an item; by
//! default the SHA-256 of the item). Secrets: `password`. The probe connects and asks the
//! server's version. Connections are plain TCP through `wasi:sockets` (the host allows only the
//! address in `url`); `sslmode=require` is refused as not supported.

use sluice_sink_common::*;

use std::collections::BTreeMap;
use std::str::FromStr as _;

use bytes::Bytes;
use futures_util::SinkExt as _;
use std::collections::HashMap;

use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

struct PostgresSink;

/// From this many items on, rows go through `COPY` into a staging table.
const COPY_FROM: usize = 32;

/// A database error's class: authentication refused and bad statements are terminal, missing
/// privileges forbidden, connection trouble, conflicts and server shutdowns transient.
fn classify(e: tokio_postgres::Error, what: &str) -> SinkError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let message = format!("{what}: {} ({})", db.message(), code.code());
        return if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            terminal(format!("{what}: authentication refused: {} ({})", db.message(), code.code()))
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            error(ErrorClass::Forbidden, message)
        } else if ["08", "40", "53", "55", "57", "58"].iter().any(|c| code.code().starts_with(c)) || *code == SqlState::UNIQUE_VIOLATION {
            // (a unique violation here is two sessions creating the table at once)
            error(ErrorClass::Transient, message)
        } else {
            terminal(message)
        };
    }
    let text = e.to_string();
    if text.contains("password") || text.contains("authentication") || text.contains("SCRAM") {
        terminal(format!("{what}: {text}"))
    } else {
        error(ErrorClass::Transient, format!("{what}: {text}"))
    }
}

/// `schema.table` or `table`, quoted; only plain lowercase identifiers.
fn table_name(config: &SinkConfig) -> Result<String, SinkError> {
    let name = setting(config, "table").unwrap_or("sluice_exports");
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 63
            && part.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| ok(p)) {
        return Err(terminal(format!("table {name:?}: use `table` or `schema.table` of lowercase letters, digits and _")));
    }
    Ok(parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join("."))
}

/// Connects as the configuration says; `(client, "host:port/database")`.
async fn connect(config: &SinkConfig) -> Result<(Client, String), SinkError> {
    let url = setting(config, "url").ok_or_else(|| terminal("the `url` setting is missing"))?;
    let mut pg = Config::from_str(url).map_err(|e| terminal(format!("url: {e}")))?;
    if let Some(password) = secret(config, "password") {
        pg.password(password);
    }
    pg.application_name("sluice");
    if pg.get_ssl_mode() == SslMode::Require {
        return Err(terminal("sslmode=require: this component speaks plain TCP only (use a private network or a TLS proxy)"));
    }
    let host = match pg.get_hosts() {
        [Host::Tcp(h)] => h.clone(),
        _ => return Err(terminal("url: name exactly one TCP host")),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let database = pg.get_dbname().or(pg.get_user()).unwrap_or("postgres").to_owned();
    let place = format!("{host}:{port}/{database}");
    let addrs = sluice_sink_common::resolve(&host, port).map_err(|e| error(ErrorClass::Transient, e))?;
    let mut last = String::new();
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (client, connection) = pg.connect_raw(stream, NoTls).await.map_err(|e| classify(e, &format!("connecting to {place}")))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok((client, place));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(terminal(format!("connecting to {addr}: the host refused the connection (not allowed for this sink)")));
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(error(ErrorClass::Transient, last))
}

/// An item's key: the `key` fields joined with `/`, or the SHA-256 of the item's (canonical)
/// JSON. Items stay raw JSON text: nothing of a large export is parsed into a tree.
fn item_key(item: &RawValue, fields: &[&str], index: usize) -> Result<String, SinkError> {
    if fields.is_empty() {
        return Ok(hex::encode(Sha256::digest(item.get().as_bytes())));
    }
    let object: HashMap<String, &RawValue> =
        serde_json::from_str(item.get()).map_err(|_| terminal(format!("item {index} is not a JSON object")))?;
    let mut parts = Vec::with_capacity(fields.len());
    for field in fields {
        match object.get(*field).map(|v| v.get()) {
            None | Some("null") => return Err(terminal(format!("item {index} has no value for key field {field:?}"))),
            Some(text) if text.starts_with('"') => {
                parts.push(serde_json::from_str::<String>(text).map_err(|e| terminal(format!("item {index}: {e}")))?)
            }
            Some(text) => parts.push(text.to_owned()),
        }
    }
    Ok(parts.join("/"))
}

/// One value in COPY's text format.
fn copy_escape(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

const UPSERT_SET: &str = "ON CONFLICT (export, item_key) DO UPDATE SET cluster = excluded.cluster, payload = excluded.payload, \
     exported_at = excluded.exported_at, generation = excluded.generation";

async fn deliver(config: &SinkConfig, request: &ExportRequest) -> Result<Receipt, SinkError> {
    if request.format != "json" {
        return Err(terminal(format!("format {:?} is not accepted (json only)", request.format)));
    }
    let envelope: Envelope =
        serde_json::from_slice(&request.payload).map_err(|e| terminal(format!("the payload is not an export envelope: {e}")))?;
    let table = table_name(config)?;
    let fields: Vec<&str> = setting(config, "key").map_or(Vec::new(), |k| k.split(',').map(str::trim).filter(|f| !f.is_empty()).collect());
    // By key; a later item with the same key wins.
    let mut rows = BTreeMap::new();
    for (i, item) in envelope.items.iter().enumerate() {
        rows.insert(item_key(item, &fields, i)?, item.get());
    }
    let generation = i64::try_from(request.generation).map_err(|_| terminal("generation out of range"))?;

    let (mut client, place) = connect(config).await?;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {table} (export text NOT NULL, item_key text NOT NULL, cluster text NOT NULL, \
         payload jsonb NOT NULL, exported_at timestamptz NOT NULL, generation bigint NOT NULL, PRIMARY KEY (export, item_key))"
    );
    // Only when missing: a role granted just INSERT, UPDATE, DELETE on an existing table may not
    // run CREATE TABLE (even IF NOT EXISTS needs CREATE on the schema).
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| classify(e, &format!("looking up {table}")))?
        .get(0);
    if !exists {
        client.batch_execute(&create).await.map_err(|e| classify(e, &format!("creating {table}")))?;
    }
    let tx = client.transaction().await.map_err(|e| classify(e, "BEGIN"))?;
    let upserting = format!("upserting into {table}");
    if rows.len() >= COPY_FROM {
        tx.batch_execute("CREATE TEMP TABLE sluice_staging (item_key text NOT NULL, payload text NOT NULL) ON COMMIT DROP")
            .await
            .map_err(|e| classify(e, "creating the staging table"))?;
        let copy = tx.copy_in("COPY sluice_staging (item_key, payload) FROM STDIN").await.map_err(|e| classify(e, "COPY"))?;
        futures_util::pin_mut!(copy);
        let mut buf = Vec::with_capacity(1 << 16);
        for (key, payload) in &rows {
            copy_escape(&mut buf, key);
            buf.push(b'\t');
            copy_escape(&mut buf, payload);
            buf.push(b'\n');
            if buf.len() >= 1 << 16 {
                copy.send(Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(1 << 16)))).await.map_err(|e| classify(e, "COPY"))?;
            }
        }
        if !buf.is_empty() {
            copy.send(Bytes::from(buf)).await.map_err(|e| classify(e, "COPY"))?;
        }
        copy.as_mut().finish().await.map_err(|e| classify(e, "COPY"))?;
        let upsert = format!(
            "INSERT INTO {table} (export, item_key, cluster, payload, exported_at, generation) \
             SELECT $1, item_key, $2, payload::jsonb, now(), $3 FROM sluice_staging {UPSERT_SET}"
        );
        tx.execute(&upsert, &[&request.export, &request.cluster, &generation]).await.map_err(|e| classify(e, &upserting))?;
    } else if !rows.is_empty() {
        let upsert = format!(
            "INSERT INTO {table} (export, item_key, cluster, payload, exported_at, generation) \
             VALUES ($1, $2, $3, $4::text::jsonb, now(), $5) {UPSERT_SET}"
        );
        let statement = tx.prepare(&upsert).await.map_err(|e| classify(e, &upserting))?;
        for (key, payload) in &rows {
            tx.execute(&statement, &[&request.export, key, &request.cluster, &payload, &generation])
                .await
                .map_err(|e| classify(e, &upserting))?;
        }
    }
    // The last part prunes what this generation did not write.
    let mut deleted = 0;
    if request.part_index + 1 >= request.part_total {
        deleted = tx
            .execute(&format!("DELETE FROM {table} WHERE export = $1 AND generation <> $2"), &[&request.export, &generation])
            .await
            .map_err(|e| classify(e, &format!("pruning {table}")))?;
    }
    tx.commit().await.map_err(|e| classify(e, "COMMIT"))?;
    Ok(Receipt { location: format!("postgres://{place} {table}: {} upserted, {deleted} deleted", rows.len()) })
}

impl Guest for PostgresSink {
    fn describe() -> SinkInfo {
        SinkInfo {
            sink_type: "postgres".into(),
            family: Family::Database,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Upserts each export's items into a PostgreSQL table by key and deletes rows absent from the snapshot.".into(),
            capabilities: Capabilities { stream: false, supports_delete: true, object_store: false, accepts_parts: true },
            formats: vec!["json".into()],
        }
    }

    fn probe(config: SinkConfig) -> Result<String, SinkError> {
        block_on(async {
            let (client, place) = connect(&config).await?;
            let row = client.query_one("SHOW server_version", &[]).await.map_err(|e| classify(e, "SHOW server_version"))?;
            let version: String = row.get(0);
            Ok(format!("PostgreSQL {version} at {place}"))
        })?
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        block_on(deliver(&config, &request))?
    }
}

export_sink!(PostgresSink);
