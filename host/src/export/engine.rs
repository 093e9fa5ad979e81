//! The export engine: runs an export's query, builds its envelope, and delivers it to each of
//! its sinks under the shared policy (debounce, size policy, retries with backoff, breaker),
//! recording per-sink status and persisting state after every attempt. One failing sink never
//! blocks the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::Value;
use tracing::Instrument as _;

use super::envelope::{EnvelopeMeta, Plan, SinkShape, SizeError, Snapshot, plan};
use super::policy::{Delivered, debounced};
use super::retry::{PartFailure, RetryPolicy, TryEvent, send_part};
pub use super::sink::{ConnectionTest, SinkHandle, SinkReload};
use super::state::{self, SinkState};
pub use super::status::{Condition, ErrorStatus, ExportStatus, FailureClass, SinkExportStatus, Synced};
use super::status::{micros_rfc3339, rfc3339};
use crate::config::{ExportConfigEntry, SinkConfigEntry};
use crate::db::{Database, RowLimit};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::sinks::{ExportRequest, LoadedSink, SinkCallError, SinkConfig, class_name};

pub(super) struct ExportRuntime {
    pub(super) entry: ExportConfigEntry,
    /// Serialises runs of one export.
    running: tokio::sync::Mutex<()>,
    pub(super) status: Mutex<ExportStatus>,
}

/// One delivery of a snapshot to one sink, and what was known of that binding before it.
struct Delivery<'a> {
    entry: &'a ExportConfigEntry,
    sink: &'a SinkHandle,
    loaded: &'a LoadedSink,
    snapshot: &'a Snapshot,
    meta: &'a EnvelopeMeta<'a>,
    /// (export, sink)
    key: (String, String),
    previous: Option<SinkState>,
}

/// The engine: configured sinks and exports, their state and status.
pub struct ExportEngine {
    runtime: Arc<Runtime>,
    /// What the exports' queries read, and where their state is kept.
    pub(super) db: Database,
    metrics: Metrics,
    sinks: BTreeMap<String, Arc<SinkHandle>>,
    pub(super) exports: BTreeMap<String, Arc<ExportRuntime>>,
    /// Per (export, sink), as persisted.
    pub(super) state: Mutex<BTreeMap<(String, String), SinkState>>,
}

impl ExportEngine {
    /// Loads every configured sink component and the persisted state. A sink that fails to load
    /// is an error naming it: exports must not silently lose a destination.
    pub fn new(
        runtime: Arc<Runtime>,
        db: Database,
        metrics: Metrics,
        sinks: &[SinkConfigEntry],
        exports: &[ExportConfigEntry],
    ) -> anyhow::Result<Self> {
        let mut handles = BTreeMap::new();
        for entry in sinks {
            let loaded = runtime.load_sink(&entry.component).with_context(|| format!("loading sink {}", entry.name))?;
            handles.insert(entry.name.clone(), Arc::new(SinkHandle::new(entry, loaded, &runtime)));
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
        let persisted = state::load_all(&db)?;
        let state: BTreeMap<(String, String), SinkState> =
            persisted.into_iter().map(|s| ((s.export.clone(), s.sink.clone()), s)).collect();
        let exports = exports
            .iter()
            .map(|e| {
                let sink_exports = e
                    .sinks
                    .iter()
                    .map(|b| SinkExportStatus::restored(&b.name, state.get(&(e.name.clone(), b.name.clone()))))
                    .collect();
                let generation = e.sinks.iter().filter_map(|b| state.get(&(e.name.clone(), b.name.clone()))).map(|s| s.generation).max().unwrap_or(0);
                let status = ExportStatus {
                    name: e.name.clone(),
                    condition: Condition::NeverRun,
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
        Ok(Self { runtime, db, metrics, sinks: handles, exports, state: Mutex::new(state) })
    }

    /// Loads again each sink component whose file changed; a component that fails to load
    /// leaves the previous version in use. Reports the sinks whose file changed.
    pub fn reload_sinks(&self) -> Vec<SinkReload> {
        let mut report = Vec::new();
        for sink in self.sinks.values() {
            let file = sink.entry.component.display().to_string();
            let before = sink.loaded();
            let outcome = match sink.reload(&self.runtime) {
                None => continue,
                Some(Ok(new)) => {
                    self.metrics.plugin_reload(&file, true);
                    // The replaced version's series go unless another sink still runs it.
                    let (kind, version) = (&before.info.sink_type, &before.info.version);
                    let in_use = self.sinks.values().any(|s| {
                        let l = s.loaded();
                        &l.info.sink_type == kind && &l.info.version == version
                    });
                    if !in_use && (kind, version) != (&new.info.sink_type, &new.info.version) {
                        self.metrics.forget_sink_version(kind, version);
                    }
                    tracing::info!(sink = %sink.entry.name, r#type = %new.info.sink_type, version = %new.info.version, digest = %new.digest, "Sink component reloaded.");
                    Ok(format!("{}@{} sha256:{}", new.info.sink_type, new.info.version, new.digest))
                }
                Some(Err(e)) => {
                    self.metrics.plugin_reload(&file, false);
                    tracing::error!(sink = %sink.entry.name, file, error = %format!("{e:#}"), "Sink component failed to load; the previous version stays in use.");
                    Err(format!("{e:#}"))
                }
            };
            let (component, error) = match outcome {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e)),
            };
            report.push(SinkReload { sink: sink.entry.name.clone(), file, component, error });
        }
        report
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
                se.breaker = h.breaker.lock().unwrap_or_else(|p| p.into_inner()).state(now);
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
        sink.probe(&self.runtime, &self.metrics).await
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
        let span = super::spans::export(name);
        let result = self.run_locked(&export).instrument(span.clone()).await;
        if result.is_err() && !span.is_none() {
            span.record("otel.status_code", "error");
        }
        Some(result.map(|()| self.status_of(&export)))
    }

    async fn run_locked(&self, export: &ExportRuntime) -> anyhow::Result<()> {
        let entry = &export.entry;
        let db = self.db.clone();
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
            status.warnings = super::status::warnings(&snapshot, entry.max_export_bytes.0);
            g
        };
        super::spans::record_run(&tracing::Span::current(), generation, snapshot.items.len());
        let exported_at = rfc3339(SystemTime::now());
        let meta = EnvelopeMeta { export: &entry.name, cluster: &entry.cluster, generation, exported_at: &exported_at };

        let mut lines = Vec::new();
        for binding in &entry.sinks {
            let line = match self.sinks.get(&binding.name) {
                Some(sink) => self.deliver(entry, binding.min_interval.map(|d| d.0), sink, &snapshot, &meta).await,
                None => SinkExportStatus::failed(&binding.name, FailureClass::Terminal, format!("no sink named {:?}", binding.name)),
            };
            lines.push(line);
        }
        let mut status = export.status.lock().unwrap_or_else(|p| p.into_inner());
        status.condition = Condition::of(&lines);
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
        let span = super::spans::delivery(&sink.entry.name, &loaded.info.sink_type);
        let mut line = self.deliver_on(&loaded, entry, min_interval, sink, snapshot, meta).instrument(span.clone()).await;
        super::spans::record_delivery(&span, &line);
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
        let previous = self.state.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let d = Delivery { entry, sink, loaded, snapshot, meta, key, previous };
        if let Some(skipped) = self.skipped(&d, min_interval) {
            return skipped;
        }
        let parts = match self.parts(&d).await {
            Ok(parts) => parts,
            Err((class, message)) => return self.record_failure(d, class, message),
        };
        let config = match sink.config() {
            Ok(c) => c,
            Err(e) => {
                self.metrics.sink_error(&loaded.info.sink_type, "terminal");
                return self.record_failure(d, FailureClass::Terminal, format!("{e:#}"));
            }
        };
        // In flight: a gateway killed from here on finds this delivery pending when it starts
        // again and resumes it (see `ExportEngine::pending`); sinks are idempotent per generation.
        let pending = SinkState {
            export: d.key.0.clone(),
            sink: d.key.1.clone(),
            generation: meta.generation,
            pending: true,
            attempted_checksum: Some(snapshot.checksum.clone()),
            ..d.previous.clone().unwrap_or_default()
        };
        self.persist(d.key.clone(), pending);
        let started = Instant::now();
        match self.send_parts(&d, &config, &parts).await {
            Ok(location) => {
                self.metrics.export_duration(&loaded.info.sink_type, started.elapsed());
                let message = format!("{} item(s) in {} part(s) to {location}", snapshot.items.len(), parts.len());
                self.record_success(d, message)
            }
            Err(f) => self.record_failure(d, FailureClass::from(f.class), f.message),
        }
    }

    /// The status of a delivery that need not happen: the same data delivered within the
    /// binding's interval (debounce), or nothing to send to an event sink.
    fn skipped(&self, d: &Delivery<'_>, min_interval: Option<Duration>) -> Option<SinkExportStatus> {
        let previous = d.previous.as_ref();
        let base = |synced, message: String| SinkExportStatus {
            last_export_time: previous.and_then(|p| p.last_success_micros).map(micros_rfc3339),
            last_checksum: previous.and_then(|p| p.checksum.clone()),
            ..SinkExportStatus::new(&d.sink.entry.name, synced, message)
        };
        let delivered = previous.and_then(|p| {
            let at = p.last_success_micros?;
            let ago = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_micros() as i64 - at;
            Some(Delivered {
                checksum: p.checksum.clone()?,
                generation: p.generation,
                at: Instant::now().checked_sub(Duration::from_micros(ago.max(0) as u64))?,
            })
        });
        if let Some(interval) = min_interval
            && previous.is_some_and(|p| !p.pending)
            && debounced(delivered.as_ref(), &d.snapshot.checksum, d.meta.generation, Instant::now(), interval)
        {
            self.metrics.export_debounced(&d.entry.name);
            return Some(base(Synced::Debounced, format!("unchanged and delivered within {interval:?}")));
        }
        let caps = d.loaded.info.capabilities;
        if d.snapshot.items.is_empty() && caps.stream && !caps.supports_delete {
            return Some(base(Synced::Exported, "nothing to send to an event sink".into()));
        }
        None
    }

    /// The payloads this sink gets under the size policy: parts under the cap, or a pointer to
    /// the whole payload stored in the spill sink; never a silent drop.
    async fn parts(&self, d: &Delivery<'_>) -> Result<Vec<super::envelope::Part>, (FailureClass, String)> {
        let (entry, sink_type) = (d.entry, &d.loaded.info.sink_type);
        let shape = SinkShape { accepts_parts: d.loaded.info.capabilities.accepts_parts, spill_available: entry.spill_to.is_some() };
        let (planned, warnings) = plan(d.snapshot, d.meta, entry.max_export_bytes.0, shape);
        if warnings.large {
            self.metrics.export_spill_warn();
        }
        match planned {
            Ok(Plan::Parts(parts)) => Ok(parts),
            Ok(Plan::Spill(whole)) => match self.spill(entry, d.snapshot, d.meta, &whole).await {
                Ok(pointer) => Ok(vec![pointer]),
                Err(message) => {
                    self.metrics.sink_error(sink_type, "spill_required");
                    Err((FailureClass::Transient, message))
                }
            },
            Err(SizeError::SpillRequired { .. }) => {
                self.metrics.sink_error(sink_type, "spill_required");
                let cap = entry.max_export_bytes.0;
                let name = &d.sink.entry.name;
                Err((FailureClass::Terminal, format!("the payload is over {cap} bytes and {name} takes only whole payloads; bind an object-store sink to spill to")))
            }
            Err(e @ SizeError::PayloadTooLarge { .. }) => {
                self.metrics.sink_error(sink_type, "payload_too_large");
                Err((FailureClass::Terminal, e.to_string()))
            }
        }
    }

    /// Sends every part in order, each under the retry policy and the breaker; returns where the
    /// last one went. The first part that fails ends the delivery.
    async fn send_parts(&self, d: &Delivery<'_>, config: &SinkConfig, parts: &[super::envelope::Part]) -> Result<String, PartFailure> {
        let (sink, sink_type) = (d.sink, &d.loaded.info.sink_type);
        let mut location = String::new();
        for part in parts {
            let request = ExportRequest {
                export: d.entry.name.clone(),
                cluster: d.entry.cluster.clone(),
                generation: d.meta.generation,
                checksum: d.snapshot.checksum.clone(),
                part_index: part.index as u32,
                part_total: part.total as u32,
                item_count: part.item_count as u32,
                format: "json".into(),
                payload: part.json.as_bytes().to_vec(),
            };
            let (request, runtime) = (&request, &self.runtime);
            let send = || {
                let call = runtime.sink_export(d.loaded, config, request, sink.policy.clone(), sink.entry.timeout.0);
                async move { call.await.map_err(|e: SinkCallError| (e.class(), e.to_string())) }
            };
            let observe = |event| match event {
                TryEvent::Breaker(state) => self.metrics.sink_breaker(&sink.entry.name, state.as_str()),
                TryEvent::Failed(class) => self.metrics.sink_error(sink_type, class_name(class)),
            };
            let span = super::spans::part(part.index, part.total, part.json.len());
            let sent = send_part(&sink.breaker, RetryPolicy::default(), send, observe).instrument(span.clone()).await;
            super::spans::record_part(&span, sent.as_ref().err().map(|f| class_name(f.class)));
            let receipt = sent?;
            location = receipt.location;
            self.metrics.export_bytes(sink_type, part.json.len());
        }
        Ok(location)
    }

    /// Records a delivered snapshot: state (no longer pending) and the status line.
    fn record_success(&self, d: Delivery<'_>, message: String) -> SinkExportStatus {
        let now_us = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |t| t.as_micros() as i64);
        let checksum = d.snapshot.checksum.clone();
        let state = SinkState {
            export: d.key.0.clone(),
            sink: d.key.1.clone(),
            generation: d.meta.generation,
            checksum: Some(checksum.clone()),
            last_success_micros: Some(now_us),
            last_error: None,
            pending: false,
            attempted_checksum: Some(checksum.clone()),
        };
        self.persist(d.key, state);
        SinkExportStatus {
            last_export_time: Some(micros_rfc3339(now_us)),
            last_checksum: Some(checksum),
            ..SinkExportStatus::new(&d.sink.entry.name, Synced::Exported, message)
        }
    }

    /// Stores a whole payload in the export's spill sink and returns the pointer envelope to
    /// send instead (see [`super::sink::SinkHandle::spill`]).
    async fn spill(
        &self,
        entry: &ExportConfigEntry,
        snapshot: &Snapshot,
        meta: &EnvelopeMeta<'_>,
        whole: &super::envelope::Part,
    ) -> Result<super::envelope::Part, String> {
        let name = entry.spill_to.as_deref().ok_or("no spill sink")?;
        let store = self.sinks.get(name).ok_or_else(|| format!("no sink named {name:?} to spill to"))?;
        store.spill(&self.runtime, &self.metrics, entry, snapshot, meta, whole).await
    }

    fn persist(&self, key: (String, String), state: SinkState) {
        if let Err(e) = state::save(&self.db, &state) {
            tracing::error!(export = %key.0, sink = %key.1, error = %format!("{e:#}"), "Cannot persist export state.");
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).insert(key, state);
    }

    /// Records a failed delivery: state (pending, with the error) and the status line.
    fn record_failure(&self, d: Delivery<'_>, class: FailureClass, message: String) -> SinkExportStatus {
        let (key, sink) = (d.key, d.sink.entry.name.clone());
        tracing::warn!(export = %key.0, sink = %sink, class = class.as_str(), error = %message, "Export to a sink failed.");
        let prev = d.previous.unwrap_or_default();
        let state = SinkState {
            export: key.0.clone(),
            sink: key.1.clone(),
            generation: d.meta.generation,
            checksum: prev.checksum.clone(),
            last_success_micros: prev.last_success_micros,
            last_error: Some((class.as_str().to_owned(), message.clone())),
            pending: true,
            attempted_checksum: Some(d.snapshot.checksum.clone()),
        };
        self.persist(key, state);
        SinkExportStatus {
            last_export_time: prev.last_success_micros.map(micros_rfc3339),
            last_checksum: prev.checksum,
            ..SinkExportStatus::failed(&sink, class, message)
        }
    }
}
