//! Running Sluice the way operators do: the Helm chart (linted, rendered and validated offline
//! by `tests/deploy/chart_check.py` with Helm's own library and the Kubernetes schemas), the
//! configuration it renders checked by `sluice serve --check-config`, the release bundle run with
//! a bare environment, the systemd unit verified and its command line served, and the container
//! recipe's paths and user against the chart's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{https_client, write_cert};
use crate::common::{TempDir, root, sluice_bin};

const TOKEN: &str = "deploy-test-token-7d41";

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Lints, renders and validates the chart with `values`: the rendered manifests and NOTES, or
/// what refused them.
fn chart(values: Value) -> Result<Value, String> {
    let _cpu = crate::common::shared_cpu_blocking();
    let tools = std::env::var("SLUICE_DEPLOY_TOOLS")
        .expect("SLUICE_DEPLOY_TOOLS is not set: run the tests with `scripts/dev test`, which installs the chart tools");
    let out = Command::new("python3")
        .arg(root().join("tests/deploy/chart_check.py"))
        .arg(root().join("deploy/helm/sluice"))
        .arg(values.to_string())
        .env("SLUICE_DEPLOY_TOOLS", tools)
        .output()
        .expect("running python3");
    if out.status.success() { Ok(serde_json::from_slice(&out.stdout).unwrap()) } else { Err(text(&out.stderr)) }
}

fn manifests<'a>(r: &'a Value, kind: &str) -> Vec<&'a Value> {
    r["manifests"].as_array().unwrap().iter().map(|m| &m["doc"]).filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(r: &'a Value, kind: &str) -> &'a Value {
    let all = manifests(r, kind);
    assert_eq!(all.len(), 1, "one {kind} expected");
    all[0]
}

fn rendered_toml(r: &Value) -> String {
    one(r, "ConfigMap")["data"]["sluice.toml"].as_str().unwrap().to_owned()
}

/// `sluice serve --check-config` over `toml` (and `flags`), from an empty directory.
fn check_config(toml: &str, flags: &[&str]) -> Output {
    let dir = TempDir::new("check-config");
    std::fs::write(dir.path().join("sluice.toml"), toml).unwrap();
    Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["serve", "--check-config", "--config", "sluice.toml"])
        .args(flags)
        .output()
        .unwrap()
}

fn container(r: &Value) -> &Value {
    &one(r, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_chart_renders_with_its_defaults_into_a_configuration_sluice_accepts() {
    let r = chart(json!({})).unwrap();
    let sts = one(&r, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 1);
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "data");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert!(claim["spec"].get("storageClassName").is_none(), "no class: the cluster default applies");
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"], json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 45, "longer than the 30 s drain");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(&r);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "health", "scheme": "HTTPS"}));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(manifests(&r, "ServiceMonitor").is_empty() && manifests(&r, "NetworkPolicy").is_empty());
    assert_eq!(one(&r, "PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    assert!(r["notes"].as_str().unwrap().contains("/api/v2/tools/fleet.cluster.summary"), "{}", r["notes"]);

    let toml = rendered_toml(&r);
    let config: toml::Value = toml::from_str(&toml).unwrap();
    assert_eq!(config["rate_limit"]["requests_per_second"].as_integer(), Some(30));
    assert_eq!(config["rate_limit"]["burst"].as_integer(), Some(100));
    assert_eq!(config["drain"]["shutdown_deadline"].as_str(), Some("30s"));
    let out = check_config(&toml, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration OK"), "{}", text(&out.stdout));
    // The pod's mounts are not on this machine: warnings that name their keys.
    let warnings = text(&out.stderr);
    assert!(warnings.contains("warning: server.tls_cert: file /etc/sluice/tls/tls.crt does not exist"), "{warnings}");
    assert!(warnings.contains("warning: auth.bearer_acl_file: file /etc/sluice/auth/bearers.yaml"), "{warnings}");
}

#[test]
fn the_chart_adds_a_service_monitor_with_the_bearer_and_lets_only_its_scrapers_through() {
    let values = json!({
        "serviceMonitor": {"enabled": true},
        "networkPolicy": {"enabled": true},
        "persistence": {"storageClass": "fast"},
        "rateLimit": {"requestsPerSecond": 7, "burst": 21},
    });
    let r = chart(values).unwrap();
    let claim = &one(&r, "StatefulSet")["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["spec"]["storageClassName"], "fast");
    let endpoint = &one(&r, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["port"], "api");
    assert_eq!(endpoint["authorization"]["credentials"], json!({"name": "sluice-metrics-token", "key": "token"}));
    let ingress = one(&r, "NetworkPolicy")["spec"]["ingress"].as_array().unwrap().clone();
    let scraper = ingress.iter().find(|rule| rule["from"][0]["podSelector"].is_object()).expect("a rule for the scrapers");
    assert_eq!(scraper["from"][0]["podSelector"]["matchLabels"], json!({"app.kubernetes.io/name": "prometheus"}));
    assert_eq!(scraper["ports"][0]["port"], "api");
    let config: toml::Value = toml::from_str(&rendered_toml(&r)).unwrap();
    assert_eq!(config["rate_limit"]["requests_per_second"].as_integer(), Some(7));
    assert_eq!(config["rate_limit"]["burst"].as_integer(), Some(21));
    assert!(check_config(&rendered_toml(&r), &[]).status.success());

    // Without the ServiceMonitor, the NetworkPolicy has no rule for scrapers.
    let r = chart(json!({"networkPolicy": {"enabled": true}})).unwrap();
    let ingress = &one(&r, "NetworkPolicy")["spec"]["ingress"];
    assert!(!ingress.to_string().contains("prometheus"), "{ingress}");
    assert_eq!(ingress.as_array().unwrap().len(), 2);
}

#[test]
fn the_chart_ships_the_alert_rules_and_the_dashboard_of_deploy_monitoring() {
    let r = chart(json!({
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus"}},
        "grafanaDashboard": {"enabled": true},
    }))
    .unwrap();
    // The PrometheusRule (validated against the operator's CRD by chart_check.py) holds the
    // rules of deploy/monitoring unchanged, with the labels Prometheus selects rules by.
    let rule = one(&r, "PrometheusRule");
    let text = std::fs::read_to_string(root().join("deploy/monitoring/sluice-alerts.yaml")).unwrap();
    let file: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    // The dashboard ConfigMap holds the dashboard JSON, labelled for Grafana's sidecar.
    let map = manifests(&r, "ConfigMap").into_iter().find(|m| m["metadata"]["name"] == "sluice-dashboard").expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(map["data"]["sluice-dashboard.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(&std::fs::read_to_string(root().join("deploy/monitoring/sluice-dashboard.json")).unwrap()).unwrap();
    assert_eq!(shipped, file);
    // Off by default.
    let r = chart(json!({})).unwrap();
    assert!(manifests(&r, "PrometheusRule").is_empty());
    assert!(manifests(&r, "ConfigMap").iter().all(|m| m["metadata"]["name"] != "sluice-dashboard"));
}

#[test]
fn the_chart_handles_storage_classes_plain_http_and_refuses_what_cannot_work() {
    let r = chart(json!({"persistence": {"storageClass": "-"}})).unwrap();
    assert_eq!(one(&r, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "");
    let r = chart(json!({"persistence": {"enabled": false}})).unwrap();
    let sts = one(&r, "StatefulSet");
    assert!(sts["spec"].get("volumeClaimTemplates").is_none());
    assert!(sts["spec"]["template"]["spec"]["volumes"].to_string().contains("\"emptyDir\""));

    // Plain HTTP: loopback in the pod, exec probes, no TLS volume; sluice accepts it.
    let r = chart(json!({"plainHttp": {"enabled": true}})).unwrap();
    let c = container(&r);
    assert_eq!(c["readinessProbe"]["exec"]["command"], json!(["/opt/sluice/bin/sluice", "probe", "http://127.0.0.1:8080/readyz"]));
    assert!(!c["volumeMounts"].to_string().contains("/etc/sluice/tls"));
    let toml = rendered_toml(&r);
    assert!(toml.contains("listen = \"127.0.0.1:8081\"") && toml.contains("insecure_no_tls = true"), "{toml}");
    assert!(check_config(&toml, &[]).status.success());
    // ... and never with a ServiceMonitor, which would scrape the pod's address.
    let err = chart(json!({"plainHttp": {"enabled": true}, "serviceMonitor": {"enabled": true}})).unwrap_err();
    assert!(err.contains("plainHttp.enabled") && err.contains("serviceMonitor.enabled"), "{err}");
    // Values the schema refuses, named.
    let err = chart(json!({"rateLimit": {"burst": 0}})).unwrap_err();
    assert!(err.contains("burst"), "{err}");
    let err = chart(json!({"rateLimt": {"burst": 5}})).unwrap_err();
    assert!(err.contains("rateLimt"), "{err}");
}

#[test]
fn the_chart_runs_replicas_on_a_lake_each_advertising_its_own_address_and_refuses_it_without_tls() {
    let lake = json!({
        "backend": "ducklake",
        "ducklake": {
            "catalogSecret": {"name": "lake-catalog", "key": "dsn"},
            "dataPath": "s3://fleet/lake/",
            "s3": {"endpoint": "minio.storage:9000", "urlStyle": "path", "credentialsSecret": {"name": "lake-s3"}},
            "caSecret": {"name": "sluice-tls"}
        }
    });
    let r = chart(json!({"replicaCount": 3, "database": lake, "networkPolicy": {"enabled": true}})).unwrap();
    assert_eq!(one(&r, "StatefulSet")["spec"]["replicas"], 3);
    let toml = rendered_toml(&r);
    let config: toml::Value = toml::from_str(&toml).unwrap();
    let db = &config["database"];
    assert_eq!(db["backend"].as_str(), Some("ducklake"));
    assert_eq!(db["ducklake"]["catalog"].as_str(), Some("file:/etc/sluice/lake/catalog"));
    assert_eq!(db["ducklake"]["data_path"].as_str(), Some("s3://fleet/lake/"));
    assert_eq!(db["ducklake"]["advertise_url"].as_str(), Some("env:SLUICE_ADVERTISE_URL"));
    assert_eq!(db["ducklake"]["ca_file"].as_str(), Some("/etc/sluice/lake-ca/ca.pem"));
    assert_eq!(db["ducklake"]["s3"]["key_id"].as_str(), Some("file:/etc/sluice/lake-s3/key_id"));
    assert_eq!(db["ducklake"]["s3"]["url_style"].as_str(), Some("path"));
    // Each pod advertises its own name on the headless Service.
    let c = container(&r);
    let env = c["env"].as_array().unwrap();
    let advertise = env.iter().find(|e| e["name"] == "SLUICE_ADVERTISE_URL").expect("the advertised URL");
    assert_eq!(advertise["value"], "https://$(POD_NAME).sluice-headless.$(POD_NAMESPACE).svc:8081");
    assert!(env.iter().any(|e| e["name"] == "POD_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    let pod = &one(&r, "StatefulSet")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    let catalog = volumes.iter().find(|v| v["name"] == "lake-catalog").unwrap();
    assert_eq!(catalog["secret"], json!({"secretName": "lake-catalog", "items": [{"key": "dsn", "path": "catalog"}]}));
    assert!(volumes.iter().any(|v| v["name"] == "lake-s3") && volumes.iter().any(|v| v["name"] == "lake-ca"));
    for mount in ["/etc/sluice/lake", "/etc/sluice/lake-s3", "/etc/sluice/lake-ca"] {
        assert!(c["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == mount), "{mount}");
    }
    // The pods reach each other's API (forwarding to the writer) through the NetworkPolicy.
    let ingress = one(&r, "NetworkPolicy")["spec"]["ingress"].as_array().unwrap().clone();
    assert!(ingress.iter().any(|rule| rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "sluice"), "{ingress:?}");
    // sluice accepts the rendered configuration, naming the secret files it cannot see here.
    let out = check_config(&toml, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/etc/sluice/lake/catalog"), "{}", text(&out.stderr));
    // With the default backend nothing of the lake is rendered.
    let r = chart(json!({})).unwrap();
    assert!(!rendered_toml(&r).contains("ducklake") && container(&r).get("env").is_none());

    // Refused: the lake without TLS (pods could not reach each other), without a catalog, or
    // with a data path that is not s3://.
    let err = chart(json!({"database": lake, "plainHttp": {"enabled": true}})).unwrap_err();
    assert!(err.contains("plainHttp.enabled") && err.contains("ducklake"), "{err}");
    let err = chart(json!({"database": {"backend": "ducklake", "ducklake": {"dataPath": "s3://b/"}}})).unwrap_err();
    assert!(err.contains("catalogSecret"), "{err}");
    let err = chart(json!({"database": {"backend": "ducklake", "ducklake": {"catalogSecret": {"name": "c"}, "dataPath": "/data"}}})).unwrap_err();
    assert!(err.contains("dataPath"), "{err}");
    let err = chart(json!({"database": {"backend": "lakehouse"}})).unwrap_err();
    assert!(err.contains("backend"), "{err}");
}

#[test]
fn the_chart_configures_registry_sources_and_the_trust_policy_from_secrets() {
    let plugins = json!({
        "requireSignature": true,
        "trust": [{"secret": {"name": "release-key", "key": "release.pub"}, "tools": ["fleet.*"], "repositories": ["registry.example.com/sluice/*"]}],
        "oci": {
            "fleet.summary": {"reference": "oci://registry.example.com/sluice/fleet-summary:1", "pollInterval": "5m",
                              "credentialsSecret": {"name": "registry-creds", "usernameKey": "user", "passwordKey": "token"}},
            "git-sink": {"reference": "oci://registry.example.com/sluice/git@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "kind": "sink", "requireSignature": false}
        }
    });
    let mut plugins = plugins;
    plugins["tools"] = json!({"fleet.cluster.summary": {"deadline": "10s", "rollout": {"canary_share": 0.1, "promote_after": "10m", "max_failures": 2}}});
    let r = chart(json!({"plugins": plugins})).unwrap();
    let toml = rendered_toml(&r);
    let config: toml::Value = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let p = &config["plugins"];
    assert_eq!(p["require_signature"].as_bool(), Some(true));
    assert_eq!(p["trust"][0]["key"].as_str(), Some("file:/etc/sluice/trust/0/key.pem"));
    assert_eq!(p["trust"][0]["tools"], toml::Value::Array(vec!["fleet.*".into()]));
    let summary = &p["oci"]["fleet.summary"];
    assert_eq!(summary["poll_interval"].as_str(), Some("5m"));
    assert_eq!(summary["require_signature"].as_bool(), Some(true), "signatures are required by default");
    assert_eq!(summary["username"].as_str(), Some("file:/etc/sluice/registry/registry-fleet-summary/username"));
    let git = &p["oci"]["git-sink"];
    assert_eq!((git["kind"].as_str(), git["require_signature"].as_bool()), (Some("sink"), Some(false)));
    assert!(git.get("username").is_none());
    let rollout = &p["tools"]["fleet.cluster.summary"]["rollout"];
    assert_eq!((rollout["canary_share"].as_float(), rollout["max_failures"].as_integer()), (Some(0.1), Some(2)), "{toml}");
    // The key and the credentials are mounted from their Secrets where the configuration says.
    let pod = &one(&r, "StatefulSet")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    let key = volumes.iter().find(|v| v["name"] == "trust-0").unwrap();
    assert_eq!(key["secret"], json!({"secretName": "release-key", "items": [{"key": "release.pub", "path": "key.pem"}]}));
    let creds = volumes.iter().find(|v| v["name"] == "registry-fleet-summary").unwrap();
    assert_eq!(creds["secret"]["items"], json!([{"key": "user", "path": "username"}, {"key": "token", "path": "password"}]));
    let mounts = container(&r)["volumeMounts"].as_array().unwrap().clone();
    for m in ["/etc/sluice/trust/0", "/etc/sluice/registry/registry-fleet-summary"] {
        assert!(mounts.iter().any(|v| v["mountPath"] == m), "{m}: {mounts:?}");
    }
    // sluice accepts it, naming the key file it cannot see here.
    let out = check_config(&toml, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("plugins.trust[0].key: file /etc/sluice/trust/0/key.pem"), "{}", text(&out.stderr));
    // A trust entry without its Secret is refused by the chart.
    let err = chart(json!({"plugins": {"trust": [{"tools": ["*"]}]}})).unwrap_err();
    assert!(err.contains("plugins.trust[0] needs secret"), "{err}");
}

#[test]
fn check_config_names_the_key_that_is_wrong() {
    for (toml, key) in [
        ("[rate_limit]\nrequests_per_secnd = 5\n", "requests_per_secnd"),
        ("[rate_limit]\nburst = \"lots\"\n", "burst"),
        ("[plugins]\ndeadline = \"5 parsecs\"\n", "deadline"),
        ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
        ("[server]\ninsecure_no_tls = true\nlisten = \"0.0.0.0:8081\"\n", "not a loopback address"),
    ] {
        let out = check_config(toml, &[]);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(text(&out.stderr).contains(key), "{toml}: {}", text(&out.stderr));
    }
    // The flags are checked with the file.
    let out = check_config("[server]\ninsecure_no_tls = true\n", &["--listen", "10.0.0.1:8081"]);
    assert!(!out.status.success());
    let out = check_config("[server]\ninsecure_no_tls = true\n[database]\npath = \"/nonexistent-sluice/db/x.duckdb\"\n", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("database.path: directory /nonexistent-sluice/db"), "{}", text(&out.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_ready(url: &str, http: &reqwest::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls `fleet.cluster.summary` for cluster-a at `base`: it must answer 200; its row count.
async fn summary_rows(http: &reqwest::Client, base: &str) -> usize {
    let r = http
        .post(format!("{base}/api/v2/tools/fleet.cluster.summary"))
        .bearer_auth(TOKEN)
        .json(&json!({"args": {"cluster_id": "cluster-a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["result"]["rows"].as_array().unwrap_or_else(|| panic!("no rows: {body}")).len()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_release_bundle_serves_the_demo_with_a_bare_environment_and_its_own_libduckdb() {
    let _cpu = crate::common::shared_cpu().await;
    let work = TempDir::new("bundle");
    let duckdb = std::env::var("DUCKDB_LIB_DIR").expect("DUCKDB_LIB_DIR (set by scripts/dev)");
    let out = Command::new(root().join("scripts/bundle"))
        .args([sluice_bin().as_os_str(), duckdb.as_ref(), work.path().join("out").as_os_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tarball = PathBuf::from(text(&out.stdout).trim());
    // Unpacked into an empty directory, run with nothing but a plain PATH.
    let opt = work.path().join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    assert!(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&opt).status().unwrap().success());
    let unpacked = std::fs::read_dir(&opt).unwrap().next().unwrap().unwrap().path();
    for f in ["bin/sluice", "lib/libduckdb.so", "plugins/fleet-cluster-summary.wasm", "sinks/kafka.wasm", "etc/sluice.toml", "systemd/sluice.service"] {
        assert!(unpacked.join(f).is_file(), "the bundle has no {f}");
    }
    // The ducklake backend's extensions, where the binary looks for them by default.
    let found = Command::new("find").arg(unpacked.join("lib/duckdb-extensions")).args(["-name", "*.duckdb_extension"]).output().unwrap();
    let found = text(&found.stdout);
    for ext in ["ducklake", "httpfs", "postgres_scanner"] {
        assert!(found.contains(&format!("/linux_amd64/{ext}.duckdb_extension")), "the bundle has no {ext} extension: {found}");
    }
    let bin = unpacked.join("bin/sluice");
    let bare = |cmd: &mut Command| {
        cmd.env_clear().env("PATH", "/usr/bin:/bin").env("SLUICE_LOG", "warn").current_dir(work.path());
    };
    let mut seed = Command::new(&bin);
    bare(&mut seed);
    let seeded = seed.args(["demo", "seed", "--db", "demo.duckdb", "--clusters", "2", "--nodes", "3", "--hours", "2"]).output().unwrap();
    assert!(seeded.status.success(), "{}", text(&seeded.stderr));
    std::fs::write(work.path().join("token"), TOKEN).unwrap();
    let (api, health) = (free_port(), free_port());
    let mut serve = Command::new(&bin);
    bare(&mut serve);
    let server = Kill(
        serve
            .args(["serve", "--db", "demo.duckdb", "--insecure-no-tls", "--auth-token-file", "token"])
            .arg("--plugins")
            .arg(unpacked.join("plugins"))
            .args(["--listen", &format!("127.0.0.1:{api}"), "--health-listen", &format!("127.0.0.1:{health}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    wait_ready(&format!("http://127.0.0.1:{health}/readyz"), &http).await;
    assert_eq!(summary_rows(&http, &format!("http://127.0.0.1:{api}")).await, 3, "one row per node");
    // The libduckdb the process loaded is the bundle's, found relative to the binary.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.0.id())).unwrap();
    let loaded: Vec<&str> = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.ends_with("libduckdb.so")).collect();
    assert!(!loaded.is_empty() && loaded.iter().all(|p| Path::new(p).starts_with(&unpacked)), "{loaded:?}");
}

/// The unit's `KEY=value` lines of a section-less file (an EnvironmentFile).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `ExecStart` expanded as systemd does: `${VAR}` is one word, `$VAR` splits on whitespace.
fn exec_start(unit: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    line.split_whitespace()
        .flat_map(|word| {
            if let Some(var) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                vec![env[var].clone()]
            } else if let Some(var) = word.strip_prefix('$') {
                env[var].split_whitespace().map(str::to_owned).collect()
            } else {
                vec![word.to_owned()]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_systemd_unit_verifies_and_its_command_line_serves_a_tool_over_https() {
    let _cpu = crate::common::shared_cpu().await;
    let unit = std::fs::read_to_string(root().join("deploy/systemd/sluice.service")).unwrap();
    // Installed where the unit expects, with /opt, /etc and /var/lib under a scratch root.
    let fs = TempDir::new("systemd");
    let at = |p: &str| fs.path().join(p.trim_start_matches('/'));
    for d in ["opt/sluice/bin", "opt/sluice/plugins", "etc/sluice/tls", "var/lib/sluice", "etc/systemd/system"] {
        std::fs::create_dir_all(at(d)).unwrap();
    }
    std::os::unix::fs::symlink(sluice_bin(), at("/opt/sluice/bin/sluice")).unwrap();
    std::fs::copy(crate::common::component("fleet-cluster-summary"), at("/opt/sluice/plugins/fleet-cluster-summary.wasm")).unwrap();
    let relocate = |s: &str| {
        ["/opt/sluice", "/etc/sluice", "/var/lib/sluice"].iter().fold(s.to_owned(), |s, p| s.replace(p, at(p).to_str().unwrap()))
    };
    let unit_path = at("/etc/systemd/system/sluice.service");
    std::fs::write(&unit_path, relocate(&unit)).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit_path).output().expect("systemd-analyze (Debian systemd)");
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    assert!(verify.stderr.is_empty() && verify.stdout.is_empty(), "systemd-analyze verify has remarks: {}", text(&verify.stderr));
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n") && unit.contains("\nKillSignal=SIGTERM\n"));

    // The shipped configuration and environment file, plus what an operator adds (a bearer and
    // a certificate), and the listeners moved to free loopback ports with SLUICE_ARGS.
    let config = std::fs::read_to_string(root().join("deploy/systemd/sluice.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&config).unwrap();
    let drain = parsed["drain"]["shutdown_deadline"].as_str().unwrap().trim_end_matches('s').parse::<u64>().unwrap();
    let stop = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap().parse::<u64>().unwrap();
    assert!(stop > drain, "TimeoutStopSec {stop} must outlast the drain {drain}");
    std::fs::write(at("/etc/sluice/sluice.toml"), relocate(&config)).unwrap();
    let ca = write_cert(&at("/etc/sluice/tls"));
    let digest = crate::common::sha256_hex(TOKEN.as_bytes());
    std::fs::write(at("/etc/sluice/bearers.yaml"), format!("- key_name: ops\n  token_sha256: \"{digest}\"\n")).unwrap();
    let seeded = Command::new(sluice_bin())
        .args(["demo", "seed", "--clusters", "1", "--nodes", "2", "--hours", "1", "--db"])
        .arg(at("/var/lib/sluice/sluice.duckdb"))
        .output()
        .unwrap();
    assert!(seeded.status.success());
    let mut env = env_file(&std::fs::read_to_string(root().join("deploy/systemd/sluice.env")).unwrap());
    env.insert("SLUICE_CONFIG".into(), at("/etc/sluice/sluice.toml").to_str().unwrap().to_owned());
    let (api, health) = (free_port(), free_port());
    env.insert("SLUICE_ARGS".into(), format!("--listen 127.0.0.1:{api} --health-listen 127.0.0.1:{health}"));
    let argv = exec_start(&relocate(&unit), &env);
    let workdir = relocate(unit.lines().find_map(|l| l.strip_prefix("WorkingDirectory=")).unwrap());
    let _server = Kill(
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(&env)
            .env("PATH", "/usr/bin:/bin")
            .current_dir(workdir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = https_client(&ca);
    wait_ready(&format!("https://127.0.0.1:{health}/readyz"), &http).await;
    assert_eq!(summary_rows(&http, &format!("https://127.0.0.1:{api}")).await, 2, "one row per node");
}

#[test]
fn the_container_recipe_agrees_with_the_chart_and_the_bundle() {
    let recipe = std::fs::read_to_string(root().join("deploy/container/Containerfile")).unwrap();
    let r = chart(json!({})).unwrap();
    let c = container(&r);
    let pod = &one(&r, "StatefulSet")["spec"]["template"]["spec"];
    // The chart runs the binary and configuration where the image puts them, as the image's user.
    assert_eq!(c["command"], json!(["/opt/sluice/bin/sluice"]));
    assert!(recipe.contains("ENTRYPOINT [\"/opt/sluice/bin/sluice\"]"), "{recipe}");
    assert!(recipe.contains("CMD [\"serve\", \"--config\", \"/etc/sluice/sluice.toml\"]"));
    assert_eq!(c["args"], json!(["serve", "--config", "/etc/sluice/sluice.toml"]));
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(recipe.contains(&format!("USER {uid}:{uid}")) && recipe.contains(&format!("--uid {uid}")), "user {uid}");
    let mounts = c["volumeMounts"].to_string();
    assert!(mounts.contains("/var/lib/sluice") && recipe.contains("VOLUME /var/lib/sluice"));
    let toml = rendered_toml(&r);
    assert!(toml.contains("dir = \"/opt/sluice/plugins\""), "the bundle's plugins directory: {toml}");
    // The bundle script puts the binary and components where the recipe's symlink expects them.
    let bundle = std::fs::read_to_string(root().join("scripts/bundle")).unwrap();
    for part in ["\"$dir/bin/sluice\"", "\"$dir/plugins/\"", "\"$dir/lib/\""] {
        assert!(bundle.contains(part), "scripts/bundle does not install {part}");
    }
}

#[test]
fn sluice_probe_answers_for_a_health_listener_on_loopback_as_an_exec_probe() {
    let dir = TempDir::new("probe");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let server = crate::binary::Server::start(&dir, &[]);
    let probe = |url: &str| Command::new(sluice_bin()).args(["probe", url]).output().unwrap();
    let out = probe(&format!("{}/readyz", server.health));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with(": 200\n"), "{}", text(&out.stdout));
    // A path that is not there, a port nobody listens on, an address that is not loopback.
    let out = probe(&format!("{}/nope", server.health));
    assert!(!out.status.success() && text(&out.stderr).contains("answered 404"), "{}", text(&out.stderr));
    let out = probe(&format!("http://127.0.0.1:{}/readyz", free_port()));
    assert!(!out.status.success() && text(&out.stderr).contains("connecting to"), "{}", text(&out.stderr));
    let out = probe("http://10.1.2.3:8080/readyz");
    assert!(!out.status.success() && text(&out.stderr).contains("only asks loopback"), "{}", text(&out.stderr));
}
