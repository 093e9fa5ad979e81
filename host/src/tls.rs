//! TLS for the listeners: rustls (ring provider) with the certificate and key read from PEM
//! files and reloaded when either file changes, without dropping connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use notify::Watcher as _;

/// Loads the certificate chain and private key.
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    // One process-wide provider; a second install (tests, embedding) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key).await.with_context(|| {
        format!(
            "loading the TLS certificate {} and key {} (PEM; the key may be PKCS#8, PKCS#1 or SEC1)",
            cert.display(),
            key.display()
        )
    })
}

/// Reloads `config` whenever the certificate or key file changes, until the watcher is dropped.
/// A pair that fails to load leaves the current one in place.
pub fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let names = [cert.file_name().map(|n| n.to_owned()), key.file_name().map(|n| n.to_owned())];
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(notify::event::AccessKind::Open(_)))
            && ev.paths.iter().any(|p| names.iter().any(|n| p.file_name() == n.as_deref()))
        {
            let _ = tx.send(());
        }
    })?;
    let mut dirs: Vec<PathBuf> = [&cert, &key]
        .iter()
        .map(|p| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned())
        .collect();
    dirs.dedup();
    for d in &dirs {
        watcher.watch(d, notify::RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Certificate and key are often replaced one after the other: let both land.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            match config.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded."),
                Err(e) => tracing::error!(cert = %cert.display(), error = %e, "TLS certificate change not applied; the previous certificate stays in use."),
            }
        }
    });
    Ok(watcher)
}
