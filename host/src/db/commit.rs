//! Group commit for ingest: requests that arrive while the writer is busy are appended together,
//! in one transaction, when it is free. Under load that turns many small commits into a few large
//! ones (on a lake: one Parquet file instead of many inlined batches, each a catalog commit); a
//! request alone is committed alone, as before. Each request is still all or nothing: a group
//! that fails fails every request in it, and none of their rows is written.

use std::sync::mpsc;
use std::sync::{Arc, Weak};

use super::{Database, DbInner};
use crate::ingest::EventRow;

/// Rows gathered into one transaction at most (a larger request is committed on its own).
const GROUP_ROWS: usize = 100_000;

pub(super) struct Job {
    rows: Vec<EventRow>,
    done: tokio::sync::oneshot::Sender<Result<usize, String>>,
}

impl Database {
    /// Appends `rows` to `events`, in one transaction with whatever other requests are waiting
    /// for the writer; returns how many rows were written.
    pub async fn ingest(&self, rows: Vec<EventRow>) -> anyhow::Result<usize> {
        let tx = self.inner.ingest.get_or_init(|| start(Arc::downgrade(&self.inner)));
        let (done, answer) = tokio::sync::oneshot::channel();
        tx.send(Job { rows, done }).map_err(|_| anyhow::anyhow!("the ingest writer has stopped"))?;
        match answer.await {
            Ok(result) => result.map_err(anyhow::Error::msg),
            Err(_) => anyhow::bail!("the ingest writer stopped before committing"),
        }
    }

    /// Transactions ingest has committed (each may hold several requests).
    pub fn ingest_commits(&self) -> u64 {
        self.inner.ingest_commits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The writer thread: it ends when the database is dropped.
fn start(db: Weak<DbInner>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("sluice-ingest".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                let mut rows = jobs[0].rows.len();
                while rows < GROUP_ROWS {
                    match rx.try_recv() {
                        Ok(job) => {
                            rows += job.rows.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let Some(inner) = db.upgrade() else { return };
                commit(Database { inner }, jobs);
            }
        })
        .expect("starting the ingest writer thread");
    tx
}

fn commit(db: Database, jobs: Vec<Job>) {
    let mut all = Vec::with_capacity(jobs.iter().map(|j| j.rows.len()).sum());
    let mut waiting = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        waiting.push((job.rows.len(), job.done));
        all.append(&mut job.rows);
    }
    let result = db.append_events(&all).map_err(|e| format!("{e:#}"));
    db.inner.ingest_commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for (n, done) in waiting {
        let _ = done.send(result.as_ref().map(|_| n).map_err(Clone::clone));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{DbOptions, tempdir};

    fn rows(node: &str, n: usize) -> Vec<EventRow> {
        (0..n)
            .map(|i| EventRow {
                ts: i as i64,
                cluster_id: "c".into(),
                node_id: node.into(),
                metric_name: "m".into(),
                value: Some(1.0),
                host: None,
                attributes: "{}".into(),
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn requests_waiting_for_the_writer_are_committed_together_each_all_or_nothing() {
        let dir = tempdir::Dir::new();
        let db = Database::open(DbOptions { path: dir.path().join("g.duckdb"), ..Default::default() }).unwrap();
        assert_eq!(db.ingest(rows("alone", 3)).await.unwrap(), 3);
        assert_eq!(db.ingest_commits(), 1);
        // The writer is busy: the first request waits for it, the next four queue behind it.
        let busy = db.writer();
        let first = tokio::spawn({
            let db = db.clone();
            async move { db.ingest(rows("first", 2)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let queued: Vec<_> = (0..4)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move { db.ingest(rows(&format!("queued-{i}"), i + 1)).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(busy);
        assert_eq!(first.await.unwrap().unwrap(), 2);
        for (i, q) in queued.into_iter().enumerate() {
            assert_eq!(q.await.unwrap().unwrap(), i + 1, "each request learns its own count");
        }
        assert_eq!(db.ingest_commits(), 3, "the four queued requests were one transaction");
        let n: i64 = db.writer().query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3 + 2 + 1 + 2 + 3 + 4);

        // A group that fails (one of its requests breaks a constraint) fails every request in
        // it, and writes none of their rows; the next request is committed.
        let busy = db.writer();
        busy.execute_batch(
            "DROP TABLE events; CREATE TABLE events (ts TIMESTAMP NOT NULL, cluster_id VARCHAR NOT NULL, \
             node_id VARCHAR NOT NULL CHECK (node_id <> 'poison'), metric_name VARCHAR NOT NULL, value_double DOUBLE, \
             host_attr VARCHAR, event_type VARCHAR, attributes VARCHAR)",
        )
        .unwrap();
        let blocker = tokio::spawn({
            let db = db.clone();
            async move { db.ingest(rows("blocker", 2)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let failing: Vec<_> = ["grouped-1", "poison", "grouped-2"]
            .into_iter()
            .map(|node| {
                let db = db.clone();
                tokio::spawn(async move { db.ingest(rows(node, 2)).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(busy);
        assert_eq!(blocker.await.unwrap().unwrap(), 2);
        for f in failing {
            let err = f.await.unwrap().unwrap_err().to_string();
            assert!(err.contains("CHECK constraint"), "{err}");
        }
        let n: i64 = db.writer().query_row("SELECT count(*) FROM events WHERE node_id <> 'blocker'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        assert_eq!(db.ingest(rows("after", 2)).await.unwrap(), 2);
    }
}
