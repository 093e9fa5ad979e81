//! The `sink` world on the host side: bindings, the per-call state (its network is what its
//! [`NetPolicy`] allows, see [`super::netpolicy`]), and loading and calling a sink component.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::Runtime;
pub use super::netpolicy::NetPolicy;
use super::netpolicy::PolicyHooks;
use super::tools::bindings::sluice::plugin::log;
use super::tools::plugin_log;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sink",
        imports: { default: async },
        exports: { default: async },
        with: { "sluice:plugin/log": crate::runtime::tools::bindings::sluice::plugin::log },
    });
}

pub use bindings::sluice::plugin::sink_types::{
    Capabilities, ErrorClass, ExportRequest, Family, Receipt, SinkConfig, SinkError, SinkInfo,
};
pub use bindings::{Sink, SinkPre};

/// One sink call's store state.
pub struct SinkState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: PolicyHooks,
    table: ResourceTable,
    limits: super::component::CallLimits,
    name: Arc<str>,
}

impl SinkState {
    pub fn new(name: &str, policy: Arc<NetPolicy>, memory_limit: usize) -> Self {
        let sockets = policy.clone();
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(true)
            .allow_udp(false)
            // Only a sink whose settings name a host may resolve names (it connects to nothing
            // but their addresses either way).
            .allow_ip_name_lookup(policy.names_hosts())
            .socket_addr_check(move |addr, usage| {
                let ok = sockets.socket_allowed(addr, usage);
                Box::pin(async move { ok })
            })
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: PolicyHooks(policy),
            table: ResourceTable::new(),
            limits: super::component::limits(memory_limit),
            name: Arc::from(name),
        }
    }
}

impl super::component::Limited for SinkState {
    fn limits(&mut self) -> &mut super::component::CallLimits {
        &mut self.limits
    }
}

impl WasiView for SinkState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for SinkState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl bindings::sluice::plugin::sink_types::Host for SinkState {}

impl log::Host for SinkState {
    async fn log(&mut self, level: log::Level, message: String) {
        plugin_log(&self.name, "", level, message);
    }
}

/// The linker every sink is instantiated with.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<SinkState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Sink::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// A loaded sink component.
pub struct LoadedSink {
    pub info: SinkInfo,
    pub digest: String,
    pre: SinkPre<SinkState>,
    /// Its metric series (type and version), resolved on its first call.
    series: std::sync::OnceLock<crate::metrics::PluginSeries>,
}

impl std::fmt::Debug for LoadedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSink").field("type", &self.info.sink_type).field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// How a sink call failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkCallError {
    /// The component's own classified error.
    #[error("{}: {}", class_name(.0.class), .0.message)]
    Sink(SinkError),
    /// The call ran past its deadline (transient).
    #[error("sink ran past its deadline of {0:?}")]
    Timeout(Duration),
    /// The component trapped (transient: a fresh instance may succeed).
    #[error("sink failed: {0}")]
    Trap(String),
}

/// `transient`, `terminal`, `forbidden`.
pub fn class_name(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Transient => "transient",
        ErrorClass::Terminal => "terminal",
        ErrorClass::Forbidden => "forbidden",
    }
}

impl SinkCallError {
    /// The error class the engine acts on (timeouts and traps are transient).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Sink(e) => e.class,
            Self::Timeout(_) | Self::Trap(_) => ErrorClass::Transient,
        }
    }
}

/// Whether a sink type name is valid: `^[a-z][a-z0-9_-]{0,63}$`.
pub fn is_valid_sink_type(t: &str) -> bool {
    let b = t.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

impl Runtime {
    fn sink_linker(&self) -> anyhow::Result<&Linker<SinkState>> {
        if let Some(l) = self.sink_linker.get() {
            return Ok(l);
        }
        let l = linker(self.engine.engine())?;
        Ok(self.sink_linker.get_or_init(|| l))
    }

    /// Where a sink's component is, and what proves who made it: a file (with its `FILE.sig`),
    /// or `oci:<name>`, a registry source of kind `sink` (what it last pulled).
    pub fn sink_source(&self, component: &Path) -> anyhow::Result<(std::path::PathBuf, super::trust::Evidence, bool)> {
        use super::trust::Evidence;
        let Some(name) = component.to_str().and_then(|c| c.strip_prefix("oci:")) else {
            let signature = super::trust::read_signature(component);
            return Ok((component.to_owned(), Evidence::File { signature }, self.config.require_signature));
        };
        let source = self
            .sources
            .config(name)
            .filter(|s| s.kind == crate::config::SourceKind::Sink)
            .ok_or_else(|| anyhow::anyhow!("no registry source {name:?} of kind \"sink\""))?;
        let state = self.sources.states().remove(name).unwrap_or_default();
        let pulled = state.pulled.ok_or_else(|| {
            anyhow::anyhow!("{name:?} ({}) is not pulled yet: {}", source.reference, state.error.as_deref().unwrap_or("waiting for the first poll"))
        })?;
        let evidence = Evidence::Oci { repository: pulled.repository, digest: pulled.manifest_digest, signatures: pulled.signatures };
        Ok((pulled.path, evidence, source.require_signature))
    }

    fn sink_store(&self, state: SinkState, deadline: Instant) -> Store<SinkState> {
        super::component::store(self.engine.engine(), state, deadline, self.cancel.clone())
    }

    /// Loads a sink component: compiles it (through the artifact cache), links it and asks it
    /// what it is.
    pub fn load_sink(&self, component: &Path) -> anyhow::Result<Arc<LoadedSink>> {
        let (path, evidence, required) = self.sink_source(component)?;
        let bytes = super::component::read(&path).map_err(anyhow::Error::msg)?;
        let digest = super::component::digest(&bytes);
        // Before anything of it is compiled or runs.
        let name = component.display().to_string();
        if let Err(refused) = self.trust.check(&name, &bytes, &evidence, required) {
            self.refused(&name, &digest, refused.reason.as_str(), &refused.message, "sink");
            return Err(refused.into());
        }
        let (component, _) = self.compile(&digest, &bytes)?;
        let pre = self
            .sink_linker()?
            .instantiate_pre(&component)
            .map_err(|e| anyhow::Error::from(e).context("the component imports something the `sink` world does not provide"))?;
        let pre = SinkPre::new(pre)
            .map_err(|e| anyhow::Error::from(e).context("the component does not export the `sink` world (describe, probe, export)"))?;
        let mut store = self.describe_store(SinkState::new("describe", Arc::default(), self.config.memory_limit.0));
        let info = self.describe(async {
            let s = pre.instantiate_async(&mut store).await?;
            s.call_describe(&mut store).await
        })?;
        anyhow::ensure!(
            is_valid_sink_type(&info.sink_type),
            "describe returned an invalid sink type {:?}: types match ^[a-z][a-z0-9_-]{{0,63}}$",
            info.sink_type
        );
        Ok(Arc::new(LoadedSink { info, digest, pre, series: std::sync::OnceLock::new() }))
    }

    async fn sink_call(
        &self,
        sink: &LoadedSink,
        config: &SinkConfig,
        op: Op<'_>,
        policy: Arc<NetPolicy>,
        timeout: Duration,
    ) -> Result<Answer, SinkCallError> {
        let deadline = Instant::now() + timeout;
        let policy = policy.resolved().await;
        let started = Instant::now();
        let mut store = self.sink_store(SinkState::new(&config.name, policy, self.config.memory_limit.0), deadline);
        let mut instantiated = None;
        let run = async {
            let s = sink.pre.instantiate_async(&mut store).await?;
            instantiated = Some(started.elapsed());
            Ok::<_, wasmtime::Error>(match op {
                Op::Probe => s.call_probe(&mut store, config).await?.map(Answer::Probed),
                Op::Export(r) => s.call_export(&mut store, config, r).await?.map(Answer::Delivered),
            })
        };
        let result = tokio::time::timeout_at((deadline + 2 * super::engine::EPOCH_TICK).into(), run).await;
        let (peak, hit) = (store.data().limits.peak, store.data().limits.hit);
        let (result, outcome) = match result {
            Err(_) => (Err(SinkCallError::Timeout(timeout)), "timeout"),
            Ok(Err(e)) => match super::component::classify(e, timeout, &self.cancel) {
                super::component::RunError::Timeout(d) => (Err(SinkCallError::Timeout(d)), "timeout"),
                other => (Err(SinkCallError::Trap(other.to_string())), if hit { "memory_limit" } else { "trap" }),
            },
            Ok(Ok(Ok(r))) => (Ok(r), "ok"),
            Ok(Ok(Err(e))) => (Err(SinkCallError::Sink(e)), "sink_error"),
        };
        let series = sink.series.get_or_init(|| self.metrics.sink_series(&sink.info.sink_type, &sink.info.version));
        series.call(outcome, started.elapsed(), instantiated, peak);
        result
    }

    /// Runs a sink's connection test.
    pub async fn sink_probe(
        &self,
        sink: &LoadedSink,
        config: &SinkConfig,
        policy: Arc<NetPolicy>,
        timeout: Duration,
    ) -> Result<String, SinkCallError> {
        match self.sink_call(sink, config, Op::Probe, policy, timeout).await? {
            Answer::Probed(detail) => Ok(detail),
            Answer::Delivered(_) => unreachable!("a probe answers a probe"),
        }
    }

    /// Delivers one export or part.
    pub async fn sink_export(
        &self,
        sink: &LoadedSink,
        config: &SinkConfig,
        request: &ExportRequest,
        policy: Arc<NetPolicy>,
        timeout: Duration,
    ) -> Result<Receipt, SinkCallError> {
        match self.sink_call(sink, config, Op::Export(request), policy, timeout).await? {
            Answer::Delivered(receipt) => Ok(receipt),
            Answer::Probed(_) => unreachable!("an export answers an export"),
        }
    }
}

/// A call to make.
enum Op<'a> {
    Probe,
    Export(&'a ExportRequest),
}

/// Its answer.
enum Answer {
    Probed(String),
    Delivered(Receipt),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_type_names() {
        for ok in ["git", "s3", "http", "my-sink_2"] {
            assert!(is_valid_sink_type(ok), "{ok}");
        }
        for bad in ["", "Git", "1s3", "a b", &"x".repeat(65)] {
            assert!(!is_valid_sink_type(bad), "{bad}");
        }
    }
}
