//! Hot swap under load: the component file is replaced 20 times, with a broken file written in
//! between, while clients call the tool concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{GatewayOptions, TestGateway, sha256_hex, versioned_component};

const VERSIONS: usize = 20;
const CLIENTS: usize = 6;
/// Each client's pause between calls: together the clients keep thousands of calls per second
/// going without pinning both cores of a CI machine, where no swap deadline could be promised.
const PACE: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Answer {
    status: u16,
    version: String,
    check: String,
    digest: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_twenty_versions_under_load_without_a_failed_call_or_a_broken_version_serving() {
    // The 1 s swap bound is about this gateway, not about servers other tests run beside it.
    let _cpu = crate::common::exclusive_cpu().await;
    let first = versioned_component("test.versioned", "1.0.0");
    let first_path = std::env::temp_dir().join(format!("sluice-versioned-{}.wasm", std::process::id()));
    std::fs::write(&first_path, &first).unwrap();
    let gw = Arc::new(TestGateway::start(GatewayOptions {
        plugins: vec![(first_path.clone(), "versioned.wasm".into())],
        seed: false,
        watch: true,
        ..Default::default()
    }));
    let _ = std::fs::remove_file(&first_path);
    let file = gw.plugins_dir().join("versioned.wasm");

    // Which digest is which version, as written by this test.
    let mut written: HashMap<String, String> = HashMap::new();
    written.insert(sha256_hex(&first), "1.0.0".into());
    let r = gw.call("test.versioned", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["version"], "1.0.0");

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (gw, stop) = (gw.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = gw.call("test.versioned", json!({})).await;
                answers.push(Answer {
                    status: r.status.as_u16(),
                    version: r.body["result"]["version"].as_str().unwrap_or_default().to_owned(),
                    check: r.body["result"]["check"].as_str().unwrap_or_default().to_owned(),
                    digest: r.header("x-sluice-plugin-digest").unwrap_or_default().to_owned(),
                });
                tokio::time::sleep(PACE).await;
            }
            answers
        }));
    }

    let mut broken_digests = Vec::new();
    let mut worst_latency = Duration::ZERO;
    let load_started = Instant::now();
    for i in 1..=VERSIONS {
        let version = format!("1.0.{i}");
        let bytes = versioned_component("test.versioned", &version);
        written.insert(sha256_hex(&bytes), version.clone());
        std::fs::write(&file, &bytes).unwrap();
        let written_at = Instant::now();
        // The newest version must serve within 1 s of the write.
        loop {
            let r = gw.call("test.versioned", json!({})).await;
            if r.body["result"]["version"] == version.as_str() {
                break;
            }
            assert!(written_at.elapsed() < Duration::from_secs(1), "version {version} not serving 1 s after the write");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst_latency = worst_latency.max(written_at.elapsed());

        if i < VERSIONS {
            // A broken component in between: refused, visible in the admin list, never serving.
            let mut broken = bytes.clone();
            let cut = broken.len() / 2;
            broken.truncate(cut);
            broken.extend_from_slice(b"not the rest of a component");
            let broken_digest = sha256_hex(&broken);
            std::fs::write(&file, &broken).unwrap();
            let written_at = Instant::now();
            loop {
                let r = gw.request("GET", "/api/v2/admin/plugins", None).await;
                let entry = r.body["plugins"].as_array().unwrap().iter().find(|p| p["file"] == "versioned.wasm").cloned().unwrap();
                if entry["rejected_digest"] == broken_digest.as_str() {
                    assert_eq!(entry["status"], "failed");
                    assert!(entry["last_error"].as_str().unwrap().contains("not a valid WebAssembly component"), "{entry}");
                    assert_eq!(entry["version"], version.as_str(), "the previous version keeps serving");
                    break;
                }
                assert!(written_at.elapsed() < Duration::from_secs(2), "broken component not reported: {entry}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            broken_digests.push(broken_digest);
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for c in clients {
        for a in c.await.unwrap() {
            total += 1;
            assert_eq!(a.status, 200, "a call failed during the swaps: {a:?}");
            assert_eq!(a.version, a.check, "an answer mixed two versions: {a:?}");
            assert!(!broken_digests.contains(&a.digest), "a broken component served: {a:?}");
            assert_eq!(written.get(&a.digest), Some(&a.version), "answer does not come from the version with its digest: {a:?}");
        }
    }
    let rate = total as f64 / load_started.elapsed().as_secs_f64();
    assert!(rate >= 500.0, "too few calls ({total}, {rate:.0}/s) to call this load");
    eprintln!("hot swap: {total} calls ({rate:.0}/s), {VERSIONS} versions, worst swap latency {worst_latency:?}");
}
