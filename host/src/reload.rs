//! One reload path for every trigger: a file change in a watched directory, SIGHUP, and
//! `POST /api/v2/admin/plugins/reload`. Tool components first, then sink components; one report
//! of both. Each kind is compiled off the hot path and swapped only when it loads: a file that
//! fails keeps the working version in use.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::export::engine::{ExportEngine, SinkReload};
use crate::runtime::{ReloadReport, Runtime, WATCH_DEBOUNCE};

/// What one reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reload {
    /// Tool components (the plugins directory).
    pub tools: ReloadReport,
    /// Sink components whose file changed.
    pub sinks: Vec<SinkReload>,
}

/// Reloads tools, then sinks.
pub fn reload(runtime: &Runtime, exports: &ExportEngine) -> Reload {
    let tools = runtime.reload();
    let sinks = exports.reload_sinks();
    Reload { tools, sinks }
}

/// Watches the plugins directory and the sink components' files; any change runs [`reload`],
/// until the returned watcher is dropped (or the runtime is gone).
pub fn watch(runtime: &Arc<Runtime>, exports: &Arc<ExportEngine>) -> anyhow::Result<notify::RecommendedWatcher> {
    use anyhow::Context as _;
    let plugins = runtime.plugins_dir().to_owned();
    std::fs::create_dir_all(&plugins).with_context(|| format!("creating the plugins directory {}", plugins.display()))?;
    // Sink component files; a registry source (`oci:<name>`) is polled, not watched.
    let sink_files: Vec<PathBuf> =
        exports.sinks().map(|s| s.entry.component.clone()).filter(|c| !c.to_string_lossy().starts_with("oci:")).collect();
    let mut dirs = vec![plugins];
    for dir in sink_files.iter().map(|f| crate::watch::parent_dir(f)) {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let names: Vec<std::ffi::OsString> = sink_files.iter().filter_map(|f| f.file_name().map(ToOwned::to_owned)).collect();
    let (rt, ex) = (Arc::downgrade(runtime), Arc::downgrade(exports));
    crate::watch::watch(
        "sluice-reloader",
        &dirs,
        move |p| p.extension().is_some_and(|e| e == "wasm") || p.file_name().is_some_and(|n| names.iter().any(|m| m == n)),
        WATCH_DEBOUNCE,
        move || {
            let (Some(rt), Some(ex)) = (rt.upgrade(), ex.upgrade()) else { return false };
            reload(&rt, &ex);
            true
        },
    )
}
