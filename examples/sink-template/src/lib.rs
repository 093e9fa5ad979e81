//! A Sluice sink: sends each export envelope to the URL in its `url` setting (POST), with the
//! `token` secret as a bearer. Answers 2xx: delivered; 408, 429, 5xx or no answer: transient
//! (retried); 403: forbidden; anything else: terminal.

wit_bindgen::generate!({ path: "wit", world: "sink" });

use sluice::plugin::sink_types::{Capabilities, ErrorClass, Family};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct Sink;

fn fail(class: ErrorClass, message: impl Into<String>) -> SinkError {
    SinkError { class, message: message.into() }
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Sends `body` to the configured URL and returns the answer's status.
fn send(config: &SinkConfig, method: Method, mut headers: Vec<(String, Vec<u8>)>, body: &[u8]) -> Result<u16, SinkError> {
    let url = get(&config.settings, "url").ok_or_else(|| fail(ErrorClass::Terminal, "the `url` setting is missing"))?;
    let (scheme, rest) = url.split_once("://").ok_or_else(|| fail(ErrorClass::Terminal, "`url` needs http:// or https://"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    headers.push(("content-length".into(), body.len().to_string().into_bytes()));
    if let Some(token) = get(&config.secrets, "token") {
        headers.push(("authorization".into(), format!("Bearer {token}").into_bytes()));
    }
    let bad = |what: &str| fail(ErrorClass::Terminal, format!("bad {what} in {url}"));
    let req = OutgoingRequest::new(Fields::from_list(&headers).map_err(|_| bad("header"))?);
    req.set_method(&method).map_err(|()| bad("method"))?;
    req.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http })).map_err(|()| bad("scheme"))?;
    req.set_authority(Some(authority)).map_err(|()| bad("host"))?;
    req.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let out = req.body().map_err(|()| bad("body"))?;
    let unanswered = |e: ErrorCode| match e {
        ErrorCode::HttpRequestDenied => fail(ErrorClass::Terminal, format!("the gateway does not allow {url}")),
        other => fail(ErrorClass::Transient, format!("no answer from {url}: {other:?}")),
    };
    let pending = outgoing_handler::handle(req, None).map_err(unanswered)?;
    {
        let stream = out.write().map_err(|()| bad("body"))?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| fail(ErrorClass::Transient, format!("{e:?}")))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(unanswered)?;
    pending.subscribe().block();
    let answer = pending.get().and_then(Result::ok).ok_or_else(|| fail(ErrorClass::Transient, "no answer"))?;
    Ok(answer.map_err(unanswered)?.status())
}

fn classify(status: u16) -> Result<u16, SinkError> {
    match status {
        200..=299 => Ok(status),
        408 | 429 | 500..=599 => Err(fail(ErrorClass::Transient, format!("HTTP {status}"))),
        403 => Err(fail(ErrorClass::Forbidden, "HTTP 403")),
        _ => Err(fail(ErrorClass::Terminal, format!("HTTP {status}"))),
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
        let status = send(&config, Method::Get, Vec::new(), &[])?;
        classify(status).or_else(|e| if status == 404 || status == 405 { Ok(status) } else { Err(e) })?;
        Ok(format!("reachable (HTTP {status})"))
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        let key = format!("{}/{}/{}", request.export, request.generation, request.part_index);
        let headers = vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("idempotency-key".into(), key.into_bytes()),
        ];
        let status = classify(send(&config, Method::Post, headers, &request.payload)?)?;
        Ok(Receipt { location: format!("{} (HTTP {status})", get(&config.settings, "url").unwrap_or_default()) })
    }
}

export!(Sink);
