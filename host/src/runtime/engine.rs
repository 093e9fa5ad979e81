//! The one wasmtime [`Engine`] of the process, its epoch ticker, and the on-disk cache of
//! compiled components.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the engine's epoch advances. A deadline is checked at this granularity: a call
/// overruns its deadline by at most about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Component instances that can be live at once. Each needs a pooling slot; calls beyond this
/// wait on the runtime's semaphore (`plugins.max_concurrent_calls` must not exceed it).
pub const POOL_COMPONENT_INSTANCES: u32 = 256;

/// Core instances per component instance (a Rust wasip2 component has a handful: the module,
/// shims and adapters), times the pool.
const POOL_CORE_INSTANCES: u32 = POOL_COMPONENT_INSTANCES * 8;

/// Bytes of each pool slot's memory and tables kept resident when an instance is dropped, instead
/// of being returned to the kernel. With Linux's PAGEMAP_SCAN (6.7+) only the pages a call
/// dirtied are reset, which makes a small tool's call 2-3x cheaper (docs/benchmarks.md); without
/// it the whole region would be `memset` on every call, which costs more than it saves.
const KEEP_RESIDENT_WITH_PAGEMAP_SCAN: usize = 2 << 20;

/// Guest stack size: enough for deep JSON recursion, small enough to trap runaway recursion.
const MAX_WASM_STACK: usize = 1 << 20;

/// Engine settings that come from configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The largest linear memory any call may have (the largest per-tool memory limit). Each
    /// pool slot is sized for it.
    pub max_memory: usize,
}

/// The engine and its ticker. Dropping it stops the ticker thread.
pub struct SluiceEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl SluiceEngine {
    /// Builds the engine: component model, pooling allocator, epoch interruption, and no
    /// component-model concurrency (tools are synchronous; leaving it on makes every host→guest
    /// call several times dearer).
    pub fn new(opts: &EngineOptions) -> anyhow::Result<Self> {
        let keep_resident = if PoolingAllocationConfig::is_pagemap_scan_available() {
            KEEP_RESIDENT_WITH_PAGEMAP_SCAN
        } else {
            0
        };
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_COMPONENT_INSTANCES)
            .total_core_instances(POOL_CORE_INSTANCES)
            .total_memories(POOL_COMPONENT_INSTANCES * 2)
            .total_tables(POOL_CORE_INSTANCES)
            .total_stacks(POOL_COMPONENT_INSTANCES)
            .max_memory_size(opts.max_memory)
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(MAX_WASM_STACK)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::Error::from(e).context("creating the wasmtime engine"))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sluice-epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .context("spawning the epoch ticker")?
        };
        Ok(Self { engine, stop, ticker: Some(ticker) })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks for a deadline, rounded up, at least one.
    pub fn ticks_for(deadline: Duration) -> u64 {
        (deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1)
    }
}

impl Drop for SluiceEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// Compiled components on disk: `<dir>/<engine hash>/<component sha256>.cwasm`. The engine hash
/// covers wasmtime's version and every setting that affects compiled code, so a stale artifact is
/// never loaded; writes go through a temporary file and a rename, so a crash never leaves a torn
/// artifact behind.
///
/// The directory must be writable only by the operator: loading an artifact trusts its contents
/// as much as the sluice binary itself.
pub struct ArtifactCache {
    dir: Option<PathBuf>,
}

/// Whether a component came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl ArtifactCache {
    /// A cache under `root`, or none (always compile) when `root` is `None` or cannot be created.
    pub fn new(engine: &Engine, root: Option<&Path>) -> Self {
        let dir = root.and_then(|root| {
            let mut h = ShaHasher(Sha256::new());
            engine.precompile_compatibility_hash().hash(&mut h);
            let dir = root.join(hex::encode(&h.0.finalize()[..12]));
            match std::fs::create_dir_all(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "Compiled-component cache disabled: cannot create its directory.");
                    None
                }
            }
        });
        Self { dir }
    }

    /// Compiles `bytes` (digest `digest`), or loads the compiled artifact when cached.
    pub fn load(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Miss));
        };
        let path = dir.join(format!("{digest}.cwasm"));
        // Read into memory rather than mmap the file: a cache file truncated or rewritten in place
        // while mapped would crash the process (SIGBUS) on next access.
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: the file was written by `precompile_component` of an engine with the same
            // compatibility hash (the directory name) and is keyed by the source's digest; the
            // cache directory is operator-owned (see the type's docs). wasmtime still checks the
            // header and rejects artifacts of another engine configuration.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Discarding an unreadable compiled component.");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let tmp = dir.join(format!(".{digest}.{}.tmp", std::process::id()));
        if let Err(e) = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), error = %e, "Could not cache a compiled component.");
        }
        // SAFETY: `compiled` was produced just above by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Miss))
    }
}

use std::hash::Hash as _;

/// Feeds `Hash` output into SHA-256, for a cache key that is stable across runs.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        // Not used: the digest is read with `finalize`.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
