//! A Sluice sink: sends each export envelope to the URL in its `url` setting (POST), with the
//! `token` secret as a bearer. Answers 2xx: delivered; 408, 429, 5xx or no answer: transient
//! (retried); 403: forbidden; anything else: terminal.
//!
//! `sluice-sink-common` (the sink kit) gives the `sink` world's types and `export_sink!`,
//! settings, secrets and errors, and one HTTP request over `wasi:http`.

use sluice_sink_common::HttpMethod as Method;
use sluice_sink_common::*;

struct Sink;

/// Sends `body` to the configured URL and returns the answer's status, classified.
fn send_to(config: &SinkConfig, method: Method, mut headers: Vec<(&str, String)>, body: &[u8]) -> Result<u16, SinkError> {
    let url = required(config, "url")?;
    if let Some(token) = secret(config, "token") {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    let status = send(method, url, &headers, body).map_err(|e| unanswered(e, url))?;
    match http_status_class(status) {
        None => Ok(status),
        Some(class) => Err(error(class, format!("{url} answered HTTP {status}"))),
    }
}

impl Guest for Sink {
    fn describe() -> SinkInfo {
        SinkInfo {
            sink_type: "example-hook".into(),
            family: Family::Snapshot,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sends each export envelope to a URL.".into(),
            capabilities: Capabilities { stream: false, supports_delete: true, object_store: false, accepts_parts: true },
            formats: vec!["json".into()],
        }
    }

    fn probe(config: SinkConfig) -> Result<String, SinkError> {
        // Reachable is all a probe asks; many receivers answer GET with 404 or 405.
        match send_to(&config, Method::Get, Vec::new(), &[]) {
            Err(e) if e.class == ErrorClass::Terminal && (e.message.ends_with(" 404") || e.message.ends_with(" 405")) => {
                Ok("reachable".into())
            }
            other => other.map(|status| format!("reachable (HTTP {status})")),
        }
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        let key = format!("{}/{}/{}", request.export, request.generation, request.part_index);
        let headers = vec![("content-type", "application/json".to_owned()), ("idempotency-key", key)];
        let status = send_to(&config, Method::Post, headers, &request.payload)?;
        Ok(Receipt { location: format!("{} (HTTP {status})", setting(&config, "url").unwrap_or_default()) })
    }
}

export_sink!(Sink);
