//! Where components come from and whom to trust: `[plugins.oci."<name>"]` registry sources,
//! `[[plugins.trust]]` signing keys, and a tool's `[plugins.tools."<name>".rollout]` policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::HumanDuration;

/// `[plugins.oci."<name>"]`: a tool component pulled from an OCI registry. `<name>` is how the
/// plugin list names it (like a file name for a component in the plugins directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// `oci://registry/repository:tag` (polled for a new digest) or `…@sha256:<hex>` (fixed).
    pub reference: String,
    /// How often a tag is resolved again.
    #[serde(default = "default_poll")]
    pub poll_interval: HumanDuration,
    /// Refuse the component unless a key of `[[plugins.trust]]` allowed for its repository (and
    /// the tool's name) signed it. On by default for registry sources.
    #[serde(default = "yes")]
    pub require_signature: bool,
    /// User name for the registry (HTTP Basic, or the token flow it leads to): `env:`/`file:`.
    pub username: Option<String>,
    /// Password or token for the registry: `env:NAME` or `file:/path`.
    pub password: Option<String>,
    /// PEM certificates to trust for the registry, besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// `tool` (served like a file of the plugins directory) or `sink` (named by a `[[sink]]` as
    /// `component = "oci:<name>"`).
    #[serde(default)]
    pub kind: SourceKind,
}

/// What a registry source provides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Tool,
    Sink,
}

fn default_poll() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn yes() -> bool {
    true
}

/// `[[plugins.trust]]`: a public key allowed to sign components.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustKey {
    /// The PEM public key (ECDSA P-256, `BEGIN PUBLIC KEY`, like cosign's `cosign.pub`), as
    /// `file:/path` or `env:NAME`.
    pub key: String,
    /// Tool names it may sign: exact names or prefixes ending in `*` (`fleet.*`). Default: any.
    #[serde(default = "any")]
    pub tools: Vec<String>,
    /// OCI repositories (`registry/repository`) it may sign for, with the same patterns. Files
    /// from the plugins directory are not in a repository; this does not limit them. Default: any.
    #[serde(default = "any")]
    pub repositories: Vec<String>,
}

fn any() -> Vec<String> {
    vec!["*".into()]
}

/// `[plugins.tools."<name>".rollout]`: how a new version of the tool takes over from the one
/// serving. Without it a new version takes all calls as soon as it loads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Share of calls (0–1) the new version serves while it is a canary.
    pub canary_share: f64,
    /// Promote after the canary served this many calls under the failure limit…
    #[serde(default = "default_promote_calls")]
    pub promote_after_calls: u64,
    /// …or after this long under it, whichever comes first.
    #[serde(default = "default_promote_after")]
    pub promote_after: HumanDuration,
    /// Roll back when the canary's failed calls (traps, memory limit, deadline, tool errors
    /// other than invalid arguments) reach this number.
    #[serde(default = "default_max_failures")]
    pub max_failures: u64,
}

fn default_promote_calls() -> u64 {
    100
}

fn default_promote_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_max_failures() -> u64 {
    3
}

impl Rollout {
    /// Checks the values.
    pub fn validate(&self, tool: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.canary_share > 0.0 && self.canary_share < 1.0,
            "plugins.tools.\"{tool}\".rollout.canary_share must be between 0 and 1 (exclusive), got {}",
            self.canary_share
        );
        anyhow::ensure!(self.max_failures >= 1, "plugins.tools.\"{tool}\".rollout.max_failures must be at least 1");
        anyhow::ensure!(self.promote_after_calls >= 1, "plugins.tools.\"{tool}\".rollout.promote_after_calls must be at least 1");
        Ok(())
    }
}

impl super::PluginsConfig {
    /// Checks the registry sources, trust keys and rollout policies.
    pub(super) fn validate_supply(&self) -> anyhow::Result<()> {
        for (name, source) in &self.oci {
            anyhow::ensure!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "plugins.oci.\"{name}\": names are letters, digits, '-', '_' and '.'"
            );
            crate::oci::OciRef::parse(&source.reference).map_err(|e| anyhow::anyhow!("plugins.oci.\"{name}\".reference: {e}"))?;
            anyhow::ensure!(
                source.poll_interval.0 >= Duration::from_secs(1),
                "plugins.oci.\"{name}\".poll_interval must be at least 1s"
            );
            anyhow::ensure!(
                source.username.is_some() == source.password.is_some(),
                "plugins.oci.\"{name}\": give both username and password, or neither"
            );
            for s in [&source.username, &source.password].into_iter().flatten() {
                anyhow::ensure!(crate::secret::is_reference(s), "plugins.oci.\"{name}\": credentials must be \"env:NAME\" or \"file:/path\"");
            }
            anyhow::ensure!(
                !source.require_signature || !self.trust.is_empty(),
                "plugins.oci.\"{name}\" requires a signature but no [[plugins.trust]] key is configured \
                 (add one, or set require_signature = false to load unsigned components from this registry)"
            );
        }
        anyhow::ensure!(
            !self.require_signature || !self.trust.is_empty(),
            "plugins.require_signature is on but no [[plugins.trust]] key is configured"
        );
        for (i, key) in self.trust.iter().enumerate() {
            anyhow::ensure!(crate::secret::is_reference(&key.key), "plugins.trust[{i}].key must be \"file:/path\" or \"env:NAME\" holding a PEM public key");
        }
        for (tool, o) in &self.tools {
            if let Some(r) = &o.rollout {
                r.validate(tool)?;
            }
            if let Some(a) = &o.smoke_args {
                anyhow::ensure!(a.is_object(), "plugins.tools.\"{tool}\".smoke_args must be a table of arguments");
            }
        }
        Ok(())
    }
}

/// Whether `name` matches one of `patterns` (exact, `*`, or a prefix ending in `*`).
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| p.strip_suffix('*').map_or(p == name, |prefix| name.starts_with(prefix)))
}

#[cfg(test)]
mod tests {
    use super::matches_any;

    #[test]
    fn patterns() {
        let p = vec!["fleet.*".to_owned(), "ops.one".to_owned()];
        assert!(matches_any(&p, "fleet.cluster.summary") && matches_any(&p, "ops.one"));
        assert!(!matches_any(&p, "ops.two") && !matches_any(&p, "fleetx"));
        assert!(matches_any(&["*".to_owned()], "anything"));
    }
}
