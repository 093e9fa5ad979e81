//! The `s3` sink against a real S3-compatible server on loopback (moto, installed by
//! `scripts/dev test`): exports land as objects (in parts when large), the probe is HeadBucket,
//! and a missing bucket is a terminal error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::{ByteSize, ExportBinding, ExportConfigEntry, HumanDuration, SinkConfigEntry};

use crate::common::{GatewayOptions, TempDir, TestGateway, component};
use crate::moto::Moto;

impl Moto {
    /// An object's content, read with a presigned GET (`None`: no such object).
    async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        use rusty_s3::S3Action as _;
        let b = rusty_s3::Bucket::new(url::Url::parse(&self.url).unwrap(), rusty_s3::UrlStyle::Path, bucket.to_owned(), "us-east-1".to_owned()).unwrap();
        let creds = rusty_s3::Credentials::new("test-key", "test-secret");
        let url = b.get_object(Some(&creds), key).sign(Duration::from_secs(60));
        let resp = reqwest::get(url.as_str()).await.unwrap();
        resp.status().is_success().then_some(resp.bytes().await.unwrap().to_vec())
    }
}

fn s3_sink(name: &str, endpoint: &str, bucket: &str, secrets: &TempDir) -> SinkConfigEntry {
    std::fs::write(secrets.path().join("key"), "test-key\n").unwrap();
    std::fs::write(secrets.path().join("secret"), "test-secret\n").unwrap();
    SinkConfigEntry {
        name: name.into(),
        component: component("s3"),
        settings: BTreeMap::from([
            ("endpoint".into(), endpoint.into()),
            ("bucket".into(), bucket.into()),
            ("prefix".into(), "fleet/".into()),
        ]),
        secrets: BTreeMap::from([
            ("access_key".into(), format!("file:{}", secrets.path().join("key").display())),
            ("secret_key".into(), format!("file:{}", secrets.path().join("secret").display())),
        ]),
        allow_private: true,
        timeout: HumanDuration(Duration::from_secs(20)),
        breaker_open_for: HumanDuration(Duration::from_secs(30)),
        test_on_start: false,
    }
}

fn export(name: &str, sql: &str, sink: &str, max: usize) -> ExportConfigEntry {
    ExportConfigEntry {
        name: name.into(),
        sql: sql.into(),
        cadence: None,
        cluster: "cluster-a".into(),
        max_export_bytes: ByteSize(max),
        spill_to: None,
        sinks: vec![ExportBinding { name: sink.into(), min_interval: None }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_land_in_s3_as_objects_and_parts() {
    let moto = Moto::start().await;
    let http = reqwest::Client::new();
    assert!(http.put(format!("{}/sluice", moto.url)).send().await.unwrap().status().is_success());
    let secrets = TempDir::new("s3-secrets");
    let endpoint = moto.url.clone();
    let hook = crate::sinks::receiver().await;
    let mut http_sink = s3_sink("hook", &hook.url, "unused", &secrets);
    http_sink.component = component("http");
    http_sink.settings = BTreeMap::from([("url".into(), hook.url.clone())]);
    http_sink.secrets = BTreeMap::new();
    let sinks = vec![s3_sink("store", &endpoint, "sluice", &secrets), s3_sink("nowhere", &endpoint, "no-such-bucket", &secrets), http_sink];
    let gw = TestGateway::start(GatewayOptions {
        configure: Box::new(move |c| {
            c.sinks = sinks;
            c.exports = vec![
                export("counts", "SELECT node_id, count(*) AS events FROM events GROUP BY ALL ORDER BY ALL", "store", 1 << 20),
                export("samples", "SELECT node_id, metric_name, value_double FROM events LIMIT 300", "store", 4096),
                export("lost", "SELECT 1 AS one", "nowhere", 1 << 20),
                // One item over the cap: spilled to the store, the hook gets a pointer.
                ExportConfigEntry { spill_to: Some("store".into()), ..export("big", "SELECT repeat('x', 10000) AS blob", "hook", 4096) },
            ];
        }),
        ..Default::default()
    });

    // One object, the envelope as written.
    let r = gw.request("POST", "/api/v2/exports/counts/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let loc = r.body["sinkExports"][0]["message"].as_str().unwrap().to_owned();
    assert!(loc.contains("s3://sluice/fleet/exports/counts.json"), "{loc}");
    let object: Value = serde_json::from_slice(&moto.get("sluice", "fleet/exports/counts.json").await.unwrap()).unwrap();
    assert_eq!(object["checksum"], r.body["checksum"]);
    assert_eq!(object["cluster"], "cluster-a");
    let direct: Vec<Value> = {
        let conn = gw.gateway.db().writer();
        let mut stmt = conn.prepare("SELECT node_id, count(*) FROM events GROUP BY ALL ORDER BY ALL").unwrap();
        stmt.query_map([], |row| Ok(json!({"events": row.get::<_, i64>(1)?, "node_id": row.get::<_, String>(0)?})))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut items = object["items"].as_array().unwrap().clone();
    items.sort_by_key(|i| i["node_id"].as_str().unwrap().to_owned());
    assert_eq!(items, direct);

    // Over the 4 KiB cap: parts, each under it, together every row once.
    let r = gw.request("POST", "/api/v2/exports/samples/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let list = http.get(format!("{}/sluice?prefix=fleet/exports/samples/", moto.url)).send().await.unwrap().text().await.unwrap();
    let n = list.matches("<Key>").count();
    assert!(n > 1, "several parts expected: {list}");
    let mut total = 0;
    for i in 1..=n {
        let bytes = moto.get("sluice", &format!("fleet/exports/samples/part-{i}-of-{n}.json")).await.unwrap_or_else(|| panic!("part {i} of {n}"));
        assert!(bytes.len() <= 4096, "part {i} is {} bytes", bytes.len());
        let part: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((part["partIndex"].as_u64(), part["partTotal"].as_u64()), (Some(i as u64 - 1), Some(n as u64)));
        total += part["items"].as_array().unwrap().len();
    }
    let parts = n;
    assert_eq!(total, 300, "every row once across {parts} parts");

    // Spilled: the whole payload in the store, a pointer to it at the hook.
    let r = gw.request("POST", "/api/v2/exports/big/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let pointer: Value = serde_json::from_slice(&hook.seen.lock().unwrap()[0].2).unwrap();
    assert_eq!(pointer["items"], json!([]));
    assert_eq!(pointer["itemCount"], 1);
    assert_eq!(pointer["spilled"]["location"], "s3://sluice/fleet/exports/big.json");
    let stored: Value = serde_json::from_slice(&moto.get("sluice", "fleet/exports/big.json").await.unwrap()).unwrap();
    assert_eq!(stored["items"][0]["blob"].as_str().unwrap().len(), 10_000);
    assert_eq!(stored["checksum"], pointer["checksum"]);

    // The probe, and a missing bucket: terminal, not retried.
    let t = gw.request("POST", "/api/v2/sinks/store/test", None).await;
    assert_eq!(t.body["verified"], true, "{}", t.text);
    let t = gw.request("POST", "/api/v2/sinks/nowhere/test", None).await;
    assert_eq!(t.body["verified"], false, "{}", t.text);
    let r = gw.request("POST", "/api/v2/exports/lost/run", None).await;
    assert_eq!(r.body["condition"], "Degraded", "{}", r.text);
    assert_eq!(r.body["sinkExports"][0]["lastError"]["class"], "terminal", "{}", r.text);
}
