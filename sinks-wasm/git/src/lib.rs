//! The `git` sink: writes each export to a file in a branch of a git repository served over
//! smart HTTP, as one commit, and pushes it.
//!
//! Each delivery reads the branch's tip (`info/refs`), fetches that commit's tree (a depth-1
//! `git-upload-pack`), sets the export's file in it and, if that changed anything, pushes one
//! commit on top (`git-receive-pack`). Push policy `commit`: when the branch moved in between
//! (the push is refused), the change is made again on the new tip and pushed again, up to three
//! times; after a push the branch is read again to verify the commit reached the remote. A
//! clean tree (the file already holds this content) is a no-op. The file is the export envelope
//! without `exportedAt`, pretty-printed, so unchanged data gives an unchanged file.
//!
//! Settings: `url` (`https://host/owner/repo.git`), `branch` (default `main`), `policy` (`commit`,
//! the only one offered), `path` (default
//! `exports/{export}.json`), `author_name` (default `Sluice`), `author_email` (default
//! `sluice@localhost`), `username` (default `x-access-token`). Secrets: `token` (HTTP basic
//! authentication with `username`). TLS is done by the host.

use sluice_sink_common::*;

mod objects;

use std::collections::HashMap;

use base64::Engine as _;
use objects::{FLUSH, Kind, Oid, Store, ZERO, commit_tree, hex, parse_hex, pkt, pkt_lines, read_pack, with_file, write_pack};
use sluice_sink_common::{HttpMethod as Method, SendError, exchange};

struct GitSink;

/// Pushes attempted per delivery when the branch keeps moving.
const ATTEMPTS: usize = 3;
/// The largest answer read from the server (a depth-1 fetch of the branch).
const MAX_ANSWER: usize = 256 << 20;

struct Remote {
    url: String,
    authorization: Option<String>,
}

impl Remote {
    fn of(config: &SinkConfig) -> Result<Self, SinkError> {
        let url = setting(config, "url").ok_or_else(|| terminal("the `url` setting is missing"))?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(terminal(format!("url {url:?}: only http(s) remotes are supported")));
        }
        let authorization = secret(config, "token").map(|token| {
            let user = setting(config, "username").unwrap_or("x-access-token");
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
        });
        Ok(Self { url: url.trim_end_matches('/').to_owned(), authorization })
    }

    /// One request to the repository; the answer's body on 2xx, a classified error otherwise.
    fn call(&self, method: Method, path: &str, content_type: Option<&str>, body: &[u8], what: &str) -> Result<Vec<u8>, SinkError> {
        let mut headers = vec![("user-agent", "git/sluice".to_owned())];
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.clone()));
        }
        if let Some(t) = content_type {
            headers.push(("content-type", t.to_owned()));
        }
        let url = format!("{}{path}", self.url);
        let (status, answer) = exchange(method, &url, &headers, body, MAX_ANSWER).map_err(|e| match e {
            SendError::Invalid(m) => terminal(m),
            SendError::Denied => terminal("the host refused the request: the remote is not allowed for this sink"),
            SendError::Unanswered(m) => transient(format!("{what}: no answer: {m}")),
        })?;
        match status {
            200..=299 => Ok(answer),
            401 => Err(terminal(format!("{what}: HTTP 401, the credentials were refused"))),
            403 => Err(error(ErrorClass::Forbidden, format!("{what}: HTTP 403"))),
            404 => Err(terminal(format!("{what}: HTTP 404, no such repository at {}", self.url))),
            408 | 429 | 500..=599 => Err(transient(format!("{what}: HTTP {status}"))),
            _ => Err(terminal(format!("{what}: HTTP {status}"))),
        }
    }

    /// The remote's refs, as `receive-pack` advertises them.
    fn refs(&self) -> Result<HashMap<String, String>, SinkError> {
        let what = "reading the remote's branches";
        let body = self.call(Method::Get, "/info/refs?service=git-receive-pack", None, &[], what)?;
        let bad = || terminal(format!("{what}: {} is not a smart-HTTP git remote that accepts pushes", self.url));
        let (head, rest) = pkt_lines(&body).map_err(|_| bad())?;
        if head.first().is_none_or(|l| !l.starts_with(b"# service=git-receive-pack")) {
            return Err(bad());
        }
        let (lines, _) = pkt_lines(rest).map_err(|_| bad())?;
        let mut refs = HashMap::new();
        for line in lines {
            let line = line.split(|&b| b == 0).next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            if let Some((id, name)) = line.trim_end().split_once(' ')
                && id != ZERO
            {
                refs.insert(name.to_owned(), id.to_owned());
            }
        }
        Ok(refs)
    }

    /// Fetches `tip` and its tree (depth 1) into `store`.
    fn fetch(&self, tip: &str, store: &mut Store) -> Result<(), SinkError> {
        let what = "fetching the branch";
        let mut body = pkt(&format!("want {tip} no-progress\n"));
        body.extend_from_slice(&pkt("deepen 1\n"));
        body.extend_from_slice(FLUSH);
        body.extend_from_slice(&pkt("done\n"));
        let answer = self.call(Method::Post, "/git-upload-pack", Some("application/x-git-upload-pack-request"), &body, what)?;
        // Shallow lines, a flush, NAK, then the pack.
        let mut rest: &[u8] = &answer;
        while !rest.starts_with(b"PACK") {
            let len = rest
                .get(..4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or_else(|| transient(format!("{what}: the answer has no pack")))?;
            if rest.get(4..).is_some_and(|r| r.starts_with(b"ERR ")) {
                return Err(terminal(format!("{what}: {}", String::from_utf8_lossy(&rest[4..len.max(4)]).trim())));
            }
            rest = rest.get(len.max(4)..).ok_or_else(|| transient(format!("{what}: the answer is cut short")))?;
        }
        read_pack(rest, store).map_err(|e| transient(format!("{what}: {e}")))?;
        Ok(())
    }

    /// Pushes `pack` moving `branch` from `old` to `new`: `None` when accepted, or why not.
    fn push(&self, branch: &str, old: &str, new: &str, pack: &[u8]) -> Result<Option<String>, SinkError> {
        let what = "pushing";
        let mut body = pkt(&format!("{old} {new} refs/heads/{branch}\0report-status agent=sluice\n"));
        body.extend_from_slice(FLUSH);
        body.extend_from_slice(pack);
        let answer = self.call(Method::Post, "/git-receive-pack", Some("application/x-git-receive-pack-request"), &body, what)?;
        let (lines, _) = pkt_lines(&answer).map_err(|e| transient(format!("{what}: {e}")))?;
        let lines: Vec<String> = lines.iter().map(|l| String::from_utf8_lossy(l).trim_end().to_owned()).collect();
        match lines.first().map(String::as_str) {
            Some("unpack ok") => {}
            Some(other) => return Err(transient(format!("{what}: the remote could not unpack: {other}"))),
            None => return Err(transient(format!("{what}: no report from the remote"))),
        }
        let target = format!("refs/heads/{branch}");
        for line in &lines[1..] {
            if line == &format!("ok {target}") {
                return Ok(None);
            }
            if let Some(reason) = line.strip_prefix(&format!("ng {target} ")) {
                return Ok(Some(reason.to_owned()));
            }
        }
        Err(transient(format!("{what}: the remote did not report on {target}: {lines:?}")))
    }
}

/// The file's path inside the repository, split; `{export}` replaced.
fn file_path(config: &SinkConfig, export: &str) -> Result<Vec<String>, SinkError> {
    let path = setting(config, "path").unwrap_or("exports/{export}.json").replace("{export}", export);
    let parts: Vec<String> = path.split('/').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty() || p == "." || p == ".." || p.eq_ignore_ascii_case(".git") || p.contains('\0')) {
        return Err(terminal(format!("path {path:?} is not a plain relative path")));
    }
    Ok(parts)
}

fn branch(config: &SinkConfig) -> Result<&str, SinkError> {
    let b = setting(config, "branch").unwrap_or("main");
    if b.is_empty() || b.contains([' ', '~', '^', ':', '?', '*', '[', '\\']) || b.contains("..") || b.starts_with('/') {
        return Err(terminal(format!("branch {b:?} is not a valid branch name")));
    }
    Ok(b)
}

/// The file's content: the envelope without `exportedAt`, pretty-printed.
fn content(request: &ExportRequest) -> Result<(Vec<u8>, u64), SinkError> {
    if request.format != "json" {
        return Err(terminal(format!("format {:?} is not accepted (json only)", request.format)));
    }
    let mut envelope: serde_json::Value =
        serde_json::from_slice(&request.payload).map_err(|e| terminal(format!("the payload is not an export envelope: {e}")))?;
    let items = envelope["itemCount"].as_u64().unwrap_or(u64::from(request.item_count));
    if let Some(o) = envelope.as_object_mut() {
        o.remove("exportedAt");
    }
    let mut text = serde_json::to_vec_pretty(&envelope).map_err(|e| terminal(e.to_string()))?;
    text.push(b'\n');
    Ok((text, items))
}

fn deliver(config: &SinkConfig, request: &ExportRequest) -> Result<Receipt, SinkError> {
    let remote = Remote::of(config)?;
    let branch = branch(config)?;
    match setting(config, "policy").unwrap_or("commit") {
        "commit" => {}
        other => return Err(terminal(format!("push policy {other:?} is not supported: this component pushes with `commit` only"))),
    }
    let path = file_path(config, &request.export)?;
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let (text, items) = content(request)?;
    let name = setting(config, "author_name").unwrap_or("Sluice");
    let email = setting(config, "author_email").unwrap_or("sluice@localhost");
    let checksum12 = request.checksum.get(..12).unwrap_or(&request.checksum);
    let message = format!("chore({}/{}): export {items} items @ {checksum12}\n", request.cluster, request.export);
    let target = format!("refs/heads/{branch}");

    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let tip = remote.refs()?.remove(&target);
        let mut store = Store::default();
        let base: Option<(Oid, Oid)> = match &tip {
            Some(tip) => {
                remote.fetch(tip, &mut store)?;
                let id = parse_hex(tip).ok_or_else(|| transient(format!("bad object id {tip:?} from the remote")))?;
                let tree = commit_tree(store.get(&id, Kind::Commit).map_err(transient)?).map_err(transient)?;
                Some((id, tree))
            }
            None => None,
        };
        let blob = store.put(Kind::Blob, text.clone());
        let mut trees = Vec::new();
        let tree = with_file(&mut store, &mut trees, base.as_ref().map(|(_, t)| t), &path, blob).map_err(transient)?;
        if let Some((tip, base_tree)) = base
            && tree == base_tree
        {
            return Ok(Receipt { location: format!("{} {branch} @ {} (unchanged)", remote.url, hex(&tip)) });
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let who = format!("{name} <{email}> {secs} +0000");
        let parent = base.map(|(tip, _)| format!("parent {}\n", hex(&tip))).unwrap_or_default();
        let commit = store.put(Kind::Commit, format!("tree {}\n{parent}author {who}\ncommitter {who}\n\n{message}", hex(&tree)).into_bytes());
        let mut ids = vec![blob];
        ids.extend(trees);
        ids.push(commit);
        ids.dedup();
        let pack = write_pack(&store, &ids);
        let old = tip.clone().unwrap_or_else(|| ZERO.to_owned());
        match remote.push(branch, &old, &hex(&commit), &pack)? {
            None => {
                // Verify that the branch now points at the commit.
                if remote.refs()?.get(&target).map(String::as_str) == Some(hex(&commit).as_str()) {
                    return Ok(Receipt { location: format!("{} {branch} @ {}", remote.url, hex(&commit)) });
                }
                last = "the branch moved on right after the push".into();
            }
            Some(reason) => last = reason,
        }
    }
    Err(transient(format!("the branch {branch} kept moving ({ATTEMPTS} attempts); last: {last}")))
}

impl Guest for GitSink {
    fn describe() -> SinkInfo {
        SinkInfo {
            sink_type: "git".into(),
            family: Family::Snapshot,
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Commits each export to a file in a git branch and pushes it over smart HTTP.".into(),
            capabilities: Capabilities { stream: false, supports_delete: true, object_store: false, accepts_parts: false },
            formats: vec!["json".into()],
        }
    }

    fn probe(config: SinkConfig) -> Result<String, SinkError> {
        let remote = Remote::of(&config)?;
        let branch = branch(&config)?;
        Ok(match remote.refs()?.get(&format!("refs/heads/{branch}")) {
            Some(id) => format!("{} reachable, {branch} at {id}", remote.url),
            None => format!("{} reachable, {branch} does not exist yet (the first export creates it)", remote.url),
        })
    }

    fn export(config: SinkConfig, request: ExportRequest) -> Result<Receipt, SinkError> {
        deliver(&config, &request)
    }
}

export_sink!(GitSink);
