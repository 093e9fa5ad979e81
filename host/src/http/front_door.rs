//! The front door: the service every API request enters before routing, in the contract's order:
//!
//! 1. drain gate: once draining, 503 `shutting_down` (`Retry-After: 5`); admitted requests are
//!    counted so the drain can wait for them (the same count is the process's in-flight cap);
//! 2. request id (`X-Request-Id` on every response) and metrics under the route template;
//! 3. bearer auth (except public routes): [`Caller`] for the handlers, 401 otherwise;
//! 4. the bearer's token bucket and in-flight caps;
//!
//! then the router. It is a hand-written service rather than `axum::middleware::from_fn` layered
//! onto each route: a request pays for no boxed `Next`, no per-route service clone and no shared
//! counter it does not need. On two busy cores every shared atomic a request touches is a cache
//! line travelling between them, which is most of what a middleware stack costs here.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;

use super::{ApiError, AppState, X_REQUEST_ID};
use crate::audit::AuditEvent;
use crate::auth::Identity;
use crate::metrics::{HttpRouteMetrics, method_index};
use crate::ratelimit::{Admission, Rejection};

/// The request's id: 16 lowercase hex characters, also in every log and audit line about it.
///
/// Ids never repeat within a process (a counter run through a keyed bijection) and are not
/// guessable across processes (the key is random). Each thread takes counter values in blocks,
/// so generating one touches no memory shared with other threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

impl RequestId {
    /// A fresh id.
    pub fn generate() -> Self {
        const BLOCK: u64 = 1 << 16;
        static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
        static KEY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
        thread_local! {
            static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let n = RANGE.with(|r| {
            let (mut next, mut end) = r.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
                end = next + BLOCK;
            }
            r.set((next + 1, end));
            next
        });
        let (k1, k2) = *KEY.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let s = std::collections::hash_map::RandomState::new();
            let mut a = s.build_hasher();
            a.write_u8(1);
            let mut b = s.build_hasher();
            b.write_u8(2);
            (a.finish(), b.finish())
        });
        // xor, odd multiplications and xor-shifts are each invertible, so distinct counters
        // give distinct ids.
        let mut x = n ^ k1;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        Self(x.wrapping_add(k2))
    }

    fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    /// The id as a header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_bytes(&self.hex()).expect("hex is a valid header value")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).expect("hex is ASCII"))
    }
}

/// The authenticated caller of a request, for handlers and audit lines.
#[derive(Debug, Clone)]
pub struct Caller {
    pub req_id: RequestId,
    pub identity: Arc<Identity>,
    pub source_ip: Option<IpAddr>,
}

impl Caller {
    /// An audit event pre-filled with who, from where and which request.
    pub fn audit(&self, event: &'static str) -> AuditEvent {
        AuditEvent {
            req_id: Some(self.req_id.to_string()),
            bearer_hash: Some(self.identity.bearer_hash.clone()),
            bearer_key_name: Some(self.identity.key_name.clone()),
            source_ip: self.source_ip,
            ..AuditEvent::new(event)
        }
    }
}

/// A route template and what the front door knows about it.
struct RouteEntry {
    /// Served without a bearer.
    public: bool,
    metrics: HttpRouteMetrics,
}

/// The route templates, matched the way the router matches them (the same `matchit` syntax),
/// so a request is metered under its template before routing.
struct RouteTable {
    matcher: matchit::Router<usize>,
    entries: Vec<RouteEntry>,
}

impl RouteTable {
    const UNMATCHED: usize = 0;

    fn new(state: &AppState, templates: &[(&'static str, bool)]) -> Self {
        let mut matcher = matchit::Router::new();
        let mut entries = vec![RouteEntry { public: false, metrics: state.metrics.http_route("unmatched") }];
        for &(template, public) in templates {
            matcher.insert(template, entries.len()).expect("route templates are valid and distinct");
            entries.push(RouteEntry { public, metrics: state.metrics.http_route(template) });
        }
        Self { matcher, entries }
    }

    fn lookup(&self, path: &str) -> usize {
        self.matcher.at(path).map_or(Self::UNMATCHED, |m| *m.value)
    }
}

/// Every request clones the `Arc` holding this and reads its fields; the alignment keeps the
/// reference counts, written by every request, off the cache line the fields are read from
/// (otherwise two cores serving requests invalidate each other's copy of it on every request).
#[repr(align(128))]
struct Shared {
    state: AppState,
    routes: RouteTable,
}

/// The API service: the front door around the router. Serve it with
/// `axum::ServiceExt::into_make_service_with_connect_info::<SocketAddr>`.
#[derive(Clone)]
pub struct FrontDoor {
    shared: Arc<Shared>,
    router: Router,
}

impl FrontDoor {
    /// `router` serves the `templates` (`(template, public)`); anything else is `unmatched`.
    pub(super) fn new(state: AppState, router: Router, templates: &[(&'static str, bool)]) -> Self {
        let routes = RouteTable::new(&state, templates);
        Self { shared: Arc::new(Shared { state, routes }), router }
    }
}

impl<B> tower::Service<axum::http::Request<B>> for FrontDoor
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = FrontDoorFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> FrontDoorFuture {
        let mut req = req.map(axum::body::Body::new);
        let shared = &*self.shared;
        let state = &shared.state;
        let id = RequestId::generate();
        let started = Instant::now();
        let route = shared.routes.lookup(req.uri().path());
        let method = method_index(req.method());
        let mut fut = FrontDoorFuture {
            shared: self.shared.clone(),
            id,
            started,
            route,
            method,
            entered: false,
            _admission: None,
            inner: Inner::Ready(None),
        };
        let Some(in_flight) = state.drain.try_enter() else {
            fut.inner = Inner::Ready(Some(ApiError::ShuttingDown.into_response()));
            return fut;
        };
        fut.entered = true;
        if shared.routes.entries[route].public {
            req.extensions_mut().insert(id);
        } else {
            let caller = match authenticate(state, &req, id) {
                Ok(caller) => caller,
                Err(resp) => {
                    fut.inner = Inner::Ready(Some(resp));
                    return fut;
                }
            };
            match state.limiter.admit(&caller.identity.bearer_hash, in_flight) {
                Ok(admission) => fut._admission = Some(admission),
                Err(rejection) => {
                    fut.inner = Inner::Ready(Some(limited(state, &caller, rejection)));
                    return fut;
                }
            }
            req.extensions_mut().insert(caller);
        }
        fut.inner = Inner::Route(tower::Service::call(&mut self.router, req));
        fut
    }
}

enum Inner {
    /// Answered by the front door itself (`None` once taken).
    Ready(Option<Response>),
    Route(RouteFuture<Infallible>),
}

/// The response future of [`FrontDoor`]: the router's future, then the request id header and
/// the metrics; the drain and in-flight counts are given back when it is dropped.
pub struct FrontDoorFuture {
    shared: Arc<Shared>,
    id: RequestId,
    started: Instant,
    route: usize,
    method: usize,
    entered: bool,
    _admission: Option<Admission>,
    inner: Inner,
}

impl Future for FrontDoorFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut resp = match &mut this.inner {
            Inner::Ready(resp) => resp.take().expect("FrontDoorFuture polled after completion"),
            Inner::Route(fut) => match ready!(Pin::new(fut).poll(cx)) {
                Ok(resp) => resp,
                Err(never) => match never {},
            },
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), this.id.header_value());
        this.shared.routes.entries[this.route].metrics.record(
            this.method,
            resp.status().as_u16(),
            this.started.elapsed(),
        );
        Poll::Ready(Ok(resp))
    }
}

impl Drop for FrontDoorFuture {
    fn drop(&mut self) {
        if self.entered {
            self.shared.state.drain.leave();
        }
    }
}

pub(super) fn source_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// `Authorization: Bearer <token>` → [`Caller`], or a 401 response (audited).
#[allow(clippy::result_large_err)] // The error is the response itself, built once on a cold path.
fn authenticate(state: &AppState, req: &Request, id: RequestId) -> Result<Caller, Response> {
    let ip = source_ip(req);
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let result = match token {
        None => Err(("missing_bearer", ApiError::MissingBearer)),
        Some(t) => state.auth.authenticate(t).ok_or(("invalid_bearer", ApiError::InvalidBearer)),
    };
    match result {
        Ok(identity) => Ok(Caller { req_id: id, identity, source_ip: ip }),
        Err((reason, err)) => {
            state.metrics.auth_failure(reason);
            // The hash of a presented token helps operators find a misconfigured client; the token never appears.
            let presented = token.map(crate::auth::token_hash);
            state.audit.record(
                AuditEvent {
                    req_id: Some(id.to_string()),
                    source_ip: ip,
                    bearer_hash: presented,
                    ..AuditEvent::new("auth_failure")
                }
                .with("reason", reason),
            );
            Err(err.into_response())
        }
    }
}

/// The response to a request turned away by a limit (metered and audited).
fn limited(state: &AppState, caller: &Caller, rejection: Rejection) -> Response {
    let (kind, err) = match rejection {
        Rejection::RateLimited { retry_after } => ("rate_limited", ApiError::RateLimited(retry_after)),
        Rejection::BearerInFlight => ("in_flight_bearer", ApiError::InFlightCap { per_bearer: true }),
        Rejection::ProcessInFlight => ("in_flight_process", ApiError::InFlightCap { per_bearer: false }),
    };
    state.metrics.rate_limited(kind);
    state.audit.record(caller.audit("rate_limited").with("limit", kind));
    err.into_response()
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn request_ids_are_16_hex_and_distinct_across_threads() {
        let per_thread: Vec<Vec<RequestId>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..70_000).map(|_| RequestId::generate()).collect())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<RequestId> = per_thread.into_iter().flatten().collect();
        let n = all.len();
        for id in &all[..100] {
            let s = id.to_string();
            assert_eq!(s.len(), 16);
            assert!(s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s}");
            assert_eq!(id.header_value().to_str().unwrap(), s);
        }
        all.sort_unstable_by_key(|id| id.0);
        all.dedup();
        assert_eq!(all.len(), n, "request ids repeated");
    }
}
