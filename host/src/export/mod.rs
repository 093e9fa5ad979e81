//! Exports: query results delivered to sinks. This module holds the engine's pure core, the
//! parts every sink shares whatever its backend (`../shared/reference/sink-semantics.md`):
//!
//! - [`envelope`]: the export envelope, canonical item order and checksum, and the size policy
//!   (parts under the cap, spill, or a terminal error; never a silent drop);
//! - [`policy`]: debounce, retry backoff with jitter, and the per-sink circuit breaker;
//! - [`retry`]: one part sent under the retry policy and the breaker;
//! - [`state`]: what each export last delivered to each sink, persisted in DuckDB so a restart
//!   resumes (and re-sends only what is pending);
//! - [`status`]: what the API shows of each export and sink, as enums of the wire's strings;
//! - [`sink`]: a configured sink (component, network policy, breaker, connection test);
//! - [`engine`]: runs exports: query, envelope, and each sink's delivery under the policy;
//! - `takeover`: a gateway that becomes a lake's writer takes the exports' state over.

pub mod engine;
pub mod envelope;
pub mod policy;
pub mod retry;
pub mod sink;
mod spans;
pub mod state;
pub mod status;
mod takeover;
