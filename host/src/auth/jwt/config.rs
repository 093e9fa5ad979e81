//! `[auth.jwt]`: the issuers whose tokens are bearers, and how their claims map to a caller.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// `[auth.jwt]`: issuers whose tokens are bearers, and what the protected-resource metadata says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// This gateway's resource identifier (RFC 9728 `resource`), e.g. `https://sluice.example.com`.
    /// Absent: the scheme and `Host` of the request asking for the metadata.
    pub resource: Option<String>,
    /// `[[auth.jwt.issuers]]`
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens (also the authorization server named in the metadata).
    pub issuer: String,
    /// Accepted `aud` values: a token must name one of them.
    pub audiences: Vec<String>,
    /// Where its JWKS is served: https, or plain http to a loopback address only.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Or a JWKS file, watched for changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM certificates to trust for `jwks_url` besides the public web roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "human")]
    pub leeway: Duration,
    /// How often `jwks_url` is fetched again.
    #[serde(default = "default_refresh", deserialize_with = "human")]
    pub refresh_interval: Duration,
    /// The least time between two fetches caused by tokens naming an unknown `kid`.
    #[serde(default = "default_min_refresh", deserialize_with = "human")]
    pub min_refresh_interval: Duration,
    /// The claim naming the caller in audit lines (`bearer_key_name`).
    #[serde(default = "default_key_name_claim")]
    pub key_name_claim: String,
    /// The claim listing the caller's clusters: an array of strings or one space- or
    /// comma-separated string; `*` means every cluster. Missing: no cluster.
    #[serde(default = "default_clusters_claim")]
    pub clusters_claim: String,
    /// The claim holding the caller's scopes (a space-separated string or an array).
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_refresh() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_key_name_claim() -> String {
    "sub".into()
}
fn default_clusters_claim() -> String {
    "sluice_clusters".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}

fn human<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

impl JwtConfig {
    /// Refuses what cannot work or would be unsafe, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.issuers.iter().enumerate() {
            let at = format!("auth.jwt.issuers[{i}]");
            if c.issuer.trim().is_empty() {
                return Err(format!("{at}.issuer must not be empty"));
            }
            if !seen.insert(c.issuer.as_str()) {
                return Err(format!("{at}.issuer: {:?} is listed twice", c.issuer));
            }
            if c.audiences.is_empty() || c.audiences.iter().any(|a| a.trim().is_empty()) {
                return Err(format!("{at}.audiences: name at least one audience (the value of `aud` tokens for Sluice carry)"));
            }
            match (&c.jwks_url, &c.jwks_file) {
                (Some(u), None) => check_url(u).map_err(|e| format!("{at}.jwks_url: {e}"))?,
                (None, Some(_)) => {}
                _ => return Err(format!("{at}: give exactly one of jwks_url and jwks_file")),
            }
            if c.algorithms.is_empty() {
                return Err(format!("{at}.algorithms must not be empty"));
            }
            for a in &c.algorithms {
                parse_algorithm(a).map_err(|e| format!("{at}.algorithms: {e}"))?;
            }
            if c.min_refresh_interval.is_zero() || c.refresh_interval < c.min_refresh_interval {
                return Err(format!("{at}: refresh_interval must be at least min_refresh_interval, which must be more than 0s"));
            }
        }
        if let Some(r) = &self.resource {
            if !(r.starts_with("https://") || r.starts_with("http://")) {
                return Err(format!("auth.jwt.resource must be an http(s) URL, not {r:?}"));
            }
        }
        Ok(())
    }
}

/// An asymmetric algorithm; `none` and HMAC are refused whatever the configuration says.
pub(super) fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name.parse().map_err(|_| format!("unknown algorithm {name:?}"))?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Err(format!("{name} (HMAC) is never accepted: a shared secret is not an identity provider's key"))
        }
        a => Ok(a),
    }
}

/// https, or http to a loopback address.
pub(crate) fn check_url(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("{u:?}: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback { Ok(()) } else { Err(format!("{u:?}: plain http only to a loopback address; use https")) }
        }
        s => Err(format!("{u:?}: scheme {s} is not http(s)")),
    }
}

