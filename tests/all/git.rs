//! The `git` sink against real git: `git http-backend` behind a small HTTP server in this file
//! (CGI on loopback, basic authentication), read back with `git clone`. Commits on top of the
//! branch, a clean tree is a no-op, a push racing another is re-applied on the new tip, and 401
//! and 403 are classified.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::{ByteSize, ExportBinding, ExportConfigEntry, HumanDuration, SinkConfigEntry};

use crate::common::{sink_line as line, GatewayOptions, TempDir, TestGateway, component};

type Hook = Box<dyn FnOnce() + Send>;

/// `git http-backend` over HTTP on loopback, requiring `Authorization: Basic sluice:<token>`.
struct GitServer {
    url: String,
    root: TempDir,
    token: String,
    /// Answer 403 to everything.
    forbidden: Arc<AtomicBool>,
    /// Runs before the next push is handed to git (to race it).
    before_push: Arc<Mutex<Option<Hook>>>,
    pushes: Arc<AtomicUsize>,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=Someone", "-c", "user.email=someone@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

fn basic(user: &str, token: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("{user}:{token}").into_bytes();
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    format!("Basic {out}")
}

impl GitServer {
    fn start(token: &str) -> Self {
        let root = TempDir::new("git-root");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let forbidden = Arc::new(AtomicBool::new(false));
        let before_push: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(None));
        let pushes = Arc::new(AtomicUsize::new(0));
        let (dir, expected, f, hook, p) = (root.path().to_owned(), basic("sluice", token), forbidden.clone(), before_push.clone(), pushes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (dir, expected, f, hook, p) = (dir.clone(), expected.clone(), f.clone(), hook.clone(), p.clone());
                std::thread::spawn(move || serve(stream, &dir, &expected, &f, &hook, &p));
            }
        });
        Self { url, root, token: token.to_owned(), forbidden, before_push, pushes }
    }

    /// A bare repository; with `readme`, one commit on main holding README.md.
    fn repo(&self, name: &str, readme: bool) -> PathBuf {
        let bare = self.root.path().join(name);
        git(self.root.path(), &["init", "--quiet", "--bare", name]);
        git(&bare, &["config", "http.receivepack", "true"]);
        if readme {
            let work = self.root.path().join(format!("{name}-seed"));
            git(self.root.path(), &["clone", "--quiet", bare.to_str().unwrap(), work.to_str().unwrap()]);
            std::fs::write(work.join("README.md"), "fleet exports\n").unwrap();
            git(&work, &["add", "README.md"]);
            git(&work, &["commit", "--quiet", "-m", "initial"]);
            git(&work, &["push", "--quiet", "origin", "main"]);
        }
        bare
    }

    /// `git clone` over HTTP, as a user of the repository would.
    fn clone(&self, name: &str, into: &Path) {
        let url = self.url.replacen("http://", &format!("http://sluice:{}@", self.token), 1);
        let out = Command::new("git").args(["clone", "--quiet", &format!("{url}/{name}")]).arg(into).output().unwrap();
        assert!(out.status.success(), "git clone: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// One HTTP exchange: the request to `git http-backend` as CGI, its answer back.
fn serve(stream: TcpStream, root: &Path, expected: &str, forbidden: &AtomicBool, hook: &Mutex<Option<Hook>>, pushes: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = headers.get("content-length").and_then(|n| n.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body).unwrap();
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut out = stream;
    let reply = |out: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n", body.len());
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
    };
    if headers.get("authorization").map(String::as_str) != Some(expected) {
        return reply(&mut out, "401 Unauthorized", "WWW-Authenticate: Basic realm=\"git\"\r\n", b"");
    }
    if forbidden.load(Ordering::SeqCst) {
        return reply(&mut out, "403 Forbidden", "", b"");
    }
    if method == "POST" && path.ends_with("/git-receive-pack") {
        pushes.fetch_add(1, Ordering::SeqCst);
        if let Some(f) = hook.lock().unwrap().take() {
            f();
        }
    }
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", headers.get("content-type").cloned().unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", headers.get("content-encoding").cloned().unwrap_or_default())
        .env("REMOTE_USER", "sluice")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = cgi.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let output = cgi.wait_with_output().unwrap();
    feeder.join().unwrap();
    let raw = output.stdout;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4)).or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else { return reply(&mut out, "500 Internal Server Error", "", b"") };
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let mut status = "200 OK".to_owned();
    let mut extra = String::new();
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("Status:") {
            status = s.trim().to_owned();
        } else if !line.trim().is_empty() {
            extra.push_str(line.trim());
            extra.push_str("\r\n");
        }
    }
    reply(&mut out, &status, &extra, &raw[at + sep..]);
}

fn git_sink(name: &str, server: &GitServer, repo: &str, token: &str, secrets: &TempDir) -> SinkConfigEntry {
    let file = secrets.path().join(format!("{name}-token"));
    std::fs::write(&file, token).unwrap();
    SinkConfigEntry {
        name: name.into(),
        component: component("git"),
        settings: BTreeMap::from([
            ("url".into(), format!("{}/{repo}", server.url)),
            ("username".into(), "sluice".into()),
            ("author_name".into(), "Sluice Exporter".into()),
        ]),
        secrets: BTreeMap::from([("token".into(), format!("file:{}", file.display()))]),
        allow_private: true,
        timeout: HumanDuration(Duration::from_secs(30)),
        breaker_open_for: HumanDuration(Duration::from_secs(30)),
        test_on_start: false,
    }
}

fn export(name: &str, sql: &str, sink: &str) -> ExportConfigEntry {
    ExportConfigEntry {
        name: name.into(),
        sql: sql.into(),
        cadence: None,
        cluster: "cluster-a".into(),
        max_export_bytes: ByteSize(1 << 20),
        spill_to: None,
        sinks: vec![ExportBinding { name: sink.into(), min_interval: None }],
    }
}

const INVENTORY: &str = "CREATE OR REPLACE TABLE inventory AS SELECT i AS id, 'node-' || i AS name FROM range(50) t(i)";

#[tokio::test(flavor = "multi_thread")]
async fn the_git_sink_commits_and_pushes_over_http_and_git_clone_reads_it_back() {
    let _cpu = crate::common::shared_cpu().await;
    let server = GitServer::start("git-test-token");
    let bare = server.repo("fleet.git", true);
    server.repo("empty.git", false);
    let locked = GitServer::start("git-test-token");
    locked.repo("fleet.git", true);
    locked.forbidden.store(true, Ordering::SeqCst);
    let secrets = TempDir::new("git-secrets");
    let mut forced = git_sink("git-force", &server, "fleet.git", "git-test-token", &secrets);
    forced.settings.insert("policy".into(), "force_push".into());
    let sinks = vec![
        forced,
        git_sink("git", &server, "fleet.git", "git-test-token", &secrets),
        git_sink("git-new", &server, "empty.git", "git-test-token", &secrets),
        git_sink("git-badtoken", &server, "fleet.git", "wrong-token", &secrets),
        git_sink("git-locked", &locked, "fleet.git", "git-test-token", &secrets),
    ];
    let gw = TestGateway::start(GatewayOptions {
        seed: false,
        configure: Box::new(move |c| {
            c.sinks = sinks;
            c.exports = vec![
                export("inventory", "SELECT id, name FROM inventory", "git"),
                export("fresh", "SELECT id, name FROM inventory WHERE id < 3", "git-new"),
                export("badtoken", "SELECT 1 AS id", "git-badtoken"),
                export("locked", "SELECT 1 AS id", "git-locked"),
                export("forced", "SELECT 1 AS id", "git-force"),
                // Over the cap for a sink that takes whole payloads only, and nothing to spill to.
                ExportConfigEntry { max_export_bytes: ByteSize(1024), ..export("toobig", "SELECT id, name FROM inventory", "git") },
            ];
        }),
        ..Default::default()
    });
    gw.gateway.db().writer().execute_batch(INVENTORY).unwrap();
    let want = |gw: &TestGateway| -> Vec<Value> {
        let conn = gw.gateway.db().writer();
        let mut stmt = conn.prepare("SELECT id, name FROM inventory ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok(json!({"id": r.get::<_, i64>(0)?, "name": r.get::<_, String>(1)?}))).unwrap().map(Result::unwrap).collect()
    };
    let read_back = |server: &GitServer, repo: &str, tag: &str| -> (TempDir, Value) {
        let dir = TempDir::new(tag);
        let work = dir.path().join("clone");
        server.clone(repo, &work);
        let file: Value = serde_json::from_slice(&std::fs::read(work.join("exports/inventory.json")).unwrap_or_default()).unwrap_or(Value::Null);
        (dir, file)
    };
    let by_id = |file: &Value| {
        let mut items = file["items"].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|i| i["id"].as_i64());
        items
    };

    // One commit on top of main: the file, README kept, the message and author as configured.
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let checksum = r.body["checksum"].as_str().unwrap().to_owned();
    let (clone, file) = read_back(&server, "fleet.git", "git-clone");
    let work = clone.path().join("clone");
    assert_eq!(by_id(&file), want(&gw));
    assert_eq!(file["checksum"], checksum);
    assert!(file.get("exportedAt").is_none(), "the file does not change with the time alone");
    assert!(work.join("README.md").exists());
    assert_eq!(git(&work, &["log", "-1", "--format=%s|%an"]), format!("chore(cluster-a/inventory): export 50 items @ {}|Sluice Exporter", &checksum[..12]));
    assert_eq!(git(&bare, &["rev-list", "--count", "main"]), "2");
    let head = git(&bare, &["rev-parse", "main"]);
    assert!(line(&r.body, "git")["message"].as_str().unwrap().contains(&head), "{}", r.text);

    // The same data again: a clean tree, no commit, no push.
    let pushes = server.pushes.load(Ordering::SeqCst);
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert!(line(&r.body, "git")["message"].as_str().unwrap().contains("unchanged"), "{}", r.text);
    assert_eq!(git(&bare, &["rev-parse", "main"]), head);
    assert_eq!(server.pushes.load(Ordering::SeqCst), pushes);

    // Someone pushes in between: the push is refused, the change is made again on their commit.
    let (seed, bare_path) = (server.root.path().join("fleet.git-seed"), bare.clone());
    *server.before_push.lock().unwrap() = Some(Box::new(move || {
        git(&seed, &["pull", "--quiet", "--no-rebase", bare_path.to_str().unwrap(), "main"]);
        std::fs::write(seed.join("OTHER.md"), "someone else's change\n").unwrap();
        git(&seed, &["add", "OTHER.md"]);
        git(&seed, &["commit", "--quiet", "-m", "someone else"]);
        git(&seed, &["push", "--quiet", bare_path.to_str().unwrap(), "HEAD:main"]);
    }));
    gw.gateway.db().writer().execute_batch("UPDATE inventory SET name = 'renamed' WHERE id = 3").unwrap();
    let r = gw.request("POST", "/api/v2/exports/inventory/run", None).await;
    assert_eq!(line(&r.body, "git")["synced"], "Exported", "{}", r.text);
    assert_eq!(server.pushes.load(Ordering::SeqCst), pushes + 2, "one refused push, one accepted");
    let (clone, file) = read_back(&server, "fleet.git", "git-clone2");
    let work = clone.path().join("clone");
    assert_eq!(by_id(&file), want(&gw));
    assert!(work.join("OTHER.md").exists(), "their change is kept");
    assert_eq!(git(&work, &["log", "-1", "--format=%p"]), git(&work, &["rev-parse", "--short", "HEAD~1"]));
    assert_eq!(git(&work, &["log", "-2", "--format=%s"]).lines().nth(1), Some("someone else"));

    // A repository without the branch: the first export creates it.
    let r = gw.request("POST", "/api/v2/exports/fresh/run", None).await;
    assert_eq!(r.body["condition"], "Synced", "{}", r.text);
    let dir = TempDir::new("git-clone3");
    server.clone("empty.git", &dir.path().join("c"));
    let fresh: Value = serde_json::from_slice(&std::fs::read(dir.path().join("c/exports/fresh.json")).unwrap()).unwrap();
    assert_eq!(fresh["itemCount"], 3);

    // Too big for git and no object store bound: SpillRequired, nothing pushed.
    let pushes = server.pushes.load(Ordering::SeqCst);
    let r = gw.request("POST", "/api/v2/exports/toobig/run", None).await;
    let l = line(&r.body, "git");
    assert_eq!((l["synced"].as_str(), l["lastError"]["class"].as_str()), (Some("ExportFailed"), Some("terminal")), "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("spill"), "{l}");
    assert_eq!(r.body["condition"], "Degraded");
    assert_eq!(server.pushes.load(Ordering::SeqCst), pushes);

    // 401: terminal, tried once; 403: forbidden.
    let pushes = server.pushes.load(Ordering::SeqCst);
    let r = gw.request("POST", "/api/v2/exports/badtoken/run", None).await;
    let l = line(&r.body, "git-badtoken");
    assert_eq!(l["lastError"]["class"], "terminal", "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("401"), "{l}");
    assert_eq!(server.pushes.load(Ordering::SeqCst), pushes);
    let r = gw.request("POST", "/api/v2/exports/locked/run", None).await;
    let l = line(&r.body, "git-locked");
    assert_eq!(l["lastError"]["class"], "forbidden", "{l}");
    // A push policy this component does not offer: terminal, nothing pushed.
    let r = gw.request("POST", "/api/v2/exports/forced/run", None).await;
    let l = line(&r.body, "git-force");
    assert_eq!(l["lastError"]["class"], "terminal", "{l}");
    assert!(l["lastError"]["message"].as_str().unwrap().contains("force_push"), "{l}");
    assert_eq!(server.pushes.load(Ordering::SeqCst), pushes);

    // The connection test reads the branch.
    let t = gw.request("POST", "/api/v2/sinks/git/test", None).await;
    assert_eq!(t.body["verified"], true, "{}", t.text);
    assert!(t.text.contains(&git(&bare, &["rev-parse", "main"])), "{}", t.text);
}
