//! Benchmark `tool_call`: what a tool call costs, against baselines measured in the same run.
//!
//! 1. Instantiate + call of a trivial tool (median, p99), against the same work done natively.
//! 2. Throughput of `fleet.cluster.summary` as a component against the same SQL and the same
//!    row-to-JSON shaping called natively from Rust (target: ratio >= 0.9).
//! 3. What a running canary costs a call: the trivial tool called through `Registry::pick` with a
//!    canary taking half the calls (the same component with an extra custom section, so another
//!    digest) against the same calls on a runtime without a rollout policy (target: ratio >= 0.95).
//!
//! Run with `scripts/dev bench` (it builds the components first). Figures go to
//! docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use sluice::config::PluginsConfig;
use sluice::db::{Database, DbOptions, RowLimit, Value};
use sluice::metrics::Metrics;
use sluice::runtime::{CallContext, LoadedTool, Runtime};

const SUMMARY_SQL: &str = include_str!("../../plugins/fleet-cluster-summary/src/summary.sql");

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let plugins = scratch.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (src, dst) in [
        ("dist/plugins/fleet-cluster-summary.wasm", "summary.wasm"),
        ("dist/fixtures/trivial.wasm", "trivial.wasm"),
    ] {
        let src: PathBuf = root.join(src);
        std::fs::copy(&src, plugins.join(dst))
            .unwrap_or_else(|e| panic!("{}: {e}; build the components first (scripts/dev bench does)", src.display()));
    }

    let db = Database::open(DbOptions { path: scratch.join("bench.duckdb"), ..Default::default() }).unwrap();
    let seed = sluice::demo::SeedOptions { progress: false, end_micros: Some(1_767_225_600_000_000), ..Default::default() };
    let report = sluice::demo::seed(&db, &seed).unwrap();
    println!(
        "host: {} cores, wasmtime pagemap_scan {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() { "available" } else { "unavailable" }
    );
    println!("data: {} rows ({} clusters x {} nodes x {} h)", report.rows, seed.clusters, seed.nodes_per_cluster, seed.hours);

    let config = PluginsConfig { dir: plugins, cache_dir: scratch.join("cache"), watch: false, ..Default::default() };
    let rt = Runtime::new(config, Metrics::new()).unwrap();
    let registry = rt.registry();
    let trivial = registry.get("test.trivial").unwrap().clone();
    let summary = registry.get("fleet.cluster.summary").unwrap().clone();
    drop(registry);

    trivial_call(&rt, &db, &trivial);
    if std::env::var_os("SLUICE_BENCH_QUICK").is_none() {
        summary_throughput(&rt, &summary, &db);
    }
    rollout_overhead(&root, &scratch, &db);
    let _ = std::fs::remove_dir_all(&scratch);
}

fn ctx() -> CallContext {
    CallContext { request_id: "0123456789abcdef".into(), allowed_clusters: Vec::new() }
}

thread_local! {
    /// One executor for every call of the benchmark, as a server has.
    static EXEC: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
}

fn call(rt: &Runtime, db: &Database, tool: &Arc<LoadedTool>, args: &str) -> String {
    EXEC.with(|e| e.block_on(rt.call_until(db, tool.clone(), ctx(), args, Instant::now() + Duration::from_secs(30))))
        .unwrap()
        .json
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn trivial_call(rt: &Runtime, db: &Database, tool: &Arc<LoadedTool>) {
    const N: usize = 20_000;
    let args = "{}";
    for _ in 0..1000 {
        call(rt, db, tool, args);
    }
    let mut wasm: Vec<Duration> = (0..N)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(call(rt, db, tool, args));
            t.elapsed()
        })
        .collect();
    // The same work natively: parse the args, build the answer.
    let mut native: Vec<Duration> = (0..N)
        .map(|_| {
            let t = Instant::now();
            let a: &str = std::hint::black_box(args);
            std::hint::black_box(String::from(r#"{"ok":true}"#) + &a[..0]);
            t.elapsed()
        })
        .collect();
    let mut inst: Vec<Duration> = (0..N)
        .map(|_| {
            let t = Instant::now();
            EXEC.with(|e| e.block_on(rt.instantiate_only(tool))).unwrap();
            t.elapsed()
        })
        .collect();
    let (wm, wp) = (percentile(&mut wasm, 0.5), percentile(&mut wasm, 0.99));
    let im = percentile(&mut inst, 0.5);
    let nm = percentile(&mut native, 0.5);
    let size = std::fs::metadata(&tool.path).map(|m| m.len()).unwrap_or(0);
    println!("trivial tool ({} KB component), instantiate + call, {N} calls:", size / 1024);
    println!("  component  median {:>8.2} us   p99 {:>8.2} us", us(wm), us(wp));
    println!("  of which store + instantiate (no call) median {:>8.2} us", us(im));
    println!("  native     median {:>8.2} us", us(nm));
    println!("  ratio component/native (median): {:.1}x", wm.as_secs_f64() / nm.as_secs_f64());
}

fn summary_throughput(rt: &Runtime, tool: &Arc<LoadedTool>, db: &Database) {
    const ROUNDS: usize = 5;
    const PER_ROUND: Duration = Duration::from_secs(2);
    let native_call = || -> String {
        let r = db.query_read_only(SUMMARY_SQL, &[Value::Null], RowLimit::Cap, None).unwrap();
        let rows: Vec<Json> = r
            .rows
            .iter()
            .map(|row| {
                let mut obj = serde_json::Map::new();
                for ((name, _), v) in r.columns.iter().zip(row) {
                    obj.insert(name.clone(), to_json(v));
                }
                Json::Object(obj)
            })
            .collect();
        json!({ "rows": rows }).to_string()
    };
    // Same answer both ways, or the comparison means nothing.
    let a: Json = serde_json::from_str(&call(rt, db, tool, "{}")).unwrap();
    let b: Json = serde_json::from_str(&native_call()).unwrap();
    assert_eq!(a, b, "component and native answers differ");
    let rows = a["rows"].as_array().unwrap().len();

    // Interleave rounds so drift on a shared machine hits both sides alike.
    let (mut wasm_rate, mut native_rate) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        wasm_rate.push(rate(PER_ROUND, || {
            std::hint::black_box(call(rt, db, tool, "{}"));
        }));
        native_rate.push(rate(PER_ROUND, || {
            std::hint::black_box(native_call());
        }));
    }
    wasm_rate.sort_by(f64::total_cmp);
    native_rate.sort_by(f64::total_cmp);
    let (w, n) = (wasm_rate[ROUNDS / 2], native_rate[ROUNDS / 2]);
    println!("fleet.cluster.summary ({rows} rows per answer), {ROUNDS} interleaved rounds of {PER_ROUND:?}, median round:");
    println!("  component  {w:>8.1} calls/s");
    println!("  native     {n:>8.1} calls/s");
    println!("  ratio component/native (throughput): {:.3} (target >= 0.9)", w / n);
}

fn rollout_overhead(root: &Path, scratch: &Path, db: &Database) {
    use sluice::config::{HumanDuration, Rollout, ToolOverride};
    const ROUNDS: usize = 5;
    const PER_ROUND: Duration = Duration::from_secs(2);
    let trivial = std::fs::read(root.join("dist/fixtures/trivial.wasm")).unwrap();
    let runtime = |name: &str, rollout: Option<Rollout>| {
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trivial.wasm"), &trivial).unwrap();
        let mut config = PluginsConfig { dir, cache_dir: scratch.join("cache"), watch: false, ..Default::default() };
        config.tools.insert("test.trivial".into(), ToolOverride { rollout, ..Default::default() });
        Runtime::new(config, Metrics::new()).unwrap()
    };
    let plain = runtime("plain", None);
    let policy = Rollout { canary_share: 0.5, promote_after_calls: u64::MAX, promote_after: HumanDuration(Duration::from_secs(86_400)), max_failures: u64::MAX };
    let canaried = runtime("canaried", Some(policy));
    // A second version: the same component with a custom section appended (section id 0, size,
    // name, payload), so another digest that behaves the same.
    let mut v2 = trivial.clone();
    let (name, payload) = (b"sluice-bench", b"canary");
    v2.extend([0u8, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
    v2.extend(name);
    v2.extend(payload);
    std::fs::write(scratch.join("canaried/trivial.wasm"), &v2).unwrap();
    canaried.reload();
    assert!(canaried.registry().canary("test.trivial").is_some(), "no canary: {:?}", canaried.last_reload());

    let through_pick = |rt: &Runtime| {
        let (tool, slot) = rt.registry().pick("test.trivial").unwrap();
        std::hint::black_box(call(rt, db, &tool, "{}"));
        drop(slot);
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Each side goes first in every other round.
        if round % 2 == 0 {
            with.push(rate(PER_ROUND, || through_pick(&canaried)));
            without.push(rate(PER_ROUND, || through_pick(&plain)));
        } else {
            without.push(rate(PER_ROUND, || through_pick(&plain)));
            with.push(rate(PER_ROUND, || through_pick(&canaried)));
        }
    }
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    let (w, n) = (with[ROUNDS / 2], without[ROUNDS / 2]);
    let status = canaried.registry().canary("test.trivial").unwrap().status();
    println!("rollout: test.trivial through Registry::pick, {ROUNDS} interleaved rounds of {PER_ROUND:?}, median round:");
    println!("  canary running (share 0.5) {w:>9.0} calls/s (canary {} / serving {} calls)", status.canary_calls, status.stable_calls);
    println!("  no rollout policy          {n:>9.0} calls/s");
    println!("  ratio canary/none (throughput): {:.3} (target >= 0.95)", w / n);
}

fn rate(for_how_long: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_how_long {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int64(i) => Json::from(*i),
        Value::Float64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::String(s.clone()),
        other => Json::String(format!("{other:?}")),
    }
}
