//! The `http` sink: sends each export (or part) to a URL, the envelope as the body.
//!
//! Settings: `url` (required), `method` (`POST`, the default, or `PUT`). Secrets: `token`
//! (sent as `Authorization: Bearer`). Each request carries `Idempotency-Key:
//! <export>/<generation>/<part>/<checksum prefix>` so a receiver can drop repeats. Answers:
//! 2xx delivered; 408, 429 and 5xx transient; 401 and other 4xx terminal; 403 forbidden; no
//! connection transient; refused by the host's policy terminal.

use sluice_sink_common::HttpMethod as Method;
use sluice_sink_common::*;

struct HttpSink;

/// Sends to the configured URL, with the bearer when a `token` secret is set.
fn request(config: &SinkConfig, method: Method, mut headers: Vec<(&str, String)>, body: &[u8]) -> Result<u16, SinkError> {
    let url = required(config, "url")?;
    if let Some(token) = secret(config, "token") {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    send(method, url, &headers, body).map_err(|e| unanswered(e, url))
}

impl Guest for HttpSink {
    fn describe() -> SinkInfo {
        SinkInfo {
            sink_type: "http".into(),
            family: Family::Snapshot,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sends each export envelope to a URL (POST or PUT), with an idempotency key.".into(),
            capabilities: Capabilities { stream: false, supports_delete: true, object_store: false, accepts_parts: true },
            formats: vec!["json".into()],
        }
    }

    fn probe(config: SinkConfig) -> Result<String, SinkError> {
        let status = request(&config, Method::Get, Vec::new(), &[])?;
        match http_status_class(status) {
            // Reachable and authorised is all a probe asks; some receivers answer GET with 404/405.
            Some(class) if status == 401 || status == 403 || class == ErrorClass::Transient => {
                Err(error(class, format!("probe answered HTTP {status}")))
            }
            _ => Ok(format!("reachable (HTTP {status})")),
        }
    }

    fn export(config: SinkConfig, request_: ExportRequest) -> Result<Receipt, SinkError> {
        let method = match setting(&config, "method").unwrap_or("POST") {
            m if m.eq_ignore_ascii_case("POST") => Method::Post,
            m if m.eq_ignore_ascii_case("PUT") => Method::Put,
            other => return Err(error(ErrorClass::Terminal, format!("method {other:?} is not POST or PUT"))),
        };
        let r = &request_;
        let key = format!("{}/{}/{}/{}", r.export, r.generation, r.part_index, &r.checksum[..r.checksum.len().min(12)]);
        let headers = vec![
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", key),
            ("x-sluice-export", r.export.clone()),
            ("x-sluice-part", format!("{}/{}", r.part_index, r.part_total)),
        ];
        let status = request(&config, method, headers, &r.payload)?;
        match http_status_class(status) {
            None => Ok(Receipt { location: format!("{} (HTTP {status})", setting(&config, "url").unwrap_or_default()) }),
            Some(class) => Err(error(class, format!("the receiver answered HTTP {status}"))),
        }
    }
}

export_sink!(HttpSink);
