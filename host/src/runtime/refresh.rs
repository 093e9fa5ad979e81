//! Reloading the tool registry: every trigger (file change, SIGHUP, the admin endpoint, a
//! registry source's new digest, a canary's decision) ends here. The next snapshot is built off
//! the request path, compiling only components whose content, signature or policy changed, and
//! swapped in; a component that fails to load keeps its previous version serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::Runtime;
use super::engine::CacheOutcome;
use super::registry::{Candidate, FileEntry, Registry, ReloadReport, claim_names, list_components};
use super::rollout::{Canary, Decision};
use super::trust::{Evidence, Refused};

impl Runtime {
    /// Re-reads the plugins directory and publishes a new snapshot. Unchanged files are kept as
    /// they are; changed and new ones are compiled and checked; a file that fails keeps its
    /// previous version serving. Reloads are serialised.
    pub fn reload(&self) -> ReloadReport {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let current = self.registry.load_full();
        let mut report = ReloadReport::default();
        let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
        let mut settled = BTreeMap::new();
        let mut changed = settle(&current, &mut settled);

        let (candidates, unavailable) = self.candidates();
        for (file, error) in unavailable {
            // A registry source never pulled (its registry unreachable so far).
            if current.files.get(&file).is_none_or(|p| p.error.as_deref() != Some(error.as_str())) {
                changed = true;
                report.failed.push((file.clone(), error.clone()));
            }
            files.insert(file, FileEntry::failed(error));
        }
        for c in candidates {
            let file = c.file.clone();
            let previous = settled.remove(&file).or_else(|| current.files.get(&file).cloned());
            let bytes = match super::component::read(&c.path) {
                Ok(b) => b,
                Err(e) => {
                    // Unreadable right now (e.g. being replaced): keep whatever we had.
                    if let Some(prev) = previous {
                        files.insert(file, prev);
                    } else {
                        report.failed.push((file.clone(), e.clone()));
                        files.insert(file, FileEntry::failed(e));
                        changed = true;
                    }
                    continue;
                }
            };
            let digest = super::component::digest(&bytes);
            let attempted = format!("{digest}/{}/{}", c.evidence.fingerprint(), c.require_signature);
            if let Some(prev) = previous.as_ref().filter(|p| p.attempted == attempted) {
                files.insert(file, prev.clone());
                continue;
            }
            changed = true;
            let entry = self.try_load(&c, &bytes, digest, attempted, previous.as_ref(), &mut report);
            files.insert(file, entry);
        }
        for file in current.files.keys() {
            if !files.contains_key(file) {
                tracing::info!(file = %file, "Plugin file removed; its tool is no longer served.");
                report.removed.push(file.clone());
                changed = true;
            }
        }

        let tools = claim_names(&mut files, &mut report);
        let canaries = files
            .values()
            .filter_map(|e| e.canary.clone())
            .filter(|c| tools.get(&c.stable.name).is_some_and(|t| Arc::ptr_eq(t, &c.stable)))
            .map(|c| (c.tool.name.clone(), c))
            .collect();
        let generation = current.generation + u64::from(changed);
        report.generation = generation;
        if changed {
            // The series of versions no longer served go, so the metrics name only what is loaded.
            let kept = |name: &str, version: &str| {
                tools.get(name).is_some_and(|t| t.version == version)
                    || files.values().any(|e| e.canary.as_ref().is_some_and(|c| c.tool.name == name && c.tool.version == version))
            };
            for old in current.tools.values().chain(current.canaries.values().map(|c| &c.tool)) {
                if !kept(&old.name, &old.version) {
                    self.metrics.forget_plugin_version(&old.name, &old.version);
                }
            }
            self.registry.store(Arc::new(Registry { generation, tools, files, canaries }));
            self.generation.send_replace(generation);
            self.metrics_reloaded(&report);
            tracing::info!(generation, loaded = report.loaded.len(), failed = report.failed.len(), removed = report.removed.len(), elapsed_ms = started.elapsed().as_millis() as u64, "Plugin registry updated.");
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        report
    }

    /// Loads a changed component; on failure the previous version (if any) keeps serving. With
    /// a rollout policy, a new version of a serving tool starts as a canary.
    fn try_load(
        &self,
        c: &Candidate,
        bytes: &[u8],
        digest: String,
        attempted: String,
        previous: Option<&FileEntry>,
        report: &mut ReloadReport,
    ) -> FileEntry {
        let file = &c.file;
        let stable = previous.and_then(|p| p.serving.clone());
        let loaded = self.load_component(c, &digest, bytes).and_then(|(tool, outcome)| {
            let tool = Arc::new(tool);
            if let Err(e) = self.smoke(&tool) {
                // The smoke call's series go with the refused version (unless the serving version
                // shares its version string, and so its series).
                if tool.series.get().is_some() && stable.as_ref().is_none_or(|s| s.name != tool.name || s.version != tool.version) {
                    self.metrics.forget_plugin_version(&tool.name, &tool.version);
                }
                return Err(e);
            }
            Ok((tool, outcome))
        });
        match loaded {
            Ok((tool, outcome)) => {
                if outcome == CacheOutcome::Hit {
                    report.cache_hits += 1;
                }
                tracing::info!(file = %file, plugin = %tool.name, version = %tool.version, digest = %digest, source = tool.source.as_deref().unwrap_or("file"), signed_by = tool.signed_by.as_deref().unwrap_or("-"), cached = (outcome == CacheOutcome::Hit), "Plugin loaded.");
                report.loaded.push(file.clone());
                let policy = self.config.tools.get(&tool.name).and_then(|o| o.rollout.clone());
                let (serving, canary) = match (stable, policy) {
                    (Some(old), Some(policy)) if old.name == tool.name => {
                        tracing::info!(file = %file, plugin = %tool.name, version = %tool.version, share = policy.canary_share, "New version starts as a canary.");
                        self.audit_event(crate::audit::AuditEvent::new("plugin_canary_started").with("file", file.as_str()).with("tool", tool.name.as_str()).with("version", tool.version.as_str()).with("digest", digest.as_str()));
                        (Some(old.clone()), Some(Arc::new(Canary::new(tool, old, policy))))
                    }
                    _ => (Some(tool), None),
                };
                FileEntry { serving, attempted_digest: digest, attempted, error: None, refusal: None, canary }
            }
            Err(e) => {
                let refusal = e.downcast_ref::<Refused>().map(|r| r.reason.as_str());
                let e = format!("{e:#}");
                tracing::warn!(file = %file, digest = %digest, error = %e, "Plugin refused; the previous version (if any) keeps serving.");
                self.refused(file, &digest, refusal.unwrap_or("invalid"), &e, c.source.as_deref().unwrap_or("file"));
                report.failed.push((file.clone(), e.clone()));
                FileEntry { serving: stable, attempted_digest: digest, attempted, error: Some(e), refusal, canary: None }
            }
        }
    }

    /// The smoke call of `[plugins.tools."<name>"] smoke_args`, when configured and the runtime
    /// has a database: the new version must answer it, and its answer must match its output
    /// schema, before it serves any call.
    fn smoke(&self, tool: &Arc<super::LoadedTool>) -> anyhow::Result<()> {
        let Some(args) = self.config.tools.get(&tool.name).and_then(|o| o.smoke_args.as_ref()) else { return Ok(()) };
        let Some(db) = self.db.get() else { return Ok(()) };
        if let Some((path, message)) = tool.validate_args(args) {
            anyhow::bail!("smoke_args of {} do not match its input schema at {path:?}: {message}", tool.name);
        }
        let ctx = super::CallContext { request_id: "smoke-call".into(), allowed_clusters: Vec::new() };
        let deadline = Instant::now() + tool.deadline;
        let out = super::block_on(self.call_until(db, tool.clone(), ctx, &args.to_string(), deadline))
            .map_err(|e| anyhow::anyhow!("the smoke call of {} failed: {e}", tool.name))?;
        let answer: serde_json::Value =
            serde_json::from_str(&out.json).map_err(|e| anyhow::anyhow!("the smoke call of {} answered something that is not JSON: {e}", tool.name))?;
        let schema = jsonschema::validator_for(&tool.output_schema).map_err(|e| anyhow::anyhow!("output schema of {}: {e}", tool.name))?;
        if let Some(e) = schema.iter_errors(&answer).next() {
            anyhow::bail!("the smoke call's answer does not match the output schema of {} at {:?}: {e}", tool.name, e.instance_path().to_string());
        }
        tracing::info!(plugin = %tool.name, version = %tool.version, "Smoke call answered.");
        Ok(())
    }

    /// What to load: the plugins directory's components and the registry sources' pulled ones;
    /// and the registry sources with nothing pulled yet, with why.
    fn candidates(&self) -> (Vec<Candidate>, Vec<(String, String)>) {
        let mut out: Vec<Candidate> = list_components(&self.config.dir)
            .into_iter()
            .map(|path| {
                let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let signature = super::trust::read_signature(&path);
                Candidate { file, path, evidence: Evidence::File { signature }, require_signature: self.config.require_signature, source: None }
            })
            .collect();
        let mut unavailable = Vec::new();
        for (name, state) in self.sources.states() {
            let file = format!("oci:{name}");
            let Some(source) = self.sources.config(&name).filter(|s| s.kind == crate::config::SourceKind::Tool) else { continue };
            match state.pulled {
                Some(p) => out.push(Candidate {
                    file,
                    path: p.path.clone(),
                    source: Some(format!("{}@{}", p.reference, p.manifest_digest)),
                    evidence: Evidence::Oci { repository: p.repository, digest: p.manifest_digest, signatures: p.signatures },
                    require_signature: source.require_signature,
                }),
                None => unavailable.push((file, format!("not pulled yet: {}", state.error.as_deref().unwrap_or("waiting for the first poll")))),
            }
        }
        (out, unavailable)
    }

}

/// Folds decided canaries into their files' entries: a promoted canary becomes the serving
/// version; a rolled-back one is dropped and its file marked failed with the reason (its
/// content is not tried again until it changes). Returns whether anything was settled.
fn settle(current: &Registry, settled: &mut BTreeMap<String, FileEntry>) -> bool {
    let mut any = false;
    for (file, entry) in &current.files {
        let Some(canary) = &entry.canary else { continue };
        let Some(decision) = canary.decision() else { continue };
        let mut e = entry.clone();
        e.canary = None;
        match decision {
            Decision::Promoted => e.serving = Some(canary.tool.clone()),
            Decision::RolledBack => {
                e.serving = Some(canary.stable.clone());
                e.attempted_digest = canary.tool.digest.clone();
                e.error = Some(format!("rolled back: {}", canary.reason().unwrap_or_default()));
                e.refusal = Some("rolled_back");
            }
        }
        settled.insert(file.clone(), e);
        any = true;
    }
    any
}

