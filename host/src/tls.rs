//! TLS for the listeners: rustls (ring provider) with the certificate and key read from PEM
//! files and reloaded when either file changes, without dropping connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;

/// Loads the certificate chain and private key.
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    install_provider();
    RustlsConfig::from_pem_file(cert, key).await.with_context(|| {
        format!(
            "loading the TLS certificate {} and key {} (PEM; the key may be PKCS#8, PKCS#1 or SEC1)",
            cert.display(),
            key.display()
        )
    })
}

/// Installs the process-wide rustls provider (ring), for the listeners and for clients that use
/// the default one (the OCI registry client). A second install (tests, embedding) is harmless.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS client configuration for outgoing connections: the public roots (webpki-roots) and
/// the PEM certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        use rustls::pki_types::pem::PemObject as _;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reloads `config` whenever the certificate or key file changes, until the watcher is dropped.
/// A pair that fails to load leaves the current one in place. Call inside a tokio runtime.
pub fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf) -> anyhow::Result<notify::RecommendedWatcher> {
    let names = [cert.file_name().map(|n| n.to_owned()), key.file_name().map(|n| n.to_owned())];
    let runtime = tokio::runtime::Handle::current();
    let dirs = [crate::watch::parent_dir(&cert), crate::watch::parent_dir(&key)];
    crate::watch::watch(
        "sluice-tls-reloader",
        &dirs,
        move |p| names.iter().any(|n| p.file_name() == n.as_deref()),
        // Certificate and key are often replaced one after the other: let both land.
        Duration::from_millis(200),
        move || {
            match runtime.block_on(config.reload_from_pem_file(&cert, &key)) {
                Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded."),
                Err(e) => tracing::error!(cert = %cert.display(), error = %e, "TLS certificate change not applied; the previous certificate stays in use."),
            }
            true
        },
    )
}
