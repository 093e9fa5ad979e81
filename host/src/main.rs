//! The `sluice` binary: parse the command line, build, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sluice::config::Config;

/// mimalloc instead of glibc's malloc: allocation and freeing were about 12 % of the CPU of a
/// tool call under load, across the runtime's threads (docs/benchmarks.md, `http`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A secure, observable gateway in front of DuckDB, extensible with WebAssembly tools.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` (colours only on a terminal) or `json` (one object per
    /// line). Default: `[log] format` of the configuration, else text.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum)]
    log_format: Option<sluice::config::LogFormat>,
}

impl Cli {
    /// The log format (the flag, else the configuration file's `[log] format`, else text) and,
    /// for `serve`, the configuration's `[traces]` when traces are on. A file that does not load
    /// is reported by the command itself.
    fn logging(&self) -> (sluice::config::LogFormat, Option<sluice::telemetry::TracesConfig>) {
        let config = match &self.command {
            Command::Serve(a) => a.common.config.as_ref(),
            Command::Call(a) | Command::Plugin(PluginCommand::Call(a)) => a.common.config.as_ref(),
            Command::Export(ExportCommand::Run { common, .. }) => common.config.as_ref(),
            Command::Dev(a) => a.config.as_ref(),
            _ => None,
        };
        let config = config.and_then(|c| Config::load(c).ok());
        let format = self.log_format.or_else(|| Some(config.as_ref()?.log.format)).unwrap_or_default();
        let traces = match &self.command {
            Command::Serve(_) => config.map(|c| c.traces).filter(|t| t.enabled()),
            _ => None,
        };
        (format, traces)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and health listeners.
    Serve(ServeArgs),
    /// Demo data.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Call a tool once against the local database, without the HTTP server (same as
    /// `sluice plugin call`).
    Call(CallArgs),
    /// Write, build, inspect and try plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The author's loop: serve on loopback with demo data, rebuild and hot-swap plugin crates
    /// when their sources change.
    Dev(DevArgs),
    /// Exports, without the server.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Ask a health listener on loopback (plain HTTP) and exit 0 when it answers 2xx: an exec
    /// probe for containers without curl, e.g. `sluice probe http://127.0.0.1:8080/readyz`.
    Probe {
        /// http://127.0.0.1:PORT/PATH (loopback only).
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Run one export of the configuration now, against the local database, and print its status.
    Run {
        /// The export's name.
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin crate from the template.
    New {
        /// `tool` or `sink`.
        kind: PluginKind,
        /// A tool's name, e.g. acme.top_nodes (^[a-z][a-z0-9_.]{1,127}$; the crate is
        /// acme-top-nodes), or a sink's type, e.g. acme-hook (^[a-z][a-z0-9_-]{0,63}$).
        name: String,
        /// Directory to create (default: ./<crate name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The sluice-pdk crate (plugins/pdk in the Sluice sources), for a tool.
        #[arg(long, env = "SLUICE_PDK")]
        pdk: Option<PathBuf>,
        /// The sink kit sluice-sink-common (sinks-wasm/common in the Sluice sources), for a sink.
        #[arg(long, env = "SLUICE_SINK_KIT")]
        sink_kit: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2; print the component's path, size and digest.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Show what a component is: its world, its describe answer, its imports and what they
    /// would be granted, its digest.
    Inspect {
        /// A .wasm file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call a tool once against the local database, without the HTTP server.
    Call(CallArgs),
    #[command(flatten)]
    Publish(sluice::publish::Publish),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PluginKind {
    Tool,
    Sink,
}

#[derive(Args)]
struct DevArgs {
    /// Plugin crates to build and watch (default: the current directory).
    crates: Vec<PathBuf>,
    /// Configuration file (TOML); dev's defaults apply to what it leaves out.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Where dev keeps its database, plugins, cache and bearer token.
    #[arg(long, default_value = ".sluice")]
    state_dir: PathBuf,
    /// API listener (loopback).
    #[arg(long, env = "SLUICE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Health listener (loopback; default: any free port).
    #[arg(long, env = "SLUICE_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Do not fill an empty database with the demo fleet.
    #[arg(long)]
    no_seed: bool,
}

#[derive(Args)]
struct Common {
    /// Configuration file (TOML). Flags override it.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// DuckDB database file.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Directory of tool components (*.wasm).
    #[arg(long)]
    plugins: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// API listener address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Health listener address.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Serve plain HTTP (loopback addresses only).
    #[arg(long)]
    insecure_no_tls: bool,
    /// Bearer ACL file: a YAML or JSON list of {key_name, token | token_sha256, allowed_clusters}.
    #[arg(long)]
    bearer_acl_file: Option<PathBuf>,
    /// A file holding a single bearer token (all clusters).
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Check the configuration (every key, type and value, with the flags over it) and exit:
    /// non-zero with the key named when something is wrong. Paths that do not exist on this
    /// machine are warnings, so a configuration made for another machine can be checked here.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Fill the database with a synthetic fleet (replaces earlier demo data).
    Seed {
        /// DuckDB database file.
        #[arg(long, default_value = "sluice.duckdb")]
        db: PathBuf,
        /// Number of clusters.
        #[arg(long, default_value_t = 3)]
        clusters: usize,
        /// Nodes per cluster.
        #[arg(long, default_value_t = 16)]
        nodes: usize,
        /// Hours of data, ending at the current hour.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    common: Common,
    /// A tool name (from the plugins directory), a component file (.wasm), or a plugin crate's
    /// directory (built first).
    name: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(db) = &common.db {
        config.database.path = db.clone();
    }
    if let Some(p) = &common.plugins {
        config.plugins.dir = p.clone();
    }
    Ok(config)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (format, traces) = cli.logging();
    if let Err(e) = sluice::telemetry::init_logging(format, traces.as_ref()) {
        eprintln!("sluice: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Demo(DemoCommand::Seed { db, clusters, nodes, hours, seed }) => demo_seed(&db, clusters, nodes, hours, seed),
        Command::Call(a) | Command::Plugin(PluginCommand::Call(a)) => call(a),
        Command::Plugin(PluginCommand::New { kind: PluginKind::Sink, name, dir, sink_kit, .. }) => {
            let kit = sink_kit.unwrap_or_else(sluice::authoring::default_sink_kit_dir);
            let dir = sluice::authoring::new_sink(&name, dir.as_deref(), &kit)?;
            println!("Created {} (sink type {name}). Next:", dir.display());
            println!("  cd {} && sluice plugin build", dir.display());
            Ok(())
        }
        Command::Plugin(PluginCommand::New { kind: PluginKind::Tool, name, dir, pdk, .. }) => {
            let pdk = pdk.unwrap_or_else(sluice::authoring::default_pdk_dir);
            let dir = sluice::authoring::new_tool(&name, dir.as_deref(), &pdk)?;
            println!("Created {} (tool {name}). Next:", dir.display());
            println!("  cd {} && sluice plugin build", dir.display());
            Ok(())
        }
        Command::Plugin(PluginCommand::Build { dir }) => {
            let built = sluice::authoring::build(&dir)?;
            println!("{}", built.path.display());
            println!("size   {} ({} bytes)", sluice::authoring::human_size(built.size), built.size);
            println!("digest sha256:{}", built.digest);
            Ok(())
        }
        Command::Export(ExportCommand::Run { name, common }) => export_run(&name, &common),
        Command::Probe { url, timeout } => probe(&url, std::time::Duration::from_secs(timeout)),
        Command::Plugin(PluginCommand::Inspect { file, json }) => inspect(&file, json),
        Command::Plugin(PluginCommand::Publish(p)) => sluice::publish::run(p),
        Command::Dev(a) => {
            let mut config = match &a.config {
                Some(p) => Config::load(p)?,
                None => sluice::dev::default_config(&a.state_dir),
            };
            if let Some(l) = a.listen {
                config.server.listen = l;
            }
            if let Some(l) = a.health_listen {
                config.server.health_listen = l;
            }
            config.server.insecure_no_tls = true;
            let crates = if a.crates.is_empty() { vec![PathBuf::from(".")] } else { a.crates };
            sluice::dev::run(sluice::dev::DevOptions { crates, config, seed_when_empty: !a.no_seed })
        }
    }
}

/// `sluice serve`: the configuration with the flags over it, then serve until stopped.
fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&a.common)?;
    if let Some(l) = a.listen {
        config.server.listen = l;
    }
    if let Some(l) = a.health_listen {
        config.server.health_listen = l;
    }
    config.server.insecure_no_tls |= a.insecure_no_tls;
    if let Some(p) = a.bearer_acl_file {
        config.auth.bearer_acl_file = Some(p);
        config.auth.token_file = None;
    }
    if let (Some(c), Some(k)) = (a.tls_cert, a.tls_key) {
        config.server.tls_cert = Some(c);
        config.server.tls_key = Some(k);
    }
    if let Some(p) = a.auth_token_file {
        config.auth.token_file = Some(p);
        config.auth.bearer_acl_file = None;
    }
    config.validate()?;
    if a.check_config {
        return check_config(&config, a.common.config.as_deref());
    }
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(sluice::serve::serve(config))
}

/// `sluice serve --check-config`: the listener policy too, then the paths that are not here as
/// warnings.
fn check_config(config: &Config, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    sluice::serve::check_listen_policy(config)?;
    let missing = config.missing_paths();
    for m in &missing {
        eprintln!("warning: {m}");
    }
    let what = file.map_or_else(|| "the defaults".to_owned(), |f| f.display().to_string());
    println!("{what}: configuration OK ({} warning{})", missing.len(), if missing.len() == 1 { "" } else { "s" });
    Ok(())
}

/// `sluice probe URL`: one GET over plain HTTP to a loopback address; Ok on a 2xx answer.
fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").context("sluice probe takes http://127.0.0.1:PORT/PATH")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr: SocketAddr = authority.parse().with_context(|| format!("{authority:?} is not an IP:PORT"))?;
    anyhow::ensure!(addr.ip().is_loopback(), "sluice probe only asks loopback addresses, not {addr}");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).with_context(|| format!("reading the answer from {addr}"))?;
    let status = std::str::from_utf8(&head[..n]).ok().and_then(|h| h.split(' ').nth(1)).unwrap_or("?").to_owned();
    anyhow::ensure!(status.starts_with('2'), "{url} answered {status}");
    println!("{url}: {status}");
    Ok(())
}

/// `sluice demo seed`.
fn demo_seed(db: &std::path::Path, clusters: usize, nodes: usize, hours: u32, seed: u64) -> anyhow::Result<()> {
    let database = sluice::db::Database::open(sluice::db::DbOptions { path: db.to_owned(), ..Default::default() })?;
    let started = Instant::now();
    let opts = sluice::demo::SeedOptions {
        clusters,
        nodes_per_cluster: nodes,
        hours,
        seed,
        end_micros: None,
        progress: true,
    };
    let report = sluice::demo::seed(&database, &opts)?;
    println!(
        "Seeded {} rows for {} ({} nodes each, {hours} h) into {} in {:.1?}.",
        report.rows,
        report.clusters.join(", "),
        nodes,
        db.display(),
        started.elapsed()
    );
    Ok(())
}

/// `sluice export run`: one export of the configuration, against the local database.
fn export_run(name: &str, common: &Common) -> anyhow::Result<()> {
    let config = load_config(common)?;
    config.validate()?;
    // On a lake, exports belong to the elected writer: a run from here could overlap with its.
    anyhow::ensure!(
        config.database.backend != sluice::config::Backend::Ducklake,
        "on a lake (database.backend = \"ducklake\") exports run on the gateway elected writer: \
         ask any gateway with POST /api/v2/exports/{name}/run (it forwards to the writer)"
    );
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let db = sluice::db::Database::open(config.database.to_options())?;
        let mut plugins = config.plugins.clone();
        plugins.watch = false;
        let runtime = sluice::runtime::Runtime::without_plugins(plugins, sluice::metrics::Metrics::new())?;
        let engine = sluice::export::engine::ExportEngine::new(runtime, db, sluice::metrics::Metrics::new(), &config.sinks, &config.exports)?;
        let status = engine.run(name).await.with_context(|| {
            let names: Vec<String> = engine.statuses().into_iter().map(|s| s.name).collect();
            format!("no export {name:?} in the configuration; there are: {}", names.join(", "))
        })??;
        println!("{}", serde_json::to_string_pretty(&status)?);
        anyhow::ensure!(status.condition != sluice::export::status::Condition::Degraded, "export {name} is degraded: see lastError above");
        Ok(())
    })
}

/// `sluice plugin inspect`.
fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let scratch = tempdir("inspect")?;
    let rt = standalone_runtime(&scratch)?;
    let report = sluice::authoring::inspect(&rt, file);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    match (&report.world, &report.load_error) {
        (None, _) => anyhow::bail!("{} is a component, but not a Sluice tool", file.display()),
        (Some(_), Some(e)) => anyhow::bail!("{} would be refused: {e}", file.display()),
        _ => Ok(()),
    }
}

/// A private scratch directory.
fn tempdir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A runtime with a scratch compile cache that loads no plugins directory.
fn standalone_runtime(scratch: &std::path::Path) -> anyhow::Result<std::sync::Arc<sluice::runtime::Runtime>> {
    let plugins = sluice::config::PluginsConfig {
        cache_dir: scratch.join("cache"),
        watch: false,
        ..Default::default()
    };
    sluice::runtime::Runtime::without_plugins(plugins, sluice::metrics::Metrics::new())
}

/// `sluice call` / `sluice plugin call`.
fn call(a: CallArgs) -> anyhow::Result<()> {
    let mut config = load_config(&a.common)?;
    config.plugins.watch = false;
    let db = sluice::db::Database::open(config.database.to_options())?;
    let target = PathBuf::from(&a.name);
    let tool = if target.is_dir() || a.name.ends_with(".wasm") {
        let file = if target.is_dir() { sluice::authoring::build(&target)?.path } else { target };
        let rt = sluice::runtime::Runtime::without_plugins(config.plugins.clone(), sluice::metrics::Metrics::new())?;
        let tool = rt.load_file(&file).with_context(|| format!("loading {}", file.display()))?;
        (rt, tool)
    } else {
        let rt = sluice::runtime::Runtime::new(config.plugins.clone(), sluice::metrics::Metrics::new())?;
        let registry = rt.registry();
        let tool = registry.get(&a.name).cloned().with_context(|| {
            let names: Vec<&str> = registry.tools().map(|t| t.name.as_str()).collect();
            format!(
                "no tool {:?} in {}; loaded: {}. Pass a tool name, a .wasm file or a plugin crate directory",
                a.name,
                config.plugins.dir.display(),
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )
        })?;
        drop(registry);
        (rt, tool)
    };
    let (rt, tool) = tool;
    let args: serde_json::Value = serde_json::from_str(&a.args).context("--args is not valid JSON")?;
    // The same application layer as REST and MCP, as the local operator, audited where the
    // configuration says.
    let audit = sluice::serve::audit_log(&config)?;
    let calls = sluice::calls::Calls { runtime: &rt, db: &db, audit: &audit };
    let caller = sluice::caller::Caller::local();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(calls.call_loaded(&caller, tool, args, sluice::calls::Via::Cli));
    audit.flush();
    let out = result.map_err(|f| match f {
        sluice::calls::CallFailure::InvalidArgs { message, path } => anyhow::anyhow!("--args: {message} (at {path:?})"),
        // The operator at the console sees what the audit log has.
        sluice::calls::CallFailure::Backend { tool, detail } => anyhow::anyhow!("{tool} failed: {detail}"),
        other => anyhow::anyhow!(other),
    })?;
    println!("{}", out.result.get());
    Ok(())
}
