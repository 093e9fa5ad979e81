//! The front door: the service every API request enters before routing, in the contract's order:
//!
//! 1. drain gate: once draining, 503 `shutting_down` (`Retry-After: 5`); admitted requests are
//!    counted so the drain can wait for them (the same count is the process's in-flight cap);
//!    then the size limits: headers over `server.max_header_bytes` get 431, a declared
//!    `Content-Length` over the route's body limit gets 413 (bodies without one are limited as
//!    they are read);
//! 2. request id (`X-Request-Id` on every response) and metrics under the route template;
//! 3. bearer auth (except public routes): [`Caller`] for the handlers, 401 otherwise;
//! 4. the bearer's token bucket and in-flight caps;
//!
//! then the router. It is a hand-written service rather than `axum::middleware::from_fn` layered
//! onto each route: a request pays for no boxed `Next`, no per-route service clone and no shared
//! counter it does not need. On two busy cores every shared atomic a request touches is a cache
//! line travelling between them, which is most of what a middleware stack costs here.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;

use super::{ApiError, AppState, X_REQUEST_ID};
use crate::audit::AuditEvent;
pub use crate::caller::{Caller, RequestId};
use crate::metrics::{HttpRouteMetrics, method_index};
use crate::auth::Refused;
use crate::ratelimit::{Admission, Rejection};
use crate::telemetry::{TARGET as TRACE_TARGET, TRACERESPONSE, Trace};

/// A route template and what the front door knows about it.
struct RouteEntry {
    /// The template (`unmatched` for none), as request spans name it.
    template: &'static str,
    /// Served without a bearer.
    public: bool,
    /// Largest body.
    max_body: usize,
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
        let max_body = state.max_body;
        let mut entries = vec![RouteEntry { template: "unmatched", public: false, max_body, metrics: state.metrics.http_route("unmatched") }];
        for &(template, public) in templates {
            matcher.insert(template, entries.len()).expect("route templates are valid and distinct");
            let max_body = if template == super::OTLP_ROUTE { state.ingest.max_body.0 } else { max_body };
            entries.push(RouteEntry { template, public, max_body, metrics: state.metrics.http_route(template) });
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
        let trace = state.traces.and_then(|t| {
            t.request(req.headers(), id.as_u64(), || request_span(&req, shared.routes.entries[route].template, id))
        });
        let mut fut = FrontDoorFuture {
            shared: self.shared.clone(),
            id,
            started,
            route,
            method,
            entered: false,
            _admission: None,
            trace: trace.clone(),
            inner: Inner::Ready(None),
        };
        let Some(in_flight) = state.drain.try_enter() else {
            fut.inner = Inner::Ready(Some(ApiError::ShuttingDown.into_response()));
            return fut;
        };
        fut.entered = true;
        if let Err(e) = check_sizes(&req, shared.routes.entries[route].max_body, state.max_header_bytes) {
            if let ApiError::PayloadTooLarge(limit) = e {
                discard_in_background(req.into_body(), limit);
            }
            fut.inner = Inner::Ready(Some(e.into_response()));
            return fut;
        }
        if shared.routes.entries[route].public {
            req.extensions_mut().insert(id);
        } else {
            let caller = match authenticate(state, &req, id, trace) {
                Authenticated::Now(caller) => caller,
                Authenticated::Refused(resp) => {
                    fut.inner = Inner::Ready(Some(resp));
                    return fut;
                }
                Authenticated::AfterKeyRefresh { token, issuer, trace } => {
                    // Rare (a JWT signed with a key not fetched yet): off the inline path.
                    let (shared, mut router) = (self.shared.clone(), self.router.clone());
                    fut.inner = Inner::Slow(Box::pin(async move {
                        let state = &shared.state;
                        let ip = source_ip(&req);
                        let span = auth_span(trace.as_ref());
                        let result = state.auth.authenticate_after_refresh(&token, issuer).await;
                        let caller = match result {
                            Ok(identity) => accepted(state, &span, Caller { req_id: id, identity, source_ip: ip, trace }),
                            Err(refused) => return refuse(state, &span, Some(&token), &refused, &req, Refusal { id, ip, trace }),
                        };
                        let _admission = match state.limiter.admit(&caller.identity.bearer_hash, in_flight) {
                            Ok(admission) => admission,
                            Err(rejection) => return limited(state, &caller, rejection),
                        };
                        req.extensions_mut().insert(caller);
                        match tower::Service::call(&mut router, req).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        }
                    }));
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
    /// Authentication that waits (a key-set fetch), then admission and the route.
    Slow(Pin<Box<dyn Future<Output = Response> + Send>>),
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
    /// The request's trace (its span ends when this is dropped).
    trace: Option<Trace>,
    inner: Inner,
}

impl Future for FrontDoorFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Spans made while the handler runs are children of the request span.
        let _entered = this.trace.as_ref().filter(|t| t.traced()).map(|t| t.span.enter());
        let mut resp = match &mut this.inner {
            Inner::Ready(resp) => resp.take().expect("FrontDoorFuture polled after completion"),
            Inner::Route(fut) => match ready!(Pin::new(fut).poll(cx)) {
                Ok(resp) => resp,
                Err(never) => match never {},
            },
            Inner::Slow(fut) => ready!(fut.as_mut().poll(cx)),
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), this.id.header_value());
        if let Some(t) = &this.trace {
            resp.headers_mut().insert(TRACERESPONSE.clone(), t.header_value());
            let status = resp.status().as_u16();
            t.span.record("http.response.status_code", status);
            if status >= 500 {
                t.span.record("otel.status_code", "error");
            }
        }
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

/// The request's head within `max_header_bytes` (names and values), and its declared body
/// within `max_body`.
fn check_sizes(req: &Request, max_body: usize, max_header_bytes: usize) -> Result<(), ApiError> {
    let head: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if head > max_header_bytes {
        return Err(ApiError::HeadersTooLarge(max_header_bytes));
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(ApiError::PayloadTooLarge(max_body));
    }
    Ok(())
}

/// Reads and drops the rest of a refused request body for a while (at most 16 times the limit,
/// 64 MiB, or 10 s), as servers linger before closing: a client that writes its whole body
/// before reading the answer then gets the 413 instead of a broken connection.
pub(super) fn discard_in_background(body: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt as _;
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    let cap = limit.saturating_mul(16).min(64 << 20);
    handle.spawn(async move {
        let mut body = body;
        let mut read = 0usize;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while read <= cap {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    });
}

pub(super) fn source_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

enum Authenticated {
    Now(Caller),
    Refused(Response),
    /// A JWT whose key its issuer has not published yet, as far as Sluice knows: fetch, retry.
    AfterKeyRefresh { token: String, issuer: usize, trace: Option<Trace> },
}

/// The span of a traced request (`None` from [`Traces::request`] otherwise: nothing is made).
fn request_span(req: &Request, template: &'static str, id: RequestId) -> tracing::Span {
    tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        otel.name = %format_args!("{} {template}", req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        http.route = template,
        http.response.status_code = tracing::field::Empty,
        sluice.request_id = %id,
    )
}

/// The authentication span of a traced request, else none.
fn auth_span(trace: Option<&Trace>) -> tracing::Span {
    crate::telemetry::child_of(trace, |parent| {
        tracing::info_span!(
            target: TRACE_TARGET,
            parent: parent,
            "authenticate",
            sluice.auth.method = tracing::field::Empty,
            sluice.auth.outcome = tracing::field::Empty,
        )
    })
}

/// Who a refusal is about.
struct Refusal {
    id: RequestId,
    ip: Option<IpAddr>,
    trace: Option<Trace>,
}

/// `Authorization: Bearer <token>` → [`Caller`], or a 401 response (audited).
fn authenticate(state: &AppState, req: &Request, id: RequestId, trace: Option<Trace>) -> Authenticated {
    let ip = source_ip(req);
    let span = auth_span(trace.as_ref());
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        state.metrics.auth_failure("missing_bearer");
        authentication(state, &span, "none", "missing_bearer");
        state.audit.record(
            with_trace(AuditEvent { req_id: Some(id.to_string()), source_ip: ip, ..AuditEvent::new("auth_failure") }, trace.as_ref())
                .with("reason", "missing_bearer"),
        );
        let mut resp = ApiError::MissingBearer.into_response();
        challenge(state, req, &mut resp, None);
        return Authenticated::Refused(resp);
    };
    match state.auth.authenticate(token) {
        Ok(identity) => Authenticated::Now(accepted(state, &span, Caller { req_id: id, identity, source_ip: ip, trace })),
        Err(Refused::KeysMissing { issuer }) => Authenticated::AfterKeyRefresh { token: token.to_owned(), issuer, trace },
        Err(refused) => Authenticated::Refused(refuse(state, &span, Some(token), &refused, req, Refusal { id, ip, trace })),
    }
}

fn accepted(state: &AppState, span: &tracing::Span, caller: Caller) -> Caller {
    authentication(state, span, caller.identity.method(), "ok");
    caller
}

/// An authentication's metric, and its span's fields when traced.
fn authentication(state: &AppState, span: &tracing::Span, method: &'static str, outcome: &'static str) {
    state.metrics.authentication(method, outcome);
    if !span.is_none() {
        span.record("sluice.auth.method", method).record("sluice.auth.outcome", outcome);
    }
}

fn with_trace(ev: AuditEvent, trace: Option<&Trace>) -> AuditEvent {
    match trace {
        Some(t) => ev.with("trace_id", t.trace_id_hex()),
        None => ev,
    }
}

/// A refused bearer: metered, audited with the reason (the presented token's hash helps an
/// operator find a misconfigured client; the token never appears), answered 401.
fn refuse(state: &AppState, span: &tracing::Span, token: Option<&str>, refused: &Refused, req: &Request, who: Refusal) -> Response {
    let method = if matches!(refused, Refused::Unknown) { "static" } else { "jwt" };
    state.metrics.auth_failure("invalid_bearer");
    authentication(state, span, method, refused.reason());
    let ev = AuditEvent {
        req_id: Some(who.id.to_string()),
        source_ip: who.ip,
        bearer_hash: token.map(crate::auth::token_hash),
        ..AuditEvent::new("auth_failure")
    };
    state.audit.record(with_trace(ev, who.trace.as_ref()).with("reason", refused.reason()));
    let mut resp = match refused {
        Refused::Unknown => ApiError::InvalidBearer,
        // A JWT's reason: what an OAuth client needs to decide whether to get a new one.
        r => ApiError::RefusedToken { reason: r.reason(), description: r.description() },
    }
    .into_response();
    challenge(state, req, &mut resp, Some(refused));
    resp
}

/// `WWW-Authenticate` for a 401: `error="invalid_token"` (the contract's), a description for a
/// refused JWT, and where the protected-resource metadata is when identity providers are set.
fn challenge(state: &AppState, req: &Request, resp: &mut Response, refused: Option<&Refused>) {
    if let Some(v) = super::oauth::challenge(state, req, refused) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
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
