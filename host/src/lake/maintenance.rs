//! The lake's upkeep, on the writer only: rows inlined in the catalog are flushed to Parquet,
//! small adjacent files merged, snapshots older than the retention expired and the files no
//! remaining snapshot uses deleted. Exports never read an old snapshot (a resumed delivery
//! queries the current one), so expiry cannot take data a pending export needs.

use super::Coordinator;

pub(super) async fn run(lake: Coordinator, db: crate::db::Database, metrics: crate::metrics::Metrics) {
    let every = lake.shared.opts.maintenance_interval;
    let retention = lake.shared.opts.snapshot_retention;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = lake.shared.resign.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !lake.is_writer() {
            continue;
        }
        let db = db.clone();
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || db.maintain_lake(retention)).await;
        metrics.lake_maintenance(matches!(outcome, Ok(Ok(_))));
        match outcome {
            Ok(Ok(done)) => tracing::info!(
                flushed_rows = done.flushed_rows,
                merged_files = done.merged_files,
                deleted_files = done.deleted_files,
                took_ms = started.elapsed().as_millis() as u64,
                "Lake maintenance done."
            ),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "Lake maintenance failed; it runs again at the next interval."),
            Err(e) => tracing::warn!(error = %e, "Lake maintenance task failed."),
        }
    }
}
