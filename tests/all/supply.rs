//! Components from a registry, signed, rolled out safely: a real OCI registry (Debian's
//! docker-registry) on loopback, pushes by an independent client (oras), cosign-format
//! signatures, the trust policy, canaries and automatic rollback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::{HumanDuration, OciSource, Rollout, SourceKind, ToolOverride, TrustKey};
use sluice::oci::{KeyPair, OciRef, Registry};

use crate::common::{GatewayOptions, TempDir, TestGateway, versioned_component};
use crate::oci_registry::OciRegistry;

const TOOL: &str = "test.versioned";

fn source(reference: String, require_signature: bool) -> OciSource {
    OciSource {
        reference,
        poll_interval: HumanDuration(Duration::from_millis(1000)),
        require_signature,
        username: None,
        password: None,
        ca_file: None,
        kind: SourceKind::Tool,
    }
}

/// The plugin list's entry for `file`.
async fn entry(gw: &TestGateway, file: &str) -> Value {
    let r = gw.request("GET", "/api/v2/admin/plugins", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["plugins"].as_array().unwrap().iter().find(|p| p["file"] == file).cloned().unwrap_or_else(|| panic!("no {file} in {}", r.text))
}

/// Waits until `file`'s entry satisfies `pred` (polls, reloads and canary settling run in the
/// background); panics with the last entry after `within`.
async fn wait_entry(gw: &TestGateway, file: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let e = entry(gw, file).await;
        if pred(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{file} did not get there in {within:?}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The version that answered one call, or the failure.
async fn version(gw: &TestGateway) -> Result<String, String> {
    let r = gw.call(TOOL, json!({})).await;
    match r.status.as_u16() {
        200 => {
            let (v, c) = (&r.body["result"]["version"], &r.body["result"]["check"]);
            assert_eq!(v, c, "a torn answer: {}", r.text);
            Ok(v.as_str().unwrap().to_owned())
        }
        s => Err(format!("{s}: {}", r.text)),
    }
}

async fn metric(gw: &TestGateway, line_start: &str) -> f64 {
    let text = gw.request("GET", "/metrics", None).await.text;
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_component_pushed_with_oras_is_pulled_swapped_under_load_and_survives_the_registry_going_down() {
    let _cpu = crate::common::shared_cpu().await;
    let scratch = TempDir::new("oci");
    let mut registry = OciRegistry::start(scratch.path()).await;
    let v1 = versioned_component(TOOL, "1.0.0");
    let d1 = registry.oras_push("tools/versioned:stable", &v1, scratch.path()).await;
    let reference = registry.reference("tools/versioned:stable");
    let cache = scratch.path().join("cache");
    let (r2, c2) = (reference.clone(), cache.clone());
    let gw = Arc::new(TestGateway::start(GatewayOptions {
        plugins: vec![],
        seed: false,
        configure: Box::new(move |c| {
            c.plugins.cache_dir = c2;
            c.plugins.oci.insert("versioned".into(), source(r2, false));
        }),
        ..Default::default()
    }));

    // Pulled by reference at start, and serving; the list names the reference and digest.
    assert_eq!(version(&gw).await, Ok("1.0.0".into()));
    let e = entry(&gw, "oci:versioned").await;
    assert_eq!(e["status"], "loaded", "{e}");
    assert_eq!(e["source"], format!("{reference}@{d1}"), "{e}");
    assert_eq!(e["digest"], crate::common::sha256_hex(&v1), "the digest of the component itself: {e}");

    // Clients call without pause while a new digest is pushed under the same tag.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(version(&gw).await);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = versioned_component(TOOL, "2.0.0");
    let d2 = registry.oras_push("tools/versioned:stable", &v2, scratch.path()).await;
    assert_ne!(d1, d2);
    let pushed = Instant::now();
    let e = wait_entry(&gw, "oci:versioned", Duration::from_secs(20), |e| e["version"] == "2.0.0").await;
    let picked_up = pushed.elapsed();
    assert_eq!(e["source"], format!("{reference}@{d2}"), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} calls failed during the swap: {:?}", failed.len(), answers.len(), &failed[..failed.len().min(3)]);
    let n2 = answers.iter().filter(|a| a.as_deref() == Ok("2.0.0")).count();
    let n1 = answers.iter().filter(|a| a.as_deref() == Ok("1.0.0")).count();
    assert!(n1 > 0 && n2 > 0 && n1 + n2 == answers.len(), "versions served: 1.0.0 × {n1}, 2.0.0 × {n2}");
    // The poll interval is 1 s: the new digest is found by the next poll or the one after.
    assert!(picked_up < Duration::from_secs(5), "the new digest took {picked_up:?} to serve");
    eprintln!("registry swap: {} calls, 0 failed, new digest serving {picked_up:?} after the push", answers.len());

    // The registry goes down: polls fail (counted, shown), the loaded version keeps serving.
    registry.stop();
    let failed_before = metric(&gw, "sluice_plugin_source_polls_total{outcome=\"failed\"}").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(metric(&gw, "sluice_plugin_source_polls_total{outcome=\"failed\"}").await >= failed_before + 1.0);
    for _ in 0..20 {
        assert_eq!(version(&gw).await, Ok("2.0.0".into()));
    }
    let e = entry(&gw, "oci:versioned").await;
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("loaded"), Some("2.0.0")), "{e}");

    // A restart while the registry is down serves what the cache recorded.
    let c3 = cache.clone();
    let r3 = reference.clone();
    let again = TestGateway::start(GatewayOptions {
        plugins: vec![],
        seed: false,
        configure: Box::new(move |c| {
            c.plugins.cache_dir = c3;
            c.plugins.oci.insert("versioned".into(), source(r3, false));
        }),
        ..Default::default()
    });
    assert_eq!(version(&again).await, Ok("2.0.0".into()));

    // A reference that never resolved: shown as failed with the registry's error, nothing else breaks.
    let r4 = format!("oci://{}/tools/never:1", registry.host);
    let fresh = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            c.plugins.oci.insert("never".into(), source(r4, false));
        }),
        ..Default::default()
    });
    let e = entry(&fresh, "oci:never").await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(e["last_error"].as_str().unwrap().contains("not pulled yet"), "{e}");
    assert_eq!(fresh.call("fleet.cluster.summary", json!({"cluster_id": "cluster-a"})).await.status, 200);
}

/// Signs `repo_tag`'s current digest with `key`, the way `cosign sign --key` does.
async fn cosign(registry: &OciRegistry, repo_tag: &str, key: &KeyPair) -> String {
    let r = OciRef::parse(&registry.reference(repo_tag)).unwrap();
    let reg = Registry::new(&r, &Default::default()).unwrap();
    let digest = reg.resolve(&r).await.unwrap();
    reg.push_signature(&r, &digest, key.sign_cosign(&r.repository(), &digest)).await.unwrap();
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_components_signed_by_a_trusted_key_load_and_every_refusal_keeps_the_previous_version() {
    let _cpu = crate::common::shared_cpu().await;
    let scratch = TempDir::new("sig");
    let registry = OciRegistry::start(scratch.path()).await;
    let (trusted, other) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let pub_file = scratch.path().join("trusted.pub");
    std::fs::write(&pub_file, trusted.public().to_pem()).unwrap();
    let repo = "tools/versioned:prod";

    registry.oras_push(repo, &versioned_component(TOOL, "1.0.0"), scratch.path()).await;
    cosign(&registry, repo, &trusted).await;
    let (reference, key) = (registry.reference(repo), format!("file:{}", pub_file.display()));
    let repositories = vec![format!("{}/tools/*", registry.host)];
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        plugins: vec![],
        configure: Box::new(move |c| {
            let mut s = source(reference, true);
            // Polled only when asked (POST /api/v2/admin/plugins/reload), so each step is seen once.
            s.poll_interval = HumanDuration(Duration::from_secs(3600));
            c.plugins.oci.insert("versioned".into(), s);
            c.plugins.trust.push(TrustKey { key, tools: vec!["test.*".into()], repositories });
        }),
        ..Default::default()
    });
    let e = entry(&gw, "oci:versioned").await;
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("loaded"), Some("1.0.0")), "{e}");
    assert_eq!(e["signed_by"], trusted.public().id.as_str(), "{e}");

    // Each bad new version under the same tag is refused with a reason; 1.0.0 serves on.
    let mut expect_refusals = 0.0;
    for (v, how, reason, says) in [
        ("2.0.0", "unsigned", "unsigned", "unsigned (no cosign signature for"),
        ("3.0.0", "other key", "bad_signature", "no signature verifies with a trusted key"),
        ("4.0.0", "replayed", "bad_signature", "the signature is for sha256:"),
    ] {
        let digest = registry.oras_push(repo, &versioned_component(TOOL, v), scratch.path()).await;
        match how {
            "other key" => {
                cosign(&registry, repo, &other).await;
            }
            "replayed" => {
                // The trusted key's signature of another digest, copied to this one: the blob
                // changed after signing.
                let r = OciRef::parse(&registry.reference(repo)).unwrap();
                let reg = Registry::new(&r, &Default::default()).unwrap();
                let old = format!("sha256:{}", "0".repeat(64));
                reg.push_signature(&r, &digest, trusted.sign_cosign(&r.repository(), &old)).await.unwrap();
            }
            _ => {}
        }
        assert_eq!(gw.request("POST", "/api/v2/admin/plugins/reload", None).await.status, 200);
        let e = entry(&gw, "oci:versioned").await;
        assert_eq!(e["refusal"], reason, "{how}: {e}");
        assert!(e["last_error"].as_str().is_some_and(|m| m.contains(says)), "{how}: {e}");
        assert_eq!(e["rejected_digest"], crate::common::sha256_hex(&versioned_component(TOOL, v)), "{e}");
        assert_eq!(e["version"], "1.0.0", "{how}: {e}");
        assert_eq!(e["status"], "failed", "{how}: {e}");
        for _ in 0..5 {
            assert_eq!(version(&gw).await, Ok("1.0.0".into()), "{how}");
        }
        expect_refusals += 1.0;
        let audited = gw.audit_lines("plugin_refused");
        let line = audited.iter().rev().find(|l| l["reason"] == reason).unwrap_or_else(|| panic!("no audit line for {how}: {audited:?}"));
        assert!(line["source"].as_str().unwrap().contains(&digest), "{line}");
        eprintln!("{how}: refused: {}", e["last_error"]);
    }
    let counted = metric(&gw, "sluice_plugin_refusals_total{reason=\"unsigned\"}").await
        + metric(&gw, "sluice_plugin_refusals_total{reason=\"bad_signature\"}").await;
    assert_eq!(counted, expect_refusals);

    // Signed by the trusted key: it loads.
    cosign(&registry, repo, &trusted).await;
    assert_eq!(gw.request("POST", "/api/v2/admin/plugins/reload", None).await.status, 200);
    let e = entry(&gw, "oci:versioned").await;
    assert_eq!(e["status"], "loaded", "{e}");
    assert_eq!(version(&gw).await, Ok("4.0.0".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_components_are_checked_against_signatures_openssl_makes() {
    let scratch = TempDir::new("sigfile");
    // The key and the signature come from openssl, not from Sluice: the format is cosign's
    // `sign-blob` (base64 of an ECDSA P-256 SHA-256 DER signature).
    let key = scratch.path().join("key.pem");
    let public = scratch.path().join("key.pub");
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    sh(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.to_str().unwrap()]);
    sh(&["ec", "-in", key.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let sign = |file: &std::path::Path| {
        let der = sh(&["dgst", "-sha256", "-sign", key.to_str().unwrap(), file.to_str().unwrap()]);
        use base64::Engine as _;
        std::fs::write(sluice::publish::sig_path(file), base64::engine::general_purpose::STANDARD.encode(der)).unwrap();
    };
    let v1 = scratch.path().join("versioned.wasm");
    std::fs::write(&v1, versioned_component(TOOL, "1.0.0")).unwrap();
    sign(&v1);
    let other = scratch.path().join("other.wasm");
    std::fs::write(&other, versioned_component("test.other", "1.0.0")).unwrap();
    sign(&other);
    let k = format!("file:{}", public.display());
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        plugins: vec![(v1.clone(), "versioned.wasm".into()), (sluice::publish::sig_path(&v1), "versioned.wasm.sig".into()), (other.clone(), "other.wasm".into()), (sluice::publish::sig_path(&other), "other.wasm.sig".into())],
        configure: Box::new(move |c| {
            c.plugins.require_signature = true;
            c.plugins.trust.push(TrustKey { key: k, tools: vec![TOOL.into()], repositories: vec!["*".into()] });
        }),
        ..Default::default()
    });
    let e = entry(&gw, "versioned.wasm").await;
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("loaded"), Some("1.0.0")), "{e}");
    // Signed by the trusted key, but the key may sign only test.versioned.
    let e = entry(&gw, "other.wasm").await;
    assert_eq!(e["refusal"], "key_not_allowed", "{e}");
    assert!(e["last_error"].as_str().unwrap().contains("\"test.other\""), "{e}");

    // The file changes after signing (its old .sig stays): refused, 1.0.0 serves on.
    let file = gw.plugins_dir().join("versioned.wasm");
    std::fs::write(&file, versioned_component(TOOL, "2.0.0")).unwrap();
    gw.gateway.runtime().reload();
    let e = entry(&gw, "versioned.wasm").await;
    assert_eq!((e["refusal"].as_str(), e["version"].as_str()), (Some("bad_signature"), Some("1.0.0")), "{e}");
    assert!(e["last_error"].as_str().unwrap().contains("changed after signing"), "{e}");
    assert_eq!(version(&gw).await, Ok("1.0.0".into()));
    // No signature at all.
    std::fs::remove_file(sluice::publish::sig_path(&file)).unwrap();
    gw.gateway.runtime().reload();
    assert_eq!(entry(&gw, "versioned.wasm").await["refusal"], "unsigned");
    // Signed again (openssl), it loads.
    sign(&file);
    gw.gateway.runtime().reload();
    let e = entry(&gw, "versioned.wasm").await;
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("loaded"), Some("2.0.0")), "{e}");
    assert_eq!(gw.audit_lines("plugin_refused").len(), 3, "key_not_allowed, bad_signature, unsigned");
}

fn rollout_gateway(share: f64, promote_after_calls: u64, max_failures: u64) -> TestGateway {
    let scratch = std::env::temp_dir().join(format!("sluice-rollout-{}-{}.wasm", std::process::id(), promote_after_calls));
    std::fs::write(&scratch, versioned_component(TOOL, "1.0.0")).unwrap();
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        plugins: vec![(scratch.clone(), "versioned.wasm".into())],
        configure: Box::new(move |c| {
            let rollout = Rollout { canary_share: share, promote_after_calls, promote_after: HumanDuration(Duration::from_secs(3600)), max_failures };
            c.plugins.tools.insert(TOOL.into(), ToolOverride { rollout: Some(rollout), ..Default::default() });
        }),
        ..Default::default()
    });
    let _ = std::fs::remove_file(scratch);
    gw
}

fn put_version(gw: &TestGateway, version: &str) {
    std::fs::write(gw.plugins_dir().join("versioned.wasm"), versioned_component(TOOL, version)).unwrap();
    gw.gateway.runtime().reload();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_traps_is_rolled_back_within_the_failure_limit_and_a_healthy_one_is_promoted_at_its_share() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = rollout_gateway(0.25, 250, 3);
    assert_eq!(version(&gw).await, Ok("1.0.0".into()));

    // A new version that traps on every call starts as a canary with a quarter of the calls.
    put_version(&gw, "trap-2.0.0");
    let e = entry(&gw, "versioned.wasm").await;
    assert_eq!(e["rollout"]["state"], "canary", "{e}");
    assert_eq!((e["version"].as_str(), e["rollout"]["canary_version"].as_str()), (Some("1.0.0"), Some("trap-2.0.0")), "{e}");
    let canary = gw.gateway.runtime().registry().canary(TOOL).cloned().unwrap();
    let mut failures = 0;
    let mut calls = 0;
    while canary.decision().is_none() {
        calls += 1;
        assert!(calls < 1000, "not rolled back after {calls} calls");
        match version(&gw).await {
            Ok(v) => assert_eq!(v, "1.0.0"),
            Err(e) => {
                assert!(e.starts_with("500") || e.starts_with("502"), "{e}");
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 3, "rolled back after exactly max_failures failed calls");
    // From the decision on, the old version serves everything (before and after settling).
    for _ in 0..100 {
        assert_eq!(version(&gw).await, Ok("1.0.0".into()));
    }
    let e = wait_entry(&gw, "versioned.wasm", Duration::from_secs(5), |e| e["rollout"].is_null()).await;
    assert_eq!((e["status"].as_str(), e["refusal"].as_str(), e["version"].as_str()), (Some("failed"), Some("rolled_back"), Some("1.0.0")), "{e}");
    assert!(e["last_error"].as_str().unwrap().contains("3 of"), "{e}");
    assert_eq!(gw.audit_lines("plugin_canary_rolled_back").len(), 1);
    assert_eq!(metric(&gw, "sluice_plugin_rollouts_total{outcome=\"rolled_back\"}").await, 1.0);
    for _ in 0..50 {
        assert_eq!(version(&gw).await, Ok("1.0.0".into()));
    }

    // A healthy version: served at its share until 250 canary calls, then promoted.
    put_version(&gw, "3.0.0");
    let canary = gw.gateway.runtime().registry().canary(TOOL).cloned().unwrap();
    let page = gw.request("GET", "/status", None).await.text;
    assert!(page.contains("<h2>Rollouts</h2>") && page.contains("<td>3.0.0</td><td>canary</td><td>0.25</td>"), "{page}");
    let (mut old, mut new) = (0u64, 0u64);
    while canary.decision().is_none() {
        match version(&gw).await.unwrap().as_str() {
            "1.0.0" => old += 1,
            "3.0.0" => new += 1,
            v => panic!("{v}"),
        }
        assert!(old + new < 5000);
    }
    let status = canary.status();
    assert_eq!((status.state, status.canary_calls, status.stable_calls), ("promoted", new, old), "{status:?}");
    assert_eq!(new, 250);
    let share = new as f64 / (new + old) as f64;
    // 250 canary calls at p = 0.25: the old version's count has mean 750 and s.d. 55; four s.d.
    // either side (531 to 969) puts the share between 0.20 and 0.32.
    assert!((0.20..=0.32).contains(&share), "canary share {share:.3} ({new} of {})", new + old);
    eprintln!("canary served {new} of {} calls ({share:.3}; configured 0.25)", new + old);
    let e = wait_entry(&gw, "versioned.wasm", Duration::from_secs(5), |e| e["rollout"].is_null()).await;
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("loaded"), Some("3.0.0")), "{e}");
    for _ in 0..50 {
        assert_eq!(version(&gw).await, Ok("3.0.0".into()));
    }
    assert_eq!(gw.audit_lines("plugin_canary_promoted").len(), 1);

    // By hand: a rollback and a promotion through the admin API.
    put_version(&gw, "4.0.0");
    let r = gw.request("POST", &format!("/api/v2/admin/rollouts/{TOOL}/rollback"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "rolled_back", "{}", r.text);
    for _ in 0..50 {
        assert_eq!(version(&gw).await, Ok("3.0.0".into()));
    }
    put_version(&gw, "5.0.0");
    let r = gw.request("POST", &format!("/api/v2/admin/rollouts/{TOOL}/promote"), None).await;
    assert_eq!((r.status.as_u16(), r.body["state"].as_str()), (200, Some("promoted")), "{}", r.text);
    for _ in 0..50 {
        assert_eq!(version(&gw).await, Ok("5.0.0".into()));
    }
    assert_eq!(entry(&gw, "versioned.wasm").await["version"], "5.0.0");
    gw.request("POST", &format!("/api/v2/admin/rollouts/{TOOL}/promote"), None).await.assert_error(404, "not_found");
    let r = gw.request_with(Some(&format!("Bearer {}", crate::common::TENANT_TOKEN)), "POST", &format!("/api/v2/admin/rollouts/{TOOL}/promote"), None).await;
    assert_eq!(r.status, 403, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_must_answer_its_smoke_call_before_it_serves() {
    let scratch = TempDir::new("smoke");
    let v1 = scratch.path().join("versioned.wasm");
    std::fs::write(&v1, versioned_component(TOOL, "1.0.0")).unwrap();
    let gw = TestGateway::start(GatewayOptions {
        plugins: vec![
            (v1, "versioned.wasm".into()),
            (crate::common::component("fleet-cluster-summary"), "fleet-cluster-summary.wasm".into()),
        ],
        configure: Box::new(|c| {
            c.plugins.tools.insert(TOOL.into(), ToolOverride { smoke_args: Some(json!({})), ..Default::default() });
            // A real query over the demo data, its answer checked against the tool's output schema.
            c.plugins.tools.insert(
                "fleet.cluster.summary".into(),
                ToolOverride { smoke_args: Some(json!({"cluster_id": "cluster-a"})), ..Default::default() },
            );
        }),
        ..Default::default()
    });
    assert_eq!(entry(&gw, "fleet-cluster-summary.wasm").await["status"], "loaded");
    assert_eq!(version(&gw).await, Ok("1.0.0".into()));

    // A version that traps is refused by its smoke call: no caller ever reaches it.
    put_version(&gw, "trap-2.0.0");
    let e = entry(&gw, "versioned.wasm").await;
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("failed"), Some("1.0.0")), "{e}");
    assert!(e["last_error"].as_str().unwrap().contains("the smoke call of test.versioned failed"), "{e}");
    let calls = gw.request("GET", "/metrics", None).await.text;
    assert!(!calls.contains("version=\"trap-2.0.0\""), "the refused version's series must not stay: {calls}");
    assert_eq!(version(&gw).await, Ok("1.0.0".into()));
    put_version(&gw, "2.0.0");
    assert_eq!(version(&gw).await, Ok("2.0.0".into()));
    assert_eq!(gw.audit_lines("plugin_refused").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_component_comes_from_the_registry_signed_and_an_unsigned_update_is_refused() {
    let _cpu = crate::common::shared_cpu().await;
    let scratch = TempDir::new("oci-sink");
    let registry = OciRegistry::start(scratch.path()).await;
    let trusted = KeyPair::generate().unwrap();
    let pub_file = scratch.path().join("trusted.pub");
    std::fs::write(&pub_file, trusted.public().to_pem()).unwrap();
    let http = std::fs::read(crate::common::component("http")).unwrap();
    registry.oras_push("sinks/http:1", &http, scratch.path()).await;
    let signed = cosign(&registry, "sinks/http:1", &trusted).await;

    let hook = crate::sinks::receiver().await;
    let (reference, key, url) = (registry.reference("sinks/http:1"), format!("file:{}", pub_file.display()), hook.url.clone());
    let gw = TestGateway::start(GatewayOptions {
        configure: Box::new(move |c| {
            let mut s = source(reference, true);
            s.kind = SourceKind::Sink;
            s.poll_interval = HumanDuration(Duration::from_secs(3600));
            c.plugins.oci.insert("http-sink".into(), s);
            c.plugins.trust.push(TrustKey { key, tools: vec!["*".into()], repositories: vec!["*".into()] });
            let mut sink = crate::common::http_sink("hook", &url);
            sink.component = "oci:http-sink".into();
            c.sinks = vec![sink];
            let mut export = crate::common::event_counts_export();
            export.sinks.truncate(1);
            c.exports = vec![export];
        }),
        ..Default::default()
    });
    // A sink source is not a tool.
    let r = gw.request("GET", "/api/v2/admin/plugins", None).await;
    assert!(!r.text.contains("oci:http-sink"), "{}", r.text);
    let sinks = gw.request("GET", "/api/v2/sinks", None).await;
    assert_eq!(sinks.body["sinks"][0]["digest"], crate::common::sha256_hex(&http), "{}", sinks.text);
    let r = gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    assert_eq!(hook.seen.lock().unwrap().len(), 1);

    // The same component under a new, unsigned manifest: refused at the reload, the signed one
    // keeps delivering.
    let r = OciRef::parse(&registry.reference("sinks/http:1")).unwrap();
    let reg = Registry::new(&r, &Default::default()).unwrap();
    let annotations = std::collections::BTreeMap::from([("org.opencontainers.image.description".to_owned(), "rebuilt".to_owned())]);
    let unsigned = reg.push(&r, http.clone(), annotations).await.unwrap();
    assert_ne!(unsigned, signed);
    let reload = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    let line = &reload.body["sinks"][0];
    assert_eq!(line["sink"], "hook", "{}", reload.text);
    assert!(line["error"].as_str().is_some_and(|e| e.contains("unsigned") && e.contains(&unsigned)), "{}", reload.text);
    assert_eq!(gw.audit_lines("plugin_refused").last().unwrap()["reason"], "unsigned");
    // Refused once, not again at every reload while nothing changes.
    let again = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    assert_eq!(again.body["sinks"], json!([]), "{}", again.text);
    gw.request("POST", "/api/v2/exports/event-counts/run", None).await;
    // Signed, it loads.
    cosign(&registry, "sinks/http:1", &trusted).await;
    let reload = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    let line = &reload.body["sinks"][0];
    assert!(line["error"].is_null() && line["component"].as_str().is_some_and(|c| c.starts_with("http@")), "{}", reload.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_without_failures_is_promoted_when_its_time_is_up_even_without_calls() {
    let scratch = std::env::temp_dir().join(format!("sluice-rollout-time-{}.wasm", std::process::id()));
    std::fs::write(&scratch, versioned_component(TOOL, "1.0.0")).unwrap();
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        plugins: vec![(scratch.clone(), "versioned.wasm".into())],
        configure: Box::new(|c| {
            let rollout = Rollout { canary_share: 0.5, promote_after_calls: 1_000_000, promote_after: HumanDuration(Duration::from_secs(2)), max_failures: 3 };
            c.plugins.tools.insert(TOOL.into(), ToolOverride { rollout: Some(rollout), ..Default::default() });
        }),
        ..Default::default()
    });
    let _ = std::fs::remove_file(scratch);
    put_version(&gw, "2.0.0");
    let started = Instant::now();
    assert_eq!(entry(&gw, "versioned.wasm").await["rollout"]["state"], "canary");
    // Nobody calls; the server's once-a-second check promotes it after 2 s.
    let e = wait_entry(&gw, "versioned.wasm", Duration::from_secs(10), |e| e["rollout"].is_null()).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "promoted too early: {:?}", started.elapsed());
    assert_eq!((e["status"].as_str(), e["version"].as_str()), (Some("loaded"), Some("2.0.0")), "{e}");
    let promoted = gw.audit_lines("plugin_canary_promoted");
    assert!(promoted[0]["reason"].as_str().unwrap().contains("0 failures in 0 calls"), "{promoted:?}");
    for _ in 0..20 {
        assert_eq!(version(&gw).await, Ok("2.0.0".into()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_sends_more_than_the_manifest_declares_is_cut_off() {
    // A hostile registry: its manifest declares a 1 KiB layer, its blob never ends.
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "size": 2, "digest": format!("sha256:{}", "1".repeat(64))},
        "layers": [{"mediaType": "application/wasm", "size": 1024, "digest": format!("sha256:{}", "2".repeat(64))}]
    })
    .to_string();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let manifest = manifest.clone();
        async move {
            let path = req.uri().path().to_owned();
            if path.contains("/manifests/") {
                ([("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest).into_response()
            } else if path.contains("/blobs/") {
                let endless = futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![0u8; 64 << 10]));
                axum::body::Body::from_stream(endless).into_response()
            } else {
                axum::http::StatusCode::OK.into_response()
            }
        }
    });
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let r = OciRef::parse(&format!("oci://{addr}/hostile/tool:1")).unwrap();
    let reg = Registry::new(&r, &Default::default()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), reg.pull(&r, None)).await.expect("the pull must end").unwrap_err();
    assert!(format!("{err:#}").contains("more than the 1024 bytes the manifest declares"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_concurrent_calls_a_trapping_canary_still_fails_no_more_than_max_failures_calls() {
    let _cpu = crate::common::shared_cpu().await;
    let gw = Arc::new(rollout_gateway(0.5, 1_000_000, 3));
    put_version(&gw, "trap-2.0.0");
    let canary = gw.gateway.runtime().registry().canary(TOOL).cloned().unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (gw, canary) = (gw.clone(), canary.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            // Until the decision, and as many calls again after it.
            let mut after = 0;
            while after < 50 {
                match version(&gw).await {
                    Ok(v) => {
                        assert_eq!(v, "1.0.0");
                        ok += 1;
                    }
                    Err(_) => failed += 1,
                }
                if canary.decision().is_some() {
                    after += 1;
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(canary.status().state, "rolled_back");
    assert_eq!(failed, 3, "8 clients at once: the canary may fail max_failures calls, no more ({ok} calls answered)");
}
