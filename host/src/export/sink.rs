//! A configured sink: its loaded component (hot-swapped when the file changes), its network
//! policy, its circuit breaker and its last connection test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::envelope::{EnvelopeMeta, Part, Snapshot};
use super::policy::Breaker;
use crate::config::{ExportConfigEntry, SinkConfigEntry};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::sinks::{ExportRequest, LoadedSink, NetPolicy, SinkConfig};

/// The component's digest and what proves who made it (a signature added since counts as a
/// change): what a reload compares.
fn fingerprint(runtime: &Runtime, component: &std::path::Path) -> Option<String> {
    let (path, evidence, _) = runtime.sink_source(component).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some(format!("{}/{}", crate::runtime::component::digest(&bytes), evidence.fingerprint()))
}

/// A sink whose component file changed in a reload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SinkReload {
    pub sink: String,
    pub file: String,
    /// `type@version sha256:<digest>` now in use, when the new file loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Why the new file was refused (the previous version stays in use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A configured sink, loaded. Its component is swapped when the file changes (hot reload); a
/// delivery keeps the version it started with.
pub struct SinkHandle {
    pub entry: SinkConfigEntry,
    pub(super) loaded: arc_swap::ArcSwap<LoadedSink>,
    pub(super) policy: Arc<NetPolicy>,
    pub(super) breaker: Mutex<Breaker>,
    /// The last connection test: `ConnectionVerified` true/false, latency, detail, when.
    pub(super) connection: Mutex<Option<ConnectionTest>>,
    /// The digest and signature evidence of the last content tried (loaded or refused), so a
    /// refused content is not tried again until it, or its signature, changes.
    attempted: Mutex<String>,
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

    /// Its circuit breaker's state now: `closed`, `open` or `half_open`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner()).state(Instant::now()).as_str()
    }

    /// The component version in use now.
    pub fn loaded(&self) -> Arc<LoadedSink> {
        self.loaded.load_full()
    }

    /// Loads the component file again when its content changed; a component that fails to
    /// load leaves the working one in place. `Some(result)` when the file changed.
    pub(super) fn reload(&self, runtime: &Runtime) -> Option<anyhow::Result<Arc<LoadedSink>>> {
        let attempted = fingerprint(runtime, &self.entry.component)?;
        let mut last = self.attempted.lock().unwrap_or_else(|p| p.into_inner());
        if *last == attempted {
            return None;
        }
        *last = attempted;
        drop(last);
        Some(runtime.load_sink(&self.entry.component).inspect(|new| self.loaded.store(new.clone())))
    }

    /// The component's configuration with secrets resolved now (from the environment or files).
    pub(super) fn config(&self) -> anyhow::Result<SinkConfig> {
        let mut secrets = Vec::new();
        for (key, source) in &self.entry.secrets {
            let value = crate::secret::resolve(&format!("sink {}: secret {key}", self.entry.name), source)?;
            secrets.push((key.clone(), value));
        }
        Ok(SinkConfig {
            name: self.entry.name.clone(),
            settings: self.entry.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            secrets,
        })
    }

    /// A loaded sink with its policy from the configuration and a closed breaker.
    pub(super) fn new(entry: &SinkConfigEntry, loaded: Arc<LoadedSink>, runtime: &Runtime) -> Self {
        let urls: Vec<&str> = entry.settings.values().map(String::as_str).collect();
        Self {
            entry: entry.clone(),
            loaded: arc_swap::ArcSwap::new(loaded),
            policy: Arc::new(NetPolicy::for_urls(urls, entry.allow_private)),
            breaker: Mutex::new(Breaker::open_for(entry.breaker_open_for.0)),
            connection: Mutex::new(None),
            attempted: Mutex::new(fingerprint(runtime, &entry.component).unwrap_or_default()),
        }
    }

    /// Runs the connection test: `(verified, latency, detail or error)`, kept for the status.
    pub(super) async fn probe(&self, runtime: &Runtime, metrics: &Metrics) -> (bool, Duration, String) {
        let started = Instant::now();
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => return (false, started.elapsed(), format!("{e:#}")),
        };
        let loaded = self.loaded();
        let result = runtime.sink_probe(&loaded, &config, self.policy.clone(), self.entry.timeout.0).await;
        let ok = result.is_ok();
        metrics.sink_connection_test(&loaded.info.sink_type, ok);
        let detail = match result {
            Ok(d) => d,
            Err(e) => e.to_string(),
        };
        let latency = started.elapsed();
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(ConnectionTest {
            verified: ok,
            latency_ms: latency.as_millis() as u64,
            detail: detail.clone(),
            at: super::status::rfc3339(SystemTime::now()),
        });
        (ok, latency, detail)
    }

    /// Stores a whole payload in this (object-store) sink and returns the pointer envelope to
    /// send instead: the same head, no items, and where the payload went.
    pub(super) async fn spill(
        &self,
        runtime: &Runtime,
        metrics: &Metrics,
        entry: &ExportConfigEntry,
        snapshot: &Snapshot,
        meta: &EnvelopeMeta<'_>,
        whole: &Part,
    ) -> Result<Part, String> {
        let name = &self.entry.name;
        let config = self.config().map_err(|e| format!("{e:#}"))?;
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
        let loaded = self.loaded();
        let receipt = runtime
            .sink_export(&loaded, &config, &request, self.policy.clone(), self.entry.timeout.0)
            .await
            .map_err(|e| format!("spilling to {name} failed: {e}"))?;
        metrics.export_bytes(&loaded.info.sink_type, whole.json.len());
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
        Ok(Part { index: 0, total: 1, item_count: whole.item_count, json: pointer.to_string() })
    }
}
