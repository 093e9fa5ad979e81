//! The `sluice` binary: parse the command line, build, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sluice::config::Config;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A secure, observable gateway in front of DuckDB, extensible with WebAssembly tools.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and health listeners.
    Serve(ServeArgs),
    /// Demo data.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Call a tool once against the local database, without the HTTP server.
    Call(CallArgs),
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
    /// Tool name.
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
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
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(sluice::serve::serve(config))
        }
        Command::Demo(DemoCommand::Seed { db, clusters, nodes, hours, seed }) => {
            let database = sluice::db::Database::open(sluice::db::DbOptions { path: db.clone(), ..Default::default() })?;
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
        Command::Call(a) => {
            let mut config = load_config(&a.common)?;
            config.plugins.watch = false;
            let db = sluice::db::Database::open(config.database.to_options())?;
            let rt = sluice::runtime::Runtime::new(config.plugins.clone(), db, sluice::metrics::Metrics::new())?;
            let registry = rt.registry();
            let tool = registry.get(&a.name).cloned().with_context(|| {
                let names: Vec<&str> = registry.tools().map(|t| t.name.as_str()).collect();
                format!("no tool {:?} in {}; loaded: {}", a.name, config.plugins.dir.display(), names.join(", "))
            })?;
            let args: serde_json::Value = serde_json::from_str(&a.args).context("--args is not valid JSON")?;
            if let Some(err) = tool.validate_args(&args) {
                anyhow::bail!("--args does not match the input schema at {:?}: {}", err.0, err.1);
            }
            let ctx = sluice::runtime::CallContext { request_id: "0000000000000000".into(), allowed_clusters: vec![] };
            let deadline = Instant::now() + tool.deadline.min(Duration::from_secs(3600));
            let out = rt.call_blocking(tool, ctx, &args.to_string(), deadline)?;
            println!("{}", out.json);
            Ok(())
        }
    }
}
