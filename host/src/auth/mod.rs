//! Bearer authentication: an ACL file (YAML or JSON) or a single token file, watched for changes,
//! with a grace window for removed tokens; and JWTs from trusted issuers ([`jwt`]).
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

pub mod grant;
pub mod jwt;

pub use grant::Grants;

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
    /// Clusters this bearer may see, unless `all_clusters` (then empty).
    pub allowed_clusters: Vec<String>,
    /// Every cluster. A static bearer without `allowed_clusters` has it; a JWT bearer only by
    /// an explicit grant (no cluster claim means no cluster, not all).
    pub all_clusters: bool,
    /// Tools and admin routes.
    pub grants: Grants,
    /// For a JWT bearer: its issuer, subject and id (audit lines; never the token).
    pub token: Option<TokenInfo>,
}

/// What audit lines say of a JWT bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub issuer: String,
    pub subject: String,
    pub jti: Option<String>,
}

impl Identity {
    /// A static bearer: `clusters` empty means all; `grants` as its ACL entry says.
    pub fn static_bearer(bearer_hash: String, key_name: String, clusters: Vec<String>, grants: Grants) -> Self {
        Self { bearer_hash, key_name, all_clusters: clusters.is_empty(), allowed_clusters: clusters, grants, token: None }
    }

    /// How the bearer authenticated (`static` or `jwt`): a metric label.
    pub fn method(&self) -> &'static str {
        if self.token.is_some() { "jwt" } else { "static" }
    }

    /// Whether the bearer may use the admin routes (plugins, exports, sinks, SQL): granted, and
    /// over every cluster, since those read across clusters.
    pub fn is_admin(&self) -> bool {
        self.grants.admin && self.all_clusters
    }

    /// The clusters every query of this bearer is limited to; `None`: no limit.
    pub fn cluster_scope(&self) -> Option<&[String]> {
        (!self.all_clusters).then_some(self.allowed_clusters.as_slice())
    }

    /// The opaque id shown to the bearer itself (`whoami`): a prefix of the token's digest.
    pub fn bearer_id(&self) -> &str {
        &self.bearer_hash[..16]
    }

    /// Whether the bearer is limited to some clusters (possibly none).
    pub fn is_scoped(&self) -> bool {
        !self.all_clusters
    }

    /// Whether the bearer may see `cluster`.
    pub fn may_see(&self, cluster: &str) -> bool {
        self.all_clusters || self.allowed_clusters.iter().any(|c| c == cluster)
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
    /// Tool name patterns it may call (`fleet.cluster.*`); absent means all.
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// The admin routes (plugins, exports, sinks, SQL); absent means yes for a bearer of every
    /// cluster (as before this field existed), and a bearer with `allowed_clusters` never has them.
    #[serde(default)]
    pub admin: Option<bool>,
}

impl AclEntry {
    /// An entry for `token` seeing `clusters` (empty: all), with every tool and, when it sees
    /// every cluster, the admin routes: what an entry with only these fields means.
    pub fn token(key_name: &str, token: &str, clusters: &[&str]) -> Self {
        Self {
            key_name: key_name.into(),
            token: Some(token.into()),
            token_sha256: None,
            allowed_clusters: clusters.iter().map(|c| c.to_string()).collect(),
            allowed_tools: None,
            admin: None,
        }
    }
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
    /// JWT issuers, when `[auth.jwt]` names any.
    jwt: Option<Arc<jwt::JwtVerifier>>,
    source: AuthSource,
    grace: Duration,
    audit: AuditLog,
    reload_lock: Mutex<()>,
}

/// Why a bearer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a live static bearer, and not a JWT a trusted issuer could have made.
    Unknown,
    /// A JWT, refused for the reason given.
    Jwt(jwt::Refusal),
    /// A JWT whose key its issuer's key set lacks: fetch the set again, then decide.
    KeysMissing { issuer: usize },
}

impl Refused {
    /// A stable label: `invalid_bearer`, or the JWT's reason (`expired`, `wrong_audience`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown => "invalid_bearer",
            Self::Jwt(r) => r.reason,
            Self::KeysMissing { .. } => "unknown_key",
        }
    }

    /// Said to the client (`error_description`): what is wrong, never which keys exist.
    pub fn description(&self) -> String {
        match self {
            Self::Unknown => "unknown or expired bearer token".into(),
            Self::Jwt(r) => r.detail.clone(),
            Self::KeysMissing { .. } => "the token's signing key is not in its issuer's key set".into(),
        }
    }
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
                allowed_tools: None,
                admin: None,
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
        for p in e.allowed_tools.iter().flatten() {
            grant::check_pattern(p).map_err(|m| anyhow::anyhow!("bearer {:?}: allowed_tools: {m}", e.key_name))?;
        }
        anyhow::ensure!(
            !(e.admin == Some(true) && !e.allowed_clusters.is_empty()),
            "bearer {:?}: admin needs every cluster (SQL and exports read across clusters); drop allowed_clusters or admin",
            e.key_name
        );
        let grants = Grants { tools: e.allowed_tools, admin: e.admin.unwrap_or(true) };
        out.push((d, Identity::static_bearer(hex::encode(d), e.key_name, e.allowed_clusters, grants)));
    }
    Ok(out)
}

impl AuthStore {
    /// Loads the bearers; an unreadable or invalid source is an error at start-up.
    pub fn new(source: AuthSource, grace: Duration, audit: AuditLog) -> anyhow::Result<Arc<Self>> {
        Self::with_jwt(source, grace, audit, None)
    }

    /// [`AuthStore::new`], with JWT bearers from `jwt`'s issuers too.
    pub fn with_jwt(
        source: AuthSource,
        grace: Duration,
        audit: AuditLog,
        jwt: Option<Arc<jwt::JwtVerifier>>,
    ) -> anyhow::Result<Arc<Self>> {
        let loaded = load(&source)?;
        anyhow::ensure!(!loaded.is_empty() || jwt.is_some(), "no usable bearer token is configured");
        let entries = loaded
            .into_iter()
            .map(|(digest, identity)| Entry { digest, identity: Arc::new(identity), expires: None })
            .collect();
        Ok(Arc::new(Self {
            entries: ArcSwap::from_pointee(entries),
            jwt,
            source,
            grace,
            audit,
            reload_lock: Mutex::new(()),
        }))
    }

    /// The JWT verifier, when issuers are configured.
    pub fn jwt(&self) -> Option<&Arc<jwt::JwtVerifier>> {
        self.jwt.as_ref()
    }

    /// The identity behind `token`: a live static bearer (or one within its grace window), or
    /// a JWT from a trusted issuer. [`Refused::KeysMissing`] asks the caller to try
    /// [`AuthStore::authenticate_after_refresh`].
    pub fn authenticate(&self, token: &str) -> Result<Arc<Identity>, Refused> {
        if token.is_empty() {
            return Err(Refused::Unknown);
        }
        let d = digest(token.as_bytes());
        if let Some(identity) = self.static_bearer(&d) {
            return Ok(identity);
        }
        let Some(v) = &self.jwt else { return Err(Refused::Unknown) };
        // A token verified before is found by its digest alone; anything else must look like a
        // JWT to be verified.
        if let Some(identity) = v.cached(&d) {
            return Ok(identity);
        }
        if !jwt::JwtVerifier::looks_like_jwt(token) {
            return Err(Refused::Unknown);
        }
        match v.check(token, &d) {
            jwt::Checked::Valid(identity) => Ok(identity),
            jwt::Checked::Refused(r) => Err(Refused::Jwt(r)),
            jwt::Checked::UnknownKey { issuer } => Err(Refused::KeysMissing { issuer }),
        }
    }

    /// For a JWT signed with a key its issuer had not published when last fetched: fetches the
    /// key set again (at most once per the issuer's `min_refresh_interval`) and checks again.
    pub async fn authenticate_after_refresh(&self, token: &str, issuer: usize) -> Result<Arc<Identity>, Refused> {
        let Some(v) = &self.jwt else { return Err(Refused::Unknown) };
        match v.check_after_refresh(token, &digest(token.as_bytes()), issuer).await {
            jwt::Checked::Valid(identity) => Ok(identity),
            jwt::Checked::Refused(r) => Err(Refused::Jwt(r)),
            jwt::Checked::UnknownKey { .. } => unreachable!("check_after_refresh settles unknown keys"),
        }
    }

    fn static_bearer(&self, d: &[u8; 32]) -> Option<Arc<Identity>> {
        let entries = self.entries.load();
        let mut found: Option<&Entry> = None;
        // No early exit: every entry is compared.
        for e in entries.iter() {
            if ct_eq(d, &e.digest) && found.is_none() {
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
        let watcher = crate::watch::watch_file("sluice-bearer-reloader", &path, "Bearer file", Arc::downgrade(self), Self::reload)?;
        Ok(Some(watcher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str, clusters: &[&str]) -> AclEntry {
        AclEntry::token(name, token, clusters)
    }

    #[test]
    fn matches_tokens_and_digests_and_never_the_empty_token() {
        let hashed = hex::encode(Sha256::digest(b"t2"));
        let store = AuthStore::new(
            AuthSource::Static(vec![
                entry("one", "t1", &["a"]),
                AclEntry { token: None, token_sha256: Some(hashed), ..entry("two", "", &[]) },
                entry("empty", "", &[]),
            ]),
            DEFAULT_ROTATION_GRACE,
            AuditLog::memory().0,
        )
        .unwrap();
        assert_eq!(store.authenticate("t1").unwrap().key_name, "one");
        assert!(store.authenticate("t1").unwrap().is_scoped());
        assert_eq!(store.authenticate("t2").unwrap().key_name, "two");
        assert_eq!(store.authenticate("").err(), Some(Refused::Unknown));
        assert_eq!(store.authenticate("t3").err(), Some(Refused::Unknown));
        assert_eq!(store.authenticate("t1 ").err(), Some(Refused::Unknown));
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

    #[test]
    fn acl_entries_without_tools_or_admin_keep_their_meaning() {
        let dir = crate::db::tempdir::Dir::new();
        let acl = dir.path().join("acl.yaml");
        std::fs::write(
            &acl,
            "- {key_name: ops, token: a}\n- {key_name: tenant, token: b, allowed_clusters: [c1]}\n\
             - {key_name: reader, token: c, allowed_tools: ['fleet.cluster.*'], admin: false}\n",
        )
        .unwrap();
        let s = AuthStore::new(AuthSource::AclFile(acl.clone()), DEFAULT_ROTATION_GRACE, AuditLog::memory().0).unwrap();
        let (ops, tenant, reader) = (s.authenticate("a").unwrap(), s.authenticate("b").unwrap(), s.authenticate("c").unwrap());
        // Unscoped without the new fields: the operator, as before (every tool, admin routes).
        assert!(ops.is_admin() && ops.grants.may_call("anything.at_all") && ops.cluster_scope().is_none());
        // Scoped: every tool, no admin routes, its clusters.
        assert!(!tenant.is_admin() && tenant.grants.may_call("fleet.cluster.summary"));
        assert_eq!(tenant.cluster_scope(), Some(&["c1".to_owned()][..]));
        // Tightened: only its tools, no admin routes although it sees every cluster.
        assert!(!reader.is_admin() && reader.grants.may_call("fleet.cluster.summary") && !reader.grants.may_call("test.trivial"));
        for (bad, says) in [
            ("- {key_name: x, token: a, allowed_clusters: [c1], admin: true}\n", "admin needs every cluster"),
            ("- {key_name: x, token: a, allowed_tools: ['Fleet!']}\n", "is not a tool pattern"),
        ] {
            std::fs::write(&acl, bad).unwrap();
            let err = AuthStore::new(AuthSource::AclFile(acl.clone()), DEFAULT_ROTATION_GRACE, AuditLog::memory().0).err().unwrap();
            assert!(format!("{err:#}").contains(says), "{err:#}");
        }
    }
}
