//! JWT bearers from an organisation's identity provider (`[auth.jwt]`), next to the static ones.
//!
//! A token is routed to its issuer by its (unverified) `iss`, then verified with that issuer's
//! keys: the header's `alg` must be on the issuer's allow-list (RS256, ES256, EdDSA by default;
//! `none` and HMAC are never accepted, so a token "signed" with a public key as an HMAC secret
//! goes nowhere), the key is found by `kid` in the issuer's JWKS, and `iss`, `aud`, `exp` and
//! `nbf` are checked with a small leeway. Keys come from a JWKS URL (fetched at start, on a
//! schedule, and when a token names an unknown `kid`, at most once per `min_refresh_interval`) or
//! a JWKS file (watched). A refresh that fails keeps the keys in hand and says so in a metric.
//!
//! A verified token is cached by its SHA-256 until it expires (or its issuer's keys change), so a
//! client that sends the same token again pays one hash and one map lookup, as a static bearer
//! does. Signature code is the `jsonwebtoken` crate's (RustCrypto), none of it ours.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::grant::{self, Grants};
use super::{Identity, TokenInfo};
use crate::metrics::Metrics;
use config::parse_algorithm;

mod config;
pub use config::{IssuerConfig, JwtConfig};
pub(crate) use config::check_url;

/// Why a JWT was refused: `reason` is a stable label (audit lines, metrics), `detail` says more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal { reason, detail: detail.into() }
}

/// The outcome of checking a token against the keys in hand.
pub enum Checked {
    Valid(Arc<Identity>),
    Refused(Refusal),
    /// Signed with a key this issuer's JWKS does not list (yet): fetch it again, then retry.
    UnknownKey { issuer: usize },
}

struct Key {
    decoding: DecodingKey,
    /// The JWK's own `alg`, when it names one: then only that algorithm may use the key.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (used only when the set has exactly one key).
    anonymous: Vec<Arc<Key>>,
    generation: u64,
}

struct Issuer {
    config: IssuerConfig,
    /// One validation per accepted algorithm (the crate wants every algorithm of a validation
    /// to fit the key).
    validations: Vec<(Algorithm, Validation)>,
    keys: ArcSwap<KeySet>,
    /// `keys.generation`, readable without loading the set (the cached path reads it).
    generation: AtomicU64,
    /// When the last fetch caused by an unknown `kid` started.
    last_on_demand: Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    http: Option<reqwest::Client>,
}

struct Cached {
    identity: Arc<Identity>,
    issuer: usize,
    generation: u64,
    expires: u64,
}

/// The most verified tokens kept; past it the cache starts over (tokens verify again).
const CACHE_CAP: usize = 10_000;

/// Verifies JWT bearers.
pub struct JwtVerifier {
    resource: Option<String>,
    issuers: Vec<Issuer>,
    cache: ArcSwap<HashMap<[u8; 32], Arc<Cached>>>,
    metrics: Metrics,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JwtVerifier {
    /// Reads every JWKS file (one that cannot be read is an error). Key sets behind a URL are
    /// fetched by [`JwtVerifier::spawn_refresh`]: an identity provider that is down at start
    /// leaves static bearers working, and its tokens are refused until its keys arrive.
    pub fn new(config: &JwtConfig, metrics: Metrics) -> anyhow::Result<Arc<Self>> {
        config.check().map_err(anyhow::Error::msg)?;
        let mut issuers = Vec::new();
        for c in &config.issuers {
            let algorithms: Vec<Algorithm> = c.algorithms.iter().map(|a| parse_algorithm(a).expect("checked")).collect();
            let validations = algorithms
                .into_iter()
                .map(|alg| {
                    let mut v = Validation::new(alg);
                    v.leeway = c.leeway.as_secs();
                    v.validate_nbf = true;
                    v.set_audience(&c.audiences);
                    v.set_issuer(&[&c.issuer]);
                    v.set_required_spec_claims(&["exp", "iss", "aud"]);
                    (alg, v)
                })
                .collect();
            let http = match &c.jwks_url {
                Some(_) => Some(http_client(c.ca_file.as_deref())?),
                None => None,
            };
            issuers.push(Issuer {
                config: c.clone(),
                validations,
                keys: ArcSwap::from_pointee(KeySet::default()),
                generation: AtomicU64::new(0),
                last_on_demand: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
                http,
            });
        }
        let v = Arc::new(Self { resource: config.resource.clone(), issuers, cache: ArcSwap::from_pointee(HashMap::new()), metrics });
        for (i, path) in v.files() {
            v.reload_file(i).map_err(|e| anyhow::anyhow!("auth.jwt.issuers[{i}].jwks_file {}: {e:#}", path.display()))?;
        }
        Ok(v)
    }

    /// `auth.jwt.resource`: this gateway's URL as clients know it, when configured.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    /// The configured issuers (the protected-resource metadata's authorization servers).
    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.config.issuer.as_str())
    }

    /// Whether `token` looks like a JWS in compact form (three base64url parts).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
            && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    }

    /// The caller of a token verified before (by its SHA-256), while it has not expired and its
    /// issuer's keys have not changed.
    pub fn cached(&self, digest: &[u8; 32]) -> Option<Arc<Identity>> {
        let cache = self.cache.load();
        let c = cache.get(digest)?;
        let issuer = &self.issuers[c.issuer];
        let fresh = issuer.generation.load(Ordering::Acquire) == c.generation;
        (fresh && now_secs() <= c.expires.saturating_add(issuer.config.leeway.as_secs())).then(|| c.identity.clone())
    }

    /// Checks `token` (whose SHA-256 is `digest`) with the keys in hand.
    pub fn check(&self, token: &str, digest: &[u8; 32]) -> Checked {
        if let Some(identity) = self.cached(digest) {
            return Checked::Valid(identity);
        }
        let now = now_secs();
        let (header_alg, kid) = match header(token) {
            Ok(h) => h,
            Err(r) => return Checked::Refused(r),
        };
        let iss = match unverified_issuer(token) {
            Ok(i) => i,
            Err(r) => return Checked::Refused(r),
        };
        let Some(index) = self.issuers.iter().position(|i| i.config.issuer == iss) else {
            return Checked::Refused(refuse("wrong_issuer", format!("issuer {iss:?} is not trusted here")));
        };
        let issuer = &self.issuers[index];
        let accepted = header_alg.parse::<Algorithm>().ok().and_then(|a| issuer.validations.iter().find(|(x, _)| *x == a));
        let (alg, validation) = match accepted {
            Some((a, v)) => (*a, v),
            None => return Checked::Refused(refuse("algorithm_refused", format!("algorithm {header_alg:?} is not accepted for this issuer"))),
        };
        let keys = issuer.keys.load();
        let key = match &kid {
            Some(k) => keys.by_kid.get(k).cloned(),
            None if keys.by_kid.len() + keys.anonymous.len() == 1 => keys.by_kid.values().chain(&keys.anonymous).next().cloned(),
            None => None,
        };
        let Some(key) = key else { return Checked::UnknownKey { issuer: index } };
        if key.alg.is_some_and(|a| a != alg) {
            return Checked::Refused(refuse("algorithm_refused", format!("key {kid:?} is not for {header_alg}")));
        }
        match jsonwebtoken::decode::<Value>(token, &key.decoding, validation) {
            Ok(data) => {
                let identity = Arc::new(identity(&issuer.config, &data.claims, digest));
                let expires = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
                self.remember(*digest, Cached { identity: identity.clone(), issuer: index, generation: keys.generation, expires });
                Checked::Valid(identity)
            }
            Err(e) => Checked::Refused(classify(e.into_kind())),
        }
    }

    /// What to say after a fetch for an unknown `kid` (or when none was allowed yet).
    pub async fn check_after_refresh(&self, token: &str, digest: &[u8; 32], issuer: usize) -> Checked {
        let due = {
            let mut last = self.issuers[issuer].last_on_demand.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.issuers[issuer].config.min_refresh_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = self.refresh(issuer).await {
                tracing::warn!(issuer = %self.issuers[issuer].config.issuer, error = %e, "JWKS refresh failed; the keys in hand stay.");
            }
        }
        match self.check(token, digest) {
            Checked::UnknownKey { .. } => {
                Checked::Refused(refuse("unknown_key", "the token's signing key is not in its issuer's key set"))
            }
            other => other,
        }
    }

    /// Fetches (or reads) issuer `i`'s JWKS and swaps it in when it has usable keys.
    pub async fn refresh(&self, i: usize) -> anyhow::Result<()> {
        let issuer = &self.issuers[i];
        let _one = issuer.fetching.lock().await;
        let result = match (&issuer.config.jwks_url, &issuer.http) {
            (Some(url), Some(http)) => async {
                let resp = http.get(url).send().await?.error_for_status()?;
                parse_jwks(&resp.text().await?)
            }
            .await,
            _ => return self.reload_file(i),
        };
        self.install(i, result)
    }

    /// Reads issuer `i`'s JWKS file again (after a change).
    pub fn reload_file(&self, i: usize) -> anyhow::Result<()> {
        let Some(path) = &self.issuers[i].config.jwks_file else { return Ok(()) };
        let result = std::fs::read_to_string(path).map_err(anyhow::Error::from).and_then(|t| parse_jwks(&t));
        self.install(i, result)
    }

    fn install(&self, i: usize, result: anyhow::Result<KeySet>) -> anyhow::Result<()> {
        let issuer = &self.issuers[i];
        let name = &issuer.config.issuer;
        match result {
            Ok(mut set) => {
                let old = issuer.keys.load();
                set.generation = old.generation + u64::from(!same_kids(&old, &set));
                let generation = set.generation;
                issuer.keys.store(Arc::new(set));
                issuer.generation.store(generation, Ordering::Release);
                self.metrics.jwks_refresh(name, true);
                Ok(())
            }
            Err(e) => {
                self.metrics.jwks_refresh(name, false);
                Err(e)
            }
        }
    }

    /// Fetches each URL issuer's keys now, then on its schedule, until the verifier is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        for (i, issuer) in self.issuers.iter().enumerate() {
            if issuer.config.jwks_url.is_none() {
                continue;
            }
            let every = issuer.config.refresh_interval;
            let weak = Arc::downgrade(self);
            handle.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(v) = weak.upgrade() else { return };
                    if let Err(e) = v.refresh(i).await {
                        tracing::warn!(issuer = %v.issuers[i].config.issuer, error = %e, "Scheduled JWKS refresh failed; the keys in hand stay.");
                    }
                }
            });
        }
    }

    /// Watches every JWKS file and reads it again when it changes (a file that fails to parse
    /// keeps the keys in hand), until the watchers are dropped.
    pub fn watch_files(self: &Arc<Self>) -> anyhow::Result<Vec<notify::RecommendedWatcher>> {
        let mut out = Vec::new();
        for (i, path) in self.files() {
            let reload = move |v: &Self| v.reload_file(i);
            out.push(crate::watch::watch_file("sluice-jwks-reloader", &path, "JWKS file", Arc::downgrade(self), reload)?);
        }
        Ok(out)
    }

    /// The JWKS files to watch, with the index of their issuer.
    pub fn files(&self) -> Vec<(usize, PathBuf)> {
        self.issuers.iter().enumerate().filter_map(|(i, c)| c.config.jwks_file.clone().map(|p| (i, p))).collect()
    }

    fn remember(&self, digest: [u8; 32], entry: Cached) {
        let entry = Arc::new(entry);
        self.cache.rcu(|m| {
            let mut m = if m.len() >= CACHE_CAP { HashMap::new() } else { HashMap::clone(m) };
            m.insert(digest, entry.clone());
            m
        });
    }
}

fn same_kids(a: &KeySet, b: &KeySet) -> bool {
    a.anonymous.len() == b.anonymous.len()
        && a.by_kid.len() == b.by_kid.len()
        && a.by_kid.keys().all(|k| b.by_kid.contains_key(k))
        && a.anonymous.is_empty()
}

/// The usable public keys of a JWKS document; symmetric (`oct`) and unknown keys are left out.
fn parse_jwks(text: &str) -> anyhow::Result<KeySet> {
    let doc: Value = serde_json::from_str(text)?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or_else(|| anyhow::anyhow!("not a JWKS: no \"keys\" array"))?;
    let mut set = KeySet::default();
    for k in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else { continue };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        if jwk.common.public_key_use.as_ref().is_some_and(|u| !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature)) {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else { continue };
        let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let key = Arc::new(Key { decoding, alg });
        match jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
            None => set.anonymous.push(key),
        }
    }
    anyhow::ensure!(!set.by_kid.is_empty() || !set.anonymous.is_empty(), "the JWKS has no usable signature key");
    Ok(set)
}

fn b64_json(part: &str) -> Option<Value> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The header's `alg` and `kid`, read before anything is trusted.
fn header(token: &str) -> Result<(String, Option<String>), Refusal> {
    let h = token.split('.').next().and_then(b64_json).ok_or_else(|| refuse("malformed", "the token's header is not base64url JSON"))?;
    let alg = h.get("alg").and_then(Value::as_str).ok_or_else(|| refuse("malformed", "the token's header has no alg"))?;
    Ok((alg.to_owned(), h.get("kid").and_then(Value::as_str).map(str::to_owned)))
}

/// The payload's `iss`, to find the issuer whose keys verify it.
fn unverified_issuer(token: &str) -> Result<String, Refusal> {
    let p = token.split('.').nth(1).and_then(b64_json).ok_or_else(|| refuse("malformed", "the token's payload is not base64url JSON"))?;
    p.get("iss").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| refuse("wrong_issuer", "the token has no iss"))
}

fn classify(kind: jsonwebtoken::errors::ErrorKind) -> Refusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => refuse("expired", "the token has expired"),
        K::ImmatureSignature => refuse("not_yet_valid", "the token is not valid yet (nbf)"),
        K::InvalidAudience => refuse("wrong_audience", "the token is not for this audience"),
        K::InvalidIssuer => refuse("wrong_issuer", "the token's issuer is not trusted here"),
        K::InvalidSignature => refuse("bad_signature", "the token's signature does not verify"),
        K::InvalidAlgorithm => refuse("algorithm_refused", "the token's algorithm does not fit its key"),
        K::MissingRequiredClaim(c) => refuse("missing_claim", format!("the token has no {c}")),
        K::InvalidClaimFormat(c) => refuse("malformed", format!("the token's {c} is ill-formed")),
        other => refuse("malformed", format!("the token could not be verified: {other:?}")),
    }
}

/// Strings from a claim that is an array of strings or one string split at spaces and commas.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The caller a verified token stands for.
fn identity(c: &IssuerConfig, claims: &Value, digest: &[u8; 32]) -> Identity {
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let scopes = strings(claims.get(&c.scope_claim));
    let mut clusters = strings(claims.get(&c.clusters_claim));
    let mut all_clusters = clusters.iter().any(|x| x == "*");
    for s in &scopes {
        match s.strip_prefix(grant::CLUSTER_SCOPE_PREFIX) {
            Some("*") => all_clusters = true,
            Some(id) if !id.is_empty() => clusters.push(id.to_owned()),
            _ => {}
        }
    }
    clusters.retain(|x| x != "*");
    clusters.sort();
    clusters.dedup();
    let tools: Vec<String> =
        scopes.iter().filter_map(|s| s.strip_prefix(grant::TOOL_SCOPE_PREFIX)).filter(|p| grant::check_pattern(p).is_ok()).map(str::to_owned).collect();
    let subject = text("sub").unwrap_or_default();
    Identity {
        bearer_hash: hex::encode(digest),
        key_name: text(&c.key_name_claim).unwrap_or_else(|| subject.clone()),
        allowed_clusters: if all_clusters { Vec::new() } else { clusters },
        all_clusters,
        grants: Grants { tools: Some(tools), admin: scopes.iter().any(|s| s == grant::ADMIN_SCOPE) },
        token: Some(TokenInfo { issuer: c.issuer.clone(), subject, jti: text("jti") }),
    }
}

/// An HTTP client for JWKS: the public web roots, plus `ca_file`'s certificates.
pub(crate) fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let tls = crate::tls::client_config(ca_file)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}
