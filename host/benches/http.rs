//! Benchmark `http`: the real `sluice` binary, built in release, driven by `wrk` (Debian package
//! `wrk`) from another process over loopback: what a user's load sees. One wrk thread with
//! `CONNECTIONS` keep-alive connections, so wrk and the gateway each have about one core of two.
//!
//! Paths: `GET /api/v2/health` (authenticated), `POST /api/v2/tools/test.trivial` (REST), MCP
//! `tools/call` of the same tool on `/` (stateless JSON) and on `/mcp` in sessions (event
//! streams; one session per connection, as many agents would have), and `fleet.cluster.summary` over REST (a real query), each with the audit log on
//! /dev/null and again with it in a file. Rounds of the paths are interleaved; each figure is the
//! median round. Ratios, measured in the same run:
//! - REST trivial / health (target >= 0.5),
//! - MCP stateless / REST trivial (target >= 0.8),
//! - REST trivial with audit to a file / to /dev/null (target >= 0.9: the file costs <= 10 %), also
//!   relative to each gateway's own health figure (the two processes differ by noise alone).
//!
//! Each figure also gives the gateway's CPU time per call (user + system from `/proc`, loopback
//! TCP included), which does not depend on how the two cores are shared with wrk.
//!
//! Rate limits are raised so that the limiter never answers; logs use the default filter and go
//! to /dev/null.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

#[path = "support/jwt.rs"]
mod jwt;
#[path = "support/wrk.rs"]
mod wrk;

const CONNECTIONS: usize = 32;
const ROUND: &str = "4s";
const ROUNDS: usize = 3;
const TOKEN: &str = "bench-http-token-3a9f";

struct Gateway {
    child: Child,
    api: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway on its own copy of the database (DuckDB locks its file), with `audit` as the audit
/// destination.
fn start(scratch: &Path, name: &str, audit: &str) -> Gateway {
    let db = scratch.join(format!("{name}.duckdb"));
    std::fs::copy(scratch.join("fleet.duckdb"), &db).unwrap();
    let config = scratch.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[plugins]\nwatch = false\n[rate_limit]\nrequests_per_second = 10000000\nburst = 10000000\n\
             [limits]\nmax_in_flight_per_bearer = 10000\nmax_in_flight = 10000\n[audit]\ndestination = {audit:?}\n\
             [[auth.jwt.issuers]]\nissuer = \"https://idp.bench\"\naudiences = [\"sluice\"]\njwks_file = \"jwks.json\"\n"
        ),
    )
    .unwrap();
    let (child, api) = wrk::serve(scratch, name, &config, &["--db".as_ref(), db.as_os_str()]);
    Gateway { child, api }
}

fn wrk(url: &str, script: &Path, pid: u32) -> (f64, f64, f64, f64) {
    wrk::run(url, script, pid, CONNECTIONS, ROUND)
}

fn script(scratch: &Path, name: &str, method: &str, body: &str, headers: &[(&str, &str)]) -> PathBuf {
    wrk::script(scratch, name, method, body, headers, TOKEN)
}

/// A script that sends `body` to `/mcp` in the sessions `ids` (a Lua list), one after another.
fn session_script(scratch: &Path, name: &str, body: &str, ids: &str) -> PathBuf {
    let path = script(scratch, name, "POST", body, &[("Accept", "application/json, text/event-stream")]);
    let lua = std::fs::read_to_string(&path).unwrap()
        + &format!(
            "local ids = {{{ids}}}\nlocal n = 0\nrequest = function()\n  n = n % #ids + 1\n  \
             wrk.headers[\"mcp-session-id\"] = ids[n]\n  return wrk.format()\nend\n"
        );
    std::fs::write(&path, lua).unwrap();
    path
}

/// Opens an MCP session on `/mcp`: its id.
fn mcp_session(api: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let post = |body: serde_json::Value, session: Option<String>| {
            let mut r = http
                .post(format!("{api}/mcp"))
                .bearer_auth(TOKEN)
                .header("accept", "application/json, text/event-stream")
                .json(&body);
            if let Some(s) = session {
                r = r.header("mcp-session-id", s);
            }
            r.send()
        };
        let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
        let r = post(init, None).await.unwrap();
        let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let _ = r.text().await;
        let r = post(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), Some(session.clone())).await.unwrap();
        assert!(r.status().is_success());
        session
    })
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let scratch = std::env::temp_dir().join(format!("sluice-bench-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("plugins")).unwrap();
    for (from, to) in [("dist/fixtures/trivial.wasm", "trivial.wasm"), ("dist/plugins/fleet-cluster-summary.wasm", "summary.wasm")] {
        std::fs::copy(root.join(from), scratch.join("plugins").join(to))
            .unwrap_or_else(|e| panic!("{from}: {e}; build the components first (scripts/dev bench does)"));
    }
    // The bench bearer, and a static bearer as long as the JWT (what the longer header alone costs).
    std::fs::write(
        scratch.join("bearers.yaml"),
        format!("- {{key_name: bench, token: {TOKEN}}}\n- {{key_name: long, token: {}}}\n", long_static_token()),
    )
    .unwrap();
    std::fs::write(scratch.join("jwks.json"), serde_json::json!({"keys": [jwt::key().1]}).to_string()).unwrap();
    let seeded = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(&scratch)
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "3", "--nodes", "16", "--hours", "24"])
        .output()
        .unwrap();
    assert!(seeded.status.success());

    let null = start(&scratch, "audit-null", "/dev/null");
    let file = start(&scratch, "audit-file", scratch.join("audit.log").to_str().unwrap());
    // One MCP session per connection, as 32 agents would have (a session answers its requests
    // one after another): wrk's requests go round the sessions.
    let sessions = |api: &str| (0..CONNECTIONS).map(|_| format!("{:?}", mcp_session(api))).collect::<Vec<_>>().join(", ");
    let (session, file_session) = (sessions(&null.api), sessions(&file.api));
    let json = [("Accept", "application/json, text/event-stream")];
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"test.trivial","arguments":{}}}"#;
    let scripts = [
        ("health", "/api/v2/health", script(&scratch, "health", "GET", "", &[])),
        ("REST trivial", "/api/v2/tools/test.trivial", script(&scratch, "rest", "POST", r#"{"args":{}}"#, &[])),
        ("MCP trivial, stateless", "/", script(&scratch, "mcp", "POST", call, &json)),
        ("MCP trivial, sessions", "/mcp", session_script(&scratch, "mcp-session", call, &session)),
        ("REST summary (all clusters)", "/api/v2/tools/fleet.cluster.summary", script(&scratch, "summary", "POST", r#"{"args":{}}"#, &[])),
        ("health, JWT bearer", "/api/v2/health", script(&scratch, "health-jwt", "GET", "", &[("Authorization", &format!("Bearer {}", jwt::token()))])),
        ("health, static bearer as long as the JWT", "/api/v2/health", script(&scratch, "health-long", "GET", "", &[("Authorization", &format!("Bearer {}", long_static_token()))])),
    ];
    let file_session_script = session_script(&scratch, "mcp-session-file", call, &file_session);

    println!("http: the release binary under wrk -t1 -c{CONNECTIONS}, {ROUNDS} rounds of {ROUND} per path, median round");
    let started = Instant::now();
    let mut results: Vec<Vec<Vec<(f64, f64, f64, f64)>>> = vec![vec![Vec::new(); scripts.len()]; 2];
    for round in 0..ROUNDS {
        for (g, gateway) in [&null, &file].into_iter().enumerate() {
            for (i, (_, path, lua)) in scripts.iter().enumerate() {
                let lua = if g == 1 && *path == "/mcp" { &file_session_script } else { lua };
                results[g][i].push(wrk(&format!("{}{path}", gateway.api), lua, gateway.child.id()));
            }
        }
        eprintln!("http: round {}/{ROUNDS} done after {:.0?}", round + 1, started.elapsed());
    }
    let med: Vec<Vec<(f64, f64, f64, f64)>> = results.into_iter().map(|g| g.into_iter().map(wrk::median).collect()).collect();
    println!("| path | audit | calls/s | p50 ms | p99 ms | gateway CPU µs/call |");
    println!("|---|---|---|---|---|---|");
    for (g, audit) in ["/dev/null", "file"].iter().enumerate() {
        for (i, (name, ..)) in scripts.iter().enumerate() {
            let (rps, p50, p99, cpu) = med[g][i];
            println!("| {name} | {audit} | {rps:.0} | {p50:.2} | {p99:.2} | {cpu:.1} |");
        }
    }
    let (health, rest, mcp) = (med[0][0].0, med[0][1].0, med[0][2].0);
    println!("ratio REST trivial / health:            {:.3} (target >= 0.5)", rest / health);
    println!("ratio MCP stateless / REST trivial:     {:.3} (target >= 0.8)", mcp / rest);
    // What each request costs the gateway, whatever wrk's own share of the two cores: the
    // throughput ratio above is bounded by this one when the gateway is the bottleneck.
    println!("ratio of gateway CPU per call, health / REST trivial: {:.3}", med[0][0].3 / med[0][1].3);
    println!("ratio MCP sessions / REST trivial:      {:.3}", med[0][3].0 / rest);
    println!("ratio REST trivial, audit file / null:  {:.3} (target >= 0.9)", med[1][1].0 / rest);
    // The two gateways are two processes; their health figures differ by run-to-run noise
    // alone (health writes no audit line). Relative to each one's own health:
    println!(
        "ratio of REST/health, audit file / null: {:.3} (the audit file's cost, noise of the two processes removed)",
        (med[1][1].0 / med[1][0].0) / (rest / health)
    );
    println!("ratio MCP stateless, audit file / null: {:.3}", med[1][2].0 / mcp);
    // A JWT bearer (verified once, then cached) against the static one, on the same route, and
    // a static bearer as long as the JWT: the longer header's share of the difference.
    for (g, audit) in ["/dev/null", "file"].iter().enumerate() {
        let (static_, jwt, long) = (med[g][0], med[g][5], med[g][6]);
        println!(
            "health ({audit} gateway), JWT / static bearer: calls/s {:.3}, CPU per call {:.1} vs {:.1} µs; \
             a static bearer as long as the JWT: calls/s {:.3}, {:.1} µs",
            jwt.0 / static_.0,
            jwt.3,
            static_.3,
            long.0 / static_.0,
            long.3
        );
    }
    drop((null, file));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A static token as long as the benchmark's JWT.
fn long_static_token() -> String {
    "s".repeat(jwt::token().len())
}
