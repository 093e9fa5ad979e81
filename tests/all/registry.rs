//! Loading and refusing components: the reasons are visible, the previous version keeps serving,
//! pinned digests are enforced, and a restart compiles nothing.

use std::sync::Arc;

use serde_json::json;
use sluice::metrics::Metrics;
use sluice::runtime::Runtime;

use crate::common::{GatewayOptions, TempDir, TestGateway, component, sha256_hex, versioned_component};

fn runtime(dir: &TempDir, configure: impl FnOnce(&mut sluice::config::PluginsConfig)) -> Arc<Runtime> {
    let mut c = sluice::config::PluginsConfig {
        dir: dir.path().join("plugins"),
        cache_dir: dir.path().join("cache"),
        watch: false,
        ..Default::default()
    };
    std::fs::create_dir_all(&c.dir).unwrap();
    configure(&mut c);
    Runtime::new(c, Metrics::new()).unwrap()
}

fn status(rt: &Runtime, file: &str) -> sluice::runtime::PluginStatus {
    rt.registry().statuses().into_iter().find(|s| s.file == file).unwrap_or_else(|| panic!("no status for {file}"))
}

#[test]
fn refuses_files_that_are_not_tool_components_with_the_reason() {
    let dir = TempDir::new("refuse");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    // An empty component: valid, but exports nothing.
    std::fs::write(plugins.join("empty.wasm"), b"\0asm\x0d\x00\x01\x00").unwrap();
    // A core module, not a component.
    std::fs::write(plugins.join("core.wasm"), b"\0asm\x01\x00\x00\x00").unwrap();
    std::fs::write(plugins.join("text.wasm"), b"hello").unwrap();
    std::fs::write(plugins.join("trap-in-describe.wasm"), versioned_component("!trap", "1.0.0")).unwrap();
    std::fs::write(plugins.join("bad-name.wasm"), versioned_component("Bad Name", "1.0.0")).unwrap();
    std::fs::write(plugins.join("empty-version.wasm"), versioned_component("test.noversion", "")).unwrap();
    let rt = runtime(&dir, |_| {});

    let expect = [
        ("empty.wasm", "does not export the `tool` world"),
        ("core.wasm", "not a valid WebAssembly component"),
        ("text.wasm", "not a valid WebAssembly component"),
        ("trap-in-describe.wasm", "describe failed"),
        ("bad-name.wasm", "invalid tool name"),
        ("empty-version.wasm", "must give a version"),
    ];
    for (file, reason) in expect {
        let s = status(&rt, file);
        assert_eq!(s.status, "failed", "{file}: {s:?}");
        assert!(s.last_error.as_deref().unwrap_or_default().contains(reason), "{file}: {s:?}");
        assert_eq!(s.name, None);
    }
    assert_eq!(rt.registry().tools().count(), 0);
}

#[test]
fn a_failed_update_keeps_the_previous_version_serving() {
    let dir = TempDir::new("keep");
    let rt = runtime(&dir, |_| {});
    let file = rt.plugins_dir().join("v.wasm");
    let good = versioned_component("test.versioned", "2.0.0");
    std::fs::write(&file, &good).unwrap();
    rt.reload();
    assert_eq!(rt.registry().get("test.versioned").unwrap().version, "2.0.0");

    std::fs::write(&file, versioned_component("!trap", "3.0.0")).unwrap();
    let report = rt.reload();
    assert_eq!(report.failed.len(), 1);
    let s = status(&rt, "v.wasm");
    assert_eq!((s.status, s.version.as_deref(), s.digest.clone()), ("failed", Some("2.0.0"), Some(sha256_hex(&good))));
    assert_eq!(rt.registry().get("test.versioned").unwrap().version, "2.0.0");

    // Removing the file stops serving the tool.
    std::fs::remove_file(&file).unwrap();
    let report = rt.reload();
    assert_eq!(report.removed, ["v.wasm"]);
    assert!(rt.registry().get("test.versioned").is_none());
}

#[test]
fn two_files_claiming_one_tool_name_serve_only_the_first() {
    let dir = TempDir::new("dup");
    let rt = runtime(&dir, |_| {});
    std::fs::write(rt.plugins_dir().join("a.wasm"), versioned_component("test.same", "1.0.0")).unwrap();
    std::fs::write(rt.plugins_dir().join("b.wasm"), versioned_component("test.same", "9.0.0")).unwrap();
    rt.reload();
    assert_eq!(rt.registry().get("test.same").unwrap().version, "1.0.0");
    let s = status(&rt, "b.wasm");
    assert!(s.last_error.unwrap().contains("already provided by a.wasm"));
}

#[test]
fn a_pinned_digest_refuses_a_different_component_and_accepts_its_own() {
    let dir = TempDir::new("pin");
    let summary = std::fs::read(component("fleet-cluster-summary")).unwrap();
    let pinned = sha256_hex(&summary);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("summary.wasm"), &summary).unwrap();
    std::fs::write(plugins.join("other.wasm"), versioned_component("test.versioned", "1.0.0")).unwrap();
    let rt = runtime(&dir, |c| {
        c.pinned.insert("summary.wasm".into(), pinned.clone());
        c.pinned.insert("other.wasm".into(), "0".repeat(64));
    });
    assert_eq!(status(&rt, "summary.wasm").status, "loaded");
    let other = status(&rt, "other.wasm");
    assert_eq!(other.status, "failed");
    assert!(other.last_error.unwrap().contains("does not match the pinned digest"));
    assert!(rt.registry().get("test.versioned").is_none());
}

#[test]
fn a_restart_loads_compiled_components_from_the_cache() {
    let dir = TempDir::new("cache");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["fleet-cluster-summary", "fleet-cluster-run-analysis"] {
        std::fs::copy(component(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let first = runtime(&dir, |_| {});
    assert_eq!(first.last_reload().loaded.len(), 2);
    assert_eq!(first.last_reload().cache_hits, 0);
    drop(first);
    let second = runtime(&dir, |_| {});
    assert_eq!(second.last_reload().loaded.len(), 2);
    assert_eq!(second.last_reload().cache_hits, 2, "a restart must not recompile unchanged components");
    drop(second);
    // A corrupt cache entry is discarded and the component recompiled, not trusted.
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        for f in std::fs::read_dir(entry.unwrap().path()).unwrap() {
            std::fs::write(f.unwrap().path(), b"garbage").unwrap();
        }
    }
    let third = runtime(&dir, |_| {});
    assert_eq!(third.last_reload().loaded.len(), 2);
    assert_eq!(third.last_reload().cache_hits, 0);
    assert_eq!(third.registry().tools().count(), 2);
}

#[tokio::test]
async fn the_admin_endpoints_list_plugins_and_reload_on_request() {
    let gw = TestGateway::start(GatewayOptions { seed: false, ..Default::default() });
    let r = gw.request("GET", "/api/v2/admin/plugins", None).await;
    assert_eq!(r.status, 200);
    let plugins = r.body["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2);
    for p in plugins {
        assert_eq!(p["status"], "loaded");
        assert_eq!(p["digest"].as_str().unwrap().len(), 64);
        assert!(p["loaded_at"].as_str().unwrap().ends_with('Z'));
        assert!(p["name"].as_str().unwrap().starts_with("fleet.cluster."));
        assert_eq!(p["version"], "0.1.0");
        assert!(p["last_error"].is_null());
    }
    std::fs::write(gw.plugins_dir().join("v.wasm"), versioned_component("test.versioned", "4.2.0")).unwrap();
    let r = gw.request("POST", "/api/v2/admin/plugins/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["loaded"], json!(["v.wasm"]));
    let r = gw.call("test.versioned", json!({})).await;
    assert_eq!(r.body["result"]["version"], "4.2.0");
}
