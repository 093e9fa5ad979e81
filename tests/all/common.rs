//! The test harness: scratch directories, component files, a gateway over a seeded database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use sluice::config::{ByteSize, Config, HumanDuration, ToolOverride};
use sluice::serve::Gateway;
use tower::ServiceExt as _;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The `sluice` binary: cargo builds it for this integration test of the `sluice` package.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// A built component: `dist/plugins/<name>.wasm` or `dist/fixtures/<name>.wasm`.
pub fn component(name: &str) -> PathBuf {
    for dir in ["dist/plugins", "dist/fixtures", "dist/sinks"] {
        let p = root().join(dir).join(format!("{name}.wasm"));
        if p.exists() {
            return p;
        }
    }
    panic!("component {name}.wasm is not built: run `scripts/dev build` (or `scripts/dev test`) first");
}

/// A scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a scratch directory");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Finds `marker` in `bytes` exactly once and writes `payload` (NUL-padded to `len`) after it.
pub fn patch_marker(bytes: &mut [u8], marker: &[u8; 8], payload: &str, len: usize) {
    let hits: Vec<usize> = bytes.windows(8).enumerate().filter(|(_, w)| w == marker).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "marker {:?} must occur once in the fixture", String::from_utf8_lossy(marker));
    assert!(payload.len() < len, "payload too long");
    let at = hits[0] + 8;
    bytes[at..at + len].fill(0);
    bytes[at..at + payload.len()].copy_from_slice(payload.as_bytes());
}

/// The `versioned` fixture stamped with a tool name and a version.
pub fn versioned_component(name: &str, version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(component("versioned")).expect("reading the versioned fixture");
    patch_marker(&mut bytes, b"@@NAME@@", name, 64);
    patch_marker(&mut bytes, b"@@VERS@@", version, 32);
    patch_marker(&mut bytes, b"@@VCHK@@", version, 32);
    bytes
}

/// SHA-256 hex of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The unscoped bearer every test gateway accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// A bearer limited to `cluster-a`.
pub const TENANT_TOKEN: &str = "test-tenant-token-abcdefgh";

/// The bearers of a test gateway.
pub fn test_bearers() -> Vec<sluice::auth::AclEntry> {
    vec![
        sluice::auth::AclEntry::token("ops", ADMIN_TOKEN, &[]),
        sluice::auth::AclEntry::token("tenant-a", TENANT_TOKEN, &["cluster-a"]),
    ]
}

/// Options for a test gateway.
pub struct GatewayOptions {
    /// Components copied into the plugins directory, as (source, file name).
    pub plugins: Vec<(PathBuf, String)>,
    pub seed: bool,
    pub watch: bool,
    pub configure: Box<dyn FnOnce(&mut Config)>,
    /// Bearers; `None` means [`test_bearers`].
    pub auth: Option<sluice::auth::AuthSource>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            plugins: vec![
                (component("fleet-cluster-summary"), "fleet-cluster-summary.wasm".into()),
                (component("fleet-cluster-run-analysis"), "fleet-cluster-run-analysis.wasm".into()),
            ],
            seed: true,
            watch: false,
            configure: Box::new(|_| {}),
            auth: None,
        }
    }
}

/// The bundled tools beyond the default two.
pub const CATALOGUE: [&str; 5] = [
    "fleet-cluster-find-stragglers",
    "fleet-cluster-find-outlier-nodes",
    "fleet-cluster-anomaly-list",
    "fleet-cluster-memfrag-hotspots",
    "fleet-cluster-kernel-launch-summary",
];

impl GatewayOptions {
    /// Adds every other bundled tool.
    pub fn with_catalogue(mut self) -> Self {
        for c in CATALOGUE {
            self.plugins.push((component(c), format!("{c}.wasm")));
        }
        self
    }

    /// Adds the hostile fixture with a short deadline and a small memory limit.
    pub fn with_hostile(mut self) -> Self {
        self.plugins.push((component("hostile"), "hostile.wasm".into()));
        let prev = self.configure;
        self.configure = Box::new(move |c| {
            prev(c);
            c.plugins.tools.insert(
                "test.hostile".into(),
                ToolOverride {
                    deadline: Some(HumanDuration(std::time::Duration::from_millis(700))),
                    memory_limit: Some(ByteSize(16 << 20)),
                    ..Default::default()
                },
            );
        });
        self
    }
}

/// A gateway over a scratch directory.
pub struct TestGateway {
    pub dir: TempDir,
    pub gateway: Gateway,
    pub config: Config,
    /// Every audit line written so far.
    pub audit: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

/// Small demo fleet used by the tests: 3 clusters × 4 nodes × 3 h.
pub fn seed_options() -> sluice::demo::SeedOptions {
    sluice::demo::SeedOptions {
        clusters: 3,
        nodes_per_cluster: 4,
        hours: 3,
        seed: 7,
        end_micros: Some(1_767_225_600_000_000),
        progress: false,
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // Its election tasks outlive it on the runtime: give the lake's lock up.
        if let Some(lake) = self.gateway.lake() {
            lake.resign();
        }
    }
}

impl TestGateway {
    /// Must be called inside a tokio runtime when `watch` is set.
    pub fn start(opts: GatewayOptions) -> Self {
        let dir = TempDir::new("gw");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for (src, name) in &opts.plugins {
            std::fs::copy(src, plugins.join(name)).expect("copying a component");
        }
        let mut config = Config::default();
        config.database.path = dir.path().join("sluice.duckdb");
        config.plugins.dir = plugins;
        config.plugins.cache_dir = dir.path().join("cache");
        config.plugins.watch = opts.watch;
        config.server.insecure_no_tls = true;
        // Load tests must not trip the limits; the limit tests set their own.
        config.rate_limit.requests_per_second = 1_000_000;
        config.rate_limit.burst = 1_000_000;
        (opts.configure)(&mut config);
        if opts.seed {
            let db = sluice::db::Database::open(config.database.to_options()).expect("opening the database");
            sluice::demo::seed(&db, &seed_options()).expect("seeding");
        }
        let (audit_log, audit) = sluice::audit::AuditLog::memory();
        let auth = opts.auth.unwrap_or_else(|| sluice::auth::AuthSource::Static(test_bearers()));
        let gateway = Gateway::build(&config, auth, audit_log).expect("building the gateway");
        if let Some(lake) = gateway.lake() {
            // Alone on its lake, it becomes the writer (it forwards nowhere: no listener).
            gateway.start_lake(lake, "http://127.0.0.1:9".into());
            let started = std::time::Instant::now();
            while !lake.is_writer() {
                assert!(started.elapsed() < std::time::Duration::from_secs(15), "the gateway never became the lake's writer");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Self { dir, gateway, config, audit }
    }

    /// Audit lines with this `event`.
    pub fn audit_lines(&self, event: &str) -> Vec<Value> {
        self.audit.lock().unwrap().iter().filter(|l| l["event"] == event).cloned().collect()
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.config.plugins.dir.clone()
    }

    /// One request through the full API router, as the admin bearer.
    pub async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.request_with(Some(&format!("Bearer {ADMIN_TOKEN}")), method, path, body).await
    }

    /// One request with this `Authorization` header (or none).
    pub async fn request_with(&self, authorization: Option<&str>, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned()))).unwrap();
        let resp = self.gateway.api().oneshot(req).await.unwrap();
        Reply::from(resp).await
    }

    /// One request with raw bytes and these headers.
    pub async fn request_raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.gateway.api().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        Reply::from(resp).await
    }

    /// `POST /api/v2/tools/<name>` with `{"args": args}`, as the admin bearer.
    pub async fn call(&self, tool: &str, args: Value) -> Reply {
        self.call_as(ADMIN_TOKEN, tool, args).await
    }

    /// The same as `token`.
    pub async fn call_as(&self, token: &str, tool: &str, args: Value) -> Reply {
        let body = serde_json::json!({ "args": args }).to_string();
        self.request_with(Some(&format!("Bearer {token}")), "POST", &format!("/api/v2/tools/{tool}"), Some(&body)).await
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
    /// The body as received.
    pub bytes: Vec<u8>,
}

impl Reply {
    pub async fn from(resp: axum::response::Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self { status, headers, body, text, bytes: bytes.to_vec() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error reply: status, code, and the request id header's shape.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        assert_eq!(self.body["code"], code, "unexpected code; body: {}", self.text);
        assert!(self.body["error"].as_str().is_some_and(|e| !e.is_empty()), "error text missing: {}", self.text);
        assert_request_id(self);
    }
}

/// Every response carries a 16-lowercase-hex `X-Request-Id`.
pub fn assert_request_id(r: &Reply) -> String {
    let id = r.header("x-request-id").expect("X-Request-Id header").to_owned();
    assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "bad request id {id:?}");
    id
}

/// One sink's line (`sinkExports[]`) in an export's status.
pub fn sink_line<'a>(status: &'a Value, sink: &str) -> &'a Value {
    status["sinkExports"].as_array().unwrap().iter().find(|l| l["sink"] == sink).unwrap()
}

/// Tests that assert latency (hot swap under load) must not share the two cores with tests that
/// run external servers (PostgreSQL, Kafka) or other heavy processes: the first take this
/// exclusively, the others share it.
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// For a test that asserts latency: no server-running test runs meanwhile.
pub async fn exclusive_cpu() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CPU.write().await
}

/// For a test that runs external servers or other CPU-heavy processes (Helm's library, Python
/// clients, packing the bundle).
pub async fn shared_cpu() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.read().await
}

/// `shared_cpu` for a test that is not async.
pub fn shared_cpu_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.blocking_read()
}

/// A sink entry for the `http` sink component posting to `url` (loopback allowed).
pub fn http_sink(name: &str, url: &str) -> sluice::config::SinkConfigEntry {
    sluice::config::SinkConfigEntry {
        name: name.into(),
        component: component("http"),
        settings: std::collections::BTreeMap::from([("url".into(), url.into())]),
        secrets: std::collections::BTreeMap::new(),
        allow_private: true,
        timeout: HumanDuration(std::time::Duration::from_secs(10)),
        breaker_open_for: HumanDuration(std::time::Duration::from_secs(30)),
        test_on_start: false,
    }
}

/// The export the export tests use: events per cluster, to `hook` (at most once an hour when
/// unchanged) and to `flaky` (every run).
pub fn event_counts_export() -> sluice::config::ExportConfigEntry {
    use sluice::config::ExportBinding;
    sluice::config::ExportConfigEntry {
        name: "event-counts".into(),
        sql: "SELECT cluster_id, count(*) AS events FROM events GROUP BY cluster_id ORDER BY cluster_id".into(),
        cadence: None,
        cluster: String::new(),
        max_export_bytes: ByteSize(1 << 20),
        spill_to: None,
        sinks: vec![
            ExportBinding { name: "hook".into(), min_interval: Some(HumanDuration(std::time::Duration::from_secs(3600))) },
            ExportBinding { name: "flaky".into(), min_interval: None },
        ],
    }
}
