//! The `http` sink: sends each export (or part) to a URL, the envelope as the body.
//!
//! Settings: `url` (required), `method` (`POST`, the default, or `PUT`). Secrets: `token`
//! (sent as `Authorization: Bearer`). Each request carries `Idempotency-Key:
//! <export>/<generation>/<part>/<checksum prefix>` so a receiver can drop repeats. Requests go
//! through `wasi:http` directly (the body written after the request is handed over, then
//! finished). Answers:
//! 2xx delivered; 408, 429 and 5xx transient; 401 and other 4xx terminal; 403 forbidden; no
//! connection transient; refused by the host's policy terminal.

wit_bindgen::generate!({ path: "../../wit", world: "sink" });

use sluice::plugin::sink_types::{Capabilities, ErrorClass, Family};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct HttpSink;

fn setting<'a>(config: &'a SinkConfig, key: &str) -> Option<&'a str> {
    config.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn secret<'a>(config: &'a SinkConfig, key: &str) -> Option<&'a str> {
    config.secrets.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn error(class: ErrorClass, message: impl Into<String>) -> SinkError {
    SinkError { class, message: message.into() }
}

/// How a sent request failed to get an answer.
fn send_error(e: &ErrorCode) -> SinkError {
    match e {
        ErrorCode::HttpRequestDenied => {
            error(ErrorClass::Terminal, "the host refused the request: the URL's host is not allowed for this sink")
        }
        other => error(ErrorClass::Transient, format!("no answer: {other:?}")),
    }
}

/// How an answer's status is classified.
fn status_class(status: u16) -> Option<ErrorClass> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(ErrorClass::Transient),
        403 => Some(ErrorClass::Forbidden),
        _ => Some(ErrorClass::Terminal),
    }
}

/// `http://host:port/path?q` → scheme, authority, path and query.
fn split_url(url: &str) -> Option<(Scheme, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    (!authority.is_empty()).then_some((scheme, authority, path))
}

/// Sends one request with `wasi:http` and waits for the answer's status. The body is written in
/// full after the request is handed over, then finished; the host does TLS.
fn send(config: &SinkConfig, method: Method, headers: &[(&str, String)], body: Vec<u8>) -> Result<u16, SinkError> {
    let url = setting(config, "url").ok_or_else(|| error(ErrorClass::Terminal, "the `url` setting is missing"))?;
    let (scheme, authority, path) =
        split_url(url).ok_or_else(|| error(ErrorClass::Terminal, format!("`url` {url:?} is not an http(s) URL")))?;
    let mut fields: Vec<(String, Vec<u8>)> = headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone().into_bytes())).collect();
    fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    if let Some(token) = secret(config, "token") {
        fields.push(("authorization".into(), format!("Bearer {token}").into_bytes()));
    }
    let fields = Fields::from_list(&fields).map_err(|e| error(ErrorClass::Terminal, format!("bad header: {e:?}")))?;
    let bad = |what: &str| error(ErrorClass::Terminal, format!("bad {what} in {url:?}"));
    let req = OutgoingRequest::new(fields);
    req.set_method(&method).map_err(|()| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    req.set_authority(Some(authority)).map_err(|()| bad("host"))?;
    req.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let out = req.body().map_err(|()| bad("body"))?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| send_error(&e))?;
    {
        let stream = out.write().map_err(|()| bad("body"))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| error(ErrorClass::Transient, format!("sending the body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(|e| send_error(&e))?;
    pending.subscribe().block();
    let answer = pending
        .get()
        .ok_or_else(|| error(ErrorClass::Transient, "no answer"))?
        .map_err(|()| error(ErrorClass::Transient, "no answer"))?
        .map_err(|e| send_error(&e))?;
    Ok(answer.status())
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
        let status = send(&config, Method::Get, &[], Vec::new())?;
        match status_class(status) {
            // Reachable and authorised is all a probe asks; some receivers answer HEAD with 404/405.
            None | Some(ErrorClass::Terminal) if status != 401 => Ok(format!("reachable (HTTP {status})")),
            Some(class) => Err(error(class, format!("probe answered HTTP {status}"))),
            None => Ok(format!("reachable (HTTP {status})")),
        }
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        let method = match setting(&config, "method").unwrap_or("POST") {
            m if m.eq_ignore_ascii_case("POST") => Method::Post,
            m if m.eq_ignore_ascii_case("PUT") => Method::Put,
            other => return Err(error(ErrorClass::Terminal, format!("method {other:?} is not POST or PUT"))),
        };
        let key = format!(
            "{}/{}/{}/{}",
            request.export,
            request.generation,
            request.part_index,
            &request.checksum[..request.checksum.len().min(12)]
        );
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", key),
            ("x-sluice-export", request.export.clone()),
            ("x-sluice-part", format!("{}/{}", request.part_index, request.part_total)),
        ];
        let status = send(&config, method, &headers, request.payload)?;
        match status_class(status) {
            None => Ok(Receipt { location: format!("{} (HTTP {status})", setting(&config, "url").unwrap_or_default()) }),
            Some(class) => Err(error(class, format!("the receiver answered HTTP {status}"))),
        }
    }
}

export!(HttpSink);
