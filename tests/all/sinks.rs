//! Sink components through the host: the `http` sink delivering export envelopes to a real
//! HTTP receiver on loopback, its error classes, and the host's network policy around it.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};
use sluice::export::envelope::{EnvelopeMeta, Plan, SinkShape, Snapshot, plan};
use sluice::runtime::sinks::{ErrorClass, ExportRequest, Family, NetPolicy, SinkCallError, SinkConfig};

use crate::common::{GatewayOptions, TestGateway, component};

/// Requests a receiver got: method, headers, body.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Vec<u8>)>>>;

/// A receiver that records each request and answers with the status it is set to.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) status: Arc<AtomicU16>,
    pub(crate) seen: Seen,
}

pub(crate) async fn receiver() -> Receiver {
    let status = Arc::new(AtomicU16::new(200));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (st, sn) = (status.clone(), seen.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (st, sn) = (st.clone(), sn.clone());
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap().to_vec();
            sn.lock().unwrap().push((parts.method.to_string(), parts.headers, bytes));
            axum::http::StatusCode::from_u16(st.load(Ordering::SeqCst)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url: format!("http://{addr}/exports"), status, seen }
}

fn config(url: &str) -> SinkConfig {
    SinkConfig {
        name: "hook".into(),
        settings: vec![("url".into(), url.into())],
        secrets: vec![("token".into(), "s3cret-token".into())],
    }
}

fn request(payload: &str, checksum: &str) -> ExportRequest {
    ExportRequest {
        export: "nodes".into(),
        cluster: "cluster-a".into(),
        generation: 3,
        checksum: checksum.into(),
        part_index: 0,
        part_total: 1,
        item_count: 2,
        format: "json".into(),
        payload: payload.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_sink_delivers_envelopes_and_classifies_failures() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let rt = gw.gateway.runtime().clone();
    let sink = rt.load_sink(&component("http")).unwrap();
    assert_eq!(sink.info.sink_type, "http");
    assert!(matches!(sink.info.family, Family::Snapshot));
    assert!(sink.info.capabilities.accepts_parts);

    let rx = receiver().await;
    let policy = Arc::new(NetPolicy::for_urls([rx.url.as_str()], true));
    let t = Duration::from_secs(10);

    // A real envelope of two items.
    let snap = Snapshot::new(&[json!({"node": "n2", "health": 0.5}), json!({"node": "n1", "health": 0.9})]);
    let meta = EnvelopeMeta { export: "nodes", cluster: "cluster-a", generation: 3, exported_at: "2026-11-22T10:00:00Z" };
    let (Ok(Plan::Parts(parts)), _) = plan(&snap, &meta, 1 << 20, SinkShape { accepts_parts: true, spill_available: false }) else {
        panic!("one part expected")
    };
    let receipt = rt.sink_export(&sink, &config(&rx.url), &request(&parts[0].json, &snap.checksum), policy.clone(), t).await.unwrap();
    assert!(receipt.location.contains("HTTP 200"), "{}", receipt.location);
    {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (method, headers, body) = &seen[0];
        assert_eq!(method, "POST");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["authorization"], "Bearer s3cret-token");
        assert_eq!(headers["idempotency-key"], format!("nodes/3/0/{}", &snap.checksum[..12]).as_str());
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["checksum"], snap.checksum);
        assert_eq!(v["items"], json!([{"health": 0.5, "node": "n2"}, {"health": 0.9, "node": "n1"}]));
    }
    assert!(rt.sink_probe(&sink, &config(&rx.url), policy.clone(), t).await.unwrap().contains("reachable"));

    // The receiver's answers, classified by the component.
    for (status, class) in [(503, ErrorClass::Transient), (429, ErrorClass::Transient), (403, ErrorClass::Forbidden), (401, ErrorClass::Terminal), (400, ErrorClass::Terminal)] {
        rx.status.store(status, Ordering::SeqCst);
        let err = rt.sink_export(&sink, &config(&rx.url), &request("{}", &snap.checksum), policy.clone(), t).await.unwrap_err();
        assert_eq!(err.class(), class, "HTTP {status}: {err}");
        assert!(matches!(err, SinkCallError::Sink(_)), "{err}");
    }
    rx.status.store(200, Ordering::SeqCst);

    // Nobody listening: transient.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x", l.local_addr().unwrap())
    };
    let err = rt
        .sink_export(&sink, &config(&closed), &request("{}", "c"), Arc::new(NetPolicy::for_urls([closed.as_str()], true)), t)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    // A missing setting: terminal.
    let bare = SinkConfig { name: "hook".into(), settings: vec![], secrets: vec![] };
    let err = rt.sink_export(&sink, &bare, &request("{}", "c"), policy.clone(), t).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Terminal, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_refuses_what_the_sinks_configuration_does_not_allow() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let rt = gw.gateway.runtime().clone();
    let sink = rt.load_sink(&component("http")).unwrap();
    let rx = receiver().await;
    let t = Duration::from_secs(10);
    let refused = |err: &SinkCallError| err.class() == ErrorClass::Terminal && err.to_string().contains("host refused");

    // Loopback without allow_private.
    let strict = Arc::new(NetPolicy::for_urls([rx.url.as_str()], false));
    let err = rt.sink_export(&sink, &config(&rx.url), &request("{}", "c"), strict, t).await.unwrap_err();
    assert!(refused(&err), "{err}");
    // A host the configuration does not name (the component asks for another URL than allowed).
    let other = Arc::new(NetPolicy::for_urls(["http://example.invalid/"], true));
    let err = rt.sink_export(&sink, &config(&rx.url), &request("{}", "c"), other, t).await.unwrap_err();
    assert!(refused(&err), "{err}");
    // The cloud metadata address, even when named and private addresses are allowed.
    let metadata = "http://169.254.169.254/latest/meta-data/";
    let err = rt
        .sink_export(&sink, &config(metadata), &request("{}", "c"), Arc::new(NetPolicy::for_urls([metadata], true)), t)
        .await
        .unwrap_err();
    assert!(refused(&err), "{err}");
    // Not one of these reached the receiver.
    assert!(rx.seen.lock().unwrap().is_empty());
}

