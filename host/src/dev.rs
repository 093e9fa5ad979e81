//! `sluice dev`: the author's loop. Serves a gateway on loopback with demo data, builds the
//! given plugin crates, and rebuilds and hot-swaps a crate's component whenever its sources
//! change. Each build and reload is reported in the terminal; a build that fails leaves the
//! previous version serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::authoring::{self, Built};
use crate::config::Config;
use crate::runtime::Runtime;

/// How long source events are gathered before a rebuild: one save is often several writes.
const REBUILD_DEBOUNCE: Duration = Duration::from_millis(300);

/// What `sluice dev` runs.
pub struct DevOptions {
    /// Plugin crates to build and watch.
    pub crates: Vec<PathBuf>,
    /// The gateway's configuration (plugins dir, database, listeners, bearer file).
    pub config: Config,
    /// Fill the database with the demo fleet when it has no events.
    pub seed_when_empty: bool,
}

/// Where `sluice dev` keeps its state by default: `.sluice/` in the current directory.
pub fn default_config(state_dir: &Path) -> Config {
    let mut config = Config::default();
    config.database.path = state_dir.join("dev.duckdb");
    config.plugins.dir = state_dir.join("plugins");
    config.plugins.cache_dir = state_dir.join("cache");
    config.auth.token_file = Some(state_dir.join("dev.token"));
    config.server.insecure_no_tls = true;
    config.server.health_listen = "127.0.0.1:0".parse().expect("valid address");
    config
}

fn say(msg: impl std::fmt::Display) {
    println!("sluice dev: {msg}");
}

/// Runs until SIGTERM or Ctrl-C.
pub fn run(opts: DevOptions) -> anyhow::Result<()> {
    let DevOptions { crates, mut config, seed_when_empty } = opts;
    let crates: Vec<PathBuf> = crates
        .iter()
        .map(|c| c.canonicalize().with_context(|| format!("plugin crate {}", c.display())))
        .collect::<anyhow::Result<_>>()?;
    for c in &crates {
        anyhow::ensure!(
            c.join("Cargo.toml").is_file(),
            "{} has no Cargo.toml: pass plugin crate directories (`sluice plugin new tool NAME` makes one)",
            c.display()
        );
    }
    config.plugins.watch = true;
    std::fs::create_dir_all(&config.plugins.dir)
        .with_context(|| format!("creating the plugins directory {}", config.plugins.dir.display()))?;
    if let Some(token) = &config.auth.token_file {
        ensure_token(token)?;
    }
    config.validate()?;
    crate::serve::check_listen_policy(&config)?;

    if seed_when_empty {
        let db = crate::db::Database::open(config.database.to_options())?;
        let empty = db
            .query_read_only("SELECT count(*) FROM events", &[], crate::db::RowLimit::Cap, None)
            .map(|r| r.rows.first().and_then(|row| row.first()).cloned() == Some(crate::db::Value::Int64(0)))
            .unwrap_or(false);
        if empty {
            say(format!("filling {} with the demo fleet (once)", config.database.path.display()));
            crate::demo::seed(&db, &crate::demo::SeedOptions::default())?;
        }
    }

    // Build before serving, so the gateway starts with the author's tools.
    for c in &crates {
        if let Err(e) = build_and_install(c, &config.plugins.dir) {
            say(format!("{e:#}; fix it and save: dev rebuilds on every change"));
        }
    }

    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let audit = crate::serve::audit_log(&config)?;
        let auth = crate::serve::auth_source(&config)?;
        let gateway = crate::serve::Gateway::build(&config, auth, audit.clone())?;
        let runtime = gateway.runtime().clone();
        for c in &crates {
            report_reload(&runtime, c);
        }
        if let Some(token) = &config.auth.token_file {
            say(format!("bearer token in {}", token.display()));
        }
        let mut watchers = Vec::new();
        for c in crates {
            let (dir, runtime, plugins) = (c.clone(), runtime.clone(), config.plugins.dir.clone());
            let root = c.clone();
            watchers.push(crate::watch::watch_trees(
                "sluice-dev-watch",
                std::slice::from_ref(&c),
                move |p| is_source(&root, p),
                REBUILD_DEBOUNCE,
                move || {
                    say(format!("{} changed; building", dir.display()));
                    match build_and_install(&dir, &plugins) {
                        Ok(_) => report_reload(&runtime, &dir),
                        Err(e) => say(format!("{e:#}; {}", serving(&runtime, &dir))),
                    }
                    true
                },
            )?);
            say(format!("watching {}", c.display()));
        }
        let served = crate::serve::serve_gateway(&config, gateway, audit).await;
        drop(watchers);
        served
    })
}

/// Whether a change at `path` inside the crate at `root` calls for a rebuild: sources, not
/// build outputs, lock files, databases or editor temporaries.
fn is_source(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else { return false };
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    if rel.components().any(|c| {
        let c = c.as_os_str().to_string_lossy();
        c.starts_with('.') || c == "target" || c == "sluice-cache"
    }) {
        return false;
    }
    let Some(name) = parts.next_back() else { return false };
    !(name == "Cargo.lock"
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name.contains(".duckdb"))
}

/// Builds a crate and installs its component into the plugins directory (written aside and
/// renamed, so the gateway never reads half a file).
fn build_and_install(dir: &Path, plugins: &Path) -> anyhow::Result<Built> {
    let started = Instant::now();
    let built = authoring::build(dir)?;
    say(format!(
        "built {} ({}, sha256:{}) in {:.1?}",
        dir.display(),
        authoring::human_size(built.size),
        &built.digest[..16],
        started.elapsed()
    ));
    let file = installed_name(dir);
    let tmp = plugins.join(format!(".{file}.tmp"));
    std::fs::copy(&built.path, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    std::fs::rename(&tmp, plugins.join(&file)).with_context(|| format!("installing {file}"))?;
    Ok(built)
}

/// The file a crate's component is installed as: `<crate dir name>.wasm`.
fn installed_name(dir: &Path) -> String {
    format!("{}.wasm", dir.file_name().map_or_else(|| "plugin".into(), |n| n.to_string_lossy()))
}

/// What serves from a crate's file now, for messages after a failed build.
fn serving(runtime: &Runtime, dir: &Path) -> String {
    let file = installed_name(dir);
    match runtime.registry().statuses().into_iter().find(|s| s.file == file) {
        Some(st) if st.name.is_some() => format!(
            "{} {} keeps serving",
            st.name.as_deref().unwrap_or("?"),
            st.version.as_deref().unwrap_or("?")
        ),
        _ => format!("nothing is served from {file} yet"),
    }
}

/// Reloads now (the watcher may have already) and reports the crate's file.
fn report_reload(runtime: &Arc<Runtime>, dir: &Path) {
    runtime.reload();
    let file = installed_name(dir);
    let registry = runtime.registry();
    match registry.statuses().into_iter().find(|s| s.file == file) {
        None => say(format!("{file} is not installed yet (no successful build)")),
        Some(s) if s.status == "loaded" => say(format!(
            "loaded {} {} (sha256:{}) from {file}: POST /api/v2/tools/{}",
            s.name.as_deref().unwrap_or("?"),
            s.version.as_deref().unwrap_or("?"),
            s.digest.as_deref().map_or("?", |d| &d[..16.min(d.len())]),
            s.name.as_deref().unwrap_or("?"),
        )),
        Some(s) => say(format!(
            "{file} was refused: {}; {}",
            s.last_error.as_deref().unwrap_or("unknown error"),
            match (&s.name, &s.version) {
                (Some(n), Some(v)) => format!("{n} {v} keeps serving"),
                _ => "nothing from it is served".into(),
            }
        )),
    }
}

/// Creates a random bearer token file (readable by the owner only) unless one exists.
fn ensure_token(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes)?;
    let token = hex::encode(bytes);
    crate::secret::write_new(path, token.as_bytes())
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

#[cfg(test)]
mod tests {
    use super::is_source;
    use std::path::Path;

    #[test]
    fn only_sources_trigger_rebuilds() {
        let root = Path::new("/w/acme");
        for yes in ["/w/acme/src/lib.rs", "/w/acme/Cargo.toml", "/w/acme/src/q/top.sql", "/w/acme/wit/x.wit"] {
            assert!(is_source(root, Path::new(yes)), "{yes}");
        }
        for no in [
            "/w/acme/target/release/x.wasm",
            "/w/acme/Cargo.lock",
            "/w/acme/.sluice/dev.duckdb",
            "/w/acme/src/.lib.rs.swp",
            "/w/acme/src/lib.rs~",
            "/w/acme/sluice.duckdb.wal",
            "/w/acme/sluice-cache/abc/x.cwasm",
            "/w/other/src/lib.rs",
        ] {
            assert!(!is_source(root, Path::new(no)), "{no}");
        }
    }
}
