//! `sluice serve --check-config`: what a configuration names that this machine does not have.
//!
//! Keys, types and values are checked by [`Config::load`] and [`Config::validate`] (errors). The
//! paths a configuration names may belong to another machine (a pod's mounts, a unit's state
//! directory), so a missing one is a warning here: a configuration rendered for Kubernetes can be
//! checked on a laptop or in CI.

use std::path::Path;

use super::Config;

impl Config {
    /// One line per path this configuration names that does not exist on this machine, naming
    /// its key. Files created at start (the database, the compile cache, an audit file) only
    /// need their directory.
    pub fn missing_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut need = |key: &str, path: &Path, what: &str| {
            if !path.as_os_str().is_empty() && !path.exists() {
                out.push(format!("{key}: {what} {} does not exist on this machine", path.display()));
            }
        };
        let dir_of = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_owned);
        if self.database.backend == super::Backend::Ducklake {
            let lake = self.database.ducklake.to_options();
            need("database.ducklake.extension_directory", &lake.extension_directory, "directory");
            let secrets = [("catalog", Some(&lake.catalog)), ("s3.key_id", lake.s3.key_id.as_ref()), ("s3.secret", lake.s3.secret.as_ref())];
            for (key, source) in secrets {
                if let Some(p) = source.and_then(|s| s.strip_prefix("file:")) {
                    need(&format!("database.ducklake.{key}"), Path::new(p), "file");
                }
            }
        } else if let Some(d) = dir_of(&self.database.path) {
            need("database.path", &d, "directory");
        }
        need("plugins.dir", &self.plugins.dir, "directory");
        if let Some(d) = dir_of(&self.plugins.cache_dir) {
            need("plugins.cache_dir", &d, "directory");
        }
        if let Some(p) = &self.auth.bearer_acl_file {
            need("auth.bearer_acl_file", p, "file");
        }
        if let Some(p) = &self.auth.token_file {
            need("auth.token_file", p, "file");
        }
        for (i, issuer) in self.auth.jwt.issuers.iter().enumerate() {
            if let Some(p) = &issuer.jwks_file {
                need(&format!("auth.jwt.issuers[{i}].jwks_file"), p, "file");
            }
            if let Some(p) = &issuer.ca_file {
                need(&format!("auth.jwt.issuers[{i}].ca_file"), p, "file");
            }
        }
        if let Some(p) = &self.traces.ca_file {
            need("traces.ca_file", p, "file");
        }
        for (name, source) in &self.traces.headers {
            if let Some(p) = source.strip_prefix("file:") {
                need(&format!("traces.headers.{name}"), Path::new(p), "file");
            }
        }
        for (i, key) in self.plugins.trust.iter().enumerate() {
            if let Some(p) = key.key.strip_prefix("file:") {
                need(&format!("plugins.trust[{i}].key"), Path::new(p), "file");
            }
        }
        if let Some(p) = &self.server.tls_cert {
            need("server.tls_cert", p, "file");
        }
        if let Some(p) = &self.server.tls_key {
            need("server.tls_key", p, "file");
        }
        if self.audit.destination != "stderr"
            && let Some(d) = dir_of(Path::new(&self.audit.destination))
        {
            need("audit.destination", &d, "directory");
        }
        for sink in &self.sinks {
            if !sink.component.to_string_lossy().starts_with("oci:") {
                need(&format!("sink {:?}: component", sink.name), &sink.component, "file");
            }
            for (key, source) in &sink.secrets {
                if let Some(p) = source.strip_prefix("file:") {
                    need(&format!("sink {:?}: secret {key:?}", sink.name), Path::new(p), "file");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_here_are_named_by_key() {
        let c: Config = toml::from_str(
            r#"
            [database]
            path = "/nonexistent-sluice/data/sluice.duckdb"
            [plugins]
            dir = "/"
            cache_dir = "cache"
            [auth]
            bearer_acl_file = "/nonexistent-sluice/bearers.yaml"
            [[sink]]
            name = "hook"
            component = "/nonexistent-sluice/http.wasm"
            secrets = { token = "file:/nonexistent-sluice/token", other = "env:X" }
            "#,
        )
        .unwrap();
        let missing = c.missing_paths();
        assert_eq!(missing.len(), 4, "{missing:#?}");
        assert!(missing[0].starts_with("database.path: directory /nonexistent-sluice/data"), "{missing:#?}");
        assert!(missing[1].starts_with("auth.bearer_acl_file: file"), "{missing:#?}");
        assert!(missing[2].starts_with("sink \"hook\": component"), "{missing:#?}");
        assert!(missing[3].starts_with("sink \"hook\": secret \"token\""), "{missing:#?}");
    }
}
