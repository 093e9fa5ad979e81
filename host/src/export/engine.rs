//! The export engine: runs an export's query, builds its envelope, and delivers it to each of
//! its sinks under the shared policy (debounce, size policy, retries with backoff, breaker),
//! recording per-sink status and persisting state after every attempt. One failing sink never
//! blocks the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::envelope::{EnvelopeMeta, Plan, SinkShape, SizeError, Snapshot, plan};
use super::policy::{Breaker, BreakerState, Delivered, Outcome, backoff, debounced};
use super::state::{self, SinkState};
use crate::config::{ExportConfigEntry, SinkConfigEntry};
use crate::db::RowLimit;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::sinks::{ErrorClass, ExportRequest, LoadedSink, NetPolicy, SinkCallError, SinkConfig, class_name};

/// Attempts per delivery before it is left pending (transient errors only).
pub const ATTEMPTS: u32 = 3;
/// First retry delay; doubles, with jitter.
pub const RETRY_BASE: Duration = Duration::from_millis(200);

/// A configured sink, loaded. Its component is swapped when the file changes (hot reload); a
/// delivery keeps the version it started with.
pub struct SinkHandle {
    pub entry: SinkConfigEntry,
    loaded: arc_swap::ArcSwap<LoadedSink>,
    policy: Arc<NetPolicy>,
    breaker: Mutex<Breaker>,
    /// The last connection test: `ConnectionVerified` true/false, latency, detail, when.
    connection: Mutex<Option<ConnectionTest>>,
}

/// A connection test's outcome, as `GET /api/v2/sinks` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionTest {
    pub verified: bool,
    pub latency_ms: u64,
    pub detail: String,
    pub at: String,
}

impl SinkHandle {
    /// The last connection test, if one ran.
    pub fn connection(&self) -> Option<ConnectionTest> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The component version in use now.
    pub fn loaded(&self) -> Arc<LoadedSink> {
        self.loaded.load_full()
    }

    /// Loads the component file again when its content changed; a component that fails to
    /// load leaves the working one in place. `Some(result)` when the file changed.
    fn reload(&self, runtime: &Runtime) -> Option<anyhow::Result<Arc<LoadedSink>>> {
        let bytes = std::fs::read(&self.entry.component).ok()?;
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if digest == self.loaded.load().digest {
            return None;
        }
        Some(runtime.load_sink(&self.entry.component).inspect(|new| self.loaded.store(new.clone())))
    }
    /// The component's configuration with secrets resolved now (from the environment or files).
    fn config(&self) -> anyhow::Result<SinkConfig> {
        let mut secrets = Vec::new();
        for (key, source) in &self.entry.secrets {
            let value = if let Some(var) = source.strip_prefix("env:") {
                std::env::var(var).with_context(|| format!("sink {}: secret {key}: environment variable {var} is not set", self.entry.name))?
            } else if let Some(path) = source.strip_prefix("file:") {
                std::fs::read_to_string(path)
                    .with_context(|| format!("sink {}: secret {key}: reading {path}", self.entry.name))?
                    .trim()
                    .to_owned()
            } else {
                anyhow::bail!("sink {}: secret {key} must be env:NAME or file:/path", self.entry.name)
            };
            secrets.push((key.clone(), value));
        }
        Ok(SinkConfig {
            name: self.entry.name.clone(),
            settings: self.entry.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            secrets,
        })
    }
}

/// One sink's line in an export's status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkExportStatus {
    pub sink: String,
    /// `Exported`, `Debounced`, `ExportFailed`, or `Pending` before the first run.
    pub synced: &'static str,
    pub message: String,
    pub last_export_time: Option<String>,
    pub last_checksum: Option<String>,
    pub last_error: Option<ErrorStatus>,
    pub breaker: &'static str,
    /// The component the last delivery ran on: `type@version sha256:<first 16 hex digits>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

/// A classified error, as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorStatus {
    pub class: &'static str,
    pub message: String,
}

/// An export's status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    pub name: String,
    /// `Synced`, `PartiallySynced`, `Degraded`, or `NeverRun`.
    pub condition: &'static str,
    pub generation: u64,
    pub checksum: Option<String>,
    pub item_count: Option<usize>,
    pub last_run: Option<String>,
    /// Warnings of the last run that are not failures: `ExportShardWarning` (many items: shard
    /// the export, e.g. by cluster) and `ExportSizeWarning` (a payload near the cap).
    pub warnings: Vec<String>,
    pub sink_exports: Vec<SinkExportStatus>,
}

struct ExportRuntime {
    entry: ExportConfigEntry,
    /// Serialises runs of one export.
    running: tokio::sync::Mutex<()>,
    status: Mutex<ExportStatus>,
}

/// The engine: configured sinks and exports, their state and status.
pub struct ExportEngine {
    runtime: Arc<Runtime>,
    metrics: Metrics,
    sinks: BTreeMap<String, Arc<SinkHandle>>,
    exports: BTreeMap<String, Arc<ExportRuntime>>,
    /// Per (export, sink), as persisted.
    state: Mutex<BTreeMap<(String, String), SinkState>>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn micros_rfc3339(us: i64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64))
}

impl ExportEngine {
    /// Loads every configured sink component and the persisted state. A sink that fails to load
    /// is an error naming it: exports must not silently lose a destination.
    pub fn new(runtime: Arc<Runtime>, metrics: Metrics, sinks: &[SinkConfigEntry], exports: &[ExportConfigEntry]) -> anyhow::Result<Self> {
        let mut handles = BTreeMap::new();
        for entry in sinks {
            let loaded = runtime.load_sink(&entry.component).with_context(|| format!("loading sink {}", entry.name))?;
            let urls: Vec<&str> = entry.settings.values().map(String::as_str).collect();
            let policy = Arc::new(NetPolicy::for_urls(urls, entry.allow_private));
            handles.insert(
                entry.name.clone(),
                Arc::new(SinkHandle {
                    entry: entry.clone(),
                    loaded: arc_swap::ArcSwap::new(loaded),
                    policy,
                    breaker: Mutex::new(Breaker::open_for(entry.breaker_open_for.0)),
                    connection: Mutex::new(None),
                }),
            );
        }
        for e in exports {
            if let Some(spill) = &e.spill_to {
                let sink = handles.get(spill).with_context(|| format!("export {}: no sink named {spill:?} to spill to", e.name))?;
                anyhow::ensure!(
                    sink.loaded().info.capabilities.object_store,
                    "export {}: sink {spill} ({}) is not an object store and cannot take spills",
                    e.name,
                    sink.loaded().info.sink_type
                );
            }
        }
        let persisted = state::load_all(runtime.db())?;
        let state: BTreeMap<(String, String), SinkState> =
            persisted.into_iter().map(|s| ((s.export.clone(), s.sink.clone()), s)).collect();
        let exports = exports
            .iter()
            .map(|e| {
                let sink_exports = e
                    .sinks
                    .iter()
                    .map(|b| {
                        let s = state.get(&(e.name.clone(), b.name.clone()));
                        SinkExportStatus {
                            sink: b.name.clone(),
                            synced: if s.is_some_and(|s| s.pending) { "ExportFailed" } else { "Pending" },
                            message: if s.is_some() { "state restored at start".into() } else { "not run yet".into() },
                            last_export_time: s.and_then(|s| s.last_success_micros).map(micros_rfc3339),
                            last_checksum: s.and_then(|s| s.checksum.clone()),
                            last_error: s.and_then(|s| s.last_error.clone()).map(|(c, m)| ErrorStatus {
                                class: match c.as_str() {
                                    "terminal" => "terminal",
                                    "forbidden" => "forbidden",
                                    _ => "transient",
                                },
                                message: m,
                            }),
                            breaker: "closed",
                            component: None,
                        }
                    })
                    .collect();
                let generation = e.sinks.iter().filter_map(|b| state.get(&(e.name.clone(), b.name.clone()))).map(|s| s.generation).max().unwrap_or(0);
                let status = ExportStatus {
                    name: e.name.clone(),
                    condition: "NeverRun",
                    generation,
                    checksum: None,
                    item_count: None,
                    last_run: None,
                    warnings: Vec::new(),
                    sink_exports,
                };
                (e.name.clone(), Arc::new(ExportRuntime { entry: e.clone(), running: tokio::sync::Mutex::new(()), status: Mutex::new(status) }))
            })
            .collect();
        Ok(Self { runtime, metrics, sinks: handles, exports, state: Mutex::new(state) })
    }

    /// Loads every sink component whose file changed; one that fails to load keeps the working
    /// version. Deliveries under way finish on the version they started with.
    pub fn reload_sinks(&self) {
        for sink in self.sinks.values() {
            let file = sink.entry.component.display().to_string();
            match sink.reload(&self.runtime) {
                None => {}
                Some(Ok(new)) => {
                    self.metrics.plugin_reload(&file, true);
                    tracing::info!(sink = %sink.entry.name, r#type = %new.info.sink_type, version = %new.info.version, digest = %new.digest, "Sink component reloaded.");
                }
                Some(Err(e)) => {
                    self.metrics.plugin_reload(&file, false);
                    tracing::error!(sink = %sink.entry.name, file, error = %format!("{e:#}"), "Sink component failed to load; the previous version stays in use.");
                }
            }
        }
    }

    /// Watches the sink components' files and reloads on change, until the returned watcher is
    /// dropped.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
        let files: Vec<std::path::PathBuf> = self.sinks.values().map(|s| s.entry.component.clone()).collect();
        if files.is_empty() {
            return Ok(None);
        }
        let dirs: Vec<std::path::PathBuf> = files.iter().map(|f| crate::watch::parent_dir(f)).collect();
        let names: Vec<std::ffi::OsString> = files.iter().filter_map(|f| f.file_name().map(ToOwned::to_owned)).collect();
        let engine = Arc::downgrade(self);
        crate::watch::watch(
            "sluice-sink-reloader",
            &dirs,
            move |p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)),
            crate::runtime::WATCH_DEBOUNCE,
            move || {
                let Some(engine) = engine.upgrade() else { return false };
                engine.reload_sinks();
                true
            },
        )
        .map(Some)
    }

    /// The configured sinks.
    pub fn sinks(&self) -> impl Iterator<Item = &Arc<SinkHandle>> {
        self.sinks.values()
    }

    /// A sink by name.
    pub fn sink(&self, name: &str) -> Option<&Arc<SinkHandle>> {
        self.sinks.get(name)
    }

    /// Every export's status.
    pub fn statuses(&self) -> Vec<ExportStatus> {
        self.exports.values().map(|e| self.status_of(e)).collect()
    }

    /// One export's status.
    pub fn status(&self, name: &str) -> Option<ExportStatus> {
        self.exports.get(name).map(|e| self.status_of(e))
    }

    fn status_of(&self, e: &ExportRuntime) -> ExportStatus {
        let mut s = e.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = Instant::now();
        for se in &mut s.sink_exports {
            if let Some(h) = self.sinks.get(&se.sink) {
                se.breaker = h.breaker.lock().unwrap_or_else(|p| p.into_inner()).state(now).as_str();
            }
        }
        s
    }

    /// Exports with a delivery left pending (failed, or cut off by a restart): run them at start.
    pub fn pending(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.exports
            .values()
            .filter(|e| e.entry.sinks.iter().any(|b| state.get(&(e.entry.name.clone(), b.name.clone())).is_some_and(|s| s.pending)))
            .map(|e| e.entry.name.clone())
            .collect()
    }

    /// Exports with a cadence, and theirs.
    pub fn scheduled(&self) -> Vec<(String, Duration)> {
        self.exports.values().filter_map(|e| e.entry.cadence.map(|c| (e.entry.name.clone(), c.0))).collect()
    }

    /// Runs a sink's connection test: `(verified, latency, detail or error)`.
    pub async fn probe(&self, sink: &SinkHandle) -> (bool, Duration, String) {
        let started = Instant::now();
        let config = match sink.config() {
            Ok(c) => c,
            Err(e) => return (false, started.elapsed(), format!("{e:#}")),
        };
        let loaded = sink.loaded();
        let result = self.runtime.sink_probe(&loaded, &config, sink.policy.clone(), sink.entry.timeout.0).await;
        let ok = result.is_ok();
        self.metrics.sink_connection_test(&loaded.info.sink_type, ok);
        let detail = match result {
            Ok(d) => d,
            Err(e) => e.to_string(),
        };
        let latency = started.elapsed();
        *sink.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(ConnectionTest {
            verified: ok,
            latency_ms: latency.as_millis() as u64,
            detail: detail.clone(),
            at: rfc3339(SystemTime::now()),
        });
        (ok, latency, detail)
    }

    /// Runs the connection test of every sink configured with `test_on_start`, in the
    /// background; a sink that fails it is reported (status, log, metric) and stays configured.
    pub fn test_on_start(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        for sink in self.sinks.values().filter(|s| s.entry.test_on_start) {
            let (engine, sink) = (self.clone(), sink.clone());
            handle.spawn(async move {
                let (ok, latency, detail) = engine.probe(&sink).await;
                if ok {
                    tracing::info!(sink = %sink.entry.name, latency_ms = latency.as_millis() as u64, %detail, "Sink connection verified.");
                } else {
                    tracing::warn!(sink = %sink.entry.name, %detail, "Sink connection test failed; its exports will fail until it is reachable.");
                }
            });
        }
    }

    /// Runs an export now; returns its status afterwards. `None`: no such export.
    pub async fn run(&self, name: &str) -> Option<anyhow::Result<ExportStatus>> {
        let export = self.exports.get(name)?.clone();
        let _one_at_a_time = export.running.lock().await;
        Some(self.run_locked(&export).await.map(|()| self.status_of(&export)))
    }

    async fn run_locked(&self, export: &ExportRuntime) -> anyhow::Result<()> {
        let entry = &export.entry;
        let db = self.runtime.db().clone();
        let sql = entry.sql.clone();
        let max_rows = db.options().max_rows;
        let result = tokio::task::spawn_blocking(move || db.query_read_only(&sql, &[], RowLimit::Cap, None))
            .await
            .context("the export query task failed")?
            .map_err(|e| anyhow::anyhow!("export {}: the query failed: {e} (at most {max_rows} rows)", entry.name))?;
        let items: Vec<Value> = result
            .rows
            .iter()
            .map(|row| {
                Value::Object(result.columns.iter().zip(row).map(|((name, _), v)| (name.clone(), v.to_json())).collect())
            })
            .collect();
        let snapshot = Snapshot::new(&items);

        // A new generation whenever the data changed since the last run.
        let generation = {
            let mut status = export.status.lock().unwrap_or_else(|p| p.into_inner());
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let last = entry
                .sinks
                .iter()
                .filter_map(|b| state.get(&(entry.name.clone(), b.name.clone())))
                .max_by_key(|s| s.generation);
            let same = last.is_some_and(|s| {
                let data = Some(snapshot.checksum.as_str());
                s.attempted_checksum.as_deref().or(s.checksum.as_deref()) == data
            })
                || status.checksum.as_deref() == Some(snapshot.checksum.as_str());
            let g = if same { status.generation.max(last.map_or(0, |s| s.generation)) } else { status.generation.max(last.map_or(0, |s| s.generation)) + 1 };
            status.generation = g;
            status.checksum = Some(snapshot.checksum.clone());
            status.item_count = Some(snapshot.items.len());
            status.last_run = Some(rfc3339(SystemTime::now()));
            status.warnings.clear();
            if snapshot.items.len() >= super::envelope::SHARD_WARN_ITEMS {
                status.warnings.push(format!(
                    "ExportShardWarning: {} items (warning from {}); consider splitting the export, e.g. by cluster",
                    snapshot.items.len(),
                    super::envelope::SHARD_WARN_ITEMS
                ));
            }
            let bytes = snapshot.items.iter().map(|i| i.len() + 1).sum::<usize>();
            if bytes >= super::envelope::SPILL_WARN_BYTES {
                status.warnings.push(format!(
                    "ExportSizeWarning: about {bytes} bytes of items (warning from {}); the cap is {}",
                    super::envelope::SPILL_WARN_BYTES,
                    entry.max_export_bytes.0
                ));
            }
            g
        };
        let exported_at = rfc3339(SystemTime::now());
        let meta = EnvelopeMeta { export: &entry.name, cluster: &entry.cluster, generation, exported_at: &exported_at };

        let mut lines = Vec::new();
        for binding in &entry.sinks {
            let line = match self.sinks.get(&binding.name) {
                Some(sink) => self.deliver(entry, binding.min_interval.map(|d| d.0), sink, &snapshot, &meta).await,
                None => failed(&binding.name, "terminal", format!("no sink named {:?}", binding.name)),
            };
            lines.push(line);
        }
        let mut status = export.status.lock().unwrap_or_else(|p| p.into_inner());
        status.condition = if lines.iter().any(|l| l.last_error.as_ref().is_some_and(|e| e.class != "transient") && l.synced == "ExportFailed") {
            "Degraded"
        } else if lines.iter().all(|l| l.synced == "Exported") {
            "Synced"
        } else {
            "PartiallySynced"
        };
        status.sink_exports = lines;
        Ok(())
    }

    /// Delivers a snapshot to one sink under the policy; records state and metrics. The whole
    /// delivery (all its parts and retries) runs on the component version loaded when it starts.
    async fn deliver(
        &self,
        entry: &ExportConfigEntry,
        min_interval: Option<Duration>,
        sink: &SinkHandle,
        snapshot: &Snapshot,
        meta: &EnvelopeMeta<'_>,
    ) -> SinkExportStatus {
        let loaded = sink.loaded();
        let mut line = self.deliver_on(&loaded, entry, min_interval, sink, snapshot, meta).await;
        line.component = Some(format!("{}@{} sha256:{}", loaded.info.sink_type, loaded.info.version, &loaded.digest[..16]));
        line
    }

    async fn deliver_on(
        &self,
        loaded: &LoadedSink,
        entry: &ExportConfigEntry,
        min_interval: Option<Duration>,
        sink: &SinkHandle,
        snapshot: &Snapshot,
        meta: &EnvelopeMeta<'_>,
    ) -> SinkExportStatus {
        let key = (entry.name.clone(), sink.entry.name.clone());
        let sink_type = loaded.info.sink_type.clone();
        let caps = loaded.info.capabilities;
        let previous = self.state.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let prev_delivered = previous.as_ref().and_then(|p| {
            let at = p.last_success_micros?;
            let ago = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_micros() as i64 - at;
            Some(Delivered {
                checksum: p.checksum.clone()?,
                generation: p.generation,
                at: Instant::now().checked_sub(Duration::from_micros(ago.max(0) as u64))?,
            })
        });
        let base = |synced, message: String| SinkExportStatus {
            sink: sink.entry.name.clone(),
            synced,
            message,
            last_export_time: previous.as_ref().and_then(|p| p.last_success_micros).map(micros_rfc3339),
            last_checksum: previous.as_ref().and_then(|p| p.checksum.clone()),
            last_error: None,
            breaker: "closed",
            component: None,
        };
        if let Some(interval) = min_interval
            && previous.as_ref().is_some_and(|p| !p.pending)
            && debounced(prev_delivered.as_ref(), &snapshot.checksum, meta.generation, Instant::now(), interval)
        {
            self.metrics.export_debounced(&entry.name);
            return base("Debounced", format!("unchanged and delivered within {interval:?}"));
        }
        if snapshot.items.is_empty() && caps.stream && !caps.supports_delete {
            return base("Exported", "nothing to send to an event sink".into());
        }
        let (planned, warnings) = plan(
            snapshot,
            meta,
            entry.max_export_bytes.0,
            SinkShape { accepts_parts: caps.accepts_parts, spill_available: entry.spill_to.is_some() },
        );
        if warnings.large {
            self.metrics.export_spill_warn();
        }
        let parts = match planned {
            Ok(Plan::Parts(parts)) => parts,
            Ok(Plan::Spill(whole)) => match self.spill(entry, snapshot, meta, &whole).await {
                Ok(pointer) => vec![pointer],
                Err(message) => {
                    self.metrics.sink_error(&sink_type, "spill_required");
                    return self.record_failure(key, previous, meta.generation, &snapshot.checksum, "transient", message);
                }
            },
            Err(SizeError::SpillRequired { .. }) => {
                let msg = format!("the payload is over {} bytes and {} takes only whole payloads; bind an object-store sink to spill to", entry.max_export_bytes.0, sink.entry.name);
                self.metrics.sink_error(&sink_type, "spill_required");
                return self.record_failure(key, previous, meta.generation, &snapshot.checksum, "terminal", msg);
            }
            Err(e @ SizeError::PayloadTooLarge { .. }) => {
                self.metrics.sink_error(&sink_type, "payload_too_large");
                return self.record_failure(key, previous, meta.generation, &snapshot.checksum, "terminal", e.to_string());
            }
        };
        let config = match sink.config() {
            Ok(c) => c,
            Err(e) => {
                self.metrics.sink_error(&sink_type, "terminal");
                return self.record_failure(key, previous, meta.generation, &snapshot.checksum, "terminal", format!("{e:#}"));
            }
        };
        // In flight: a gateway killed from here on finds this delivery pending when it starts
        // again and resumes it (see `ExportEngine::pending`); sinks are idempotent per generation.
        {
            let prev = previous.clone().unwrap_or_default();
            self.persist(
                key.clone(),
                SinkState {
                    export: key.0.clone(),
                    sink: key.1.clone(),
                    generation: meta.generation,
                    pending: true,
                    attempted_checksum: Some(snapshot.checksum.clone()),
                    ..prev
                },
            );
        }
        let started = Instant::now();
        let mut last_location = String::new();
        for part in &parts {
            let request = ExportRequest {
                export: entry.name.clone(),
                cluster: entry.cluster.clone(),
                generation: meta.generation,
                checksum: snapshot.checksum.clone(),
                part_index: part.index as u32,
                part_total: part.total as u32,
                item_count: part.item_count as u32,
                format: "json".into(),
                payload: part.json.as_bytes().to_vec(),
            };
            let mut attempt = 0;
            loop {
                let allowed = sink.breaker.lock().unwrap_or_else(|p| p.into_inner()).allow(Instant::now());
                let result = match allowed {
                    Err(open) => Err((ErrorClass::Transient, open.to_string())),
                    Ok(()) => {
                        let r = self.runtime.sink_export(loaded, &config, &request, sink.policy.clone(), sink.entry.timeout.0).await;
                        let outcome = match &r {
                            Ok(_) => Outcome::Success,
                            Err(e) if e.class() == ErrorClass::Transient => Outcome::Transient,
                            Err(_) => Outcome::Permanent,
                        };
                        let state = {
                            let mut breaker = sink.breaker.lock().unwrap_or_else(|p| p.into_inner());
                            breaker.record(outcome, Instant::now());
                            breaker.state(Instant::now())
                        };
                        self.metrics.sink_breaker(&sink.entry.name, state.as_str());
                        r.map_err(|e: SinkCallError| (e.class(), e.to_string()))
                    }
                };
                match result {
                    Ok(receipt) => {
                        last_location = receipt.location;
                        self.metrics.export_bytes(&sink_type, part.json.len());
                        break;
                    }
                    Err((class, message)) => {
                        let reason = class_name(class);
                        self.metrics.sink_error(&sink_type, reason);
                        attempt += 1;
                        if class != ErrorClass::Transient || attempt >= ATTEMPTS || allowed.is_err() {
                            return self.record_failure(key, previous, meta.generation, &snapshot.checksum, reason, message);
                        }
                        tokio::time::sleep(backoff(attempt - 1, RETRY_BASE, Duration::from_secs(30), jitter())).await;
                    }
                }
            }
        }
        self.metrics.export_duration(&sink_type, started.elapsed());
        let now_us = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let state = SinkState {
            export: key.0.clone(),
            sink: key.1.clone(),
            generation: meta.generation,
            checksum: Some(snapshot.checksum.clone()),
            last_success_micros: Some(now_us),
            last_error: None,
            pending: false,
            attempted_checksum: Some(snapshot.checksum.clone()),
        };
        self.persist(key, state);
        SinkExportStatus {
            sink: sink.entry.name.clone(),
            synced: "Exported",
            message: format!("{} item(s) in {} part(s) to {last_location}", snapshot.items.len(), parts.len()),
            last_export_time: Some(micros_rfc3339(now_us)),
            last_checksum: Some(snapshot.checksum.clone()),
            last_error: None,
            breaker: "closed",
            component: None,
        }
    }

    /// Stores a whole payload in the export's spill sink and returns the pointer envelope to
    /// send instead: the same head, no items, and where the payload went.
    async fn spill(
        &self,
        entry: &ExportConfigEntry,
        snapshot: &Snapshot,
        meta: &EnvelopeMeta<'_>,
        whole: &super::envelope::Part,
    ) -> Result<super::envelope::Part, String> {
        let name = entry.spill_to.as_deref().ok_or("no spill sink")?;
        let store = self.sinks.get(name).ok_or_else(|| format!("no sink named {name:?} to spill to"))?;
        let config = store.config().map_err(|e| format!("{e:#}"))?;
        let request = ExportRequest {
            export: entry.name.clone(),
            cluster: entry.cluster.clone(),
            generation: meta.generation,
            checksum: snapshot.checksum.clone(),
            part_index: 0,
            part_total: 1,
            item_count: whole.item_count as u32,
            format: "json".into(),
            payload: whole.json.as_bytes().to_vec(),
        };
        let loaded = store.loaded();
        let receipt = self
            .runtime
            .sink_export(&loaded, &config, &request, store.policy.clone(), store.entry.timeout.0)
            .await
            .map_err(|e| format!("spilling to {name} failed: {e}"))?;
        self.metrics.export_bytes(&loaded.info.sink_type, whole.json.len());
        let pointer = serde_json::json!({
            "schemaVersion": super::envelope::SCHEMA_VERSION,
            "export": meta.export,
            "checksum": snapshot.checksum,
            "generation": meta.generation,
            "partIndex": 0,
            "partTotal": 1,
            "itemCount": whole.item_count,
            "exportedAt": meta.exported_at,
            "cluster": meta.cluster,
            "spilled": {"sink": name, "location": receipt.location, "bytes": whole.json.len()},
            "items": [],
        });
        Ok(super::envelope::Part { index: 0, total: 1, item_count: whole.item_count, json: pointer.to_string() })
    }

    fn persist(&self, key: (String, String), state: SinkState) {
        if let Err(e) = state::save(self.runtime.db(), &state) {
            tracing::error!(export = %key.0, sink = %key.1, error = %format!("{e:#}"), "Cannot persist export state.");
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).insert(key, state);
    }

    fn record_failure(
        &self,
        key: (String, String),
        previous: Option<SinkState>,
        generation: u64,
        attempted: &str,
        class: &'static str,
        message: String,
    ) -> SinkExportStatus {
        let sink = key.1.clone();
        tracing::warn!(export = %key.0, sink = %sink, class, error = %message, "Export to a sink failed.");
        let prev = previous.unwrap_or_default();
        let state = SinkState {
            export: key.0.clone(),
            sink: key.1.clone(),
            generation,
            checksum: prev.checksum.clone(),
            last_success_micros: prev.last_success_micros,
            last_error: Some((class.to_owned(), message.clone())),
            pending: true,
            attempted_checksum: Some(attempted.to_owned()),
        };
        self.persist(key, state);
        SinkExportStatus {
            last_export_time: prev.last_success_micros.map(micros_rfc3339),
            last_checksum: prev.checksum,
            ..failed(&sink, class, message)
        }
    }
}

fn failed(sink: &str, class: &'static str, message: String) -> SinkExportStatus {
    SinkExportStatus {
        sink: sink.to_owned(),
        synced: "ExportFailed",
        message: message.clone(),
        last_export_time: None,
        last_checksum: None,
        last_error: Some(ErrorStatus { class, message }),
        breaker: BreakerState::Closed.as_str(),
        component: None,
    }
}

/// A uniform draw in [0, 1) for retry jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
