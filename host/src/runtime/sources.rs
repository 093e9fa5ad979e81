//! Tool components from OCI registries (`[plugins.oci."<name>"]`): each reference is resolved to
//! a digest, the component pulled (checked against its digests) into the cache with the
//! signatures found for it, and the reference polled for a new digest. A registry that cannot be
//! reached changes nothing: what was pulled keeps serving, also across a restart (the last
//! resolution of each reference is recorded in the cache).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::OciSource;
use crate::oci::{Access, CosignSignature, OciRef, Registry};

/// What was pulled for one source, as recorded in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pulled {
    /// The reference as configured.
    pub reference: String,
    /// `registry/repository`.
    pub repository: String,
    /// The manifest digest the reference resolved to.
    pub manifest_digest: String,
    /// The component in the cache.
    pub path: PathBuf,
    /// cosign signatures found for the manifest digest.
    pub signatures: Vec<CosignSignature>,
}

/// One source's state.
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// What was pulled last (serving, or refused by the reload).
    pub pulled: Option<Pulled>,
    /// The last failed poll's error, cleared by a successful one.
    pub error: Option<String>,
}

/// Every registry source.
pub struct OciSources {
    sources: BTreeMap<String, OciSource>,
    dir: PathBuf,
    state: Mutex<BTreeMap<String, SourceState>>,
}

impl OciSources {
    /// The configured sources, with what the cache recorded for each (pulled by an earlier run).
    pub fn new(sources: BTreeMap<String, OciSource>, cache_dir: &Path) -> Self {
        let dir = cache_dir.join("oci");
        let mut state = BTreeMap::new();
        for (name, source) in &sources {
            let pulled = std::fs::read(record_path(&dir, &source.reference))
                .ok()
                .and_then(|b| serde_json::from_slice::<Pulled>(&b).ok())
                .filter(|p| p.reference == source.reference && p.path.is_file());
            state.insert(name.clone(), SourceState { pulled, error: None });
        }
        Self { sources, dir, state: Mutex::new(state) }
    }

    /// The sources' names and poll intervals.
    pub fn schedule(&self) -> Vec<(String, std::time::Duration)> {
        self.sources.iter().map(|(n, s)| (n.clone(), s.poll_interval.0)).collect()
    }

    /// Whether any source is configured.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Each source's state, by name.
    pub fn states(&self) -> BTreeMap<String, SourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The source's configuration.
    pub fn config(&self, name: &str) -> Option<&OciSource> {
        self.sources.get(name)
    }

    /// Resolves the source's reference and pulls what it names when that changed (or its
    /// signatures did). `Ok(true)`: something new to load. A failure is recorded and changes
    /// nothing else.
    pub async fn poll(&self, name: &str) -> anyhow::Result<bool> {
        let result = self.poll_inner(name).await;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state.entry(name.to_owned()).or_default();
        match &result {
            Ok(_) => entry.error = None,
            Err(e) => entry.error = Some(format!("{e:#}")),
        }
        result
    }

    async fn poll_inner(&self, name: &str) -> anyhow::Result<bool> {
        let source = self.sources.get(name).ok_or_else(|| anyhow::anyhow!("no registry source {name:?}"))?;
        let reference = OciRef::parse(&source.reference)?;
        let registry = Registry::new(&reference, &access(name, source)?)?;
        let digest = registry.resolve(&reference).await?;
        let current = self.state.lock().unwrap_or_else(|p| p.into_inner()).get(name).and_then(|s| s.pulled.clone());
        let pulled = match current.filter(|c| c.manifest_digest == digest) {
            Some(mut same) => {
                // The same component; a signature may have been added since.
                let signatures = registry.signatures(&reference, &digest).await?;
                if signatures == same.signatures {
                    return Ok(false);
                }
                same.signatures = signatures;
                same
            }
            None => {
                let p = registry.pull(&reference, Some(&digest)).await?;
                let path = self.dir.join("blobs").join(format!("{}.wasm", p.layer_digest.trim_start_matches("sha256:")));
                if !path.is_file() {
                    crate::oci::write_atomic(&path, &p.bytes)?;
                }
                tracing::info!(source = %name, reference = %reference, digest = %p.manifest_digest, "Pulled a component from the registry.");
                Pulled {
                    reference: source.reference.clone(),
                    repository: reference.repository(),
                    manifest_digest: p.manifest_digest,
                    path,
                    signatures: p.signatures,
                }
            }
        };
        crate::oci::write_atomic(&record_path(&self.dir, &source.reference), &serde_json::to_vec_pretty(&pulled)?)?;
        self.state.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_default().pulled = Some(pulled);
        Ok(true)
    }
}

/// The registry credentials and CA of a source.
fn access(name: &str, source: &OciSource) -> anyhow::Result<Access> {
    let basic = match (&source.username, &source.password) {
        (Some(u), Some(p)) => Some((
            crate::secret::resolve(&format!("plugins.oci.\"{name}\".username"), u)?,
            crate::secret::resolve(&format!("plugins.oci.\"{name}\".password"), p)?,
        )),
        _ => None,
    };
    Ok(Access { basic, ca_file: source.ca_file.clone(), timeout: None })
}

fn record_path(dir: &Path, reference: &str) -> PathBuf {
    dir.join("refs").join(format!("{}.json", &crate::oci::sha256(reference.as_bytes())[7..23]))
}
