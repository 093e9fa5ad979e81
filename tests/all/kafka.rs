//! The `kafka` sink against a real Kafka-compatible broker (tansu, built into the cache by
//! `scripts/dev test`), read back with an independent consumer (rskafka in the test process):
//! keyed records, per envelope and per item on the key's partition, idempotency headers, empty
//! exports not sent, a missing topic terminal, the probe, and the socket allow-list.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::UnknownTopicHandling;
use rskafka::client::{Client, ClientBuilder};
use serde_json::{Value, json};
use sluice::config::{ByteSize, ExportBinding, ExportConfigEntry, HumanDuration, SinkConfigEntry};
use sluice::runtime::sinks::{ErrorClass, ExportRequest, NetPolicy, SinkConfig};

use crate::common::{sink_line as line, GatewayOptions, TestGateway, component};
use crate::pg_server::free_port;

/// A tansu broker on a free loopback port, its log in SQLite in a scratch directory, stopped on
/// drop.
pub(crate) struct Tansu {
    child: Child,
    pub(crate) addr: String,
    _dir: crate::common::TempDir,
}

impl Tansu {
    pub(crate) async fn start() -> Self {
        let bin = std::env::var("SLUICE_TANSU").expect("SLUICE_TANSU is not set: run the tests with `scripts/dev test`, which builds tansu");
        let addr = format!("127.0.0.1:{}", free_port());
        let url = format!("tcp://{addr}");
        let dir = crate::common::TempDir::new("tansu");
        let child = Command::new(bin)
            .current_dir(dir.path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, addr, _dir: dir }
    }

    pub(crate) async fn client(&self) -> Client {
        ClientBuilder::new(vec![self.addr.clone()]).build().await.unwrap()
    }

    pub(crate) async fn create_topic(&self, topic: &str, partitions: i32) {
        self.client().await.controller_client().unwrap().create_topic(topic, partitions, 1, 5_000).await.unwrap();
    }

    /// Every record of a partition: (key, value, headers).
    pub(crate) async fn records(&self, topic: &str, partition: i32) -> Vec<(String, Vec<u8>, BTreeMap<String, String>)> {
        let pc = self.client().await.partition_client(topic, partition, UnknownTopicHandling::Retry).await.unwrap();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let (records, high) = pc.fetch_records(offset, 1..16_000_000, 500).await.unwrap();
            for r in &records {
                let rec = &r.record;
                out.push((
                    String::from_utf8(rec.key.clone().unwrap_or_default()).unwrap(),
                    rec.value.clone().unwrap_or_default(),
                    rec.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect(),
                ));
                offset = r.offset + 1;
            }
            if offset >= high {
                break;
            }
            if records.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn kafka_sink(name: &str, brokers: &str, topic: &str, mode: &str) -> SinkConfigEntry {
    SinkConfigEntry {
        name: name.into(),
        component: component("kafka"),
        settings: BTreeMap::from([("brokers".into(), brokers.into()), ("topic".into(), topic.into()), ("mode".into(), mode.into())]),
        secrets: BTreeMap::new(),
        allow_private: true,
        timeout: HumanDuration(Duration::from_secs(20)),
        breaker_open_for: HumanDuration(Duration::from_secs(30)),
        test_on_start: false,
    }
}

fn export(name: &str, sql: &str, sinks: &[&str]) -> ExportConfigEntry {
    ExportConfigEntry {
        name: name.into(),
        sql: sql.into(),
        cadence: None,
        cluster: "cluster-a".into(),
        max_export_bytes: ByteSize(1 << 20),
        spill_to: None,
        sinks: sinks.iter().map(|s| ExportBinding { name: (*s).into(), min_interval: None }).collect(),
    }
}

const SQL: &str = "SELECT i AS id, 'node-' || i AS name FROM range(100) t(i) ORDER BY i";

#[tokio::test(flavor = "multi_thread")]
async fn the_kafka_sink_produces_keyed_records_with_idempotency_keys_to_a_real_broker() {
    let _cpu = crate::common::shared_cpu().await;
    let broker = Tansu::start().await;
    broker.create_topic("exports", 1).await;
    broker.create_topic("items", 3).await;
    let sinks = vec![
        kafka_sink("envelopes", &broker.addr, "exports", "envelope"),
        SinkConfigEntry { test_on_start: true, ..kafka_sink("items", &broker.addr, "items", "item") },
        SinkConfigEntry { test_on_start: true, ..kafka_sink("missing", &broker.addr, "no-such-topic", "envelope") },
    ];
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            c.sinks = sinks;
            c.exports = vec![
                export("inventory", SQL, &["envelopes", "items"]),
                export("empty", "SELECT 1 AS id WHERE false", &["envelopes"]),
                export("lost", "SELECT 1 AS id", &["missing"]),
            ];
        }),
        ..Default::default()
    });
    let want: Vec<Value> = (0..100).map(|i| json!({"id": i, "name": format!("node-{i}")})).collect();

    // Connection tests at start (where configured): one verified, one not, neither blocks start.
    let started = Instant::now();
    let sinks = loop {
        let s = gw.request("GET", "/api/v2/sinks", None).await.body;
        let tested = s["sinks"].as_array().unwrap().iter().filter(|s| !s["connection"].is_null()).count();
        if tested == 2 {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the connection tests at start did not run: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let connection = |name: &str| sinks["sinks"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["connection"].clone();
    assert_eq!(connection("items")["verified"], true, "{sinks}");
    assert!(connection("items")["detail"].as_str().unwrap().contains("3 partition(s)"), "{sinks}");
    assert_eq!(connection("missing")["verified"], false, "{sinks}");
    assert!(connection("envelopes").is_null());
    let metrics = gw.request("GET", "/metrics", None).await.text;
    assert!(metrics.contains("sluice_sink_connection_test_total{result=\"failed\",sink_type=\"kafka\"} 1"), "{metrics}");

    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let checksum = r.body["checksum"].as_str().unwrap().to_owned();

    // One record per envelope, keyed <cluster>/<export>, with the idempotency key and checksum.
    let envelopes = broker.records("exports", 0).await;
    assert_eq!(envelopes.len(), 1);
    let (key, value, headers) = &envelopes[0];
    assert_eq!(key, "cluster-a/inventory");
    assert_eq!(headers["sluice-idempotency-key"], "inventory/1/0");
    assert_eq!(headers["sluice-checksum"], checksum);
    assert_eq!(headers["content-type"], "application/json");
    let envelope: Value = serde_json::from_slice(value).unwrap();
    // (in the envelope's canonical order)
    let canonical = envelope["items"].as_array().unwrap().clone();
    let mut by_id = canonical.clone();
    by_id.sort_by_key(|i| i["id"].as_i64());
    assert_eq!(by_id, want);

    // One record per item, all on the key's partition (Kafka's default partitioner), in order.
    let mut per_partition = Vec::new();
    for p in 0..3 {
        per_partition.push(broker.records("items", p).await);
    }
    assert_eq!(per_partition.iter().filter(|r| !r.is_empty()).count(), 1, "one key, one partition");
    let items = per_partition.into_iter().find(|r| !r.is_empty()).unwrap();
    assert_eq!(items.len(), 100);
    for (i, (key, value, headers)) in items.iter().enumerate() {
        assert_eq!(key, "cluster-a/inventory");
        assert_eq!(headers["sluice-idempotency-key"], format!("inventory/1/0/{i}"));
        assert_eq!(serde_json::from_slice::<Value>(value).unwrap(), canonical[i]);
    }

    // Again (no interval): at least once, and a repeat carries the same idempotency key.
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(line(&r.body, "envelopes")["synced"], "Exported", "{}", r.text);
    let envelopes = broker.records("exports", 0).await;
    assert_eq!(envelopes.len(), 2);
    assert_eq!(envelopes[1].2["sluice-idempotency-key"], "inventory/1/0");

    // An empty result is not sent to an event sink.
    let r = gw.request("POST", "/api/v2/exports/empty/run", None).await;
    assert_eq!(line(&r.body, "envelopes")["synced"], "Exported", "{}", r.text);
    assert_eq!(broker.records("exports", 0).await.len(), 2);

    // A topic that does not exist: terminal, not retried into the breaker.
    let r = gw.request("POST", "/api/v2/exports/lost/run", None).await;
    let l = line(&r.body, "missing");
    assert_eq!(l["lastError"]["class"], "terminal", "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("no-such-topic"), "{l}");

    // The connection test is a metadata request.
    let t = gw.request("POST", "/api/v2/sinks/items/test", None).await;
    assert_eq!(t.body["verified"], true, "{}", t.text);
    assert!(t.text.contains("3 partition(s)"), "{}", t.text);
    let t = gw.request("POST", "/api/v2/sinks/missing/test", None).await;
    assert_eq!(t.body["verified"], false, "{}", t.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_sink_reaches_only_the_brokers_in_its_configuration() {
    let _cpu = crate::common::shared_cpu().await;
    let broker = Tansu::start().await;
    broker.create_topic("exports", 1).await;
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let rt = gw.gateway.runtime().clone();
    let sink = rt.load_sink(&component("kafka")).unwrap();
    let config = SinkConfig {
        name: "k".into(),
        settings: vec![("brokers".into(), broker.addr.clone()), ("topic".into(), "exports".into())],
        secrets: vec![],
    };
    let request = ExportRequest {
        export: "x".into(),
        cluster: "c".into(),
        generation: 1,
        checksum: "c".into(),
        part_index: 0,
        part_total: 1,
        item_count: 1,
        format: "json".into(),
        payload: br#"{"items":[{"id":1}]}"#.to_vec(),
    };
    let t = Duration::from_secs(20);
    let ok = rt.sink_export(&sink, &config, &request, Arc::new(NetPolicy::for_urls([broker.addr.as_str()], true)), t).await;
    assert!(ok.is_ok(), "{ok:?}");
    for policy in [NetPolicy::for_urls(["127.0.0.1:1"], true), NetPolicy::for_urls([broker.addr.as_str()], false)] {
        let err = rt.sink_export(&sink, &config, &request, Arc::new(policy), t).await.unwrap_err();
        assert!(err.class() == ErrorClass::Terminal && err.to_string().contains("host refused"), "{err}");
    }
    assert_eq!(broker.records("exports", 0).await.len(), 1, "only the allowed delivery arrived");
}
