//! Running untrusted tool components: one engine, a hot-swappable registry, and calls under a
//! memory limit and a deadline.

pub mod component;
pub mod engine;
pub mod netpolicy;
pub mod refresh;
pub mod registry;
pub mod rollout;
pub mod sinks;
pub mod sources;
pub mod tools;
pub mod trust;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use wasmtime::component::Linker;

use crate::config::PluginsConfig;
use crate::db::Database;
use crate::metrics::Metrics;
use engine::{ArtifactCache, EngineOptions, SluiceEngine};
pub use registry::{ComponentShape, LoadedTool, PluginStatus, Registry, ReloadReport, is_valid_tool_name};
pub use tools::{CallContext, CallError, ToolError, ToolState, WitQueryError};

pub use crate::config::{DEFAULT_DEADLINE, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MEMORY_LIMIT};

/// How long file events are gathered before a reload, so one save (often several writes)
/// causes one reload.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(50);

/// The plugin runtime: engine, linker, compiled-artifact cache and the current registry.
pub struct Runtime {
    engine: SluiceEngine,
    linker: Linker<ToolState>,
    cache: ArtifactCache,
    config: PluginsConfig,
    registry: ArcSwap<Registry>,
    /// The registry's generation, for whoever wants to hear of changes (MCP sessions).
    generation: tokio::sync::watch::Sender<u64>,
    reload_lock: Mutex<()>,
    last_reload: Mutex<ReloadReport>,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    cancel: Arc<AtomicBool>,
    /// Built on first use: a gateway without sinks never links `wasi:http`.
    sink_linker: std::sync::OnceLock<Linker<sinks::SinkState>>,
    /// The keys allowed to sign components.
    trust: trust::Trust,
    /// Tool components from OCI registries.
    sources: sources::OciSources,
    /// Where refusals and rollout decisions are audited (the server's audit log).
    audit: std::sync::OnceLock<crate::audit::AuditLog>,
    /// The database smoke calls run against (the server's).
    db: std::sync::OnceLock<Database>,
}

/// Runs a future to completion from synchronous code (loading, the CLI, benchmarks): on the
/// current multi-thread runtime when there is one, else on a private single-thread runtime (on
/// a scoped thread when the caller is itself inside a single-thread runtime).
pub(crate) fn block_on<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Builder, Handle, RuntimeFlavor};
    let private = |fut: F| Builder::new_current_thread().enable_all().build().expect("building a runtime").block_on(fut);
    match Handle::try_current() {
        Err(_) => private(fut),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| h.block_on(fut)),
        Ok(_) => std::thread::scope(|s| s.spawn(|| private(fut)).join().expect("loader thread panicked")),
    }
}

/// A successful call: the output and the version that produced it.
#[derive(Debug)]
pub struct CallOutput {
    /// The tool's JSON output.
    pub json: String,
    /// The exact version that ran.
    pub tool: Arc<LoadedTool>,
}

impl Runtime {
    /// Builds the runtime and loads every component in the plugins directory.
    pub fn new(config: PluginsConfig, metrics: Metrics) -> anyhow::Result<Arc<Self>> {
        let rt = Self::without_plugins(config, metrics)?;
        block_on(rt.poll_sources());
        rt.reload();
        Ok(rt)
    }

    /// Polls every registry source once (each bounded to 30 s); the next reload loads what changed.
    pub async fn poll_sources(&self) -> bool {
        let mut changed = false;
        for (name, _) in self.sources.schedule() {
            changed |= self.poll_source(&name).await;
        }
        changed
    }

    /// Polls one registry source: `true` when something new was pulled. A failure is logged,
    /// counted and shown in the plugin list; what was loaded keeps serving.
    pub async fn poll_source(&self, name: &str) -> bool {
        let r = tokio::time::timeout(Duration::from_secs(30), self.sources.poll(name))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the registry did not answer within 30s")));
        match r {
            Ok(changed) => {
                self.metrics.plugin_source_poll(if changed { "changed" } else { "unchanged" });
                changed
            }
            Err(e) => {
                self.metrics.plugin_source_poll("failed");
                tracing::warn!(source = %name, error = %format!("{e:#}"), "Registry source could not be polled; what is loaded keeps serving.");
                false
            }
        }
    }

    /// The registry sources (their names and poll intervals, for the poller).
    pub fn sources(&self) -> &sources::OciSources {
        &self.sources
    }

    /// Sends refusals and rollout decisions to `audit` from now on.
    pub fn set_audit(&self, audit: crate::audit::AuditLog) {
        let _ = self.audit.set(audit);
    }

    /// Lets smoke calls (`smoke_args`) run against `db` from now on.
    pub fn set_database(&self, db: Database) {
        let _ = self.db.set(db);
    }

    /// A component refused when loading: counted, and audited as `plugin_refused`.
    fn refused(&self, file: &str, digest: &str, reason: &'static str, error: &str, source: &str) {
        self.metrics.plugin_refused(reason);
        self.audit_event(
            crate::audit::AuditEvent::new("plugin_refused")
                .with("file", file)
                .with("digest", digest)
                .with("reason", reason)
                .with("error", error)
                .with("source", source),
        );
    }

    fn audit_event(&self, ev: crate::audit::AuditEvent) {
        if let Some(a) = self.audit.get() {
            a.record(ev);
        }
    }

    /// Builds the runtime without loading the plugins directory (`reload` loads it): for
    /// commands that load single files.
    pub fn without_plugins(config: PluginsConfig, metrics: Metrics) -> anyhow::Result<Arc<Self>> {
        let max_memory = config
            .tools
            .values()
            .filter_map(|o| o.memory_limit.map(|m| m.0))
            .chain([config.memory_limit.0])
            .max()
            .unwrap_or(DEFAULT_MEMORY_LIMIT);
        anyhow::ensure!(
            config.max_concurrent_calls <= engine::POOL_COMPONENT_INSTANCES as usize,
            "plugins.max_concurrent_calls must be at most {}",
            engine::POOL_COMPONENT_INSTANCES
        );
        let engine = SluiceEngine::new(&EngineOptions { max_memory })?;
        let linker = tools::linker(engine.engine())?;
        let cache = ArtifactCache::new(engine.engine(), Some(&config.cache_dir));
        let permits = Arc::new(Semaphore::new(config.max_concurrent_calls));
        let trust = trust::Trust::new(&config.trust)?;
        let sources = sources::OciSources::new(config.oci.clone(), &config.cache_dir);
        let rt = Arc::new(Self {
            engine,
            linker,
            cache,
            config,
            registry: ArcSwap::from_pointee(Registry::default()),
            generation: tokio::sync::watch::Sender::new(0),
            reload_lock: Mutex::new(()),
            last_reload: Mutex::new(ReloadReport::default()),
            permits,
            metrics,
            cancel: Arc::new(AtomicBool::new(false)),
            sink_linker: std::sync::OnceLock::new(),
            trust,
            sources,
            audit: std::sync::OnceLock::new(),
            db: std::sync::OnceLock::new(),
        });
        Ok(rt)
    }

    /// The current registry snapshot. Keep it for the whole request.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Changes whenever a reload changes the registry (the new generation).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// What the latest reload did.
    pub fn last_reload(&self) -> ReloadReport {
        self.last_reload.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The plugins directory.
    pub fn plugins_dir(&self) -> &Path {
        &self.config.dir
    }

    /// Calls a tool: waits for a call slot (bounded by the tool's deadline), then runs the call
    /// on the executor. The guest yields at every epoch tick; a wall-clock timeout also ends a
    /// call whose guest is parked in a host wait (such as a WASI sleep).
    pub async fn call(&self, db: &Database, tool: Arc<LoadedTool>, ctx: CallContext, args: String) -> Result<CallOutput, CallError> {
        let deadline = Instant::now() + tool.deadline;
        let _permit = tokio::time::timeout(tool.deadline, self.permits.acquire())
            .await
            .map_err(|_| CallError::Busy)?
            .map_err(|_| CallError::Busy)?;
        let (limit, started, this) = (tool.deadline, Instant::now(), tool.clone());
        // The epoch check fires first for a running guest; this catches a parked one.
        // Boxed: the call's future (wasmtime's instantiate and call states) is large, and a box
        // keeps it from being copied as it is wrapped and polled.
        let call = Box::pin(self.call_until(db, tool, ctx, &args, deadline));
        match tokio::time::timeout_at((deadline + 2 * engine::EPOCH_TICK).into(), call).await {
            Ok(r) => r,
            Err(_) => {
                let err = if self.cancel.load(Ordering::Relaxed) { CallError::Cancelled } else { CallError::Timeout(limit) };
                self.series(&this).call(err.outcome(), started.elapsed(), None, 0);
                self.observe_rollout(&this, Some(&err));
                Err(err)
            }
        }
    }

    /// Calls a tool from synchronous code (CLI, benchmarks), on a private single-thread runtime.
    pub fn call_blocking(
        &self,
        db: &Database,
        tool: Arc<LoadedTool>,
        ctx: CallContext,
        args: &str,
        deadline: Instant,
    ) -> Result<CallOutput, CallError> {
        block_on(self.call_until(db, tool, ctx, args, deadline))
    }

    /// Calls a tool with an absolute deadline, without waiting for a call slot (benchmarks and
    /// embedding; the HTTP path uses [`Runtime::call`]).
    pub async fn call_until(
        &self,
        db: &Database,
        tool: Arc<LoadedTool>,
        ctx: CallContext,
        args: &str,
        deadline: Instant,
    ) -> Result<CallOutput, CallError> {
        let started = Instant::now();
        if self.cancel.load(Ordering::Relaxed) {
            return Err(CallError::Cancelled);
        }
        if deadline <= started {
            return Err(CallError::Timeout(tool.deadline));
        }
        let state = ToolState::new(
            Some(db.clone()),
            Arc::from(tool.name.as_str()),
            ctx.request_id.clone(),
            tool.memory_limit,
            deadline,
        )
        .scoped(ctx.allowed_clusters.clone());
        let mut store = component::store(self.engine.engine(), state, deadline, self.cancel.clone());
        let mut instantiated = None;
        let result = async {
            let t = tool.pre.instantiate_async(&mut store).await?;
            instantiated = Some(started.elapsed());
            t.call_call(&mut store, &ctx, args).await
        }
        .await
        .map_err(|e| CallError::from(component::classify(e, tool.deadline, &self.cancel)))
        .and_then(|r| r.map_err(CallError::Tool));
        let (peak, hit) = store.data().memory();
        let result = match result {
            Err(CallError::Trap(m)) if hit => Err(CallError::MemoryLimit(m)),
            other => other,
        };
        let outcome = result.as_ref().err().map_or("ok", CallError::outcome);
        self.series(&tool).call(outcome, started.elapsed(), instantiated, peak);
        self.observe_rollout(&tool, result.as_ref().err());
        if let Err(e) = &result {
            let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            *tool.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, e.to_string()));
        }
        result.map(|json| CallOutput { json, tool })
    }

    /// The tool version's metric series, resolved on its first call.
    fn series<'t>(&self, tool: &'t LoadedTool) -> &'t crate::metrics::PluginSeries {
        tool.series.get_or_init(|| self.metrics.plugin_series(&tool.name, &tool.version))
    }

    /// Instantiates a tool in a fresh store without calling it: what every call pays before the
    /// guest runs. Used by the `tool_call` benchmark to split the cost of a call.
    pub async fn instantiate_only(&self, tool: &LoadedTool) -> Result<(), CallError> {
        let deadline = Instant::now() + tool.deadline;
        let state = ToolState::new(None, Arc::from(tool.name.as_str()), String::new(), tool.memory_limit, deadline);
        let mut store = component::store(self.engine.engine(), state, deadline, self.cancel.clone());
        tool.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| CallError::from(component::classify(e, tool.deadline, &self.cancel)))
    }

    /// Cancels every running call (and refuses new ones): the end of a drain. (The gateway
    /// interrupts the database's queries too.)
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn metrics_reloaded(&self, report: &ReloadReport) {
        for file in &report.loaded {
            self.metrics.plugin_reload(file, true);
        }
        for (file, _) in &report.failed {
            self.metrics.plugin_reload(file, false);
        }
    }
}
