//! Benchmark `gateway`: the whole front door against a bare axum route, in the same run, with a
//! load generator on loopback.
//!
//! 1. `GET /api/v2/health` through drain gate, request id, metrics, bearer auth and the
//!    per-bearer rate limit (set high) vs `GET /bare` on a bare axum router. Target ratio >= 0.85.
//! 2. `POST /api/v2/tools/test.trivial` (authenticated, audited, a fresh component instance per
//!    call) vs the bare route. Target ratio >= 0.5, p99 < 5 ms.
//! 3. `GET /api/v2/health` with a JWT bearer (EdDSA, from a JWKS file issuer) instead of the static
//!    one: its ratio to the bare route must stay within 0.05 of the static bearer's (a verified
//!    token is cached until it expires, so only the first request of a token pays the signature).
//! 4. Health and the trivial tool on a second gateway with traces on at a 1 % sample ratio
//!    (exported over OTLP/HTTP to a collector stand-in on loopback): their ratios to the bare
//!    route must stay within 0.05 of the first gateway's, which has traces off.
//!
//! The load generator keeps `CONNECTIONS` HTTP/1.1 keep-alive connections busy for each round;
//! rounds of the contenders are interleaved and the median round is compared. Two load
//! generators are measured: a minimal one (pre-built requests on raw sockets, almost all CPU left
//! to the servers: the strict figure) and a common HTTP client (`reqwest`, one client per
//! connection), closer to what real clients and load tools spend per request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::routing::get;
use sluice::auth::{AclEntry, AuthSource};
use sluice::config::Config;
use sluice::serve::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/jwt.rs"]
mod jwt;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_secs(2);
/// Rounds per contender (`SLUICE_BENCH_ROUNDS` overrides).
fn rounds() -> usize {
    std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5)
}
const TOKEN: &str = "bench-token-7d1e0c";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let scratch = std::env::temp_dir().join(format!("sluice-bench-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("plugins")).unwrap();
    let trivial = root.join("dist/fixtures/trivial.wasm");
    std::fs::copy(&trivial, scratch.join("plugins/trivial.wasm"))
        .unwrap_or_else(|e| panic!("{}: {e}; build the components first (scripts/dev bench does)", trivial.display()));

    // The servers run on their own runtime; the load generator on another.
    let server_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (bare, full, traced, auth_ns) = server_rt.block_on(async {
        // The baseline answers what /api/v2/health answers, so the comparison measures the stack.
        let bare = serve(axum::Router::new().route(
            "/bare",
            get(|| async { axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})) }),
        ))
        .await;
        let mut config = Config::default();
        config.database.path = scratch.join("bench.duckdb");
        config.plugins.dir = scratch.join("plugins");
        config.plugins.cache_dir = scratch.join("cache");
        config.plugins.watch = false;
        config.rate_limit.requests_per_second = 10_000_000;
        config.rate_limit.burst = 10_000_000;
        config.limits.max_in_flight_per_bearer = 10_000;
        config.limits.max_in_flight = 10_000;
        std::fs::write(scratch.join("jwks.json"), serde_json::json!({"keys": [jwt::key().1]}).to_string()).unwrap();
        config.auth.jwt = toml::from_str(&format!(
            "[[issuers]]\nissuer = \"https://idp.bench\"\naudiences = [\"sluice\"]\njwks_file = {:?}\n",
            scratch.join("jwks.json")
        ))
        .unwrap();
        // A static bearer as long as the JWT: what the longer header alone costs.
        let long = long_static_token();
        let auth = AuthSource::Static(vec![AclEntry::token("bench", TOKEN, &[]), AclEntry::token("long", &long, &[])]);
        let audit = sluice::audit::AuditLog::file(Path::new("/dev/null")).unwrap();
        let gateway = Gateway::build(&config, auth, audit).unwrap();
        let full = serve(gateway.api()).await;
        let auth_ns = [TOKEN.to_owned(), long_static_token(), jwt::token()].map(|t| auth_cost(&gateway.state.auth, &t));
        std::mem::forget(gateway);
        let traced = traced_gateway(&config, &scratch).await;
        (bare, full, traced, auth_ns)
    });

    let load_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let bare_req = format!("GET /bare HTTP/1.1\r\nHost: {bare}\r\n\r\n");
    let health_req = format!("GET /api/v2/health HTTP/1.1\r\nHost: {full}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let body = r#"{"args":{}}"#;
    let tool_req = format!(
        "POST /api/v2/tools/test.trivial HTTP/1.1\r\nHost: {full}\r\nAuthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let jwt_req = format!("GET /api/v2/health HTTP/1.1\r\nHost: {full}\r\nAuthorization: Bearer {}\r\n\r\n", jwt::token());
    let long_req = format!("GET /api/v2/health HTTP/1.1\r\nHost: {full}\r\nAuthorization: Bearer {}\r\n\r\n", long_static_token());
    let traced_health_req = health_req.replace(&full.to_string(), &traced.to_string());
    let traced_tool_req = tool_req.replace(&full.to_string(), &traced.to_string());
    // Every request traced (a caller's sampled traceparent): what one traced request costs.
    let sampled = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    let forced_health_req = traced_health_req.replacen("\r\n", &format!("\r\n{sampled}"), 1);
    let forced_tool_req = traced_tool_req.replacen("\r\n", &format!("\r\n{sampled}"), 1);
    println!("load: {CONNECTIONS} keep-alive connections, {} interleaved rounds of {ROUND:?}, median round", rounds());
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() {
        // The second load generator: a common HTTP client.
        let (mut b, mut h, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds() {
            b.push(load_rt.block_on(drive_client(format!("http://{bare}/bare"), None, None)));
            h.push(load_rt.block_on(drive_client(format!("http://{full}/api/v2/health"), Some(TOKEN), None)));
            t.push(load_rt.block_on(drive_client(format!("http://{full}/api/v2/tools/test.trivial"), Some(TOKEN), Some(body))));
        }
        let (b, h, t) = (median(b), median(h), median(t));
        println!("-- load generator: reqwest (an HTTP client per connection)");
        report("bare axum GET /bare", &b, None);
        report("full stack GET /api/v2/health", &h, Some((&b, 0.85)));
        report("full stack POST /api/v2/tools/test.trivial", &t, Some((&b, 0.5)));
        println!("-- load generator: minimal (pre-built requests on raw sockets)");
    }
    let (mut b, mut h, mut t, mut j, mut l) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut th, mut tt, mut fh, mut ft) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // SLUICE_BENCH_ONLY=bare|health|tool|jwt|traced runs one contender (minimal load generator), for profiling.
    for _ in 0..rounds() {
        if only.is_empty() || only == "bare" {
            b.push(load_rt.block_on(drive(bare, &bare_req)));
        }
        if only.is_empty() || only == "health" || only == "traced" {
            h.push(load_rt.block_on(drive(full, &health_req)));
        }
        if only.is_empty() || only == "tool" || only == "traced" {
            t.push(load_rt.block_on(drive(full, &tool_req)));
        }
        if only.is_empty() || only == "jwt" {
            j.push(load_rt.block_on(drive(full, &jwt_req)));
            l.push(load_rt.block_on(drive(full, &long_req)));
        }
        if only.is_empty() || only == "traced" {
            th.push(load_rt.block_on(drive(traced, &traced_health_req)));
            tt.push(load_rt.block_on(drive(traced, &traced_tool_req)));
            fh.push(load_rt.block_on(drive(traced, &forced_health_req)));
            ft.push(load_rt.block_on(drive(traced, &forced_tool_req)));
        }
    }
    if only == "traced" {
        // Traces on against off, without the other contenders: more rounds, less noise.
        let (h, t, th, tt, fh, ft) = (median(h), median(t), median(th), median(tt), median(fh), median(ft));
        report("traces off GET /api/v2/health", &h, None);
        report("traces on (1 %) GET /api/v2/health", &th, Some((&h, 0.95)));
        report("traces off POST /api/v2/tools/test.trivial", &t, None);
        report("traces on (1 %) POST /api/v2/tools/test.trivial", &tt, Some((&t, 0.95)));
        trace_costs(None, (&h, &th, &fh), (&t, &tt, &ft));
        return;
    }
    if !only.is_empty() {
        for (name, r) in [("bare", b), ("health", h), ("tool", t), ("jwt", j), ("traced health", th), ("traced tool", tt)] {
            if !r.is_empty() {
                report(name, &median(r), None);
            }
        }
        return;
    }
    let (b, h, t, j, l) = (median(b), median(h), median(t), median(j), median(l));
    let (th, tt, fh, ft) = (median(th), median(tt), median(fh), median(ft));
    let (jwt_diff, long_diff) = ((j.rps - h.rps) / b.rps, (l.rps - h.rps) / b.rps);
    report("bare axum GET /bare", &b, None);
    report("full stack GET /api/v2/health", &h, Some((&b, 0.85)));
    report("full stack POST /api/v2/tools/test.trivial", &t, Some((&b, 0.5)));
    report("full stack GET /api/v2/health, JWT bearer", &j, Some((&b, 0.85)));
    report("  the same, a static bearer as long as the JWT", &l, Some((&b, 0.85)));
    println!("JWT bearer vs static bearer, ratio to bare: difference {jwt_diff:+.3} (target: within 0.05)");
    println!("  of which the longer header alone (static bearer as long as the JWT): {long_diff:+.3}");
    report("traces on (1 %) GET /api/v2/health", &th, Some((&b, 0.85)));
    report("traces on (1 %) POST /api/v2/tools/test.trivial", &tt, Some((&b, 0.5)));
    trace_costs(Some(&b), (&h, &th, &fh), (&t, &tt, &ft));
    // The same question without the machine's noise: what authentication itself costs per request.
    let [short, long, jwt] = auth_ns;
    println!(
        "authentication per request (in-process, 200 000 calls): static bearer {short:.0} ns, static as long as the JWT \
         {long:.0} ns, JWT (verified once, then cached) {jwt:.0} ns; the JWT adds {:.0} ns, {:.1} % of a health request \
         at this run's rate on one core ({:.2} µs)",
        jwt - short,
        (jwt - short) / (1e9 / h.rps) * 100.0,
        1e6 / h.rps
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Traces on (1 %) against off, measured, and the same question without the machine's noise:
/// what one traced request costs (every request traced by its caller's `traceparent`), times
/// the sample ratio. Each triple is (off, on at 1 %, every request traced).
fn trace_costs(bare: Option<&Round>, health: (&Round, &Round, &Round), tool: (&Round, &Round, &Round)) {
    let stats = sluice::telemetry::stats();
    if let Some(b) = bare {
        println!(
            "traces on (1 %) vs off, ratio to bare: health {:+.3}, tool {:+.3} (target: within 0.05)",
            (health.1.rps - health.0.rps) / b.rps,
            (tool.1.rps - tool.0.rps) / b.rps,
        );
    }
    for (what, (off, _, all)) in [("health", health), ("tool", tool)] {
        let (per_off, per_all) = (1e6 / off.rps, 1e6 / all.rps);
        let extra = per_all - per_off;
        // At a ratio of 1 %, a request costs `extra` one time in a hundred.
        let at_one_percent = per_off / (per_off + extra / 100.0);
        println!(
            "  {what}: every request traced {:.0} req/s vs off {:.0}: a traced request costs {extra:+.1} µs of a {per_off:.1} µs \
             request (both cores); at 1 %: {:+.1} µs per request, throughput x{at_one_percent:.4}",
            all.rps,
            off.rps,
            extra / 100.0,
        );
    }
    println!("  spans exported {}, dropped {}", stats.exported, stats.dropped_queue_full + stats.dropped_export_failed);
}

/// A second gateway like `config`'s, with traces on at 1 % to a collector stand-in on loopback
/// (it answers every export with an empty success); the trace layer goes into this process's
/// subscriber, as `sluice serve` installs it.
async fn traced_gateway(config: &Config, scratch: &Path) -> SocketAddr {
    use tracing_subscriber::prelude::*;
    let collector = serve(axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "" }))).await;
    let mut config = config.clone();
    config.database.path = scratch.join("traced.duckdb");
    let ratio = std::env::var("SLUICE_BENCH_TRACE_RATIO").unwrap_or_else(|_| "0.01".into());
    config.traces = toml::from_str(&format!("endpoint = \"http://{collector}/v1/traces\"\nsample_ratio = {ratio}\n")).unwrap();
    let layer = sluice::telemetry::install(&config.traces).unwrap();
    tracing_subscriber::registry().with(layer).init();
    let auth = AuthSource::Static(vec![AclEntry::token("bench", TOKEN, &[])]);
    let audit = sluice::audit::AuditLog::file(Path::new("/dev/null")).unwrap();
    let gateway = Gateway::build(&config, auth, audit).unwrap();
    let addr = serve(gateway.api()).await;
    std::mem::forget(gateway);
    addr
}

/// Serves `app` as the gateway serves its API (with the peer address as `ConnectInfo`).
async fn serve<S>(app: S) -> SocketAddr
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(app);
    tokio::spawn(async move {
        axum::serve(listener, service).await.unwrap();
    });
    addr
}

struct Round {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

fn median(mut rounds: Vec<Round>) -> Round {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    rounds.swap_remove(rounds.len() / 2)
}

fn report(what: &str, r: &Round, baseline: Option<(&Round, f64)>) {
    print!("{what:<44} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms", r.rps, ms(r.p50), ms(r.p99));
    if let Some((b, target)) = baseline {
        print!("  ratio {:.3} (target >= {target})", r.rps / b.rps);
    }
    if r.errors > 0 {
        print!("  ERRORS {}", r.errors);
    }
    println!();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Keeps `CONNECTIONS` connections sending `request` back to back for one round.
async fn drive(addr: SocketAddr, request: &str) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let request: Arc<[u8]> = Arc::from(request.as_bytes());
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (stop, request) = (stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.set_nodelay(true).unwrap();
            let mut buf = Vec::with_capacity(4096);
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                conn.write_all(&request).await.unwrap();
                let status = read_response(&mut conn, &mut buf).await;
                lat.push(t.elapsed());
                if status != 200 {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    collect(stop, tasks).await
}

/// Keeps `CONNECTIONS` reqwest clients (one connection each) sending requests back to back
/// for one round: GET without a body, POST with `body`.
async fn drive_client(url: String, token: Option<&str>, body: Option<&str>) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (stop, url) = (stop.clone(), url.clone());
        let token = token.map(str::to_owned);
        let body = body.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).build().unwrap();
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut req = match &body {
                    Some(b) => client.post(&url).header("content-type", "application/json").body(b.clone()),
                    None => client.get(&url),
                };
                if let Some(tok) = &token {
                    req = req.bearer_auth(tok);
                }
                let ok = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        resp.bytes().await.is_ok() && status == 200
                    }
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    collect(stop, tasks).await
}

/// Ends a round: stops the connections and gathers their latencies.
async fn collect(stop: Arc<AtomicBool>, tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, u64)>>) -> Round {
    let started = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    Round { rps: all.len() as f64 / elapsed.as_secs_f64(), p50: pct(0.5), p99: pct(0.99), errors }
}

/// Reads one HTTP/1.1 response with a `content-length` body; returns its status.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return status;
        }
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Mean time of `auth.authenticate(token)` over many calls, in ns (the first call, which may
/// verify a JWT's signature, is left out).
fn auth_cost(auth: &sluice::auth::AuthStore, token: &str) -> f64 {
    auth.authenticate(token).expect("the bench token authenticates");
    const N: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..N {
        std::hint::black_box(auth.authenticate(std::hint::black_box(token)).is_ok());
    }
    started.elapsed().as_nanos() as f64 / f64::from(N)
}

/// A static token of the JWT's length.
fn long_static_token() -> String {
    "s".repeat(jwt::token().len())
}
