//! The plugin author's path, with the real binary and a real toolchain: the tool guide run as
//! written, `sluice dev`'s edit loop, `plugin inspect` on every kind of file, and the errors of
//! `plugin new` and `plugin build`.
//!
//! Crates made here are built offline (tests never reach the network: the crates a new plugin
//! needs are this workspace's, already downloaded) in a target directory of their own, so a
//! build never waits on the lock of the build that runs these tests.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{Server, TOKEN};
use crate::common::{TempDir, component, root, sha256_hex, sluice_bin};

/// How long a plugin build may take on a busy 2-core machine: the first one compiles
/// `wit-bindgen` and its dependencies, and the other tests' builds share (and lock) the same
/// target directory.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The target directory for crates made by these tests: next to the workspace's.
fn author_target_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // <target>/debug/deps/all-<hash>
        let exe = std::env::current_exe().unwrap();
        exe.ancestors().nth(3).unwrap().to_owned()
    });
    base.join("authoring-tests")
}

/// `sluice` run in `dir`, offline, with the tests' target directory.
fn sluice(dir: &Path) -> Command {
    let mut c = Command::new(sluice_bin());
    c.current_dir(dir)
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TARGET_DIR", author_target_dir())
        .env("SLUICE_LOG", "warn");
    c
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The fenced blocks of one `## ` section of a Markdown file: (info string, body).
fn section_blocks(markdown: &str, heading: &str) -> Vec<(String, String)> {
    let start = markdown.find(heading).unwrap_or_else(|| panic!("no section {heading:?}"));
    let rest = &markdown[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            blocks.push((info.trim().to_owned(), body));
        }
    }
    blocks
}

/// Lines of `code` a user wrote: not blank, not comments, not already in `template`.
fn user_written_lines(code: &str, template: &str) -> Vec<String> {
    let have: HashSet<&str> = template.lines().map(str::trim).collect();
    code.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//") && !have.contains(l))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_guide_runs_as_written() {
    let guide = std::fs::read_to_string(root().join("docs/writing-a-tool.md")).unwrap();
    let blocks = section_blocks(&guide, "## Quick start");
    let rust: Vec<&String> = blocks.iter().filter(|(i, _)| i == "rust").map(|(_, b)| b).collect();
    assert_eq!(rust.len(), 1, "the quick start has one rust block (src/lib.rs)");
    let sh = blocks.iter().filter(|(i, _)| i == "sh").count();
    assert!(sh >= 4, "the quick start's steps are sh blocks; found {sh}");

    // The guide's claim about how much code is the user's, checked.
    let template = std::fs::read_to_string(root().join("examples/tool-template/src/lib.rs"))
        .unwrap()
        .replace("example.events_by_metric", "acme.weakest_nodes");
    let written = user_written_lines(rust[0], &template);
    assert!(written.len() <= 20, "the guide's tool needs {} lines of user code: {written:#?}", written.len());
    let claimed = format!("with {} lines changed or added", written.len());
    assert!(guide.contains(&claimed), "the guide must say {claimed:?} (lines: {written:#?})");

    // A gateway with the bundled summary tool, over demo data; its plugins directory watched.
    let dir = TempDir::new("guide");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(component("fleet-cluster-summary"), plugins.join("fleet-cluster-summary.wasm")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let seed = sluice(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "2", "--nodes", "8", "--hours", "6"])
        .output()
        .unwrap();
    assert!(seed.status.success(), "{}", text(&seed).1);
    let server = Server::start(&dir, &[]);

    // The quick start, in order, in a fresh directory.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let env = vec![
        ("SLUICE_URL", server.api.clone()),
        ("SLUICE_TOKEN", TOKEN.to_owned()),
        ("SLUICE_PLUGINS", plugins.display().to_string()),
    ];
    let stdout = run_guide(&blocks, &work, env).await;

    // The last command's answer: the three weakest nodes of cluster-a.
    let answer: Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("the guide's curl did not print JSON ({e}):\n{stdout}"));
    let rows = answer["result"]["rows"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(rows.len(), 3, "{answer}");

    // The same answer from the bundled summary tool over the same data.
    let http = reqwest::Client::new();
    let summary: Value = http
        .post(format!("{}/api/v2/tools/fleet.cluster.summary", server.api))
        .bearer_auth(TOKEN)
        .json(&json!({"args": {"cluster_id": "cluster-a"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut nodes: Vec<(f64, String)> = summary["result"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["health_avg"].as_f64().unwrap(), r["node_id"].as_str().unwrap().to_owned()))
        .collect();
    nodes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(nodes.len(), 8);
    for (row, (health, node)) in rows.iter().zip(&nodes) {
        assert_eq!(row["node_id"].as_str(), Some(node.as_str()), "{answer} vs {summary}");
        let got = row["health"].as_f64().unwrap();
        assert!((got - health).abs() < 1.5e-4, "{node}: {got} vs {health}");
    }

    // The gateway serves exactly the file the guide built and installed.
    let installed = std::fs::read(plugins.join("acme-weakest-nodes.wasm")).unwrap();
    let status: Value = http
        .get(format!("{}/api/v2/admin/plugins", server.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = status["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .find(|p| p["file"] == "acme-weakest-nodes.wasm")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(entry["status"], "loaded", "{entry}");
    assert_eq!(entry["name"], "acme.weakest_nodes");
    assert_eq!(entry["digest"].as_str(), Some(sha256_hex(&installed).as_str()));
    drop(server);

    // Publish and sign, as written, in the quick start's crate, against a registry on loopback:
    // pushed, signed and pulled back byte for byte, checked by the key (and by openssl).
    let registry = crate::oci_registry::OciRegistry::start(dir.path()).await;
    let publish = section_blocks(&guide, "## Publish and sign");
    assert!(publish.iter().filter(|(i, _)| i == "sh").count() >= 5, "the publish section's steps are sh blocks");
    let crate_dir = work.join("acme-weakest-nodes");
    let stdout = run_guide(&publish, &crate_dir, vec![("SLUICE_REGISTRY", registry.host.clone())]).await;
    assert!(stdout.contains("Verified OK"), "openssl did not verify the file signature:\n{stdout}");
    assert_eq!(std::fs::read(crate_dir.join("pulled.wasm")).unwrap(), installed, "what was pulled is what was built");
    let reference = format!("oci://{}/acme/weakest-nodes:0.1.0", registry.host);
    let keygen = sluice(&crate_dir).args(["plugin", "keygen", "other.key"]).output().unwrap();
    assert!(keygen.status.success(), "{}", text(&keygen).1);
    let refused = sluice(&crate_dir).args(["plugin", "pull", "--key", "other.key.pub", "-o", "other.wasm", &reference]).output().unwrap();
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success() && stderr.contains("verifies with key"), "{stderr}");
    assert!(!crate_dir.join("other.wasm").exists(), "a component that fails the check is not written");
    let again = sluice(&crate_dir).args(["plugin", "keygen", "release.key"]).output().unwrap();
    assert!(!again.status.success() && text(&again).1.contains("not overwriting"), "{}", text(&again).1);
}

/// Runs a guide section's `sh` blocks (and its `rust` block, saved as `src/lib.rs`) in order in
/// `work`, with `sluice` on the PATH and `env`; returns stdout.
async fn run_guide(blocks: &[(String, String)], work: &Path, env: Vec<(&'static str, String)>) -> String {
    let mut script = String::new();
    for (info, body) in blocks {
        match info.as_str() {
            "sh" => script.push_str(body),
            "rust" => script.push_str(&format!("cat > src/lib.rs <<'SLUICE_GUIDE_EOF'\n{body}SLUICE_GUIDE_EOF\n")),
            _ => {}
        }
    }
    let bin_dir = sluice_bin().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let work = work.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&work)
            .env("PATH", path)
            .env("CARGO_NET_OFFLINE", "true")
            .env("CARGO_TARGET_DIR", author_target_dir())
            .env("SLUICE_LOG", "warn")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "the guide failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn sink_guide_runs_as_written() {
    let guide = std::fs::read_to_string(root().join("docs/writing-a-sink.md")).unwrap();
    let blocks = section_blocks(&guide, "## Quick start");
    assert!(blocks.iter().filter(|(i, _)| i == "sh").count() >= 4);
    let rx = crate::sinks::receiver().await;
    let dir = TempDir::new("sink-guide");
    let stdout = run_guide(&blocks, dir.path(), vec![("SLUICE_RECEIVER", rx.url.clone())]).await;

    // The command's status, then what the receiver got: the envelope of the query's rows.
    let status: Value = serde_json::from_str(&stdout[stdout.find("{\n").expect("the status JSON")..]).unwrap();
    assert_eq!(status["condition"], "Synced", "{status}");
    assert_eq!(status["sinkExports"][0]["synced"], "Exported");
    let body = {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one delivery");
        assert_eq!(seen[0].0, "POST");
        assert_eq!(seen[0].1["idempotency-key"], "event-counts/1/0");
        seen[0].2.clone()
    };
    let envelope: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envelope["export"], "event-counts");
    assert_eq!(envelope["checksum"], status["checksum"]);
    let db = duckdb::Connection::open(dir.path().join("acme-hook/demo.duckdb")).unwrap();
    let mut stmt = db.prepare("SELECT cluster_id, count(*) FROM events GROUP BY cluster_id ORDER BY cluster_id").unwrap();
    let direct: Vec<Value> = stmt
        .query_map([], |r| Ok(json!({"cluster_id": r.get::<_, String>(0)?, "events": r.get::<_, i64>(1)?})))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(envelope["items"], Value::Array(direct));

    // inspect knows a sink when it sees one.
    let built = dir.path().join("acme-hook");
    let wasm = author_target_dir().join("wasm32-wasip2/release/acme_hook.wasm");
    let out = sluice(&built).args(["plugin", "inspect", "--json"]).arg(&wasm).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["world"], "sluice:plugin/sink");
    assert_eq!(v["describe"]["type"], "acme-hook");
    assert!(v["imports"].as_array().unwrap().iter().any(|i| i[0].as_str().unwrap().starts_with("wasi:http/outgoing-handler")));
}

/// Lines of a child's stdout, as they come.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Everything a child writes on stderr.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let all = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = all.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    all
}

/// Waits for a line for which `pred` holds; returns it. Every line seen goes to `seen`.
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if pred(&line) {
                    return line;
                }
            }
            Err(_) => panic!("no matching line within {timeout:?}; seen:\n{}", seen.join("\n")),
        }
    }
}

async fn call_tool(http: &reqwest::Client, api: &str, token: &str, tool: &str) -> (u16, Value) {
    let resp = http
        .post(format!("{api}/api/v2/tools/{tool}"))
        .bearer_auth(token)
        .json(&json!({"args": {}}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The `sha256:<16 hex>` of a `loaded ...` line.
fn loaded_digest(line: &str) -> String {
    line.split("(sha256:").nth(1).and_then(|r| r.split(')').next()).unwrap_or_else(|| panic!("{line}")).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_dev_hot_swaps_an_edited_tool_and_keeps_serving_through_a_broken_build() {
    let dir = TempDir::new("dev");
    let made = sluice(dir.path()).args(["plugin", "new", "tool", "acme.dev_loop", "--dir", "crate"]).output().unwrap();
    assert!(made.status.success(), "{}", text(&made).1);
    let lib = dir.path().join("crate/src/lib.rs");

    let mut dev = sluice(dir.path())
        .args(["dev", "crate", "--state-dir", "state", "--listen", "127.0.0.1:0", "--no-seed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_reader(&mut dev);
    let stderr = collect_stderr(&mut dev);
    let mut seen = Vec::new();
    // The crate is built and loaded before the gateway serves.
    let first = wait_line(&lines, &mut seen, BUILD_TIMEOUT, |l| l.starts_with("sluice dev: loaded acme.dev_loop 0.1.0"));
    let listening = wait_line(&lines, &mut seen, Duration::from_secs(30), |l| l.starts_with("sluice listening api="));
    let api = listening.split_whitespace().nth(2).unwrap().trim_start_matches("api=").to_owned();
    let token = std::fs::read_to_string(dir.path().join("state/dev.token")).unwrap();
    let http = reqwest::Client::new();

    let (status, v1) = call_tool(&http, &api, &token, "acme.dev_loop").await;
    assert_eq!(status, 200, "{v1}");
    assert_eq!(v1["result"]["rows"], json!([]), "the template over an empty database: {v1}");

    // Edit the query: the running gateway answers with the new behaviour, no restart.
    let src = std::fs::read_to_string(&lib).unwrap();
    let start = src.find("const SQL: &str = ").unwrap();
    let end = start + src[start..].find("\";\n").unwrap() + 3;
    let edited = format!(
        "{}const SQL: &str = \"SELECT 'edited' AS marker WHERE ?1 IS NULL OR ?1 IS NOT NULL\";\n{}",
        &src[..start],
        &src[end..]
    );
    std::fs::write(&lib, &edited).unwrap();
    let second = wait_line(&lines, &mut seen, BUILD_TIMEOUT, |l| l.starts_with("sluice dev: loaded acme.dev_loop"));
    assert_ne!(loaded_digest(&first), loaded_digest(&second), "a new component was loaded");
    let (status, v2) = call_tool(&http, &api, &token, "acme.dev_loop").await;
    assert_eq!((status, &v2["result"]["rows"]), (200, &json!([{"marker": "edited"}])), "{v2}");
    assert!(dev.try_wait().unwrap().is_none(), "sluice dev restarted or stopped");

    // A syntax error: the error is shown, the previous version keeps serving.
    std::fs::write(&lib, format!("{edited}\nfn broken( {{\n")).unwrap();
    let failed = wait_line(&lines, &mut seen, BUILD_TIMEOUT, |l| l.contains("failed"));
    assert!(failed.contains("acme.dev_loop 0.1.0 keeps serving"), "{failed}");
    let errors = stderr.lock().unwrap().clone();
    assert!(errors.contains("error") && errors.contains("src/lib.rs"), "the compiler's message is shown:\n{errors}");
    let (status, v3) = call_tool(&http, &api, &token, "acme.dev_loop").await;
    assert_eq!((status, &v3["result"]["rows"]), (200, &json!([{"marker": "edited"}])), "{v3}");

    // Fixed again: served again.
    std::fs::write(&lib, edited.replace("'edited'", "'fixed'")).unwrap();
    wait_line(&lines, &mut seen, BUILD_TIMEOUT, |l| l.starts_with("sluice dev: loaded acme.dev_loop"));
    let (_, v4) = call_tool(&http, &api, &token, "acme.dev_loop").await;
    assert_eq!(v4["result"]["rows"], json!([{"marker": "fixed"}]), "{v4}");

    let _ = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status();
    let exit = dev.wait().unwrap();
    assert!(exit.success(), "sluice dev exits 0 on SIGTERM: {exit:?}");
}

fn inspect(file: &Path, json_out: bool) -> Output {
    let mut c = sluice(file.parent().unwrap());
    c.args(["plugin", "inspect"]);
    if json_out {
        c.arg("--json");
    }
    c.arg(file).output().unwrap()
}

#[test]
fn inspect_shows_each_bundled_component() {
    // Every bundled sink.
    for (file, sink_type) in [("http", "http"), ("s3", "s3")] {
        let sink = component(file);
        let out = inspect(&sink, true);
        assert!(out.status.success(), "{file}: {}", text(&out).1);
        let v: Value = serde_json::from_str(&text(&out).0).unwrap();
        assert_eq!((v["world"].as_str(), v["describe"]["type"].as_str()), (Some("sluice:plugin/sink"), Some(sink_type)), "{v}");
        assert!(v["imports"].as_array().unwrap().iter().all(|i| !i[1].as_str().unwrap().starts_with("NOT PROVIDED")), "{v}");
        assert!(text(&inspect(&sink, false)).0.contains(&format!("sink      {sink_type} ")));
    }
    // Every bundled tool: the file names follow the tool names.
    let tools: Vec<std::path::PathBuf> = std::fs::read_dir(root().join("dist/plugins"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    assert_eq!(tools.len(), 7, "{tools:?}");
    for path in tools {
        let file = path.file_stem().unwrap().to_string_lossy().into_owned();
        let name = file.replacen("fleet-cluster-", "fleet.cluster.", 1).replace('-', "_");
        let out = inspect(&path, true);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{file}: {stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["world"], "sluice:plugin/tool", "{v}");
        assert_eq!(v["describe"]["name"], name.as_str());
        assert_eq!(v["describe"]["input_schema"]["type"], "object");
        assert!(v["describe"]["version"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(v["digest"].as_str(), Some(sha256_hex(&std::fs::read(&path).unwrap()).as_str()));
        assert_eq!(v["size"].as_u64(), Some(std::fs::metadata(&path).unwrap().len()));
        let imports = v["imports"].as_array().unwrap();
        let grant = |prefix: &str| {
            imports.iter().find(|i| i[0].as_str().is_some_and(|n| n.starts_with(prefix))).map(|i| i[1].clone())
        };
        assert!(grant("sluice:plugin/query@").is_some_and(|g| g.as_str().unwrap().contains("read-only")), "{v}");
        assert!(
            imports.iter().all(|i| !i[1].as_str().unwrap().starts_with("NOT PROVIDED")),
            "a bundled component imports only what the host provides: {v}"
        );
        if let Some(g) = grant("wasi:filesystem/") {
            assert!(g.as_str().unwrap().contains("denied"), "{g}");
        }
        let human = inspect(&path, false);
        let (stdout, _) = text(&human);
        assert!(human.status.success());
        assert!(stdout.contains("world     sluice:plugin/tool"), "{stdout}");
        assert!(stdout.contains(&format!("tool      {name} ")), "{stdout}");
    }
}

#[test]
fn inspect_refuses_files_that_are_not_components_and_says_what_they_are() {
    let dir = TempDir::new("inspect");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let textfile = dir.path().join("notes.wasm");
    std::fs::write(&textfile, "not wasm at all\n").unwrap();
    for (file, expect) in [
        (&core, "is a core WebAssembly module, not a component"),
        (&textfile, "is not a WebAssembly file"),
        (&dir.path().join("missing.wasm"), "reading"),
    ] {
        let out = inspect(file, false);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", file.display());
        assert!(stderr.contains(expect), "{}: {stderr}", file.display());
    }

    // A component of another world (a WASI command).
    let cli = component("cli-hello");
    let out = inspect(&cli, true);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a component, but not a Sluice tool"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["world"], Value::Null);
    assert!(v["exports"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("wasi:cli/run@")), "{v}");
    let human = inspect(&cli, false);
    assert!(text(&human).0.contains("not a Sluice tool: it exports wasi:cli/run@"), "{}", text(&human).0);
}

#[test]
fn plugin_new_refuses_bad_names_and_existing_directories_with_a_way_out() {
    let dir = TempDir::new("new");
    let out = sluice(dir.path()).args(["plugin", "new", "tool", "Acme-Tool"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("invalid tool name \"Acme-Tool\"") && stderr.contains("for example \"acme_tool\""), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is created");

    let ok = sluice(dir.path()).args(["plugin", "new", "tool", "acme.tool"]).output().unwrap();
    assert!(ok.status.success(), "{}", text(&ok).1);
    for f in ["Cargo.toml", "Cargo.lock", "README.md", "src/lib.rs", ".gitignore"] {
        assert!(dir.path().join("acme-tool").join(f).is_file(), "{f}");
    }
    let readme = std::fs::read_to_string(dir.path().join("acme-tool/README.md")).unwrap();
    assert_eq!(readme.lines().count(), 3, "{readme}");
    let lib = std::fs::read_to_string(dir.path().join("acme-tool/src/lib.rs")).unwrap();
    assert!(lib.contains("\"acme.tool\""), "{lib}");

    let again = sluice(dir.path()).args(["plugin", "new", "tool", "acme.tool"]).output().unwrap();
    assert!(!again.status.success());
    assert!(text(&again).1.contains("already exists and is not empty"), "{}", text(&again).1);

    let sink = sluice(dir.path()).args(["plugin", "new", "sink", "Acme.Sink"]).output().unwrap();
    assert!(!sink.status.success());
    assert!(text(&sink).1.contains("invalid sink type \"Acme.Sink\"") && text(&sink).1.contains("\"acme-sink\""), "{}", text(&sink).1);
    let sink = sluice(dir.path()).args(["plugin", "new", "sink", "acme-sink"]).output().unwrap();
    assert!(sink.status.success(), "{}", text(&sink).1);
    for f in ["Cargo.toml", "Cargo.lock", "README.md", "src/lib.rs", "wit/sink.wit", "wit/log.wit"] {
        assert!(dir.path().join("acme-sink").join(f).is_file(), "{f}");
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("acme-sink/README.md")).unwrap().lines().count(), 3);
}

#[test]
fn plugin_build_says_how_to_add_a_missing_target_and_what_a_crate_is() {
    let dir = TempDir::new("build");
    let out = sluice(dir.path()).args(["plugin", "build"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no Cargo.toml in ."), "{}", text(&out).1);

    // A toolchain without the wasm32-wasip2 target: the real rustc over an empty sysroot.
    let made = sluice(dir.path()).args(["plugin", "new", "tool", "acme.no_target"]).output().unwrap();
    assert!(made.status.success(), "{}", text(&made).1);
    let real = String::from_utf8(Command::new("sh").args(["-c", "command -v rustc"]).output().unwrap().stdout).unwrap();
    let shim_dir = dir.path().join("shim");
    std::fs::create_dir_all(shim_dir.join("sysroot")).unwrap();
    let shim = shim_dir.join("rustc");
    std::fs::write(&shim, format!("#!/bin/sh\nexec {} --sysroot {} \"$@\"\n", real.trim(), shim_dir.join("sysroot").display()))
        .unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = sluice(&dir.path().join("acme-no-target"))
        .args(["plugin", "build"])
        .env("PATH", format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap()))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`"), "{stderr}");
}
