//! A gateway that becomes the lake's writer takes the exports over: the state the previous writer
//! persisted (in the lake) replaces what this one remembered, and the deliveries it left pending
//! are run again — with the same generation, hence the same idempotency keys, when the data is
//! unchanged.

use std::collections::BTreeMap;

use super::engine::ExportEngine;
use super::state;

impl ExportEngine {
    /// Reads every binding's state again from the database (another gateway may have delivered
    /// since this one last ran an export); returns the exports with a delivery left pending.
    pub fn take_over(&self) -> anyhow::Result<Vec<String>> {
        let persisted: BTreeMap<_, _> = state::load_all(&self.db)?.into_iter().map(|s| ((s.export.clone(), s.sink.clone()), s)).collect();
        for export in self.exports.values() {
            let generation = export
                .entry
                .sinks
                .iter()
                .filter_map(|b| persisted.get(&(export.entry.name.clone(), b.name.clone())))
                .map(|s| s.generation)
                .max()
                .unwrap_or(0);
            let mut status = export.status.lock().unwrap_or_else(|p| p.into_inner());
            status.generation = status.generation.max(generation);
            // What this gateway computed last is not what the lake's state says was attempted.
            status.checksum = None;
        }
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = persisted;
        Ok(self.pending())
    }
}
