//! Bearer authentication: an ACL file (YAML or JSON) or a single token file, watched for changes,
//! with a grace window for removed tokens.
//!
//! Tokens are compared as SHA-256 digests in constant time, against every entry, so neither a
//! token's length nor which entry matched shows in the timing. Only digests are kept in memory
//! after loading and only digests are ever logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, AuditLog};

/// Default time a removed token keeps working after the file changes.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(300);

/// Who a request comes from. Aligned so that the reference counts of its `Arc`, written by
/// every request, do not share a cache line with the fields every request reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(align(128))]
pub struct Identity {
    /// SHA-256 (hex) of the bearer token.
    pub bearer_hash: String,
    /// The operator's name for the key: audit lines only, never in responses.
    pub key_name: String,
    /// Clusters this bearer may see; empty means all.
    pub allowed_clusters: Vec<String>,
}

impl Identity {
    /// The opaque id shown to the bearer itself (`whoami`): a prefix of the token's digest.
    pub fn bearer_id(&self) -> &str {
        &self.bearer_hash[..16]
    }

    /// Whether the bearer is limited to some clusters.
    pub fn is_scoped(&self) -> bool {
        !self.allowed_clusters.is_empty()
    }

    /// Whether the bearer may see `cluster`.
    pub fn may_see(&self, cluster: &str) -> bool {
        !self.is_scoped() || self.allowed_clusters.iter().any(|c| c == cluster)
    }
}

/// One entry of the ACL file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// The operator's name for the key (audit only).
    pub key_name: String,
    /// The token itself, or
    #[serde(default)]
    pub token: Option<String>,
    /// its SHA-256 in hex.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Clusters the bearer may see; empty or absent means all.
    #[serde(default)]
    pub allowed_clusters: Vec<String>,
}

/// Where the bearers come from.
#[derive(Debug, Clone)]
pub enum AuthSource {
    /// `--bearer-acl-file`: a YAML or JSON list of [`AclEntry`].
    AclFile(PathBuf),
    /// `--auth-token-file`: one token, all clusters.
    TokenFile(PathBuf),
    /// A fixed list (tests, embedding).
    Static(Vec<AclEntry>),
}

struct Entry {
    digest: [u8; 32],
    identity: Arc<Identity>,
    /// Set for tokens removed from the file: they work until then.
    expires: Option<Instant>,
}

/// The live set of bearers.
pub struct AuthStore {
    entries: ArcSwap<Vec<Entry>>,
    source: AuthSource,
    grace: Duration,
    audit: AuditLog,
    reload_lock: Mutex<()>,
}

/// SHA-256 (hex) of a token: the only form in which a token is ever logged.
pub fn token_hash(token: &str) -> String {
    hex::encode(digest(token.as_bytes()))
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn load(source: &AuthSource) -> anyhow::Result<Vec<([u8; 32], Identity)>> {
    let entries: Vec<AclEntry> = match source {
        AuthSource::Static(e) => e.clone(),
        AuthSource::TokenFile(p) => {
            let token = std::fs::read_to_string(p).with_context(|| format!("reading the token file {}", p.display()))?;
            vec![AclEntry {
                key_name: "token-file".into(),
                token: Some(token.trim().to_owned()),
                token_sha256: None,
                allowed_clusters: vec![],
            }]
        }
        AuthSource::AclFile(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading the bearer ACL file {}", p.display()))?;
            // YAML is a superset of JSON: one parser reads both.
            serde_norway::from_str(&text).with_context(|| {
                format!("{} must be a list of {{key_name, token | token_sha256, allowed_clusters}}", p.display())
            })?
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        anyhow::ensure!(!e.key_name.trim().is_empty(), "bearer entry {i} has an empty key_name");
        let d = match (&e.token, &e.token_sha256) {
            (Some(t), None) => {
                if t.trim().is_empty() {
                    // An empty token never matches: leave the entry out rather than accept "".
                    tracing::warn!(key_name = %e.key_name, "Bearer entry with an empty token ignored.");
                    continue;
                }
                digest(t.trim().as_bytes())
            }
            (None, Some(h)) => hex::decode(h.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("bearer {:?}: token_sha256 must be 64 hex characters", e.key_name))?,
            _ => anyhow::bail!("bearer {:?}: give exactly one of token and token_sha256", e.key_name),
        };
        for c in &e.allowed_clusters {
            anyhow::ensure!(!c.is_empty(), "bearer {:?}: empty cluster id in allowed_clusters", e.key_name);
        }
        out.push((
            d,
            Identity { bearer_hash: hex::encode(d), key_name: e.key_name, allowed_clusters: e.allowed_clusters },
        ));
    }
    Ok(out)
}

impl AuthStore {
    /// Loads the bearers; an unreadable or invalid source is an error at start-up.
    pub fn new(source: AuthSource, grace: Duration, audit: AuditLog) -> anyhow::Result<Arc<Self>> {
        let loaded = load(&source)?;
        anyhow::ensure!(!loaded.is_empty(), "no usable bearer token is configured");
        let entries = loaded
            .into_iter()
            .map(|(digest, identity)| Entry { digest, identity: Arc::new(identity), expires: None })
            .collect();
        Ok(Arc::new(Self {
            entries: ArcSwap::from_pointee(entries),
            source,
            grace,
            audit,
            reload_lock: Mutex::new(()),
        }))
    }

    /// The identity behind `token`, if it is live (or within its grace window).
    pub fn authenticate(&self, token: &str) -> Option<Arc<Identity>> {
        if token.is_empty() {
            return None;
        }
        let d = digest(token.as_bytes());
        let entries = self.entries.load();
        let mut found: Option<&Entry> = None;
        // No early exit: every entry is compared.
        for e in entries.iter() {
            if ct_eq(&d, &e.digest) && found.is_none() {
                found = Some(e);
            }
        }
        // Only a retiring token has an expiry: read the clock for those alone.
        let e = found?;
        e.expires.is_none_or(|x| Instant::now() < x).then(|| e.identity.clone())
    }

    /// Re-reads the source. New tokens work at once; removed ones keep working for the grace
    /// window. A source that fails to load leaves the current bearers in place.
    pub fn reload(&self) -> anyhow::Result<()> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = load(&self.source)?;
        let now = Instant::now();
        let old = self.entries.load();
        let mut next: Vec<Entry> = Vec::with_capacity(loaded.len());
        let mut added = Vec::new();
        for (d, identity) in loaded {
            if !old.iter().any(|e| e.digest == d && e.expires.is_none()) {
                added.push((hex::encode(d), identity.key_name.clone()));
            }
            next.push(Entry { digest: d, identity: Arc::new(identity), expires: None });
        }
        let mut retiring = 0;
        for e in old.iter() {
            let still_live = next.iter().any(|n| n.digest == e.digest);
            let expires = e.expires.unwrap_or(now + self.grace);
            if !still_live && expires > now {
                retiring += 1;
                next.push(Entry { digest: e.digest, identity: e.identity.clone(), expires: Some(expires) });
            }
        }
        self.entries.store(Arc::new(next));
        for (hash, key_name) in &added {
            self.audit.record(
                AuditEvent {
                    bearer_hash: Some(hash.clone()),
                    bearer_key_name: Some(key_name.clone()),
                    ..AuditEvent::new("bearer_rotation_applied")
                }
                .with("live_hash", hash.clone())
                .with("grace_seconds", self.grace.as_secs()),
            );
        }
        tracing::info!(added = added.len(), retiring, "Bearer list reloaded.");
        Ok(())
    }

    /// The file to watch, if any.
    fn path(&self) -> Option<&Path> {
        match &self.source {
            AuthSource::AclFile(p) | AuthSource::TokenFile(p) => Some(p),
            AuthSource::Static(_) => None,
        }
    }

    /// Watches the source file and reloads on change until the watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
        let Some(path) = self.path().map(Path::to_owned) else { return Ok(None) };
        let name = path.file_name().map(|n| n.to_owned());
        let store = Arc::downgrade(self);
        let watcher = crate::watch::watch(
            "sluice-bearer-reloader",
            &[crate::watch::parent_dir(&path)],
            move |p| p.file_name() == name.as_deref(),
            Duration::from_millis(50),
            move || {
                let Some(store) = store.upgrade() else { return false };
                if let Err(e) = store.reload() {
                    tracing::error!(error = %format!("{e:#}"), "Bearer file change not applied; the previous bearers stay in force.");
                }
                true
            },
        )?;
        Ok(Some(watcher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str, clusters: &[&str]) -> AclEntry {
        AclEntry {
            key_name: name.into(),
            token: Some(token.into()),
            token_sha256: None,
            allowed_clusters: clusters.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn matches_tokens_and_digests_and_never_the_empty_token() {
        let hashed = hex::encode(Sha256::digest(b"t2"));
        let store = AuthStore::new(
            AuthSource::Static(vec![
                entry("one", "t1", &["a"]),
                AclEntry { key_name: "two".into(), token: None, token_sha256: Some(hashed), allowed_clusters: vec![] },
                entry("empty", "", &[]),
            ]),
            DEFAULT_ROTATION_GRACE,
            AuditLog::memory().0,
        )
        .unwrap();
        assert_eq!(store.authenticate("t1").unwrap().key_name, "one");
        assert!(store.authenticate("t1").unwrap().is_scoped());
        assert_eq!(store.authenticate("t2").unwrap().key_name, "two");
        assert!(store.authenticate("").is_none());
        assert!(store.authenticate("t3").is_none());
        assert!(store.authenticate("t1 ").is_none());
    }

    #[test]
    fn reads_yaml_and_json_and_names_the_problem() {
        let dir = crate::db::tempdir::Dir::new();
        let yaml = dir.path().join("acl.yaml");
        std::fs::write(&yaml, "- key_name: ops\n  token: abc\n- key_name: tenant\n  token: def\n  allowed_clusters: [c1]\n").unwrap();
        let json = dir.path().join("acl.json");
        std::fs::write(&json, r#"[{"key_name":"ops","token":"abc"}]"#).unwrap();
        for p in [&yaml, &json] {
            let s = AuthStore::new(AuthSource::AclFile(p.clone()), DEFAULT_ROTATION_GRACE, AuditLog::memory().0).unwrap();
            assert_eq!(s.authenticate("abc").unwrap().key_name, "ops");
        }
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "- key_name: x\n  token: a\n  token_sha256: b\n").unwrap();
        let err = AuthStore::new(AuthSource::AclFile(bad), DEFAULT_ROTATION_GRACE, AuditLog::memory().0).err().unwrap();
        assert!(format!("{err:#}").contains("exactly one of token and token_sha256"), "{err:#}");
    }
}
