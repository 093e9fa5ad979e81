//! `sluice.toml`: every setting, its default and what it is for. CLI flags override the file.
//!
//! Unknown keys are an error (a typo must not silently fall back to a default). Durations are
//! written like `30s`, `500ms`, `5m`; sizes like `64MiB`, `1GB`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

mod check;
mod lake;
mod supply;
mod units;
pub use units::{ByteSize, HumanDuration};
pub use lake::{Backend, LakeConfig, S3Config};
pub use supply::{OciSource, Rollout, SourceKind, TrustKey, matches_any};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and HTTP limits.
    pub server: ServerConfig,
    /// The DuckDB database.
    pub database: DatabaseConfig,
    /// Tool components.
    pub plugins: PluginsConfig,
    /// Bearer authentication.
    pub auth: AuthConfig,
    /// Per-bearer request limits.
    pub rate_limit: RateLimitConfig,
    /// In-flight caps.
    pub limits: LimitsConfig,
    /// Graceful shutdown.
    pub drain: DrainConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// OTLP metrics ingest.
    pub ingest: IngestConfig,
    /// The process's own log (stderr).
    pub log: LogConfig,
    /// OpenTelemetry traces (OTLP/HTTP).
    pub traces: crate::telemetry::TracesConfig,
    /// Sinks: where exports go (`[[sink]]`).
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkConfigEntry>,
    /// Exports: what goes there (`[[export]]`).
    #[serde(rename = "export")]
    pub exports: Vec<ExportConfigEntry>,
}

/// `[log]`: the process's log on stderr. `SLUICE_LOG` (an `EnvFilter`, default `info`) chooses
/// what is logged; `--log-format` (or `SLUICE_LOG_FORMAT`) overrides the format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal (and `NO_COLOR` is unset).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log shippers.
    Json,
}

/// `[[sink]]`: one configured sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfigEntry {
    /// The sink's name, used by exports and the API.
    pub name: String,
    /// The sink component (`.wasm`), e.g. `dist/sinks/http.wasm`.
    pub component: PathBuf,
    /// Settings handed to the component (`url`, `bucket`, ...). The hosts of URL-like values
    /// (and `host:port` values) are what the sink may connect to.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Secrets handed to the component: `"env:NAME"` (an environment variable) or
    /// `"file:/path"` (a file's content, trimmed). Never logged.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Allow loopback and private addresses (development, in-cluster services).
    #[serde(default)]
    pub allow_private: bool,
    /// Longest one delivery or probe may take.
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
    /// How long the sink's circuit breaker stays open (failing deliveries fast) after five
    /// transient failures in a row, before one trial delivery is let through.
    #[serde(default = "default_breaker_open_for")]
    pub breaker_open_for: HumanDuration,
    /// Run the sink's connection test when the gateway starts (the result shows in
    /// `GET /api/v2/sinks` as `connection`).
    #[serde(default)]
    pub test_on_start: bool,
}

fn default_breaker_open_for() -> HumanDuration {
    HumanDuration(DEFAULT_BREAKER_OPEN_FOR)
}

fn default_sink_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `[[export]]`: a read-only query delivered to sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfigEntry {
    /// The export's name.
    pub name: String,
    /// One read-only SELECT; each row becomes an item.
    pub sql: String,
    /// How often it runs; without one it runs only on `POST /api/v2/exports/<name>/run`.
    #[serde(default)]
    pub cadence: Option<HumanDuration>,
    /// The cluster the export is about (in the envelope and sink keys); `""` for all.
    #[serde(default)]
    pub cluster: String,
    /// Largest payload; larger exports are split into parts (or spilled).
    #[serde(default = "default_max_export_bytes")]
    pub max_export_bytes: ByteSize,
    /// An object-store sink (e.g. `s3`) to spill payloads to that a sink cannot take (over the
    /// cap and not splittable for it); that sink then gets a small pointer envelope instead.
    #[serde(default)]
    pub spill_to: Option<String>,
    /// The sinks it goes to.
    #[serde(rename = "sink")]
    pub sinks: Vec<ExportBinding>,
}

fn default_max_export_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_EXPORT_BYTES)
}

/// `[[export.sink]]`: one sink of an export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportBinding {
    /// A `[[sink]]` name.
    pub name: String,
    /// Unchanged data is not sent again to this sink within this interval (debounce).
    #[serde(default)]
    pub min_interval: Option<HumanDuration>,
}

/// `[auth]`: exactly one of `bearer_acl_file` and `token_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// YAML or JSON list of `{key_name, token | token_sha256, allowed_clusters}`; watched.
    pub bearer_acl_file: Option<PathBuf>,
    /// A file holding one token (all clusters); watched.
    pub token_file: Option<PathBuf>,
    /// How long a token removed from the file keeps working.
    pub rotation_grace: HumanDuration,
    /// `[auth.jwt]`: JWT bearers from identity providers.
    pub jwt: crate::auth::jwt::JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            bearer_acl_file: None,
            token_file: None,
            rotation_grace: HumanDuration(crate::auth::DEFAULT_ROTATION_GRACE),
            jwt: Default::default(),
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per bearer.
    pub requests_per_second: u32,
    /// Requests a bearer may make at once after being idle.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { requests_per_second: crate::ratelimit::DEFAULT_RPS, burst: crate::ratelimit::DEFAULT_BURST }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests of one bearer in flight at once; more get 429 `in_flight_cap`.
    pub max_in_flight_per_bearer: usize,
    /// Requests in flight in the process; more get 503 `in_flight_cap`.
    pub max_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_in_flight_per_bearer: 64, max_in_flight: 1024 }
    }
}

/// `[drain]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// After SIGTERM, how long in-flight requests may run before their plugin calls and DuckDB
    /// queries are cancelled.
    pub shutdown_deadline: HumanDuration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self { shutdown_deadline: HumanDuration(crate::drain::DEFAULT_SHUTDOWN_DEADLINE) }
    }
}

/// `[ingest]`: `POST /v1/metrics` (OTLP/HTTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body as sent (compressed or not); larger gets 413.
    pub max_body: ByteSize,
    /// Largest body once gunzipped; larger gets 400.
    pub max_uncompressed: ByteSize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_body: ByteSize(16 << 20), max_uncompressed: ByteSize(64 << 20) }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `stderr`, or a file path to append JSON lines to.
    pub destination: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { destination: "stderr".into() }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// API listener: `/api/*`, MCP, `/metrics`.
    pub listen: SocketAddr,
    /// Health listener: `/healthz`, `/readyz`, no auth.
    pub health_listen: SocketAddr,
    /// Serve plain HTTP. Allowed only on loopback addresses.
    pub insecure_no_tls: bool,
    /// TLS certificate chain (PEM). With `tls_key`, both listeners serve HTTPS; reloaded on change.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted; larger gets 413 `payload_too_large`.
    pub max_body: ByteSize,
    /// Largest request head (all header names and values); larger gets 431
    /// `request_header_fields_too_large`.
    pub max_header_bytes: ByteSize,
}

/// Default linear-memory limit of one call: generous for JSON shaping of query results, small
/// enough that a runaway tool cannot hurt the process.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

/// Default deadline of one call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Default number of calls running at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 64;

/// Default largest payload an export sends to a sink in one piece (1.5 MiB): bigger payloads
/// are split into parts, or spilled.
pub const DEFAULT_MAX_EXPORT_BYTES: usize = 1_572_864;

/// Default time an open sink circuit breaker fails calls fast.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);

/// Default [`ServerConfig::max_header_bytes`]: far above what browsers, Grafana or MCP clients
/// send (a few KiB), far below what would let one request hold much memory.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".parse().expect("valid address"),
            health_listen: "127.0.0.1:8080".parse().expect("valid address"),
            insecure_no_tls: false,
            tls_cert: None,
            tls_key: None,
            max_body: ByteSize(1 << 20),
            max_header_bytes: ByteSize(DEFAULT_MAX_HEADER_BYTES),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `file` (the DuckDB file at `path`, the default) or `ducklake` (`[database.ducklake]`).
    pub backend: lake::Backend,
    /// The lake of the `ducklake` backend.
    pub ducklake: lake::LakeConfig,
    /// The DuckDB file; created with the `events` table when missing.
    pub path: PathBuf,
    /// Read-only connections kept for tools and SQL.
    pub read_pool_size: usize,
    /// DuckDB's memory cap.
    pub max_memory: String,
    /// Longest any read-only query may run.
    pub query_timeout: HumanDuration,
    /// Most rows a read-only query may return.
    pub max_rows: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        let d = crate::db::DbOptions::default();
        Self {
            backend: lake::Backend::File,
            ducklake: lake::LakeConfig::default(),
            path: d.path,
            read_pool_size: d.read_pool_size,
            max_memory: d.max_memory,
            query_timeout: HumanDuration(d.query_timeout),
            max_rows: d.max_rows,
        }
    }
}

impl DatabaseConfig {
    /// The options [`crate::db::Database::open`] takes.
    pub fn to_options(&self) -> crate::db::DbOptions {
        crate::db::DbOptions {
            path: self.path.clone(),
            read_pool_size: self.read_pool_size,
            max_memory: self.max_memory.clone(),
            query_timeout: self.query_timeout.0,
            max_rows: self.max_rows,
            lake: (self.backend == lake::Backend::Ducklake).then(|| self.ducklake.to_options()),
        }
    }
}

/// `[plugins]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory of tool components (`*.wasm`), loaded at start and watched.
    pub dir: PathBuf,
    /// Where compiled components are cached (keyed by digest and engine settings).
    pub cache_dir: PathBuf,
    /// Watch `dir` and reload on change. SIGHUP and the admin endpoint reload regardless.
    pub watch: bool,
    /// Linear-memory limit of one call, unless the tool has an override.
    pub memory_limit: ByteSize,
    /// Deadline of one call, unless the tool has an override.
    pub deadline: HumanDuration,
    /// Tool calls running at once; more wait for a slot (bounded by their deadline).
    pub max_concurrent_calls: usize,
    /// Per-tool overrides, keyed by tool name.
    pub tools: BTreeMap<String, ToolOverride>,
    /// Digest pinning: file name (e.g. `fleet-cluster-summary.wasm`) → expected SHA-256 (hex).
    /// A pinned file whose digest differs is refused and never runs.
    pub pinned: BTreeMap<String, String>,
    /// Tool components pulled from OCI registries, by the name the plugin list shows.
    pub oci: BTreeMap<String, OciSource>,
    /// Keys allowed to sign components.
    pub trust: Vec<TrustKey>,
    /// Refuse a component of the plugins directory unless a trusted key signed it (`<file>.sig`).
    pub require_signature: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("dist/plugins"),
            cache_dir: PathBuf::from("sluice-cache"),
            watch: true,
            memory_limit: ByteSize(DEFAULT_MEMORY_LIMIT),
            deadline: HumanDuration(DEFAULT_DEADLINE),
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            tools: BTreeMap::new(),
            pinned: BTreeMap::new(),
            oci: BTreeMap::new(),
            trust: Vec::new(),
            require_signature: false,
        }
    }
}

/// `[plugins.tools."<name>"]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolOverride {
    /// This tool's deadline.
    pub deadline: Option<HumanDuration>,
    /// This tool's memory limit.
    pub memory_limit: Option<ByteSize>,
    /// Arguments of a smoke call a new version must answer (checked against its output schema)
    /// before it serves.
    pub smoke_args: Option<serde_json::Value>,
    /// How a new version takes over (canary share, promotion, automatic rollback).
    pub rollout: Option<Rollout>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.database.read_pool_size >= 1, "database.read_pool_size must be at least 1");
        anyhow::ensure!(self.plugins.max_concurrent_calls >= 1, "plugins.max_concurrent_calls must be at least 1");
        anyhow::ensure!(
            self.plugins.memory_limit.0 >= 1 << 20,
            "plugins.memory_limit must be at least 1MiB"
        );
        anyhow::ensure!(!self.plugins.deadline.0.is_zero(), "plugins.deadline must be more than 0s");
        anyhow::ensure!(
            !(self.auth.bearer_acl_file.is_some() && self.auth.token_file.is_some()),
            "auth.bearer_acl_file and auth.token_file are exclusive; configure one"
        );
        anyhow::ensure!(
            self.server.tls_cert.is_some() == self.server.tls_key.is_some(),
            "server.tls_cert and server.tls_key go together; set both (or neither)"
        );
        self.auth.jwt.check().map_err(anyhow::Error::msg)?;
        self.traces.check().map_err(anyhow::Error::msg)?;
        if self.database.backend == lake::Backend::Ducklake {
            self.database.ducklake.check().map_err(anyhow::Error::msg)?;
        }
        anyhow::ensure!(self.rate_limit.requests_per_second >= 1, "rate_limit.requests_per_second must be at least 1");
        anyhow::ensure!(self.rate_limit.burst >= 1, "rate_limit.burst must be at least 1");
        anyhow::ensure!(self.limits.max_in_flight_per_bearer >= 1, "limits.max_in_flight_per_bearer must be at least 1");
        anyhow::ensure!(self.limits.max_in_flight >= 1, "limits.max_in_flight must be at least 1");
        let mut names = std::collections::BTreeSet::new();
        for sink in &self.sinks {
            anyhow::ensure!(names.insert(sink.name.as_str()), "two [[sink]] entries are named {:?}", sink.name);
            for (key, source) in &sink.secrets {
                anyhow::ensure!(
                    source.starts_with("env:") || source.starts_with("file:"),
                    "sink {:?}: secret {key:?} must be \"env:NAME\" or \"file:/path\"",
                    sink.name
                );
            }
        }
        let mut exports = std::collections::BTreeSet::new();
        for export in &self.exports {
            anyhow::ensure!(exports.insert(export.name.as_str()), "two [[export]] entries are named {:?}", export.name);
            for b in &export.sinks {
                anyhow::ensure!(names.contains(b.name.as_str()), "export {:?} names sink {:?}, which no [[sink]] defines", export.name, b.name);
            }
            anyhow::ensure!(export.max_export_bytes.0 >= 4096, "export {:?}: max_export_bytes must be at least 4KiB", export.name);
            if let Some(spill) = &export.spill_to {
                anyhow::ensure!(names.contains(spill.as_str()), "export {:?} spills to sink {spill:?}, which no [[sink]] defines", export.name);
            }
        }
        self.plugins.validate_supply()?;
        for sink in &self.sinks {
            if let Some(name) = sink.component.to_str().and_then(|c| c.strip_prefix("oci:")) {
                anyhow::ensure!(
                    self.plugins.oci.get(name).is_some_and(|s| s.kind == SourceKind::Sink),
                    "sink {:?}: component \"oci:{name}\" names no [plugins.oci.\"{name}\"] with kind = \"sink\"",
                    sink.name
                );
            }
        }
        for (file, digest) in &self.plugins.pinned {
            anyhow::ensure!(
                digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                "plugins.pinned.\"{file}\" must be a SHA-256 in hex (64 characters), got {digest:?}"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_documents_the_defaults() {
        let example: Config = toml::from_str(include_str!("../../../examples/sluice.toml")).unwrap();
        example.validate().unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", example.server), format!("{:?}", d.server));
        assert_eq!(format!("{:?}", example.database), format!("{:?}", d.database));
        assert_eq!(format!("{:?}", example.ingest), format!("{:?}", d.ingest));
        assert_eq!(format!("{:?}", example.traces), format!("{:?}", d.traces));
        let (e, d) = (&example.plugins, &d.plugins);
        assert_eq!((&e.dir, &e.cache_dir, e.watch, e.memory_limit, e.deadline), (&d.dir, &d.cache_dir, d.watch, d.memory_limit, d.deadline));
        assert_eq!(e.max_concurrent_calls, d.max_concurrent_calls);
    }

    #[test]
    fn parses_a_full_file_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            r#"
            [server]
            listen = "127.0.0.1:9000"
            max_body = "2MiB"
            [plugins]
            deadline = "5s"
            memory_limit = "32MiB"
            [plugins.tools."fleet.cluster.run_analysis"]
            deadline = "60s"
            [plugins.pinned]
            "fleet-cluster-summary.wasm" = "0000000000000000000000000000000000000000000000000000000000000000"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.max_body.0, 2 << 20);
        assert_eq!(c.plugins.deadline.0, Duration::from_secs(5));
        assert_eq!(c.plugins.tools["fleet.cluster.run_analysis"].deadline.unwrap().0, Duration::from_secs(60));

        let err = toml::from_str::<Config>("[plugins]\ndeadlin = \"5s\"").unwrap_err();
        assert!(err.to_string().contains("deadlin"), "{err}");
        let err = toml::from_str::<Config>("[plugins]\ndeadline = \"5 parsecs\"").unwrap_err();
        assert!(err.to_string().contains("unit"), "{err}");
    }
}
