//! End-to-end tests: the real components (built by `scripts/dev build` into `dist/`), real DuckDB,
//! the real router and, in `binary`, the real `sluice` binary.

mod architecture;
mod bad_input;
mod catalogue;
mod exports;
mod authoring;
mod binary;
mod common;
mod deploy;
mod front_door;
mod git;
mod hostile;
mod hot_swap;
mod jwt;
mod kafka;
mod lake;
mod lake_replicas;
mod mcp;
mod monitoring;
mod otlp;
#[path = "../support/moto.rs"]
mod moto;
#[path = "../support/oci_registry.rs"]
mod oci_registry;
#[path = "../support/pg_server.rs"]
mod pg_server;
mod postgres;
mod registry;
mod s3;
mod sinks;
mod sql;
mod status;
mod supply;
mod tenant;
mod tools;
mod traces;
