//! The tool registry: an immutable snapshot of every loaded tool, published through `ArcSwap`.
//!
//! A request `load()`s the current snapshot and keeps its `Arc<LoadedTool>` until it is done, so a
//! reload never disturbs a call in flight. A reload builds the next snapshot off the request path
//! (compiling only files whose digest changed) and swaps it in. A file that fails to load keeps
//! its previous version serving and records why in its status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::engine::CacheOutcome;
use super::rollout::{Canary, CanarySlot, RolloutStatus};
use super::tools::{ToolInfo, ToolPre, ToolState};
use super::trust::Evidence;
use super::Runtime;

pub use super::component::{DESCRIBE_DEADLINE, MAX_COMPONENT_BYTES};

/// A tool ready to be called: its compiled, pre-linked component and what it said about itself.
pub struct LoadedTool {
    /// The tool's name, from `describe`.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its version.
    pub version: String,
    /// Input JSON Schema.
    pub input_schema: serde_json::Value,
    /// Output JSON Schema.
    pub output_schema: serde_json::Value,
    /// Whether tenant-scoped bearers may call it.
    pub allow_tenant_scoped: bool,
    /// SHA-256 (hex) of the component file.
    pub digest: String,
    /// The file it came from (for a registry source, the pulled copy in the cache).
    pub path: PathBuf,
    /// The registry reference and manifest digest it was pulled from, if it came from one.
    pub source: Option<String>,
    /// The id of the trusted key that signed it, if a signature was checked.
    pub signed_by: Option<String>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// The call deadline that applies to it.
    pub deadline: Duration,
    /// The memory limit that applies to it.
    pub memory_limit: usize,
    pub(crate) validator: jsonschema::Validator,
    pub(crate) pre: ToolPre<ToolState>,
    /// Its metric series (tool and version), resolved on its first call. Calls of a version
    /// swapped out record into these handles, which no longer show once the series are removed.
    pub(crate) series: std::sync::OnceLock<crate::metrics::PluginSeries>,
    /// The last failed call of this version: when (RFC 3339) and how (the status page).
    pub(crate) last_failure: std::sync::Mutex<Option<(String, String)>>,
}

impl LoadedTool {
    /// When and how the last call of this version failed, if one did.
    pub fn last_failure(&self) -> Option<(String, String)> {
        self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls and failures of this version in the last few minutes (none before its first call).
    pub fn recent_calls(&self) -> (u64, u64) {
        self.series.get().map_or((0, 0), crate::metrics::PluginSeries::recent)
    }

    /// Checks `args` against the input schema: the first failure's JSON pointer and message.
    pub fn validate_args(&self, args: &serde_json::Value) -> Option<(String, String)> {
        self.validator.iter_errors(args).next().map(|e| (e.instance_path().to_string(), e.to_string()))
    }
}

impl std::fmt::Debug for LoadedTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTool")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// One plugin file's state, as `GET /api/v2/admin/plugins` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginStatus {
    /// File name inside the plugins directory.
    pub file: String,
    /// The tool name it serves (from the serving version), if any.
    pub name: Option<String>,
    /// Serving version.
    pub version: Option<String>,
    /// SHA-256 of the serving version.
    pub digest: Option<String>,
    /// When the serving version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// `loaded` (the file's current content serves) or `failed` (it was refused; the previous
    /// version, if any, keeps serving).
    pub status: &'static str,
    /// Why the latest content was refused.
    pub last_error: Option<String>,
    /// SHA-256 of the refused content.
    pub rejected_digest: Option<String>,
    /// Why the trust policy refused it (`unsigned`, `bad_signature`, `key_not_allowed`), or
    /// `rolled_back` when its rollout rolled it back.
    pub refusal: Option<&'static str>,
    /// For a registry source: the reference and the digest it resolved to.
    pub source: Option<String>,
    /// The trusted key that signed the serving version.
    pub signed_by: Option<String>,
    /// The tool's rollout, while a new version is a canary (or just decided).
    pub rollout: Option<RolloutStatus>,
}

#[derive(Clone)]
pub(super) struct FileEntry {
    pub(super) serving: Option<Arc<LoadedTool>>,
    pub(super) attempted_digest: String,
    /// The digest, the signature evidence and the policy the attempt was made with: a change
    /// of any of them is tried again.
    pub(super) attempted: String,
    pub(super) error: Option<String>,
    pub(super) refusal: Option<&'static str>,
    pub(super) canary: Option<Arc<Canary>>,
}

impl FileEntry {
    pub(super) fn failed(error: String) -> Self {
        Self { serving: None, attempted_digest: String::new(), attempted: String::new(), error: Some(error), refusal: None, canary: None }
    }
}

/// A component to load: from the plugins directory or pulled from a registry.
pub(super) struct Candidate {
    /// How the plugin list names it (`file.wasm`, or `oci:<name>`).
    pub(super) file: String,
    pub(super) path: PathBuf,
    pub(super) evidence: Evidence,
    pub(super) require_signature: bool,
    /// `reference@digest` for a registry source.
    pub(super) source: Option<String>,
}

/// An immutable snapshot of the loaded tools.
#[derive(Default)]
pub struct Registry {
    /// Increases with every reload that changed something.
    pub generation: u64,
    pub(super) tools: BTreeMap<String, Arc<LoadedTool>>,
    pub(super) files: BTreeMap<String, FileEntry>,
    /// Canaries by tool name.
    pub(super) canaries: BTreeMap<String, Arc<Canary>>,
}

impl Registry {
    /// The tool with this name: the version serving (not a canary).
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedTool>> {
        self.tools.get(name)
    }

    /// The version a call of `name` goes to: with a canary running, the canary for its share
    /// of calls and the serving version for the rest.
    /// Keep the slot until the call ends.
    pub fn pick(&self, name: &str) -> Option<(Arc<LoadedTool>, Option<CanarySlot>)> {
        match self.canaries.get(name) {
            Some(c) => Some(c.pick()),
            None => self.tools.get(name).map(|t| (t.clone(), None)),
        }
    }

    /// Every canary running (or just decided).
    pub fn canaries(&self) -> impl Iterator<Item = &Arc<Canary>> {
        self.canaries.values()
    }

    /// The canary of `name`, if one is running or was just decided.
    pub fn canary(&self, name: &str) -> Option<&Arc<Canary>> {
        self.canaries.get(name)
    }

    /// Every tool, by name.
    pub fn tools(&self) -> impl Iterator<Item = &Arc<LoadedTool>> {
        self.tools.values()
    }

    /// Every plugin file's status.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.files
            .iter()
            .map(|(file, e)| {
                let s = e.serving.as_ref();
                PluginStatus {
                    file: file.clone(),
                    name: s.map(|t| t.name.clone()),
                    version: s.map(|t| t.version.clone()),
                    digest: s.map(|t| t.digest.clone()),
                    loaded_at: s.map(|t| humantime::format_rfc3339_millis(t.loaded_at).to_string()),
                    status: if e.error.is_some() { "failed" } else { "loaded" },
                    last_error: e.error.clone(),
                    rejected_digest: e.error.as_ref().map(|_| e.attempted_digest.clone()),
                    refusal: e.refusal,
                    source: s.and_then(|t| t.source.clone()),
                    signed_by: s.and_then(|t| t.signed_by.clone()),
                    rollout: e.canary.as_ref().map(|c| c.status()),
                }
            })
            .collect()
    }
}

/// What a component imports and exports, by name.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentShape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Registry generation after the reload.
    pub generation: u64,
    /// Files loaded (new or changed) successfully.
    pub loaded: Vec<String>,
    /// Files refused, with the reason.
    pub failed: Vec<(String, String)>,
    /// Files that disappeared.
    pub removed: Vec<String>,
    /// Files served from the compiled-component cache.
    pub cache_hits: usize,
}

/// Whether `name` is a valid tool name: `^[a-z][a-z0-9_.]{1,127}$`.
pub fn is_valid_tool_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=128).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..].iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.')
}

impl Runtime {
    /// Loads one component file outside the registry (the CLI's `plugin call` and `plugin
    /// inspect`): the same checks as a reload, without serving it.
    pub fn load_file(&self, path: &Path) -> anyhow::Result<Arc<LoadedTool>> {
        let bytes = super::component::read(path).map_err(anyhow::Error::msg)?;
        let digest = super::component::digest(&bytes);
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let c = Candidate { file, path: path.to_owned(), evidence: Evidence::File { signature: None }, require_signature: false, source: None };
        self.load_component(&c, &digest, &bytes).map(|(tool, _)| Arc::new(tool))
    }

    /// The names of what a component imports and exports, without linking or running it.
    pub fn component_shape(&self, bytes: &[u8]) -> anyhow::Result<ComponentShape> {
        let digest = super::component::digest(bytes);
        let engine = self.engine.engine();
        let (component, _) = self.cache.load(engine, &digest, bytes)?;
        let ty = component.component_type();
        Ok(ComponentShape {
            imports: ty.imports(engine).map(|(name, _)| name.to_owned()).collect(),
            exports: ty.exports(engine).map(|(name, _)| name.to_owned()).collect(),
        })
    }

    /// Compiles, links and checks one component.
    pub(super) fn load_component(&self, c: &Candidate, digest: &str, bytes: &[u8]) -> anyhow::Result<(LoadedTool, CacheOutcome)> {
        use anyhow::{Context as _, bail};
        let (file, path) = (c.file.as_str(), c.path.as_path());
        if let Some(pin) = self.config.pinned.get(file)
            && !pin.eq_ignore_ascii_case(digest)
        {
            bail!("digest {digest} does not match the pinned digest {pin}; refusing to load it");
        }
        // Before anything of it runs or is compiled.
        let signers = self.trust.check(file, bytes, &c.evidence, c.require_signature)?;
        let (component, outcome) = self.compile(digest, bytes)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::Error::from(e).context("the component imports something the `tool` world does not provide"))?;
        let pre = ToolPre::new(pre)
            .map_err(|e| anyhow::Error::from(e).context("the component does not export the `tool` world (describe, call)"))?;
        let deadline = Instant::now() + DESCRIBE_DEADLINE;
        let state = ToolState::new(None, Arc::from(file), "0000000000000000".into(), self.config.memory_limit.0, deadline);
        let mut store = self.describe_store(state);
        let info: ToolInfo = self.describe(async {
            let t = pre.instantiate_async(&mut store).await?;
            t.call_describe(&mut store).await
        })?;

        if !is_valid_tool_name(&info.name) {
            bail!("describe returned an invalid tool name {:?}: names match ^[a-z][a-z0-9_.]{{1,127}}$", info.name);
        }
        if let Some(s) = &signers {
            s.allow_tool(&info.name)?;
        }
        if info.version.trim().is_empty() || info.description.trim().is_empty() {
            bail!("describe for {} must give a version and a description", info.name);
        }
        let input_schema: serde_json::Value = serde_json::from_str(&info.input_schema)
            .with_context(|| format!("input schema of {} is not JSON", info.name))?;
        if input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            bail!("input schema of {} must describe an object (\"type\": \"object\")", info.name);
        }
        let validator = jsonschema::validator_for(&input_schema)
            .map_err(|e| anyhow::anyhow!("input schema of {} is not a valid JSON Schema: {e}", info.name))?;
        let output_schema: serde_json::Value = serde_json::from_str(&info.output_schema)
            .with_context(|| format!("output schema of {} is not JSON", info.name))?;
        jsonschema::validator_for(&output_schema)
            .map_err(|e| anyhow::anyhow!("output schema of {} is not a valid JSON Schema: {e}", info.name))?;

        let over = self.config.tools.get(&info.name);
        let deadline = over.and_then(|o| o.deadline).map_or(self.config.deadline.0, |d| d.0);
        let memory_limit = over.and_then(|o| o.memory_limit).map_or(self.config.memory_limit.0, |m| m.0);
        Ok((
            LoadedTool {
                name: info.name,
                description: info.description,
                version: info.version,
                input_schema,
                output_schema,
                allow_tenant_scoped: info.allow_tenant_scoped,
                digest: digest.to_owned(),
                path: path.to_owned(),
                source: c.source.clone(),
                signed_by: signers.as_ref().and_then(|s| s.key_id().map(str::to_owned)),
                loaded_at: SystemTime::now(),
                deadline,
                memory_limit,
                validator,
                pre,
                series: std::sync::OnceLock::new(),
                last_failure: std::sync::Mutex::new(None),
            },
            outcome,
        ))
    }
}

/// The tools the registry serves, by name. Names must be unique: the first file (by name) that
/// claims a tool name gets it; a later one is refused and reported.
pub(super) fn claim_names(files: &mut BTreeMap<String, FileEntry>, report: &mut ReloadReport) -> BTreeMap<String, Arc<LoadedTool>> {
    let mut tools: BTreeMap<String, Arc<LoadedTool>> = BTreeMap::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (file, entry) in files.iter_mut() {
        let Some(tool) = entry.serving.clone() else { continue };
        if let Some(first) = owner.get(&tool.name) {
            if entry.canary.is_some() {
                entry.canary = None;
            }
            let e = format!("tool name {:?} is already provided by {first}", tool.name);
            tracing::warn!(file = %file, error = %e, "Plugin refused.");
            report.failed.push((file.clone(), e.clone()));
            entry.serving = None;
            entry.error = Some(e);
            continue;
        }
        owner.insert(tool.name.clone(), file.clone());
        tools.insert(tool.name.clone(), tool);
    }
    tools
}

/// `*.wasm` files directly inside `dir`, sorted by name. Hidden files are skipped (editors and
/// atomic writers use them for temporaries).
pub(super) fn list_components(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "Plugins directory is not readable; no tools are loaded from it.");
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wasm")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && p.is_file()
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::is_valid_tool_name;

    #[test]
    fn tool_names_follow_the_wire_contract() {
        for ok in ["fleet.cluster.summary", "ab", "a_1.b"] {
            assert!(is_valid_tool_name(ok), "{ok}");
        }
        let long = format!("a{}", "b".repeat(128));
        for bad in ["a", "A.b", "1ab", "fleet-cluster", "fleet cluster", "", &long, "ä.b"] {
            assert!(!is_valid_tool_name(bad), "{bad}");
        }
    }
}
