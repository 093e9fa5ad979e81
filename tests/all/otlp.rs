//! OTLP/HTTP metrics ingest: a real OpenTelemetry SDK exporter against the real binary, partial
//! success for points a bearer may not write, and bad input.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as PbKeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde_json::{Value, json};

use crate::binary::{Server, TOKEN};
use crate::common::{ADMIN_TOKEN, GatewayOptions, TENANT_TOKEN, TempDir, TestGateway};

/// Sends a gauge, a counter and a histogram for (cluster, node) through the SDK's exporter.
fn export(endpoint: &str, protocol: Protocol, gzip: bool, cluster: &str, node: &str) {
    // The exporter's HTTP client is reqwest 0.13, whose rustls (as the OCI client enables it)
    // uses the process-wide provider.
    sluice::tls::install_provider();
    let mut builder = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(endpoint)
        .with_headers(HashMap::from([("authorization".to_owned(), format!("Bearer {TOKEN}"))]));
    if gzip {
        builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    let exporter = builder.build().unwrap();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_attributes([
            KeyValue::new("ingero.cluster.id", cluster.to_owned()),
            KeyValue::new("ingero.node.id", node.to_owned()),
            KeyValue::new("host.name", format!("host-of-{node}")),
        ])
        .build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(resource)
        .with_periodic_exporter(exporter)
        .build();
    let meter = provider.meter("sluice-test");
    meter.f64_gauge("ingero.node.health_score").build().record(0.875, &[KeyValue::new("gpu", "0")]);
    meter.u64_counter("gpu.kernel.launch.count").build().add(42, &[KeyValue::new("kernel", "gemm")]);
    let h = meter.f64_histogram("nccl.collective.duration_ms").build();
    h.record(12.5, &[]);
    h.record(30.0, &[]);
    // Shutting down exports once (a flush before it would export the cumulative values twice).
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_otel_exporter_lands_rows_with_the_right_cluster_node_names_and_values() {
    let dir = TempDir::new("otlp");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&dir, &[]);
    let endpoint = format!("{}/v1/metrics", server.api);
    let runs = [
        (Protocol::HttpBinary, false, "otel-proto"),
        (Protocol::HttpJson, false, "otel-json"),
        (Protocol::HttpBinary, true, "otel-gzip"),
    ];
    for (protocol, gzip, cluster) in runs {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || export(&endpoint, protocol, gzip, cluster, "node-7")).await.unwrap();
    }
    let http = reqwest::Client::new();
    let sql = "SELECT cluster_id, node_id, metric_name, value_double, host_attr, attributes FROM events \
               WHERE cluster_id LIKE 'otel-%' ORDER BY cluster_id, metric_name";
    let r: Value = http
        .post(format!("{}/api/v2/sql", server.api))
        .bearer_auth(TOKEN)
        .json(&json!({"sql": sql}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = r["rows"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(rows.len(), 9, "three metrics for each of three exports: {r}");
    for (_, _, cluster) in runs {
        let mine: Vec<&Value> = rows.iter().filter(|row| row[0] == cluster).collect();
        assert_eq!(mine.len(), 3, "{cluster}: {r}");
        let names: Vec<&str> = mine.iter().map(|row| row[2].as_str().unwrap()).collect();
        assert_eq!(names, ["gpu.kernel.launch.count", "ingero.node.health_score", "nccl.collective.duration_ms"]);
        for row in &mine {
            assert_eq!(row[0], *cluster);
            assert_eq!(row[1], "node-7");
            assert_eq!(row[4], "host-of-node-7");
        }
        assert_eq!(mine[0][3], 42.0);
        let attrs: Value = serde_json::from_str(mine[0][5].as_str().unwrap()).unwrap();
        assert_eq!(attrs["kernel"], "gemm");
        assert_eq!(mine[1][3], 0.875);
        assert_eq!(serde_json::from_str::<Value>(mine[1][5].as_str().unwrap()).unwrap()["gpu"], "0");
        // A histogram: the sum as the value, count and buckets in the attributes.
        assert_eq!(mine[2][3], 42.5);
        let h: Value = serde_json::from_str(mine[2][5].as_str().unwrap()).unwrap();
        assert_eq!(h["count"], 2);
        assert_eq!(h["min"], 12.5);
        assert_eq!(h["max"], 30.0);
        assert_eq!(h["bucket_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 2);
    }
    drop(server);
}

fn gauge_request(points: &[(&str, Option<&str>, f64)]) -> ExportMetricsServiceRequest {
    let kv = |k: &str, v: &str| PbKeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: points
            .iter()
            .map(|(node, cluster, value)| ResourceMetrics {
                resource: Some(Resource {
                    attributes: [Some(kv("ingero.node.id", node)), cluster.map(|c| kv("ingero.cluster.id", c))]
                        .into_iter()
                        .flatten()
                        .collect(),
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "ingero.node.health_score".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 1_767_225_600_000_000_000,
                                value: Some(number_data_point::Value::AsDouble(*value)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn count(gw: &TestGateway, sql: &str) -> i64 {
    gw.gateway.db().writer().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn points_a_bearer_may_not_write_are_rejected_as_partial_success() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    // The tenant bearer may write cluster-a only; a resource without a cluster is nobody's.
    let req = gauge_request(&[("n1", Some("cluster-a"), 0.9), ("n2", Some("cluster-b"), 0.8), ("n3", None, 0.7)]);
    let auth = format!("Bearer {TENANT_TOKEN}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/x-protobuf")];
    let r = gw.request_raw("POST", "/v1/metrics", &headers, req.encode_to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    let answer = ExportMetricsServiceResponse::decode(r.bytes.as_slice()).unwrap();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(!partial.error_message.is_empty());
    assert_eq!(count(&gw, "SELECT count(*) FROM events"), 1);
    assert_eq!(count(&gw, "SELECT count(*) FROM events WHERE cluster_id = 'cluster-a' AND node_id = 'n1' AND value_double = 0.9"), 1);

    // JSON in, JSON out; the admin may write any cluster.
    let body = serde_json::to_vec(&gauge_request(&[("n2", Some("cluster-b"), 0.8)])).unwrap();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let r = gw.request_raw("POST", "/v1/metrics", &headers, body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["partialSuccess"], Value::Null, "{}", r.text);
    assert_eq!(count(&gw, "SELECT count(*) FROM events WHERE cluster_id = 'cluster-b'"), 1);
    let audit = gw.audit_lines("otlp_ingest");
    assert_eq!(audit.len(), 2);
    assert_eq!((audit[0]["accepted"].clone(), audit[0]["rejected"].clone()), (json!(1), json!(2)));
}

#[tokio::test]
async fn bad_ingest_requests_get_clear_errors_and_write_nothing() {
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(|c| {
            c.ingest.max_body = sluice::config::ByteSize(64 << 10);
            c.ingest.max_uncompressed = sluice::config::ByteSize(256 << 10);
        }),
        ..Default::default()
    });
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let good = gauge_request(&[("n1", Some("cluster-a"), 0.9)]).encode_to_vec();
    let proto = [("authorization", auth.as_str()), ("content-type", "application/x-protobuf")];
    for (headers, body, status, code) in [
        (vec![("authorization", auth.as_str()), ("content-type", "text/plain")], good.clone(), 415, "unsupported_media_type"),
        (vec![("authorization", auth.as_str())], good.clone(), 415, "unsupported_media_type"),
        (
            vec![("authorization", auth.as_str()), ("content-type", "application/x-protobuf"), ("content-encoding", "br")],
            good.clone(),
            415,
            "unsupported_media_type",
        ),
        (proto.to_vec(), b"\xff\xff\xff not protobuf".to_vec(), 400, "invalid_request"),
        (vec![("authorization", auth.as_str()), ("content-type", "application/json")], b"{\"resourceMetrics\": 7}".to_vec(), 400, "invalid_request"),
        (
            vec![("authorization", auth.as_str()), ("content-type", "application/x-protobuf"), ("content-encoding", "gzip")],
            b"not gzip".to_vec(),
            400,
            "invalid_request",
        ),
        (proto.to_vec(), vec![0u8; 128 << 10], 413, "payload_too_large"),
        (vec![("content-type", "application/x-protobuf")], good.clone(), 401, "missing_bearer"),
    ] {
        gw.request_raw("POST", "/v1/metrics", &headers, body).await.assert_error(status, code);
    }
    // A gzip bomb: 40 KiB that inflate to 4 MiB, past the uncompressed cap.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![0u8; 4 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 64 << 10);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/x-protobuf"), ("content-encoding", "gzip")];
    let r = gw.request_raw("POST", "/v1/metrics", &headers, bomb).await;
    r.assert_error(400, "invalid_request");
    assert!(r.text.contains("larger than"), "{}", r.text);
    assert_eq!(count(&gw, "SELECT count(*) FROM events"), 0);
}

#[tokio::test]
async fn the_openapi_document_describes_both_encodings_of_the_ingest_body() {
    let gw = crate::common::TestGateway::start(crate::common::GatewayOptions { seed: false, ..Default::default() });
    let doc = gw.request("GET", "/api/v2/openapi.json", None).await.body;
    let body = &doc["paths"]["/v1/metrics"]["post"]["requestBody"];
    assert!(body["content"]["application/x-protobuf"].is_object(), "{body}");
    let json = &body["content"]["application/json"];
    assert_eq!(json["example"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["name"], "ingero.node.health_score", "{body}");
    // The example is a request the endpoint takes.
    let r = gw
        .request_raw("POST", "/v1/metrics", &[("authorization", &format!("Bearer {}", crate::common::ADMIN_TOKEN)), ("content-type", "application/json")], json["example"].to_string().into_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let stored: i64 = gw.gateway.db().writer().query_row("SELECT count(*) FROM events WHERE metric_name = 'ingero.node.health_score'", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 1);
}
