//! Benchmark `scale`: the `ducklake` backend against the `file` backend, and two gateways on one
//! lake against one, with the release `sluice` binary driven by `wrk` from other processes over
//! loopback. The lake's catalog is a real PostgreSQL and its store a real S3-compatible server
//! (moto, a Python server: slower than a production store, which the lake's figures include).
//!
//! Both backends hold the same demo fleet (3 clusters × 16 nodes × 24 h, seeded in-process).
//! Measured, rounds interleaved, median round:
//! 1. `fleet.cluster.summary` for one cluster (a tool's real query) and a SQL aggregate over every
//!    row (`POST /api/v2/sql`), lake / file;
//! 2. calls/s of the summary with one gateway vs two on the same lake, each driven by its own wrk
//!    (the client spreading its calls), two / one;
//! 3. ingest of 1000-point OTLP requests: points/s into the file, into the lake's writer, and
//!    through the lake's reader (forwarded to the writer).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/support/pg_server.rs"]
#[allow(dead_code)] // The benchmark uses the server, not its psql helpers.
mod pg_server;
#[path = "../../tests/support/moto.rs"]
mod moto;
#[path = "support/wrk.rs"]
mod wrk;

const CONNECTIONS: usize = 16;
const ROUND: &str = "4s";
const ROUNDS: usize = 3;
const TOKEN: &str = "bench-scale-token-51c8";
/// Points per ingest request (`SLUICE_BENCH_POINTS` overrides).
fn points() -> usize {
    std::env::var("SLUICE_BENCH_POINTS").ok().and_then(|p| p.parse().ok()).unwrap_or(1000)
}

/// `SLUICE_BENCH_ONLY=ingest` runs the ingest part alone.
fn only_ingest() -> bool {
    std::env::var("SLUICE_BENCH_ONLY").is_ok_and(|o| o == "ingest")
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Gateway {
    process: Process,
    api: String,
}

/// `sluice serve` with `config` (a file in `scratch`), on loopback port 0.
fn start(scratch: &Path, name: &str, config: &str) -> Gateway {
    let path = scratch.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[plugins]\nwatch = false\n[rate_limit]\nrequests_per_second = 10000000\nburst = 10000000\n\
             [limits]\nmax_in_flight_per_bearer = 10000\nmax_in_flight = 10000\n[audit]\ndestination = \"/dev/null\"\n\
             [ingest]\nmax_body = \"64MiB\"\nmax_uncompressed = \"64MiB\"\n{config}"
        ),
    )
    .unwrap();
    let (child, api) = wrk::serve(scratch, name, &path, &[]);
    Gateway { api, process: Process(child) }
}

/// moto's S3 server, with the bucket `lake`.
fn moto(rt: &tokio::runtime::Runtime) -> moto::Moto {
    rt.block_on(async {
        let moto = moto::Moto::start().await;
        let r = reqwest::Client::new().put(format!("{}/lake", moto.url)).send().await.unwrap();
        assert!(r.status().is_success());
        moto
    })
}

/// An OTLP JSON request of `points()` gauge points of one node in the cluster `ingested`.
fn ingest_body() -> String {
    let points: Vec<serde_json::Value> = (0..points())
        .map(|i| serde_json::json!({"asDouble": i as f64 / 10.0, "timeUnixNano": (1_800_000_000_000_000_000u64 + i as u64 * 1_000_000_000).to_string()}))
        .collect();
    serde_json::json!({"resourceMetrics": [{"resource": {"attributes": [
        {"key": "ingero.cluster.id", "value": {"stringValue": "ingested"}},
        {"key": "ingero.node.id", "value": {"stringValue": "bench-node"}}]},
        "scopeMetrics": [{"metrics": [{"name": "gpu.util", "gauge": {"dataPoints": points}}]}]}]})
    .to_string()
}

/// Runs two wrk processes at once (the client spreading its calls over two gateways): their
/// summed calls/s.
fn spread(runs: [(&str, &Path); 2], connections: usize) -> f64 {
    let children: Vec<_> = runs
        .iter()
        .map(|(url, script)| wrk::command(url, script, connections, ROUND).stdout(Stdio::piped()).spawn().expect("wrk"))
        .collect();
    children.into_iter().zip(runs).map(|(c, (url, _))| wrk::result(url, &c.wait_with_output().unwrap()).0).sum()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let scratch = std::env::temp_dir().join(format!("sluice-bench-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("plugins")).unwrap();
    std::fs::create_dir_all(scratch.join("pg")).unwrap();
    std::fs::copy(root.join("dist/plugins/fleet-cluster-summary.wasm"), scratch.join("plugins/summary.wasm"))
        .unwrap_or_else(|e| panic!("fleet-cluster-summary.wasm: {e}; build the components first (scripts/dev bench does)"));
    std::fs::write(scratch.join("bearers.yaml"), format!("- {{key_name: bench, token: {TOKEN}}}\n")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let pg = pg_server::PgServer::start(&scratch.join("pg"), "bench-lake-pw");
    let store_server = moto(&rt);
    let store = store_server.url.clone();
    std::fs::write(scratch.join("catalog"), format!("host=127.0.0.1 port={} dbname=postgres user=postgres password={}", pg.port, pg.password))
        .unwrap();
    std::fs::write(scratch.join("s3-key"), "bench").unwrap();
    std::fs::write(scratch.join("s3-secret"), "bench-secret").unwrap();
    let lake_toml = format!(
        "[database]\nbackend = \"ducklake\"\n[database.ducklake]\ncatalog = \"file:{dir}/catalog\"\ndata_path = \"s3://lake/fleet/\"\n\
         [database.ducklake.s3]\nendpoint = {endpoint:?}\nurl_style = \"path\"\nuse_ssl = false\nkey_id = \"file:{dir}/s3-key\"\nsecret = \"file:{dir}/s3-secret\"\n",
        dir = scratch.display(),
        endpoint = store.trim_start_matches("http://"),
    );

    // The same fleet in both backends.
    let started = Instant::now();
    let seed = sluice::demo::SeedOptions { progress: false, end_micros: Some(1_767_225_600_000_000), ..Default::default() };
    let file_db = scratch.join("fleet.duckdb");
    let mut config: sluice::config::Config = toml::from_str(&format!("[database]\npath = {:?}\n", file_db)).unwrap();
    sluice::demo::seed(&sluice::db::Database::open(config.database.to_options()).unwrap(), &seed).unwrap();
    config = toml::from_str(&lake_toml).unwrap();
    sluice::demo::seed(&sluice::db::Database::open(config.database.to_options()).unwrap(), &seed).unwrap();
    eprintln!("scale: seeded both backends in {:.0?}", started.elapsed());

    let file = start(&scratch, "file", &format!("[database]\npath = {:?}\n", file_db));
    let a = start(&scratch, "lake-a", &lake_toml);
    let role = |api: &str| -> String {
        rt.block_on(async {
            let h: serde_json::Value =
                reqwest::Client::new().get(format!("{api}/api/v2/health")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
            h["lake"]["role"].as_str().unwrap_or("").to_owned()
        })
    };
    let waited = Instant::now();
    while role(&a.api) != "writer" {
        assert!(waited.elapsed() < Duration::from_secs(30), "lake-a never became the writer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = start(&scratch, "lake-b", &lake_toml);
    assert_eq!(role(&b.api), "reader");

    println!("scale: the release binary under wrk -t1, {ROUNDS} rounds of {ROUND} per figure, median round");

    if !only_ingest() {
        queries_and_replicas(&scratch, [&file, &a, &b]);
    }
    ingest_figures(&scratch, [&file, &a, &b]);
    drop((file, a, b));
    drop(pg);
    let _ = std::fs::remove_dir_all(&scratch);
}

fn url(g: &Gateway, path: &str) -> String {
    format!("{}{path}", g.api)
}

/// 1. The same queries on each backend; 2. one gateway against two.
fn queries_and_replicas(scratch: &Path, [file, a, b]: [&Gateway; 3]) {
    let summary = wrk::script(scratch, "summary", "POST", r#"{"args":{"cluster_id":"cluster-a"}}"#, &[], TOKEN);
    let aggregate = r#"{"sql":"SELECT cluster_id, metric_name, count(*) AS n, avg(value_double) AS mean FROM events GROUP BY ALL ORDER BY ALL"}"#;
    let sql = wrk::script(scratch, "sql", "POST", aggregate, &[], TOKEN);
    let tool = "/api/v2/tools/fleet.cluster.summary";
    let mut queries: Vec<Vec<wrk::Round>> = vec![Vec::new(); 4];
    for round in 0..ROUNDS {
        for (i, (g, path, script)) in [(file, tool, &summary), (a, tool, &summary), (file, "/api/v2/sql", &sql), (a, "/api/v2/sql", &sql)]
            .into_iter()
            .enumerate()
        {
            queries[i].push(wrk::run(&url(g, path), script, g.process.0.id(), CONNECTIONS, ROUND));
        }
        eprintln!("scale: query round {}/{ROUNDS} done", round + 1);
    }
    let q: Vec<wrk::Round> = queries.into_iter().map(wrk::median).collect();
    println!("| query | backend | calls/s | p50 ms | p99 ms | gateway CPU ms/call |");
    println!("|---|---|---|---|---|---|");
    for (i, (name, backend)) in [("summary (cluster-a)", "file"), ("summary (cluster-a)", "lake"), ("SQL aggregate", "file"), ("SQL aggregate", "lake")]
        .iter()
        .enumerate()
    {
        let (rps, p50, p99, cpu) = q[i];
        println!("| {name} | {backend} | {rps:.1} | {p50:.1} | {p99:.1} | {:.2} |", cpu / 1000.0);
    }
    println!("ratio lake / file, summary:       {:.3}", q[1].0 / q[0].0);
    println!("ratio lake / file, SQL aggregate: {:.3}", q[3].0 / q[2].0);

    // 2. One gateway against two on the same lake, the same connections in all: as they run
    // here (sharing the machine's cores), and pinned to one core each (as replicas on their own
    // machines would be: the second brings its own CPU).
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for pinned in [false, true] {
        if pinned {
            pin(a, "0");
            pin(b, "1");
        }
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            one.push(wrk::run(&url(a, tool), &summary, a.process.0.id(), CONNECTIONS, ROUND).0);
            two.push(spread([(&url(a, tool), &summary), (&url(b, tool), &summary)], CONNECTIONS / 2));
            eprintln!("scale: replica round {}/{ROUNDS} done", round + 1);
        }
        let (one, two) = (med(one), med(two));
        let how = if pinned { "one core per gateway" } else { "sharing the machine" };
        println!("summary on the lake, {how}: one gateway {one:.1} calls/s, two gateways {two:.1} calls/s");
        println!("ratio two / one gateway ({how}): {:.3}", two / one);
    }
    let all = format!("0-{}", std::thread::available_parallelism().map_or(1, |n| n.get()) - 1);
    for g in [a, b] {
        pin(g, &all);
    }
}

/// Pins every thread of a gateway to `cpus` (taskset's list syntax).
fn pin(g: &Gateway, cpus: &str) {
    let ok = Command::new("taskset").args(["-a", "-p", "-c", cpus, &g.process.0.id().to_string()]).stdout(Stdio::null()).status();
    assert!(ok.is_ok_and(|s| s.success()), "taskset (util-linux) could not pin the gateway");
}

/// 3. Ingest: points/s into the file, the lake's writer, and through its reader.
fn ingest_figures(scratch: &Path, [file, a, b]: [&Gateway; 3]) {
    let ingest = wrk::script(scratch, "ingest", "POST", &ingest_body(), &[], TOKEN);
    let points = points();
    let mut ingests: Vec<Vec<wrk::Round>> = vec![Vec::new(); 3];
    for round in 0..ROUNDS {
        for (i, g) in [file, a, b].into_iter().enumerate() {
            ingests[i].push(wrk::run(&url(g, "/v1/metrics"), &ingest, g.process.0.id(), 4, ROUND));
        }
        eprintln!("scale: ingest round {}/{ROUNDS} done", round + 1);
    }
    let n: Vec<wrk::Round> = ingests.into_iter().map(wrk::median).collect();
    for (i, name) in ["file", "lake, to the writer", "lake, through a reader (forwarded)"].iter().enumerate() {
        let (rps, p50, p99, _) = n[i];
        println!("ingest {name}: {:.0} points/s ({rps:.1} requests/s of {points} points; p50 {p50:.1} ms, p99 {p99:.1} ms)", rps * points as f64);
    }
    println!("ratio ingest lake writer / file:        {:.3}", n[1].0 / n[0].0);
    println!("ratio ingest through a reader / writer: {:.3}", n[2].0 / n[1].0);
}
