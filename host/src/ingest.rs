//! OTLP/HTTP metrics ingest: an `ExportMetricsServiceRequest` (protobuf or JSON, optionally
//! gzip) becomes rows of `events`.
//!
//! Each data point of a gauge, a sum or a histogram is one row: `ts` from `time_unix_nano`,
//! `cluster_id` and `node_id` from the resource attributes `ingero.cluster.id` and
//! `ingero.node.id`, `host_attr` from `host.name`, `metric_name` from the metric, `value_double`
//! from the point (a histogram's `sum`), and the point's attributes as a JSON object in
//! `attributes` (a histogram adds `count`, `bucket_counts`, `explicit_bounds`, `min`, `max`).
//! Points that cannot be placed (no cluster or node, a cluster outside the caller's scope, a
//! type Sluice does not store) are rejected and counted, as OTLP's partial success wants.

use std::io::Read as _;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;
use serde_json::{Map, Value as Json};

/// The resource attribute naming a point's cluster.
pub const CLUSTER_ATTR: &str = "ingero.cluster.id";
/// The resource attribute naming a point's node.
pub const NODE_ATTR: &str = "ingero.node.id";

/// One row for `events`. The names a resource's points share are shared, not copied.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Microseconds since the epoch.
    pub ts: i64,
    pub cluster_id: Arc<str>,
    pub node_id: Arc<str>,
    pub metric_name: Arc<str>,
    pub value: Option<f64>,
    pub host: Option<Arc<str>>,
    /// A JSON object.
    pub attributes: String,
}

/// How the request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Why a request could not be read at all (400, or 415 for the encoding).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    ContentType(String),
    #[error("unsupported content encoding {0:?}: send identity or gzip")]
    ContentEncoding(String),
    #[error("the body is not valid gzip: {0}")]
    Gzip(std::io::Error),
    #[error("the uncompressed body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body is not an OTLP ExportMetricsServiceRequest: {0}")]
    Invalid(String),
}

/// The encoding a `Content-Type` names.
pub fn encoding_of(content_type: Option<&str>) -> Result<Encoding, DecodeError> {
    let ct = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match ct.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(DecodeError::ContentType(ct)),
    }
}

/// Decodes a body: `gzip` when `content_encoding` says so, never more than `max` bytes once
/// uncompressed (a small gzip body can expand enormously).
pub fn decode(
    body: &[u8],
    encoding: Encoding,
    content_encoding: Option<&str>,
    max: usize,
) -> Result<ExportMetricsServiceRequest, DecodeError> {
    let inflated;
    let raw = match content_encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => body,
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(DecodeError::Gzip)?;
            if out.len() > max {
                return Err(DecodeError::TooLarge(max));
            }
            inflated = out;
            &inflated
        }
        Some(other) => return Err(DecodeError::ContentEncoding(other.to_owned())),
    };
    match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(raw).map_err(|e| DecodeError::Invalid(e.to_string())),
        Encoding::Json => serde_json::from_slice(raw).map_err(|e| DecodeError::Invalid(e.to_string())),
    }
}

/// The rows of a request, and how many points were rejected and why (the first reason).
#[derive(Debug, Default)]
pub struct Converted {
    pub rows: Vec<EventRow>,
    pub rejected: i64,
    pub reason: Option<String>,
}

impl Converted {
    fn reject(&mut self, n: usize, why: impl FnOnce() -> String) {
        if n > 0 {
            self.rejected += n as i64;
            self.reason.get_or_insert_with(why);
        }
    }
}

fn any_to_json(v: &AnyValue) -> Json {
    match &v.value {
        None => Json::Null,
        Some(any_value::Value::StringValue(s)) => Json::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Json::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Json::from(*i),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Some(any_value::Value::ArrayValue(a)) => Json::Array(a.values.iter().map(any_to_json).collect()),
        Some(any_value::Value::KvlistValue(kv)) => Json::Object(attrs_to_map(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Json::String(hex::encode(b)),
        #[allow(unreachable_patterns)] // Newer OTLP versions add kinds; they are kept as null.
        Some(_) => Json::Null,
    }
}

fn attrs_to_map(attrs: &[KeyValue]) -> Map<String, Json> {
    attrs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Json::Null, any_to_json))).collect()
}

/// Writes attributes as a JSON object straight into a string (strings, numbers and booleans
/// without an intermediate map; nested values through `serde_json::Value`), with `extra` pairs
/// appended.
fn attrs_json(attrs: &[KeyValue], extra: &[(&str, Json)]) -> String {
    let mut out = Vec::with_capacity(16 + attrs.len() * 24);
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k).expect("writing to a Vec");
        out.push(b':');
    };
    for kv in attrs {
        key(&mut out, &kv.key);
        let written = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => serde_json::to_writer(&mut out, s),
            Some(any_value::Value::IntValue(i)) => serde_json::to_writer(&mut out, i),
            Some(any_value::Value::BoolValue(b)) => serde_json::to_writer(&mut out, b),
            _ => serde_json::to_writer(&mut out, &kv.value.as_ref().map_or(Json::Null, any_to_json)),
        };
        written.expect("writing to a Vec");
    }
    for (k, v) in extra {
        key(&mut out, k);
        serde_json::to_writer(&mut out, v).expect("writing to a Vec");
    }
    out.push(b'}');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

fn micros(nanos: u64) -> i64 {
    (nanos / 1000).min(i64::MAX as u64) as i64
}

/// Turns a request into rows. `allowed` lists the clusters the caller may write (empty: any).
pub fn convert(req: &ExportMetricsServiceRequest, allowed: &[String]) -> Converted {
    let mut out = Converted::default();
    for rm in &req.resource_metrics {
        let resource = rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        let points: usize = rm
            .scope_metrics
            .iter()
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(metric::Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum();
        let (Some(cluster), Some(node)) = (attr_str(resource, CLUSTER_ATTR), attr_str(resource, NODE_ATTR)) else {
            out.reject(points, || format!("resource without the {CLUSTER_ATTR} and {NODE_ATTR} attributes"));
            continue;
        };
        if cluster.is_empty() || node.is_empty() {
            out.reject(points, || format!("empty {CLUSTER_ATTR} or {NODE_ATTR}"));
            continue;
        }
        if !allowed.is_empty() && !allowed.iter().any(|c| c == cluster) {
            out.reject(points, || format!("cluster {cluster:?} is outside this bearer's clusters"));
            continue;
        }
        let host: Option<Arc<str>> = attr_str(resource, "host.name").map(Arc::from);
        let (cluster, node): (Arc<str>, Arc<str>) = (Arc::from(cluster), Arc::from(node));
        let row = |ts: u64, name: &Arc<str>, value: Option<f64>, attributes: String| EventRow {
            ts: micros(ts),
            cluster_id: cluster.clone(),
            node_id: node.clone(),
            metric_name: name.clone(),
            value,
            host: host.clone(),
            attributes,
        };
        let mut rows = Vec::new();
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let name: Arc<str> = Arc::from(m.name.as_str());
            let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                Some(number_data_point::Value::AsDouble(d)) => Some(d),
                Some(number_data_point::Value::AsInt(i)) => Some(i as f64),
                None => None,
            };
            match &m.data {
                Some(metric::Data::Gauge(g)) => {
                    rows.extend(g.data_points.iter().map(|p| row(p.time_unix_nano, &name, number(p), attrs_json(&p.attributes, &[]))));
                }
                Some(metric::Data::Sum(s)) => {
                    rows.extend(s.data_points.iter().map(|p| row(p.time_unix_nano, &name, number(p), attrs_json(&p.attributes, &[]))));
                }
                Some(metric::Data::Histogram(h)) => {
                    rows.extend(h.data_points.iter().map(|p| {
                        let extra = [
                            ("count", Json::from(p.count)),
                            ("bucket_counts", Json::from(p.bucket_counts.clone())),
                            ("explicit_bounds", Json::from(p.explicit_bounds.clone())),
                            ("min", Json::from(p.min)),
                            ("max", Json::from(p.max)),
                        ];
                        row(p.time_unix_nano, &name, p.sum, attrs_json(&p.attributes, &extra))
                    }));
                }
                Some(metric::Data::ExponentialHistogram(h)) => {
                    out.reject(h.data_points.len(), || format!("{}: exponential histograms are not stored", m.name));
                }
                Some(metric::Data::Summary(s)) => {
                    out.reject(s.data_points.len(), || format!("{}: summaries are not stored", m.name));
                }
                None => {}
            }
        }
        out.rows.extend(rows);
    }
    out
}

/// The OTLP response: partial success when anything was rejected.
pub fn response(rejected: i64, reason: Option<String>, encoding: Encoding) -> Vec<u8> {
    let resp = ExportMetricsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected,
            error_message: reason.unwrap_or_default(),
        }),
    };
    match encoding {
        Encoding::Protobuf => resp.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&resp).expect("the response serialises"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
    }

    fn request(cluster: Option<&str>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        let mut attributes = vec![kv(NODE_ATTR, any_value::Value::StringValue("n1".into()))];
        if let Some(c) = cluster {
            attributes.push(kv(CLUSTER_ATTR, any_value::Value::StringValue(c.into())));
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource { attributes, ..Default::default() }),
                scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn metric(name: &str, data: metric::Data) -> Metric {
        Metric { name: name.into(), data: Some(data), ..Default::default() }
    }

    #[test]
    fn sums_histograms_and_attributes_become_rows_and_unstored_kinds_are_counted() {
        let sum = Sum {
            data_points: vec![opentelemetry_proto::tonic::metrics::v1::NumberDataPoint {
                time_unix_nano: 1_500_000_000_123,
                value: Some(number_data_point::Value::AsInt(7)),
                attributes: vec![
                    kv("s", any_value::Value::StringValue("x\"y".into())),
                    kv("i", any_value::Value::IntValue(-3)),
                    kv("b", any_value::Value::BoolValue(true)),
                    kv("d", any_value::Value::DoubleValue(0.5)),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let hist = Histogram {
            data_points: vec![HistogramDataPoint {
                time_unix_nano: 2_000_000_000,
                count: 3,
                sum: Some(9.0),
                bucket_counts: vec![1, 2],
                explicit_bounds: vec![5.0],
                ..Default::default()
            }],
            ..Default::default()
        };
        let exp = ExponentialHistogram { data_points: vec![ExponentialHistogramDataPoint::default(); 2], ..Default::default() };
        let summary = Summary { data_points: vec![SummaryDataPoint::default()] };
        let req = request(
            Some("c1"),
            vec![
                metric("launches", metric::Data::Sum(sum)),
                metric("latency", metric::Data::Histogram(hist)),
                metric("exp", metric::Data::ExponentialHistogram(exp)),
                metric("sum", metric::Data::Summary(summary)),
            ],
        );
        let out = convert(&req, &[]);
        assert_eq!(out.rows.len(), 2);
        assert_eq!(out.rejected, 3);
        assert!(out.reason.unwrap().contains("exponential histograms"));
        let r = &out.rows[0];
        assert_eq!((r.ts, &*r.cluster_id, &*r.node_id, &*r.metric_name, r.value), (1_500_000_000, "c1", "n1", "launches", Some(7.0)));
        let attrs: Json = serde_json::from_str(&r.attributes).unwrap();
        assert_eq!(attrs, serde_json::json!({"s": "x\"y", "i": -3, "b": true, "d": 0.5}));
        let h = &out.rows[1];
        assert_eq!(h.value, Some(9.0));
        let attrs: Json = serde_json::from_str(&h.attributes).unwrap();
        assert_eq!(attrs["count"], 3);
        assert_eq!(attrs["bucket_counts"], serde_json::json!([1, 2]));

        // No cluster: every point of the resource is rejected; a scoped writer, likewise for others.
        let none = convert(&request(None, vec![metric("latency", metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint::default(); 4],
            ..Default::default()
        }))]), &[]);
        assert_eq!((none.rows.len(), none.rejected), (0, 4));
        let foreign = convert(&req, &["c2".to_owned()]);
        assert_eq!((foreign.rows.len(), foreign.rejected), (0, 5));
    }

    #[test]
    fn decoding_refuses_unknown_types_encodings_and_bombs() {
        assert!(matches!(encoding_of(Some("text/plain")), Err(DecodeError::ContentType(_))));
        assert_eq!(encoding_of(Some("application/json; charset=utf-8")).unwrap(), Encoding::Json);
        let body = request(Some("c"), vec![]).encode_to_vec();
        assert!(matches!(decode(&body, Encoding::Protobuf, Some("br"), 1 << 20), Err(DecodeError::ContentEncoding(_))));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &vec![0u8; 10_000]).unwrap();
        let gz = gz.finish().unwrap();
        assert!(matches!(decode(&gz, Encoding::Protobuf, Some("gzip"), 1000), Err(DecodeError::TooLarge(1000))));
        assert_eq!(decode(&body, Encoding::Protobuf, None, 1 << 20).unwrap(), request(Some("c"), vec![]));
    }
}
