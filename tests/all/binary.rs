//! The real `sluice` binary: seed, serve, call over HTTP, reload on SIGHUP, stop on SIGTERM, and
//! refuse unsafe listeners.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TempDir, component, sluice_bin, versioned_component};

pub(crate) const TOKEN: &str = "binary-test-token-5f2c";

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// `sluice serve` on loopback (port 0) in `dir`, over `fleet.duckdb`, `plugins/` and the bearer
/// in `token`.
pub(crate) struct Server {
    child: Child,
    pub(crate) api: String,
    pub(crate) health: String,
}

impl Server {
    pub(crate) fn start(dir: &TempDir, extra: &[&str]) -> Self {
        Self::start_with(dir, &["--insecure-no-tls"], extra)
    }

    pub(crate) fn start_with(dir: &TempDir, transport: &[&str], extra: &[&str]) -> Self {
        let mut cmd = Self::command(dir, transport, extra);
        cmd.env("SLUICE_LOG", "warn");
        Self::spawn(cmd)
    }

    /// The `sluice serve` command line `start_with` runs, for a test that sets up the rest.
    pub(crate) fn command(dir: &TempDir, transport: &[&str], extra: &[&str]) -> Command {
        let mut cmd = Command::new(sluice_bin());
        cmd.current_dir(dir.path())
            .args(["serve", "--db", "fleet.duckdb", "--plugins", "plugins", "--auth-token-file", "token"])
            .args(transport)
            .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
            .args(extra);
        cmd
    }

    /// Starts `cmd` and waits for its listening line.
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("sluice listening api=http"), "unexpected first line: {line:?}");
        let api = line.split_whitespace().nth(2).unwrap().trim_start_matches("api=").to_owned();
        let health = line.split_whitespace().nth(3).unwrap().trim_start_matches("health=").to_owned();
        Self { child, api, health }
    }
}

impl Server {
    /// SIGTERM (a drain), then waits for the process to exit.
    pub(crate) fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child, limit)
    }

    /// `GET /metrics` with the token.
    pub(crate) async fn metrics(&self) -> String {
        let r = reqwest::Client::new().get(format!("{}/metrics", self.api)).bearer_auth(TOKEN).send().await.unwrap();
        r.text().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn seeds_serves_answers_reloads_on_sighup_and_stops_cleanly() {
    let dir = TempDir::new("bin");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("fleet-cluster-summary"), dir.path().join("plugins/fleet-cluster-summary.wasm")).unwrap();
    std::fs::write(dir.path().join("sluice.toml"), "[plugins]\nwatch = false\n").unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();

    let out = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "2", "--nodes", "3", "--hours", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster-a, cluster-b"));

    let mut server = Server::start(&dir, &["--config", "sluice.toml"]);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v2/tools/fleet.cluster.summary", server.api))
        .bearer_auth(TOKEN)
        .json(&json!({"args": {"cluster_id": "cluster-a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 16);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"]["rows"].as_array().unwrap().len(), 3);

    // Watching is off in this config: a new file is picked up on SIGHUP.
    std::fs::write(dir.path().join("plugins/v.wasm"), versioned_component("test.versioned", "7.0.0")).unwrap();
    signal(&server.child, "HUP");
    let started = Instant::now();
    loop {
        let list: Value =
            http.get(format!("{}/api/v2/tools/list", server.api)).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        if list["tools"].as_array().unwrap().iter().any(|t| t["name"] == "test.versioned") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "SIGHUP did not reload: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    signal(&server.child, "TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "sluice did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn refuses_plain_http_without_the_flag_or_off_loopback() {
    let dir = TempDir::new("refuse");
    let out = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["serve", "--db", "x.duckdb", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-tls"));

    let out = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["serve", "--db", "x.duckdb", "--insecure-no-tls", "--listen", "0.0.0.0:0", "--auth-token-file", "t"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn call_runs_a_tool_without_the_server() {
    let dir = TempDir::new("call");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("fleet-cluster-summary"), dir.path().join("plugins/s.wasm")).unwrap();
    let seed = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "f.duckdb", "--clusters", "1", "--nodes", "2", "--hours", "1"])
        .output()
        .unwrap();
    assert!(seed.status.success());
    let out = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["call", "--db", "f.duckdb", "--plugins", "plugins", "fleet.cluster.summary", "--args", "{}"])
        .env("SLUICE_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["rows"][0]["health_samples"], 60);

    let out = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["call", "--db", "f.duckdb", "--plugins", "plugins", "fleet.cluster.summary", "--args", "{\"cluster_id\": 1}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/cluster_id"));
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(started.elapsed() < limit, "sluice did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn drains_on_sigterm_finishing_calls_refusing_new_ones_and_interrupting_past_the_deadline() {
    let dir = TempDir::new("drain");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("hostile"), dir.path().join("plugins/hostile.wasm")).unwrap();
    std::fs::copy(component("fleet-cluster-run-analysis"), dir.path().join("plugins/ra.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[plugins]\nwatch = false\n[plugins.tools.\"test.hostile\"]\ndeadline = \"20s\"\n[drain]\nshutdown_deadline = \"3s\"\n",
    )
    .unwrap();
    let mut server = Server::start(&dir, &["--config", "sluice.toml"]);
    let http = reqwest::Client::new();
    let call = |tool: &'static str, args: Value| {
        let (http, url) = (http.clone(), format!("{}/api/v2/tools/{tool}", server.api));
        tokio::spawn(async move {
            let r = http.post(url).bearer_auth(TOKEN).json(&json!({"args": args})).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null), Instant::now())
        })
    };
    // A call that finishes within the deadline, and a query that would run far past it.
    let finishing = call("test.hostile", json!({"mode": "spin", "ms": 1500}));
    let endless = call(
        "fleet.cluster.run_analysis",
        json!({"sql": "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"}),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&server.child, "TERM");
    let termed = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;

    let r = http.get(format!("{}/api/v2/whoami", server.api)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["x-request-id"].len(), 16);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "shutting_down");
    let ready = http.get(format!("{}/readyz", server.health)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness must fail while draining");

    let (status, body, _) = finishing.await.unwrap();
    assert_eq!(status, 200, "the in-flight call must complete: {body}");
    let (status, body, done) = endless.await.unwrap();
    // Cancelled by the shutdown, and answered as such.
    assert_eq!((status, body["code"].as_str()), (503, Some("shutting_down")), "the query past the deadline is interrupted: {body}");
    let took = done - termed;
    // Interrupted at the 3 s deadline (plus scheduling slack on a busy machine), not at its end.
    assert!(took >= Duration::from_millis(2800) && took < Duration::from_secs(8), "interrupted after {took:?}");

    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn api_versions_is_public_and_limited_per_source_ip() {
    let dir = TempDir::new("versions");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let server = Server::start(&dir, &[]);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for _ in 0..130 {
        let r = http.get(format!("{}/api/versions", server.api)).send().await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 30.0).ceil() as u32;
    assert!(ok >= 100 && ok <= 100 + refill, "{ok} answered (burst 100, refill {refill})");
    assert!(limited > 0);
    // The bearer-protected API is unaffected by the per-IP bucket.
    let r = http.get(format!("{}/api/v2/whoami", server.api)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A self-signed certificate for localhost and 127.0.0.1 as `cert.pem` and `key.pem` in `dir`;
/// returns the certificate (its own CA).
pub(crate) fn write_cert(dir: &std::path::Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let pem = ck.cert.pem();
    // Replace each file atomically, as a certificate manager would.
    for (name, body) in [("cert.pem", pem.clone()), ("key.pem", ck.signing_key.serialize_pem())] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    pem
}

pub(crate) fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn serves_https_with_a_certificate_and_reloads_it_on_change() {
    let dir = TempDir::new("tls");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let first = write_cert(dir.path());
    let server = Server::start_with(&dir, &["--tls-cert", "cert.pem", "--tls-key", "key.pem"], &[]);
    assert!(server.api.starts_with("https://127.0.0.1:"), "{}", server.api);

    let r = https_client(&first).get(format!("{}/api/v2/whoami", server.api)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"].len(), 16);
    let r = https_client(&first).get(format!("{}/readyz", server.health)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the health listener serves HTTPS too");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = server.api.replace("https://", "http://");
    let r = reqwest::Client::new().get(format!("{plain}/api/v2/whoami")).bearer_auth(TOKEN).send().await;
    assert!(r.is_err() || r.unwrap().status() != 200);

    // A new certificate is picked up without a restart.
    let second = write_cert(dir.path());
    let started = Instant::now();
    loop {
        let r = https_client(&second).get(format!("{}/api/v2/whoami", server.api)).bearer_auth(TOKEN).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the new certificate was not loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = https_client(&first).get(format!("{}/api/v2/whoami", server.api)).send().await;
    assert!(old.is_err(), "the old certificate is no longer served");
}

/// Runs `sluice serve` with stderr in a file (as under systemd or Kubernetes), makes one tool
/// call, stops it with SIGTERM, and returns what it wrote on stderr.
fn served_log(dir: &TempDir, extra: &[&str], env: &[(&str, &str)]) -> String {
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(sluice_bin())
        .current_dir(dir.path())
        .args(["serve", "--db", "fleet.duckdb", "--plugins", "plugins", "--auth-token-file", "token", "--insecure-no-tls"])
        .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
        .args(extra)
        .env("SLUICE_LOG", "info")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let api = line.split_whitespace().nth(2).unwrap().trim_start_matches("api=").to_owned();
    let status = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("{api}/api/v2/tools/fleet.cluster.summary"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn logs_to_a_file_are_plain_text_and_json_on_request() {
    let dir = TempDir::new("logs");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(component("fleet-cluster-summary"), dir.path().join("plugins/fleet-cluster-summary.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();

    // Text: no terminal, so no colour codes, and a field greps as written.
    let text = served_log(&dir, &[], &[]);
    assert!(text.contains("Sluice is serving."), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log written to a file:\n{text}");
    assert!(text.lines().any(|l| l.contains("INFO") && l.contains("tools=1")), "{text}");

    // JSON, by flag, by environment, or by the configuration: every line is one object.
    std::fs::write(dir.path().join("sluice.toml"), "[log]\nformat = \"json\"\n").unwrap();
    for (extra, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("SLUICE_LOG_FORMAT", "json")][..]),
        (&["--config", "sluice.toml"][..], &[][..]),
    ] {
        let json = served_log(&dir, extra, env);
        let lines: Vec<Value> = json
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let serving = lines
            .iter()
            .find(|l| l["fields"]["message"] == "Sluice is serving.")
            .unwrap_or_else(|| panic!("no start line in {json}"));
        assert_eq!(serving["level"], "INFO");
        assert_eq!(serving["fields"]["tools"], 1);
        assert!(serving["timestamp"].is_string());
    }
    // A format the binary does not know is refused with the choices.
    let out = Command::new(sluice_bin()).args(["--log-format", "xml", "serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("text, json"), "{}", String::from_utf8_lossy(&out.stderr));
}
