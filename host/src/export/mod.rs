//! Exports: query results delivered to sinks. This module holds the engine's pure core, the
//! parts every sink shares whatever its backend (`../shared/reference/sink-semantics.md`):
//!
//! - [`envelope`]: the export envelope, canonical item order and checksum, and the size policy
//!   (parts under the cap, spill, or a terminal error; never a silent drop);
//! - [`policy`]: debounce, retry backoff with jitter, and the per-sink circuit breaker;
//! - [`state`]: what each export last delivered to each sink, persisted in DuckDB so a restart
//!   resumes (and re-sends only what is pending).
//!
//! The scheduler, the sink world and the backends build on these (issue 5).

pub mod engine;
pub mod envelope;
pub mod policy;
pub mod state;
