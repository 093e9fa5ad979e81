//! One HTTP request over `wasi:http`, as the bundled sinks send them: the request handed to the
//! host first, then the body written in full and finished, then the answer awaited. (The host
//! checks the destination against the sink's configuration and does TLS.)

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

pub use wasip2::http::types::Method as HttpMethod;

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    /// The request cannot be made as given (URL, header): a configuration problem.
    Invalid(String),
    /// The host refused it: the destination is not allowed for this sink.
    Denied,
    /// No answer (connection, timeout, ...): worth retrying.
    Unanswered(String),
}

/// `http(s)://authority/path?query` → its parts.
pub fn split_url(url: &str) -> Option<(Scheme, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    (!authority.is_empty()).then_some((scheme, authority, path))
}

/// Sends one request and returns the answer's status.
pub fn send(method: Method, url: &str, headers: &[(&str, String)], body: &[u8]) -> Result<u16, SendError> {
    let (scheme, authority, path) =
        split_url(url).ok_or_else(|| SendError::Invalid(format!("{url:?} is not an http(s) URL")))?;
    let mut fields: Vec<(String, Vec<u8>)> = headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone().into_bytes())).collect();
    fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    let bad = |what: &str| SendError::Invalid(format!("bad {what} in {url:?}"));
    let req = OutgoingRequest::new(Fields::from_list(&fields).map_err(|e| SendError::Invalid(format!("bad header: {e:?}")))?);
    req.set_method(&method).map_err(|()| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    req.set_authority(Some(authority)).map_err(|()| bad("host"))?;
    req.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let out = req.body().map_err(|()| bad("body"))?;
    let unanswered = |e: ErrorCode| match e {
        ErrorCode::HttpRequestDenied => SendError::Denied,
        other => SendError::Unanswered(format!("{other:?}")),
    };
    let pending = outgoing_handler::handle(req, None).map_err(unanswered)?;
    {
        let stream = out.write().map_err(|()| bad("body"))?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| SendError::Unanswered(format!("sending the body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(unanswered)?;
    pending.subscribe().block();
    let answer = pending
        .get()
        .ok_or_else(|| SendError::Unanswered("no answer".into()))?
        .map_err(|()| SendError::Unanswered("no answer".into()))?
        .map_err(unanswered)?;
    Ok(answer.status())
}
