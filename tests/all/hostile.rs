//! Hostile components: infinite loops, memory bombs, traps, attempts to reach files, sockets and
//! the environment. Each is contained, and the next call to a good tool succeeds.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{GatewayOptions, TestGateway, assert_request_id};

// Every test here holds the shared CPU lock: hostile guests spin cores and allocate up to their
// limits, and each gateway compiles the hostile component anew; latency-asserting tests wait.

async fn good_tool_still_works(gw: &TestGateway) {
    let r = gw.call("fleet.cluster.summary", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["rows"].as_array().unwrap().len(), 12);
    let r = gw.call("test.hostile", json!({"mode": "ok"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn an_infinite_loop_ends_at_its_deadline_with_tool_timeout() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let started = Instant::now();
    let r = gw.call("test.hostile", json!({"mode": "loop"})).await;
    let took = started.elapsed();
    r.assert_error(504, "tool_timeout");
    assert_eq!(r.body["tool"], "test.hostile");
    assert_eq!(r.body["deadline_ms"], 700);
    assert!(took >= Duration::from_millis(650) && took < Duration::from_secs(5), "took {took:?}");
    good_tool_still_works(&gw).await;
}

#[tokio::test]
async fn a_tool_asleep_in_a_host_wait_ends_at_its_deadline_too() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let started = Instant::now();
    let r = gw.call("test.hostile", json!({"mode": "sleep", "ms": 60_000})).await;
    let took = started.elapsed();
    r.assert_error(504, "tool_timeout");
    assert!(took >= Duration::from_millis(650) && took < Duration::from_secs(5), "took {took:?}");
    good_tool_still_works(&gw).await;
}

#[tokio::test]
async fn a_memory_bomb_traps_at_the_limit_with_a_scrubbed_500() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let r = gw.call("test.hostile", json!({"mode": "oom"})).await;
    r.assert_error(500, "tool_backend_failure");
    assert_eq!(r.body["tool"], "test.hostile");
    assert_eq!(r.body["req_id"], assert_request_id(&r).as_str());
    assert!(!r.text.contains("memory"), "the 500 body must be scrubbed: {}", r.text);
    good_tool_still_works(&gw).await;
}

#[tokio::test]
async fn a_trap_returns_an_error_and_the_next_call_succeeds() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let r = gw.call("test.hostile", json!({"mode": "trap"})).await;
    r.assert_error(500, "tool_backend_failure");
    assert_eq!(r.body.as_object().unwrap().len(), 4, "scrubbed body has error, code, tool, req_id only: {}", r.text);
    good_tool_still_works(&gw).await;
}

#[tokio::test]
async fn opening_a_file_fails_inside_a_tool() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    for path in ["/etc/passwd", gw.config.database.path.to_str().unwrap(), ".", "sluice.duckdb"] {
        let r = gw.call("test.hostile", json!({"mode": "open_file", "path": path})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["result"]["ok"], false, "a tool read {path}: {}", r.text);
    }
    good_tool_still_works(&gw).await;
}

#[tokio::test]
async fn opening_a_socket_fails_inside_a_tool_and_nothing_connects() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let r = gw.call("test.hostile", json!({"mode": "connect", "addr": addr})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["ok"], false, "a tool opened a socket: {}", r.text);
    assert!(listener.accept().is_err(), "the listener saw a connection from the tool");
    good_tool_still_works(&gw).await;
}

#[tokio::test]
async fn a_tool_sees_no_environment_and_no_arguments() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let r = gw.call("test.hostile", json!({"mode": "env"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["vars"], 0);
    assert_eq!(r.body["result"]["args"], 0);
}

#[tokio::test]
async fn a_tool_cannot_write_through_the_query_interface() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = TestGateway::start(GatewayOptions::default().with_hostile());
    let before = gw.call("test.hostile", json!({"mode": "query", "sql": "SELECT count(*) AS n FROM events"})).await;
    assert_eq!(before.status, 200, "{}", before.text);
    for sql in [
        "DROP TABLE events",
        "DELETE FROM events",
        "INSERT INTO events (ts, cluster_id, node_id, metric_name) VALUES (now(), 'x', 'y', 'z')",
        "ATTACH 'elsewhere.duckdb' AS other",
        "COPY events TO 'stolen.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA enable_profiling",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT 1; DROP TABLE events",
    ] {
        let r = gw.call("test.hostile", json!({"mode": "query", "sql": sql})).await;
        r.assert_error(400, "sql_not_read_only");
    }
    let after = gw.call("test.hostile", json!({"mode": "query", "sql": "SELECT count(*) AS n FROM events"})).await;
    assert_eq!(before.body["result"], after.body["result"]);
    assert!(!gw.dir.path().join("stolen.csv").exists());
}
