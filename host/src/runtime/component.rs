//! What tools and sinks share: reading and compiling a component file, one store builder (memory
//! limit, epoch deadline, cancellation), `describe` under one deadline, and how a wasmtime error
//! becomes a call error.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use super::Runtime;
use super::engine::CacheOutcome;

/// How long `describe` may take when a component is loaded, tool or sink.
pub const DESCRIBE_DEADLINE: Duration = Duration::from_secs(5);

pub use crate::oci::MAX_COMPONENT_BYTES;

/// A store state with a memory limit.
pub trait Limited: Send + 'static {
    fn limits(&mut self) -> &mut CallLimits;
}

/// Linear memory limits of one store, and what the call used: each memory may grow to
/// `memory_limit` bytes, and growing past it traps (rather than handing the guest an error it
/// may ignore).
#[derive(Debug)]
pub struct CallLimits {
    limit: usize,
    /// The largest size a memory of the store was created with or grew to, in bytes.
    pub peak: usize,
    /// A memory asked for more than the limit (the call then trapped).
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for CallLimits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes reached (asked for {desired})", self.limit);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// The limits of one store: `memory_limit` bytes per linear memory.
pub fn limits(memory_limit: usize) -> CallLimits {
    CallLimits { limit: memory_limit, peak: 0, hit: false }
}

/// A fresh store for one call (or one `describe`), with its memory limit and deadline. On every
/// epoch tick the store checks the deadline and `cancel` (set at the end of a drain) and
/// interrupts the guest when either says so; otherwise the guest yields to the executor, so a
/// busy component never holds a worker thread for more than a tick.
pub fn store<T: Limited>(engine: &Engine, state: T, deadline: Instant, cancel: Arc<AtomicBool>) -> Store<T> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| s.limits());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// How running a component ended badly, whatever its world.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It ran past its deadline.
    #[error("ran past its deadline of {0:?}")]
    Timeout(Duration),
    /// The gateway is shutting down and cancelled it.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// It trapped, hit its memory limit, or could not be instantiated.
    #[error("{0}")]
    Trap(String),
}

/// Classifies a wasmtime error from a call: an interrupt is the deadline (or, when `cancel` is
/// set, the drain), anything else a trap.
pub fn classify(err: wasmtime::Error, deadline: Duration, cancel: &AtomicBool) -> RunError {
    if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return if cancel.load(Ordering::Relaxed) { RunError::Cancelled } else { RunError::Timeout(deadline) };
    }
    RunError::Trap(format!("{err:?}"))
}

/// Reads a component file, refusing one over [`MAX_COMPONENT_BYTES`].
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(format!("{} is {} bytes; the limit is {MAX_COMPONENT_BYTES}", path.display(), meta.len()));
    }
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The SHA-256 of a component's bytes, hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Runtime {
    /// Compiles a component (through the artifact cache).
    pub(crate) fn compile(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        self.cache.load(self.engine.engine(), digest, bytes).context("not a valid WebAssembly component")
    }

    /// Runs a component's `describe` (instantiate and call, built by the caller on a store from
    /// [`store`] with the [`DESCRIBE_DEADLINE`]) to completion from synchronous code.
    pub(crate) fn describe<R: Send>(&self, call: impl Future<Output = wasmtime::Result<R>> + Send) -> anyhow::Result<R> {
        super::block_on(call).map_err(|e| match classify(e, DESCRIBE_DEADLINE, &AtomicBool::new(false)) {
            RunError::Timeout(_) => anyhow::anyhow!("describe ran past {DESCRIBE_DEADLINE:?}"),
            other => anyhow::anyhow!("describe failed: {other}"),
        })
    }

    /// A store for `describe`: the runtime's memory limit, the describe deadline, never cancelled.
    pub(crate) fn describe_store<T: Limited>(&self, state: T) -> Store<T> {
        store(self.engine.engine(), state, Instant::now() + DESCRIBE_DEADLINE, Arc::new(AtomicBool::new(false)))
    }
}
