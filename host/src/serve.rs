//! `sluice serve`: open the database, load the plugins, serve the API and health listeners until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::{AuthSource, AuthStore};
use crate::config::Config;
use crate::db::Database;
use crate::drain::Drain;
use crate::http::{AppState, FrontDoor, api_service, health_router};
use crate::metrics::Metrics;
use crate::ratelimit::{LimitSettings, Limiter};
use crate::runtime::Runtime;

/// Everything a running gateway is made of, for `serve` and for tests that drive the router.
pub struct Gateway {
    pub state: AppState,
    /// Keep the plugins directory and the bearer file watched while alive.
    pub watchers: Vec<notify::RecommendedWatcher>,
}

/// What the database is, for the log: the file, or the lake's data path.
fn db_name(config: &Config) -> String {
    match config.database.backend {
        crate::config::Backend::File => config.database.path.display().to_string(),
        crate::config::Backend::Ducklake => format!("ducklake {}", config.database.ducklake.data_path),
    }
}

/// The bearer source the configuration names.
pub fn auth_source(config: &Config) -> anyhow::Result<AuthSource> {
    match (&config.auth.bearer_acl_file, &config.auth.token_file) {
        (Some(acl), None) => Ok(AuthSource::AclFile(acl.clone())),
        (None, Some(token)) => Ok(AuthSource::TokenFile(token.clone())),
        // Only JWT bearers, from the issuers under [auth.jwt].
        (None, None) if !config.auth.jwt.issuers.is_empty() => Ok(AuthSource::Static(Vec::new())),
        (None, None) => anyhow::bail!(
            "no bearer is configured: every /api/v2 request needs one. Pass --auth-token-file FILE (one \
             token, all clusters) or --bearer-acl-file FILE (a YAML/JSON list of {{key_name, token | \
             token_sha256, allowed_clusters}}), or set them under [auth] in sluice.toml"
        ),
        (Some(_), Some(_)) => anyhow::bail!("--bearer-acl-file and --auth-token-file are exclusive; pass one"),
    }
}

/// The audit log the configuration names.
pub fn audit_log(config: &Config) -> anyhow::Result<AuditLog> {
    match config.audit.destination.as_str() {
        "stderr" | "" => Ok(AuditLog::stderr()),
        path => AuditLog::file(std::path::Path::new(path)),
    }
}

impl Gateway {
    /// Opens the database, loads the bearers and the plugins. Call inside a tokio runtime when
    /// anything is watched.
    pub fn build(config: &Config, auth: AuthSource, audit: AuditLog) -> anyhow::Result<Self> {
        let db = Database::open(config.database.to_options())?;
        let metrics = Metrics::new();
        let mut watchers = Vec::new();
        let jwt = match config.auth.jwt.issuers.is_empty() {
            true => None,
            false => {
                let v = crate::auth::jwt::JwtVerifier::new(&config.auth.jwt, metrics.clone())?;
                watchers.extend(v.watch_files()?);
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    v.spawn_refresh(&handle);
                }
                Some(v)
            }
        };
        let auth = AuthStore::with_jwt(auth, config.auth.rotation_grace.0, audit.clone(), jwt)?;
        let runtime = Runtime::without_plugins(config.plugins.clone(), metrics.clone())?;
        runtime.set_audit(audit.clone());
        runtime.set_database(db.clone());
        crate::runtime::block_on(runtime.poll_sources());
        runtime.reload();
        watchers.extend(auth.watch()?);
        let exports = Arc::new(
            crate::export::engine::ExportEngine::new(runtime.clone(), db.clone(), metrics.clone(), &config.sinks, &config.exports)
                .context("loading sinks and exports")?,
        );
        if config.plugins.watch {
            watchers.push(crate::reload::watch(&runtime, &exports)?);
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            exports.test_on_start(&handle);
            spawn_supply(&handle, &runtime, &exports, config.plugins.tools.values().any(|t| t.rollout.is_some()));
        }
        let limiter = Arc::new(Limiter::new(LimitSettings {
            requests_per_second: config.rate_limit.requests_per_second,
            burst: config.rate_limit.burst,
            max_in_flight_per_bearer: config.limits.max_in_flight_per_bearer,
            max_in_flight: config.limits.max_in_flight,
        }));
        let lake = match config.database.backend {
            crate::config::Backend::Ducklake => Some(crate::lake::Coordinator::new(config.database.ducklake.coordination())?),
            crate::config::Backend::File => None,
        };
        let state = AppState::new(crate::http::AppInner {
            lake,
            db,
            runtime,
            metrics,
            auth,
            limiter,
            drain: Arc::new(Drain::default()),
            audit,
            max_body: config.server.max_body.0,
            max_header_bytes: config.server.max_header_bytes.0,
            ingest: config.ingest.clone(),
            mcp_shutdown: tokio_util::sync::CancellationToken::new(),
            tls: config.server.tls_cert.is_some() && config.server.tls_key.is_some(),
            status_sessions: Default::default(),
            traces: if config.traces.enabled() { crate::telemetry::active() } else { None },
            exports,
        });
        Ok(Self { state, watchers })
    }

    /// The API service: the front door around the router.
    pub fn api(&self) -> FrontDoor {
        api_service(self.state.clone(), self.state.max_body)
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.state.runtime
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.state.db
    }

    /// On a lake: joins the writer election, advertising `url` to the other gateways, and takes
    /// the exports over whenever this gateway becomes the writer. Call inside a tokio runtime.
    pub fn start_lake(&self, lake: &crate::lake::Coordinator, url: String) {
        spawn_takeover(self, lake.roles());
        lake.start(url, self.db().clone(), self.state.metrics.clone());
    }

    /// The lake's writer election, on the `ducklake` backend.
    pub fn lake(&self) -> Option<&crate::lake::Coordinator> {
        self.state.lake.as_ref()
    }
}

/// Serves HTTPS when a certificate is configured; plain HTTP only when explicitly allowed, and
/// then only on loopback.
pub fn check_listen_policy(config: &Config) -> anyhow::Result<()> {
    let s = &config.server;
    if s.tls_cert.is_some() && s.tls_key.is_some() {
        return Ok(());
    }
    if !s.insecure_no_tls {
        anyhow::bail!(
            "TLS is not configured. Pass --tls-cert CERT.pem --tls-key KEY.pem (or set tls_cert and \
             tls_key under [server]) to serve HTTPS; for local use only, --insecure-no-tls serves plain \
             HTTP on a loopback address (e.g. --listen 127.0.0.1:8081)"
        );
    }
    for (what, addr) in [("--listen", s.listen), ("--health-listen", s.health_listen)] {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "{what} {addr} is not a loopback address; plain HTTP (--insecure-no-tls) is only allowed \
                 on 127.0.0.0/8 or ::1. Bind to 127.0.0.1, or pass --tls-cert and --tls-key to serve HTTPS"
            );
        }
    }
    Ok(())
}

/// Serves until SIGTERM or SIGINT, then finishes in-flight requests and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    check_listen_policy(&config)?;
    let audit = audit_log(&config)?;
    let gateway = Gateway::build(&config, auth_source(&config)?, audit.clone())?;
    serve_gateway(&config, gateway, audit).await
}

/// Serves a built gateway as [`serve`] does.
pub async fn serve_gateway(config: &Config, gateway: Gateway, audit: AuditLog) -> anyhow::Result<()> {
    check_listen_policy(config)?;
    let api_listener = bind(config.server.listen, "--listen").await?;
    let health_listener = bind(config.server.health_listen, "--health-listen").await?;
    let api_addr = api_listener.local_addr()?;
    let health_addr = health_listener.local_addr()?;

    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::load(cert, key).await?),
        _ => None,
    };
    let _tls_watcher = match (&tls, &config.server.tls_cert, &config.server.tls_key) {
        (Some(t), Some(cert), Some(key)) => Some(crate::tls::watch(t.clone(), cert.clone(), key.clone())?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let registry = gateway.runtime().registry();
    tracing::info!(api = %api_addr, health = %health_addr, tools = registry.tools().count(), db = %db_name(config), plugins = %config.plugins.dir.display(), "Sluice is serving.");
    // One machine-readable line on stdout, for scripts and tests that bind port 0.
    println!("sluice listening api={scheme}://{api_addr} health={scheme}://{health_addr}");
    drop(registry);

    spawn_sighup_reload(gateway.runtime().clone(), gateway.state.exports.clone());
    if let Some(lake) = &gateway.state.lake {
        anyhow::ensure!(
            config.database.ducklake.advertise_url.is_some() || !api_addr.ip().is_unspecified(),
            "the API listens on {api_addr}: set database.ducklake.advertise_url to the URL other gateways reach this one at"
        );
        crate::lake::check_peer_url(&format!("{scheme}://{api_addr}")).or_else(|e| match config.database.ducklake.advertise_url {
            Some(_) => Ok(()),
            None => Err(anyhow::anyhow!("{e} (set database.ducklake.advertise_url)")),
        })?;
        gateway.start_lake(lake, format!("{scheme}://{api_addr}"));
    }
    spawn_export_schedule(&gateway);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = serve_on(api_listener, gateway.api(), tls.clone(), stop_rx.clone());
    let health = serve_on(health_listener, health_router(gateway.state.drain.clone()), tls, stop_rx);
    let deadline = config.drain.shutdown_deadline.0;
    let (drain, runtime, db) = (gateway.state.drain.clone(), gateway.runtime().clone(), gateway.db().clone());
    let mcp_shutdown = gateway.state.mcp_shutdown.clone();
    let lake = gateway.state.lake.clone();
    let signal = async move {
        shutdown_signal().await;
        // Another gateway becomes the lake's writer while this one drains.
        if let Some(lake) = &lake {
            lake.resign();
        }
        // Readiness fails and new requests get 503 from here on; the listeners stay open so
        // clients get an answer rather than a refused connection.
        drain.start();
        let in_flight = drain.in_flight();
        audit.record(AuditEvent::new("drain_start").with("in_flight", in_flight).with("deadline_ms", deadline.as_millis() as u64));
        tracing::info!(in_flight, ?deadline, "Shutdown requested; draining.");
        let clean = drain.wait_idle(deadline).await;
        if !clean {
            tracing::warn!(in_flight = drain.in_flight(), "Shutdown deadline reached; cancelling plugin calls and DuckDB queries.");
            runtime.cancel_all();
            db.interrupt_all();
            drain.wait_idle(CANCEL_GRACE).await;
        }
        audit.record(AuditEvent::new("drain_end").with("clean", clean).with("in_flight", drain.in_flight()));
        audit.flush();
        // The last requests' spans (within the export timeout; a collector that is down loses them).
        tokio::task::spawn_blocking(crate::telemetry::flush).await.ok();
        mcp_shutdown.cancel();
        let _ = stop_tx.send(true);
    };
    let (a, h, ()) = tokio::join!(api, health, signal);
    a.context("API listener")?;
    h.context("health listener")?;
    tracing::info!("Sluice stopped.");
    Ok(())
}

/// Runs each export with a cadence on its own task, one run at a time, until draining starts
/// (the first run at once); an export without a cadence runs once at start when a delivery of it
/// was left pending (on a file: a cadence's first run resumes its own).
///
/// On a lake only the writer runs exports, and a cadence's period fires once across gateways
/// (claimed in the catalog); pending deliveries are resumed when a gateway becomes the writer.
fn spawn_export_schedule(gateway: &Gateway) {
    if gateway.state.lake.is_none() {
        let scheduled: Vec<String> = gateway.state.exports.scheduled().into_iter().map(|(n, _)| n).collect();
        let pending = gateway.state.exports.pending().into_iter().filter(|n| !scheduled.contains(n)).collect();
        resume_pending(&gateway.state.exports, pending);
    }
    for (name, every) in gateway.state.exports.scheduled() {
        let (engine, drain, lake) = (gateway.state.exports.clone(), gateway.state.drain.clone(), gateway.state.lake.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(if lake.is_some() { every.min(crate::lake::TICK * 2) } else { every });
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if drain.is_draining() {
                    return;
                }
                if let Some(lake) = &lake {
                    match lake.claim_period(&name, every).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::warn!(export = %name, error = %format!("{e:#}"), "Cannot claim the export's period; skipped.");
                            continue;
                        }
                    }
                }
                match engine.run(&name).await {
                    Some(Ok(status)) => tracing::info!(export = %name, condition = status.condition.as_str(), generation = status.generation, "Export ran."),
                    Some(Err(e)) => tracing::warn!(export = %name, error = %format!("{e:#}"), "Export failed."),
                    None => return,
                }
            }
        });
    }
}

/// Runs, once each, exports with a delivery left pending.
fn resume_pending(engine: &Arc<crate::export::engine::ExportEngine>, pending: Vec<String>) {
    for name in pending {
        let engine = engine.clone();
        tokio::spawn(async move {
            tracing::info!(export = %name, "Resuming an export left pending.");
            match engine.run(&name).await {
                Some(Ok(status)) => tracing::info!(export = %name, condition = status.condition.as_str(), generation = status.generation, "Export ran."),
                Some(Err(e)) => tracing::warn!(export = %name, error = %format!("{e:#}"), "Export failed."),
                None => {}
            }
        });
    }
}

/// On a lake: whenever this gateway becomes the writer, it takes the exports' state over and
/// resumes what the previous writer left pending.
fn spawn_takeover(gateway: &Gateway, mut roles: tokio::sync::watch::Receiver<crate::lake::Role>) {
    let (engine, metrics) = (gateway.state.exports.clone(), gateway.state.metrics.clone());
    tokio::spawn(async move {
        while roles.changed().await.is_ok() {
            let role = *roles.borrow_and_update();
            metrics.lake_writer(role == crate::lake::Role::Writer);
            if role != crate::lake::Role::Writer {
                continue;
            }
            let taken = tokio::task::spawn_blocking({
                let engine = engine.clone();
                move || engine.take_over()
            })
            .await;
            match taken {
                Ok(Ok(pending)) => resume_pending(&engine, pending),
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "Cannot read the exports' state from the lake."),
                Err(e) => tracing::error!(error = %e, "The export takeover task failed."),
            }
        }
    });
}

/// After cancelling at the deadline, how long the cancelled requests get to answer.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| match addr.port() {
        0 => format!("cannot bind {addr}"),
        port => format!("cannot bind {addr}: is port {port} in use? Pass {flag} to choose another address"),
    })
}

/// Serves `app` on `listener` (HTTPS when `tls` is given) until `stop` turns true, then finishes
/// open requests and returns.
async fn serve_on<S>(
    listener: TcpListener,
    app: S,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <S as tower::Service<axum::extract::Request>>::Future: Send,
    <S as tower::Service<axum::http::Request<hyper::body::Incoming>>>::Future: Send,
{
    use axum::serve::ListenerExt as _;
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(app);
    // TCP_NODELAY on every connection: an answer written in more than one piece (an MCP event
    // stream, a chunked body) must not wait for the client's delayed ACK (40 ms on Linux).
    match tls {
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, service).with_graceful_shutdown(wait_for(stop)).await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                wait_for(stop).await;
                h.graceful_shutdown(Some(CANCEL_GRACE));
            });
            axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, tls)?
                .map(|a| a.acceptor(axum_server::accept::NoDelayAcceptor::new()))
                .handle(handle)
                .serve(service)
                .await
        }
    }
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

/// Polls each registry source on its interval (reloading when one pulled something new), and
/// settles canaries every second when a rollout policy is configured; until the runtime is gone.
fn spawn_supply(handle: &tokio::runtime::Handle, runtime: &Arc<Runtime>, exports: &Arc<crate::export::engine::ExportEngine>, rollouts: bool) {
    for (name, every) in runtime.sources().schedule() {
        let (rt, ex) = (Arc::downgrade(runtime), Arc::downgrade(exports));
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // The first poll happened while building.
            loop {
                tick.tick().await;
                let (Some(runtime), Some(exports)) = (rt.upgrade(), ex.upgrade()) else { return };
                if runtime.poll_source(&name).await {
                    let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&runtime, &exports)).await;
                }
            }
        });
    }
    if rollouts {
        let rt = Arc::downgrade(runtime);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(runtime) = rt.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || runtime.settle_rollouts()).await;
            }
        });
    }
}

fn spawn_sighup_reload(runtime: Arc<Runtime>, exports: Arc<crate::export::engine::ExportEngine>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("Could not install the SIGHUP handler; reload with POST /api/v2/admin/plugins/reload.");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading plugins and sink components.");
            runtime.poll_sources().await;
            let (rt, ex) = (runtime.clone(), exports.clone());
            let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&rt, &ex)).await;
        }
    });
}
