//! Benchmark `data_plane`: data in and data out, each against its in-process baseline measured
//! in the same run.
//!
//! 1. OTLP ingest: `POST /v1/metrics` (protobuf, 10 000 points a request, over loopback, through
//!    the whole front door) vs appending the same rows with the DuckDB appender directly
//!    (`Database::append_events`). Points per second; target ratio >= 0.7.
//! 2. SQL: an aggregate over 10 M rows through `POST /api/v2/sql` vs the same statement run
//!    in-process through the same read-only path. Queries per second; target ratio >= 0.9.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use sluice::auth::{AclEntry, AuthSource};
use sluice::config::Config;
use sluice::db::RowLimit;
use sluice::serve::Gateway;

const TOKEN: &str = "bench-token-data-plane";
const ROUNDS: usize = 5;

/// 20 nodes × 5 metrics × 100 points.
fn request(batch: u64) -> ExportMetricsServiceRequest {
    let s = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v)) }),
        ..Default::default()
    };
    let base = 1_767_225_600_000_000_000u64 + batch * 100 * 60_000_000_000;
    ExportMetricsServiceRequest {
        resource_metrics: (0..20)
            .map(|n| ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        s("ingero.cluster.id", format!("bench-{}", n % 4)),
                        s("ingero.node.id", format!("node-{n:02}")),
                        s("host.name", format!("host-{n:02}")),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: ["ingero.node.health_score", "gpu.kernel.launch.count", "nccl.collective.duration_ms", "gpu.memfrag.ioctl_event_total", "gpu.util"]
                        .iter()
                        .map(|name| Metric {
                            name: (*name).into(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: (0..100u64)
                                    .map(|i| NumberDataPoint {
                                        time_unix_nano: base + i * 60_000_000_000,
                                        value: Some(number_data_point::Value::AsDouble(i as f64 * 0.5)),
                                        attributes: vec![s("gpu", (i % 8).to_string())],
                                        ..Default::default()
                                    })
                                    .collect(),
                            })),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn main() {
    let scratch = std::env::temp_dir().join(format!("sluice-bench-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("plugins")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut config = Config::default();
    config.database.path = scratch.join("bench.duckdb");
    config.plugins.dir = scratch.join("plugins");
    config.plugins.cache_dir = scratch.join("cache");
    config.plugins.watch = false;
    config.rate_limit.requests_per_second = 1_000_000;
    config.rate_limit.burst = 1_000_000;
    let auth = AuthSource::Static(vec![AclEntry::token("bench", TOKEN, &[])]);
    let audit = sluice::audit::AuditLog::file(std::path::Path::new("/dev/null")).unwrap();
    let (gateway, addr) = rt.block_on(async {
        let gateway = Gateway::build(&config, auth, audit).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let service = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(gateway.api());
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
        (gateway, addr)
    });
    let db = gateway.db().clone();
    let http = reqwest::Client::new();

    // 1. Ingest.
    let points_per_request = 20 * 5 * 100;
    let requests_per_round = 20;
    let (mut direct, mut via_http) = (Vec::new(), Vec::new());
    let mut batch = 0u64;
    for _ in 0..ROUNDS {
        let bodies: Vec<Vec<u8>> = (0..requests_per_round).map(|_| { batch += 1; request(batch).encode_to_vec() }).collect();
        let started = Instant::now();
        for body in &bodies {
            let resp = rt.block_on(
                http.post(format!("http://{addr}/v1/metrics"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send(),
            )
            .unwrap();
            assert_eq!(resp.status(), 200);
        }
        via_http.push((requests_per_round * points_per_request) as f64 / started.elapsed().as_secs_f64());

        // The baseline: the same rows, already converted, appended directly.
        let rows: Vec<Vec<sluice::ingest::EventRow>> = (0..requests_per_round)
            .map(|_| { batch += 1; sluice::ingest::convert(&request(batch), &[]).rows })
            .collect();
        let started = Instant::now();
        for r in &rows {
            db.append_events(r).unwrap();
        }
        direct.push((requests_per_round * points_per_request) as f64 / started.elapsed().as_secs_f64());
    }
    let (d, h) = (median(direct), median(via_http));
    println!("OTLP ingest (10 000 points/request)");
    println!("  appender directly      {d:>12.0} points/s");
    println!("  POST /v1/metrics       {h:>12.0} points/s  ratio {:.3} (target >= 0.7)", h / d);

    // 2. SQL over 10 M rows.
    let started = Instant::now();
    db.writer()
        .execute_batch(
            "INSERT INTO events SELECT TIMESTAMP '2026-01-01' + to_seconds(i), 'big-' || (i % 16), 'n' || (i % 512), \
             'm' || (i % 7), (i % 1000) / 10.0, NULL, NULL, NULL FROM range(10000000) t(i)",
        )
        .unwrap();
    println!("SQL: loaded 10 M rows in {:.1?}", started.elapsed());
    let sql = "SELECT cluster_id, metric_name, count(*) AS n, avg(value_double) AS mean, max(value_double) AS top \
               FROM events WHERE cluster_id LIKE 'big-%' GROUP BY ALL ORDER BY ALL";
    let (mut inproc, mut over_http) = (Vec::new(), Vec::new());
    let body = serde_json::json!({ "sql": sql }).to_string();
    for _ in 0..ROUNDS {
        over_http.push(rate(|| {
            let resp = rt.block_on(
                http.post(format!("http://{addr}/api/v2/sql")).bearer_auth(TOKEN).header("content-type", "application/json").body(body.clone()).send(),
            )
            .unwrap();
            assert_eq!(resp.status(), 200);
            let v: serde_json::Value = rt.block_on(resp.json()).unwrap();
            assert_eq!(v["rows"].as_array().unwrap().len(), 112);
        }));
        inproc.push(rate(|| {
            let r = db.query_read_only(sql, &[], RowLimit::AtMost(10_000), None).unwrap();
            assert_eq!(r.rows.len(), 112);
        }));
    }
    let (i, h) = (median(inproc), median(over_http));
    println!("SQL aggregate over 10 M rows");
    println!("  in-process             {i:>12.2} queries/s");
    println!("  POST /api/v2/sql       {h:>12.2} queries/s  ratio {:.3} (target >= 0.9)", h / i);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Calls `f` for about a second; calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(1) {
        f();
        n += 1;
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
