//! Sluice: a secure, observable gateway in front of an embedded DuckDB, extensible with
//! WebAssembly components.
//!
//! - [`db`]: the DuckDB database and its read-only query path.
//! - [`runtime`]: the wasmtime engine, the hot-swappable tool registry and tool calls.
//! - [`calls`]: the application layer: one tool call from any transport (find, validate, scope,
//!   call, audit).
//! - [`http`]: the API and health routers, thin adapters over [`calls`].
//! - [`auth`], [`ratelimit`], [`drain`], [`audit`]: the front door.
//! - [`serve`]: wiring it together for `sluice serve`.
//! - [`demo`]: synthetic fleet data.

pub mod audit;
pub mod authoring;
pub mod auth;
pub mod caller;
pub mod calls;
pub mod config;
pub mod db;
pub mod demo;
pub mod dev;
pub mod drain;
pub mod export;
pub mod http;
pub mod ingest;
pub mod lake;
pub mod metrics;
pub mod oci;
pub mod publish;
pub mod ratelimit;
pub mod reload;
pub mod secret;
pub mod runtime;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod watch;
