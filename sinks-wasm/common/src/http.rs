//! One HTTP request over `wasi:http`, as sinks send them: the request handed to the
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
    exchange(method, url, headers, body, 0).map(|(status, _)| status)
}

/// Sends one request and returns the answer's status and up to `max_body` bytes of its body
/// (a longer body is an error: the sink asked for less than the server sent).
pub fn exchange(method: Method, url: &str, headers: &[(&str, String)], body: &[u8], max_body: usize) -> Result<(u16, Vec<u8>), SendError> {
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
    let status = answer.status();
    let mut received = Vec::new();
    if max_body > 0 {
        let incoming = answer.consume().map_err(|()| SendError::Unanswered("the answer has no body".into()))?;
        {
            let stream = incoming.stream().map_err(|()| SendError::Unanswered("the answer has no body".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        received.extend_from_slice(&chunk);
                        if received.len() > max_body {
                            return Err(SendError::Unanswered(format!("the answer is over {max_body} bytes")));
                        }
                    }
                    Err(wasip2::io::streams::StreamError::Closed) => break,
                    Err(e) => return Err(SendError::Unanswered(format!("reading the answer: {e:?}"))),
                }
            }
        }
        wasip2::http::types::IncomingBody::finish(incoming);
    }
    Ok((status, received))
}

/// The addresses of `host` (an IP literal, or a name resolved through `wasi:sockets`, which the
/// host allows only for sinks whose settings name a host rather than an address).
pub fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use wasip2::sockets::{instance_network, ip_name_lookup, network::IpAddress};
    let bare = host.trim_matches(['[', ']']);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let network = instance_network::instance_network();
    let stream = ip_name_lookup::resolve_addresses(&network, bare).map_err(|e| format!("resolving {bare}: {e:?}"))?;
    let mut out = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)),
            Ok(Some(IpAddress::Ipv6(s))) => {
                out.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::new(s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7)), port))
            }
            Ok(None) => break,
            Err(wasip2::sockets::network::ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(e) => return Err(format!("resolving {bare}: {e:?}")),
        }
    }
    if out.is_empty() { Err(format!("{bare} has no address")) } else { Ok(out) }
}
