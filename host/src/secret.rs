//! Secrets named in the configuration: `"env:NAME"` (an environment variable) or `"file:/path"`
//! (a file's content, trimmed). A secret's value is never written in the configuration itself.

/// The source is a secret reference.
pub fn is_reference(source: &str) -> bool {
    source.starts_with("env:") || source.starts_with("file:")
}

/// The secret's value; `what` names it in errors (e.g. `traces.headers.authorization`).
pub fn resolve(what: &str, source: &str) -> anyhow::Result<String> {
    if let Some(var) = source.strip_prefix("env:") {
        std::env::var(var).map_err(|_| anyhow::anyhow!("{what}: environment variable {var} is not set"))
    } else if let Some(path) = source.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{what}: reading {path}: {e}"))?;
        Ok(text.trim().to_owned())
    } else {
        anyhow::bail!("{what} must be \"env:NAME\" or \"file:/path\"")
    }
}

/// Writes a new secret file (a token, a private key) readable by its owner only; refuses to
/// replace an existing one.
pub fn write_new(path: &std::path::Path, secret: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret).with_context(|| format!("writing {}", path.display()))
}
