//! Export state, per (export, sink), persisted in the `sluice_export_state` table: the last
//! generation and checksum delivered, when, the last error, and whether work is pending. It is
//! written after every attempt, so a restart knows what was delivered and re-sends only what was
//! not.

use anyhow::Context as _;
use duckdb::types::{TimeUnit, Value as DuckValue};

use crate::db::Database;

/// One binding's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkState {
    pub export: String,
    pub sink: String,
    /// The generation last attempted.
    pub generation: u64,
    /// The checksum last delivered successfully.
    pub checksum: Option<String>,
    /// When it was (microseconds since the epoch).
    pub last_success_micros: Option<i64>,
    /// The last failure's class (`transient`, `terminal`, `forbidden`) and message.
    pub last_error: Option<(String, String)>,
    /// A delivery is owed (failed or interrupted).
    pub pending: bool,
    /// The checksum of the generation last attempted: after a restart, the same data keeps its
    /// generation, so a re-sent delivery carries the same idempotency key.
    pub attempted_checksum: Option<String>,
}

/// Every binding's state.
pub fn load_all(db: &Database) -> anyhow::Result<Vec<SinkState>> {
    let conn = db.writer();
    let mut stmt = conn
        .prepare(
            "SELECT export, sink, generation, checksum, epoch_us(last_success), last_error_class, last_error, pending, attempted_checksum \
             FROM sluice_export_state ORDER BY export, sink",
        )
        .context("reading the export state")?;
    let rows = stmt
        .query_map([], |r| {
            let class: Option<String> = r.get(5)?;
            let message: Option<String> = r.get(6)?;
            Ok(SinkState {
                export: r.get(0)?,
                sink: r.get(1)?,
                generation: r.get(2)?,
                checksum: r.get(3)?,
                last_success_micros: r.get(4)?,
                last_error: class.map(|c| (c, message.unwrap_or_default())),
                pending: r.get(7)?,
                attempted_checksum: r.get(8)?,
            })
        })
        .context("reading the export state")?;
    rows.collect::<Result<_, _>>().context("reading the export state")
}

/// Records a binding's state, replacing the previous one (delete and insert in one
/// transaction: a lake has no primary keys to upsert on).
pub fn save(db: &Database, s: &SinkState) -> anyhow::Result<()> {
    let mut conn = db.writer();
    let ts = s.last_success_micros.map(|us| DuckValue::Timestamp(TimeUnit::Microsecond, us));
    let (class, message) = s.last_error.clone().unzip();
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM sluice_export_state WHERE export = ? AND sink = ?", duckdb::params![s.export, s.sink])
        .and_then(|_| {
            tx.execute(
                "INSERT INTO sluice_export_state \
                 (export, sink, generation, checksum, last_success, last_error_class, last_error, pending, attempted_checksum) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                duckdb::params![s.export, s.sink, s.generation, s.checksum, ts, class, message, s.pending, s.attempted_checksum],
            )
        })
        .and_then(|_| tx.commit())
        .with_context(|| format!("saving the state of export {} to sink {}", s.export, s.sink))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{DbOptions, tempdir};

    #[test]
    fn state_survives_a_restart_and_updates_in_place() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("state.duckdb");
        let delivered = SinkState {
            export: "nodes".into(),
            sink: "pg".into(),
            generation: 4,
            checksum: Some("abc".into()),
            last_success_micros: Some(1_767_225_600_000_000),
            last_error: None,
            pending: false,
            attempted_checksum: Some("abc".into()),
        };
        let owed = SinkState {
            export: "nodes".into(),
            sink: "git".into(),
            generation: 4,
            checksum: Some("old".into()),
            last_success_micros: None,
            last_error: Some(("transient".into(), "connection refused".into())),
            pending: true,
            attempted_checksum: Some("new".into()),
        };
        {
            let db = Database::open(DbOptions { path: path.clone(), ..Default::default() }).unwrap();
            save(&db, &delivered).unwrap();
            save(&db, &owed).unwrap();
        }
        // A new process: what was owed is still owed, what was delivered is remembered.
        let db = Database::open(DbOptions { path: path.clone(), ..Default::default() }).unwrap();
        assert_eq!(load_all(&db).unwrap(), vec![owed.clone(), delivered.clone()]);
        let retried = SinkState { pending: false, last_error: None, checksum: Some("new".into()), ..owed };
        save(&db, &retried).unwrap();
        assert_eq!(load_all(&db).unwrap(), vec![retried, delivered]);
    }
}
