//! `sluice demo seed`: a realistic synthetic GPU fleet in the `events` table.
//!
//! Per node and minute: a health score and kernel launches; per node and 5 minutes: memfrag ioctl
//! counts and NCCL collective durations. Each cluster has one straggler whose health sags for a
//! few hours (with straggler events while it does) and one memfrag hotspot. The data is
//! deterministic for a given seed and end time, and seeding again replaces the demo clusters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use duckdb::types::{TimeUnit, Value};
use indicatif::{ProgressBar, ProgressStyle};

use crate::db::Database;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub clusters: usize,
    pub nodes_per_cluster: usize,
    pub hours: u32,
    pub seed: u64,
    /// The last minute of data (microseconds since the epoch); defaults to the current hour.
    pub end_micros: Option<i64>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self { clusters: 3, nodes_per_cluster: 16, hours: 24, seed: 42, end_micros: None, progress: true }
    }
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub rows: u64,
    pub clusters: Vec<String>,
}

/// The demo cluster ids.
pub fn cluster_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cluster-{}", (b'a' + (i % 26) as u8) as char)).collect()
}

/// A small, fast, deterministic PRNG (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// Fills the database; replaces any earlier demo data for the same clusters.
pub fn seed(db: &Database, opts: &SeedOptions) -> anyhow::Result<SeedReport> {
    anyhow::ensure!(opts.clusters >= 1 && opts.clusters <= 26, "--clusters must be between 1 and 26");
    anyhow::ensure!(opts.nodes_per_cluster >= 2, "--nodes must be at least 2");
    anyhow::ensure!(opts.hours >= 1, "--hours must be at least 1");
    let end = opts.end_micros.unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
        (now - now % 3600) * 1_000_000
    });
    let minutes = i64::from(opts.hours) * 60;
    let start = end - (minutes - 1) * 60_000_000;
    let clusters = cluster_ids(opts.clusters);

    let total_nodes = (opts.clusters * opts.nodes_per_cluster) as u64;
    let bar = if opts.progress { ProgressBar::new(total_nodes) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} nodes ({eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("seeding");

    let conn = db.writer();
    conn.execute_batch("BEGIN TRANSACTION").context("starting the seed transaction")?;
    let result = (|| -> anyhow::Result<u64> {
        for c in &clusters {
            conn.execute("DELETE FROM events WHERE cluster_id = ?", [c]).context("clearing old demo data")?;
        }
        let mut app = conn.appender("events").context("opening the appender on events")?;
        let mut rows = 0u64;
        let mut rng = Rng(opts.seed);
        for (ci, cluster) in clusters.iter().enumerate() {
            // One straggler and one memfrag hotspot per cluster, at different nodes.
            let straggler = (ci * 5 + 3) % opts.nodes_per_cluster;
            let hotspot = (straggler + 1 + ci) % opts.nodes_per_cluster;
            // The straggler sags for 4 hours somewhere in the window.
            let sag_from = (minutes / 3 + (ci as i64) * 90) % minutes.max(1);
            let sag_to = sag_from + 240;
            for n in 0..opts.nodes_per_cluster {
                let node = format!("{cluster}-n{n:02}");
                let host = format!("gpu-host-{ci}{n:02}");
                let base = rng.range(0.90, 0.97);
                for m in 0..minutes {
                    let ts = Value::Timestamp(TimeUnit::Microsecond, start + m * 60_000_000);
                    let sagging = n == straggler && (sag_from..sag_to).contains(&m);
                    let health = if sagging { rng.range(0.45, 0.68) } else { (base + rng.range(-0.03, 0.03)).min(1.0) };
                    app.append_row(duckdb::params![ts, cluster, node, "ingero.node.health_score", health, host, None::<String>, None::<String>])?;
                    let launches = (rng.range(1500.0, 4500.0) * if sagging { 0.6 } else { 1.0 }).round();
                    app.append_row(duckdb::params![ts, cluster, node, "gpu.kernel.launch.count", launches, host, None::<String>, r#"{"kernel":"gemm"}"#])?;
                    rows += 2;
                    if sagging && m % 10 == 0 {
                        app.append_row(duckdb::params![ts, cluster, node, "ingero.node.straggler_event", 1.0, host, "straggler", r#"{"reason":"nccl_slow_rank"}"#])?;
                        rows += 1;
                    }
                    if m % 5 == 0 {
                        let ioctls = if n == hotspot { rng.range(60.0, 220.0) } else { rng.range(0.0, 18.0) }.round();
                        let command = ["cuMemMap", "cuMemAlloc", "cuMemRelease"][(rng.next_u64() % 3) as usize];
                        let attrs = format!(r#"{{"command":"{command}"}}"#);
                        app.append_row(duckdb::params![ts, cluster, node, "gpu.memfrag.ioctl_event_total", ioctls, host, None::<String>, attrs])?;
                        let nccl = if sagging { rng.range(80.0, 220.0) } else { rng.range(9.0, 35.0) };
                        app.append_row(duckdb::params![ts, cluster, node, "nccl.collective.duration_ms", nccl, host, None::<String>, r#"{"op":"allreduce"}"#])?;
                        rows += 2;
                    }
                }
                bar.inc(1);
            }
        }
        app.flush().context("flushing the appender")?;
        Ok(rows)
    })();
    match result {
        Ok(rows) => {
            conn.execute_batch("COMMIT").context("committing the demo data")?;
            bar.finish_with_message("seeded");
            Ok(SeedReport { rows, clusters })
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            bar.abandon_with_message("failed");
            Err(e)
        }
    }
}
