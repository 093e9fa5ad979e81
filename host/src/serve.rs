//! `sluice serve`: open the database, load the plugins, serve the API and health listeners until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::Database;
use crate::http::{AppState, api_router, health_router};
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// Everything a running gateway is made of, for `serve` and for tests that drive the router.
pub struct Gateway {
    pub state: AppState,
    /// Keeps the plugins directory watched while alive.
    pub watcher: Option<notify::RecommendedWatcher>,
}

impl Gateway {
    /// Opens the database and loads the plugins. Call inside a tokio runtime when
    /// `config.plugins.watch` is set.
    pub fn build(config: &Config) -> anyhow::Result<Self> {
        let db = Database::open(config.database.to_options())?;
        let metrics = Metrics::new();
        let runtime = Runtime::new(config.plugins.clone(), db, metrics.clone())?;
        let watcher = if config.plugins.watch { Some(runtime.watch()?) } else { None };
        let state = AppState { runtime, metrics, max_body: config.server.max_body.0 };
        Ok(Self { state, watcher })
    }

    /// The API router with its body limit.
    pub fn api(&self) -> axum::Router {
        api_router(self.state.clone()).layer(axum::extract::DefaultBodyLimit::max(self.state.max_body))
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.state.runtime
    }
}

/// Refuses plain HTTP unless explicitly allowed, and then only on loopback.
pub fn check_listen_policy(config: &Config) -> anyhow::Result<()> {
    let s = &config.server;
    if !s.insecure_no_tls {
        anyhow::bail!(
            "TLS is not configured. Sluice serves plain HTTP only on a loopback address and only with \
             --insecure-no-tls (or `insecure_no_tls = true` under [server]); TLS listeners arrive with \
             the front-door release. Example: sluice serve --insecure-no-tls --listen 127.0.0.1:8081"
        );
    }
    for (what, addr) in [("--listen", s.listen), ("--health-listen", s.health_listen)] {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "{what} {addr} is not a loopback address; plain HTTP (--insecure-no-tls) is only allowed \
                 on 127.0.0.0/8 or ::1. Bind to 127.0.0.1 and put a TLS proxy in front, or wait for TLS support."
            );
        }
    }
    Ok(())
}

/// Serves until SIGTERM or SIGINT, then finishes in-flight requests and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    check_listen_policy(&config)?;
    let gateway = Gateway::build(&config)?;
    let api_listener = bind(config.server.listen, "--listen").await?;
    let health_listener = bind(config.server.health_listen, "--health-listen").await?;
    let api_addr = api_listener.local_addr()?;
    let health_addr = health_listener.local_addr()?;

    let registry = gateway.runtime().registry();
    tracing::info!(api = %api_addr, health = %health_addr, tools = registry.tools().count(), db = %config.database.path.display(), plugins = %config.plugins.dir.display(), "Sluice is serving.");
    // One machine-readable line on stdout, for scripts and tests that bind port 0.
    println!("sluice listening api=http://{api_addr} health=http://{health_addr}");
    drop(registry);

    spawn_sighup_reload(gateway.runtime().clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = axum::serve(api_listener, gateway.api().into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(wait_for(stop_rx.clone()));
    let health = axum::serve(health_listener, health_router()).with_graceful_shutdown(wait_for(stop_rx));
    let signal = async move {
        shutdown_signal().await;
        tracing::info!("Shutdown requested; finishing in-flight requests.");
        let _ = stop_tx.send(true);
    };
    let (a, h, ()) = tokio::join!(api.into_future(), health.into_future(), signal);
    a.context("API listener")?;
    h.context("health listener")?;
    tracing::info!("Sluice stopped.");
    Ok(())
}

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| match addr.port() {
        0 => format!("cannot bind {addr}"),
        port => format!("cannot bind {addr}: is port {port} in use? Pass {flag} to choose another address"),
    })
}

async fn wait_for(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn spawn_sighup_reload(runtime: Arc<Runtime>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("Could not install the SIGHUP handler; reload with POST /api/v2/admin/plugins/reload.");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading plugins.");
            let rt = runtime.clone();
            let _ = tokio::task::spawn_blocking(move || rt.reload()).await;
        }
    });
}
