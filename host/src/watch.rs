//! Watching files for changes: the one mechanism behind plugin hot reload, bearer rotation and
//! TLS certificate reload.
//!
//! Directories are watched rather than files, because editors and deploy tools replace a file
//! (write a temporary, rename over) rather than write it. Events are gathered for a debounce
//! window so one save (often several writes) causes one reload, and the reload runs on a thread
//! of its own, so neither request load nor the executor's queue delays it.
//!
//! Kubernetes mounts Secrets and ConfigMaps with each file a symlink through `..data`, and
//! updates them by swapping `..data` to a new directory: no event names the files themselves.
//! A change to `..data` therefore counts as a change to every file of the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use notify::Watcher as _;

/// Calls `reload` on what `target` points to after `file` changes, while it is alive; a reload
/// that fails is logged with `what` (e.g. "Bearer file") and changes nothing.
pub fn watch_file<T: Send + Sync + 'static>(
    thread_name: &str,
    file: &Path,
    what: &'static str,
    target: std::sync::Weak<T>,
    reload: impl Fn(&T) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let name = file.file_name().map(|n| n.to_owned());
    watch(
        thread_name,
        &[parent_dir(file)],
        move |p| p.file_name() == name.as_deref(),
        Duration::from_millis(50),
        move || {
            let Some(target) = target.upgrade() else { return false };
            if let Err(e) = reload(&target) {
                tracing::error!(error = %format!("{e:#}"), "{what} change not applied; what was loaded before stays in force.");
            }
            true
        },
    )
}

/// The symlink Kubernetes swaps to update a Secret or ConfigMap volume atomically.
fn is_kubernetes_swap(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "..data")
}

/// The directory a file lives in (`.` for a bare file name).
pub fn parent_dir(file: &Path) -> PathBuf {
    file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned()
}

/// Calls `on_change` after files for which `wanted` holds change in `dirs`. `on_change` returns
/// `false` to stop watching (e.g. when what it reloads is gone). Watching also stops when the
/// returned watcher is dropped.
pub fn watch(
    thread_name: &str,
    dirs: &[PathBuf],
    wanted: impl Fn(&Path) -> bool + Send + 'static,
    debounce: Duration,
    on_change: impl FnMut() -> bool + Send + 'static,
) -> anyhow::Result<notify::RecommendedWatcher> {
    watch_with(thread_name, dirs, notify::RecursiveMode::NonRecursive, wanted, debounce, on_change)
}

/// [`watch`] over whole directory trees (a plugin crate's sources, for `sluice dev`).
pub fn watch_trees(
    thread_name: &str,
    dirs: &[PathBuf],
    wanted: impl Fn(&Path) -> bool + Send + 'static,
    debounce: Duration,
    on_change: impl FnMut() -> bool + Send + 'static,
) -> anyhow::Result<notify::RecommendedWatcher> {
    watch_with(thread_name, dirs, notify::RecursiveMode::Recursive, wanted, debounce, on_change)
}

fn watch_with(
    thread_name: &str,
    dirs: &[PathBuf],
    mode: notify::RecursiveMode,
    wanted: impl Fn(&Path) -> bool + Send + 'static,
    debounce: Duration,
    mut on_change: impl FnMut() -> bool + Send + 'static,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(notify::event::AccessKind::Open(_)))
            && ev.paths.iter().any(|p| wanted(p) || is_kubernetes_swap(p))
        {
            let _ = tx.send(());
        }
    })
    .context("starting a file watcher")?;
    let mut dirs = dirs.to_vec();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        watcher.watch(d, mode).with_context(|| format!("watching {}", d.display()))?;
    }
    std::thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || {
            // Ends when the watcher (and with it the sender) is dropped.
            while rx.recv().is_ok() {
                std::thread::sleep(debounce);
                while rx.try_recv().is_ok() {}
                if !on_change() {
                    return;
                }
            }
        })
        .with_context(|| format!("spawning the {thread_name} thread"))?;
    Ok(watcher)
}
