//! The `s3` sink: writes each export to an S3-compatible object store with one presigned
//! (SigV4) PUT: `<prefix>exports/<export>.json`, or
//! `<prefix>exports/<export>/part-<i>-of-<n>.json` for a part. Deterministic keys make retries
//! idempotent. The probe is HeadBucket.
//!
//! Settings: `endpoint` (e.g. `https://s3.eu-west-1.amazonaws.com`), `bucket`, `region`
//! (default `us-east-1`), `prefix` (default empty), `url_style` (`path`, the default, or
//! `virtual`). Secrets: `access_key`, `secret_key`.

use sluice_sink_common::*;

use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sluice_sink_common::{HttpMethod as Method, SendError, send};

struct S3Sink;

/// How long a presigned request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// The bucket and credentials of a configuration.
fn bucket(config: &SinkConfig) -> Result<(Bucket, Credentials), SinkError> {
    let endpoint = setting(config, "endpoint").ok_or_else(|| terminal("the `endpoint` setting is missing"))?;
    let name = setting(config, "bucket").ok_or_else(|| terminal("the `bucket` setting is missing"))?;
    let region = setting(config, "region").unwrap_or("us-east-1");
    let style = match setting(config, "url_style").unwrap_or("path") {
        "path" => UrlStyle::Path,
        "virtual" => UrlStyle::VirtualHost,
        other => return Err(terminal(format!("url_style {other:?} is not `path` or `virtual`"))),
    };
    let endpoint = url::Url::parse(endpoint).map_err(|e| terminal(format!("endpoint {endpoint:?}: {e}")))?;
    let bucket = Bucket::new(endpoint, style, name.to_owned(), region.to_owned())
        .map_err(|e| terminal(format!("bucket {name:?}: {e}")))?;
    let key = secret(config, "access_key").ok_or_else(|| terminal("the `access_key` secret is missing"))?;
    let secret = secret(config, "secret_key").ok_or_else(|| terminal("the `secret_key` secret is missing"))?;
    Ok((bucket, Credentials::new(key, secret)))
}

/// S3's answers: 2xx done; 403 forbidden; 404 (no such bucket) and other 4xx terminal; 408, 429,
/// 5xx and no answer transient.
fn classify(result: Result<u16, SendError>, what: &str) -> Result<u16, SinkError> {
    let status = result.map_err(|e| match e {
        SendError::Invalid(m) => terminal(m),
        SendError::Denied => terminal("the host refused the request: the endpoint is not allowed for this sink"),
        SendError::Unanswered(m) => error(ErrorClass::Transient, format!("{what}: no answer: {m}")),
    })?;
    match status {
        200..=299 => Ok(status),
        408 | 429 | 500..=599 => Err(error(ErrorClass::Transient, format!("{what}: HTTP {status}"))),
        401 => Err(terminal(format!("{what}: HTTP 401, the credentials were refused"))),
        403 => Err(error(ErrorClass::Forbidden, format!("{what}: HTTP 403"))),
        404 => Err(terminal(format!("{what}: HTTP 404, no such bucket"))),
        _ => Err(terminal(format!("{what}: HTTP {status}"))),
    }
}

/// The object key of an export or part.
fn object_key(prefix: &str, r: &ExportRequest) -> String {
    if r.part_total <= 1 {
        format!("{prefix}exports/{}.json", r.export)
    } else {
        format!("{prefix}exports/{}/part-{}-of-{}.json", r.export, r.part_index + 1, r.part_total)
    }
}

impl Guest for S3Sink {
    fn describe() -> SinkInfo {
        SinkInfo {
            sink_type: "s3".into(),
            family: Family::Snapshot,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Writes each export to an S3-compatible object store (SigV4, path-style or virtual-host).".into(),
            capabilities: Capabilities { stream: false, supports_delete: true, object_store: true, accepts_parts: true },
            formats: vec!["json".into()],
        }
    }

    fn probe(config: SinkConfig) -> Result<String, SinkError> {
        let (bucket, creds) = bucket(&config)?;
        let url = bucket.head_bucket(Some(&creds)).sign(SIGNED_FOR);
        let status = classify(send(Method::Head, url.as_str(), &[], &[]), "HeadBucket")?;
        Ok(format!("bucket {} reachable (HTTP {status})", bucket.name()))
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        let (bucket, creds) = bucket(&config)?;
        let key = object_key(setting(&config, "prefix").unwrap_or(""), &request);
        let url = bucket.put_object(Some(&creds), &key).sign(SIGNED_FOR);
        classify(send(Method::Put, url.as_str(), &[("content-type", "application/json".into())], &request.payload), "PutObject")?;
        Ok(Receipt { location: format!("s3://{}/{key}", bucket.name()) })
    }
}

export_sink!(S3Sink);
