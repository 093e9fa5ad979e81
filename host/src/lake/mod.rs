//! Several gateways on one lake (the `ducklake` backend): every gateway serves tools, SQL and MCP
//! from the lake; one of them, the **writer**, elected with a PostgreSQL advisory lock on the
//! lake's catalog, takes ingest, runs the exports and compacts the lake. The others (readers)
//! forward ingest and export runs to it (see `http::forward`).
//!
//! The lock is held by one PostgreSQL session of the writer: when that process dies its session
//! ends, the lock is free, and another gateway takes it on its next attempt (every
//! [`TICK`]). A writer whose session fails stops writing at once; one that drains resigns first.
//! What the replicas share beyond the lake is two small tables in the catalog database:
//! `sluice_lake_writer` (who the writer is and where to reach it) and `sluice_export_schedule`
//! (when each export's cadence last fired, so a period fires once across replicas and writers).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

mod election;
mod maintenance;

/// How often a reader tries to become the writer (and learns where the writer is), and how
/// often the writer checks that its session (and so its lock) is alive.
pub const TICK: Duration = Duration::from_millis(500);

/// The coordination settings (`[database.ducklake]`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The catalog's libpq connection string, as a secret reference.
    pub catalog: String,
    /// The lake's data path: it names the lake in the lock and the tables.
    pub data_path: String,
    /// Where the others reach this gateway's API; `None`: the bound address.
    pub advertise_url: Option<String>,
    /// Extra trusted certificates (catalog TLS, other gateways' HTTPS).
    pub ca_file: Option<PathBuf>,
    /// How long a forwarded request may take.
    pub forward_timeout: Duration,
    /// How often the writer compacts the lake.
    pub maintenance_interval: Duration,
    /// How long snapshots and their files are kept.
    pub snapshot_retention: Duration,
}

/// This gateway's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
}

/// A forwarding URL must not put bearers on the wire in the clear: `https://`, or `http://` to a
/// loopback address.
pub fn check_peer_url(url: &str) -> Result<(), String> {
    crate::auth::jwt::check_url(url)
}

/// The writer election and what the replicas share: cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<Shared>,
}

struct Shared {
    opts: Options,
    /// This process, in the writer table (a random id: two processes on one host differ).
    replica: String,
    writer: AtomicBool,
    /// The writer's URL as last read from the catalog (a reader's view).
    writer_url: Mutex<Option<String>>,
    /// The session that holds (or tries for) the lock.
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
    role: tokio::sync::watch::Sender<Role>,
    /// Set when draining: give the lock up and stop trying.
    resign: CancellationToken,
    /// Forwarding to the writer.
    http: reqwest::Client,
}

impl Coordinator {
    /// A reader until the election says otherwise; nothing runs until [`Coordinator::start`].
    /// An advertised URL given as `env:NAME`/`file:/path` (a per-pod value) is read now.
    pub fn new(mut opts: Options) -> anyhow::Result<Self> {
        if let Some(url) = opts.advertise_url.as_mut()
            && crate::secret::is_reference(url)
        {
            *url = crate::secret::resolve("database.ducklake.advertise_url", url)?;
            check_peer_url(url).map_err(|e| anyhow::anyhow!("database.ducklake.advertise_url: {e}"))?;
        }
        let tls = crate::tls::client_config(opts.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(opts.forward_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).context("the system's random source")?;
        let replica = format!("{}-{}", hostname(), hex::encode(id));
        let (role, _) = tokio::sync::watch::channel(Role::Reader);
        Ok(Self {
            shared: Arc::new(Shared {
                opts,
                replica,
                writer: AtomicBool::new(false),
                writer_url: Mutex::new(None),
                client: Mutex::new(None),
                role,
                resign: CancellationToken::new(),
                http,
            }),
        })
    }

    /// Starts the election (and, as writer, the lake's maintenance over `db`). `url` is where
    /// this gateway's API listens; the advertised URL, when configured, wins.
    pub fn start(&self, url: String, db: crate::db::Database, metrics: crate::metrics::Metrics) {
        let url = self.shared.opts.advertise_url.clone().unwrap_or(url);
        tokio::spawn(election::run(self.shared.clone(), url));
        tokio::spawn(maintenance::run(self.clone(), db, metrics));
    }

    /// Is this gateway the writer now?
    pub fn is_writer(&self) -> bool {
        self.shared.writer.load(Ordering::Acquire)
    }

    pub fn role(&self) -> Role {
        if self.is_writer() { Role::Writer } else { Role::Reader }
    }

    /// Changes of role, as they happen.
    pub fn roles(&self) -> tokio::sync::watch::Receiver<Role> {
        self.shared.role.subscribe()
    }

    /// Where the writer is, as last seen (`None`: no writer known).
    pub fn writer_url(&self) -> Option<String> {
        self.shared.writer_url.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This process's id in the writer table.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// The client forwarding goes through.
    pub fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }

    /// Gives the writer's lock up (draining) and stops trying for it: another gateway takes over.
    pub fn resign(&self) {
        self.shared.resign.cancel();
    }

    /// Claims the current period of an export's cadence for this gateway: true at most once per
    /// `every` across all gateways (and across changes of writer). Only the writer claims.
    pub async fn claim_period(&self, export: &str, every: Duration) -> anyhow::Result<bool> {
        if !self.is_writer() {
            return Ok(false);
        }
        let client = self.shared.client.lock().unwrap_or_else(|p| p.into_inner()).clone().context("no catalog session")?;
        // A tick may come a little early: a tenth of the period (at most a second) of slack.
        let slack = (every / 10).min(Duration::from_secs(1));
        let secs = (every - slack).as_secs_f64();
        let claimed = client
            .query_opt(
                "INSERT INTO sluice_export_schedule AS s (lake, export, last_run) VALUES ($1, $2, now()) \
                 ON CONFLICT (lake, export) DO UPDATE SET last_run = now() \
                 WHERE s.last_run <= now() - make_interval(secs => $3) RETURNING 1",
                &[&self.shared.opts.data_path, &export, &secs],
            )
            .await
            .context("claiming the export's period in the catalog")?;
        Ok(claimed.is_some())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "sluice".into())
}
