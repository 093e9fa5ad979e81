//! Components in OCI registries, in the layout of the CNCF WebAssembly OCI artifact guidance (the
//! one `wkg` and `oras` use): an image manifest whose config is `application/vnd.wasm.config.v0+json`
//! and whose one layer is the component, `application/wasm`. Signatures are cosign's: an image
//! `sha256-<hex>.sig` in the same repository whose layers are simple-signing payloads naming the
//! signed manifest's digest, each with its signature in an annotation (see [`signature`]).
//!
//! Everything pulled is checked against its digest before it is used: the manifest against the
//! digest it was resolved to, the component against the layer's digest.

pub mod signature;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use oci_client::client::{ClientConfig, ClientProtocol, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

pub use signature::{CosignSignature, KeyPair, PublicKey};

/// Largest component accepted, from a file or a registry.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// The component layer's media type.
pub const WASM_LAYER: &str = "application/wasm";
/// The config's media type for WebAssembly artifacts.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The OCI image manifest's media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest read (a component's has a handful of entries; a signature image one layer
/// per signature).
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// An `oci://registry/repository:tag` or `…@sha256:<hex>` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef(Reference);

impl OciRef {
    /// Parses `oci://…` (the prefix may be left out on the command line).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let bare = s.strip_prefix("oci://").unwrap_or(s);
        anyhow::ensure!(
            bare.contains('/') && bare.split('/').next().is_some_and(|h| h.contains(['.', ':']) || h == "localhost"),
            "{s:?} is not an OCI reference: write oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST"
        );
        let r: Reference = bare.parse().map_err(|e| anyhow::anyhow!("{s:?} is not an OCI reference: {e}"))?;
        if let Some(d) = r.digest() {
            anyhow::ensure!(is_sha256(d), "{s:?}: only sha256 digests are accepted, got {d}");
        }
        Ok(Self(r))
    }

    /// `registry/repository`, without tag or digest: what a trust policy's `repositories` match.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.0.registry(), self.0.repository())
    }

    /// The registry's host (and port).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The pinned digest, if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same repository at `digest`.
    pub fn at_digest(&self, digest: &str) -> Self {
        Self(Reference::with_digest(self.0.registry().into(), self.0.repository().into(), digest.into()))
    }

    /// The same repository at `tag`.
    fn at_tag(&self, tag: &str) -> Self {
        Self(Reference::with_tag(self.0.registry().into(), self.0.repository().into(), tag.into()))
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}", self.0.whole())
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How to reach a registry: credentials and the CA for its certificate.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// User name and password (or token) for HTTP Basic, resolved from their secrets.
    pub basic: Option<(String, String)>,
    /// PEM certificates to trust besides the public roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Per-request read timeout.
    pub timeout: Option<Duration>,
}

/// A component pulled from a registry, checked against its digests.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest (what a tag resolved to, and what signatures name).
    pub manifest_digest: String,
    /// The component layer's digest (`sha256:` of `bytes`).
    pub layer_digest: String,
    /// The component.
    pub bytes: Vec<u8>,
    /// cosign signatures found for `manifest_digest` (none when the registry has none).
    pub signatures: Vec<CosignSignature>,
}

/// A client for one registry.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
}

impl Registry {
    /// A client for `reference`'s registry. Plain HTTP is used only for a loopback registry.
    pub fn new(reference: &OciRef, access: &Access) -> anyhow::Result<Self> {
        crate::tls::install_provider();
        let host = reference.registry();
        let protocol = if is_loopback_host(host) { ClientProtocol::HttpsExcept(vec![host.to_owned()]) } else { ClientProtocol::Https };
        let mut extra = Vec::new();
        if let Some(ca) = &access.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading the registry CA {}", ca.display()))?;
            extra.push(oci_client::client::Certificate { encoding: oci_client::client::CertificateEncoding::Pem, data: pem });
        }
        let config = ClientConfig {
            protocol,
            extra_root_certificates: extra,
            read_timeout: Some(access.timeout.unwrap_or(Duration::from_secs(30))),
            connect_timeout: Some(Duration::from_secs(10)),
            user_agent: concat!("sluice/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let auth = match &access.basic {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self { client: Client::new(config), auth })
    }

    /// The digest the reference resolves to now (its own digest when it has one).
    pub async fn resolve(&self, reference: &OciRef) -> anyhow::Result<String> {
        if let Some(d) = reference.digest() {
            return Ok(d.to_owned());
        }
        let (_, digest) = self.manifest(reference).await?;
        Ok(digest)
    }

    /// The image manifest at `reference`, checked against its digest, and that digest.
    async fn manifest(&self, reference: &OciRef) -> anyhow::Result<(OciImageManifest, String)> {
        let (raw, _) = self
            .client
            .pull_manifest_raw(&reference.0, &self.auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
            .await
            .with_context(|| format!("fetching the manifest of {reference}"))?;
        anyhow::ensure!(raw.len() <= MAX_MANIFEST_BYTES, "the manifest of {reference} is larger than {MAX_MANIFEST_BYTES} bytes");
        // The digest is computed here rather than taken from the registry's header.
        let digest = sha256(&raw);
        if let Some(pinned) = reference.digest() {
            anyhow::ensure!(pinned == digest, "the manifest of {reference} has digest {digest}, not the one asked for");
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).with_context(|| format!("the manifest of {reference} is not an OCI image manifest"))?;
        Ok((manifest, digest))
    }

    /// Pulls the component `reference` names (at `digest` when given, so that what is pulled is
    /// what was resolved), with its signatures.
    pub async fn pull(&self, reference: &OciRef, digest: Option<&str>) -> anyhow::Result<Pulled> {
        let at = digest.map_or_else(|| reference.clone(), |d| reference.at_digest(d));
        let (manifest, manifest_digest) = self.manifest(&at).await?;
        let layer = wasm_layer(&manifest).with_context(|| format!("{reference} is not a WebAssembly component artifact"))?;
        let bytes = self.blob(&at, layer).await?;
        let signatures = self.signatures(reference, &manifest_digest).await?;
        Ok(Pulled { manifest_digest, layer_digest: layer.digest.clone(), bytes, signatures })
    }

    /// A blob, checked against its size and digest.
    async fn blob(&self, reference: &OciRef, layer: &OciDescriptor) -> anyhow::Result<Vec<u8>> {
        let max = MAX_COMPONENT_BYTES;
        anyhow::ensure!(
            u64::try_from(layer.size).is_ok_and(|s| s <= max),
            "the layer {} of {reference} is {} bytes; the limit is {max}",
            layer.digest,
            layer.size
        );
        anyhow::ensure!(is_sha256(&layer.digest), "the layer of {reference} has digest {}; only sha256 is accepted", layer.digest);
        let declared = usize::try_from(layer.size).unwrap_or(0);
        // A registry that sends more than the manifest declared is cut off there.
        let mut out = Capped { buf: Vec::with_capacity(declared), max: declared };
        self.client
            .pull_blob(&reference.0, layer, &mut out)
            .await
            .with_context(|| format!("fetching the layer {} of {reference}", layer.digest))?;
        let out = out.buf;
        let got = sha256(&out);
        anyhow::ensure!(got == layer.digest, "the layer of {reference} has digest {got}, not {} as its manifest says", layer.digest);
        Ok(out)
    }

    /// cosign signatures stored for `digest` in `reference`'s repository.
    pub async fn signatures(&self, reference: &OciRef, digest: &str) -> anyhow::Result<Vec<CosignSignature>> {
        let tag = reference.at_tag(&signature::signature_tag(digest));
        let manifest = match self.manifest(&tag).await {
            Ok((m, _)) => m,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.context("fetching the signatures")),
        };
        let mut out = Vec::new();
        for layer in manifest.layers.iter().filter(|l| l.media_type == signature::SIMPLE_SIGNING) {
            let Some(sig) = layer.annotations.as_ref().and_then(|a| a.get(signature::SIGNATURE_ANNOTATION)) else { continue };
            anyhow::ensure!(layer.size <= 64 << 10, "a signature payload in {tag} is larger than 64 KiB");
            let payload = self.blob(&tag, layer).await?;
            out.push(CosignSignature { payload, signature: sig.clone() });
        }
        Ok(out)
    }

    /// Pushes a component under `reference` (a tag); returns the manifest's digest.
    pub async fn push(&self, reference: &OciRef, component: Vec<u8>, annotations: BTreeMap<String, String>) -> anyhow::Result<String> {
        let layer_digest = sha256(&component);
        let config = serde_json::json!({
            "created": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        });
        let config = oci_client::client::Config::new(serde_json::to_vec(&config)?, WASM_CONFIG.into(), None);
        let layers = [ImageLayer::new(component, WASM_LAYER.into(), None)];
        let mut manifest = OciImageManifest::build(&layers, &config, (!annotations.is_empty()).then_some(annotations));
        manifest.media_type = Some(OCI_MANIFEST.into());
        self.client
            .push(&reference.0, &layers, config, &self.auth, Some(manifest))
            .await
            .with_context(|| format!("pushing to {reference}"))?;
        // What the tag names now, computed from the manifest as the registry serves it.
        self.resolve(reference).await
    }

    /// Adds a cosign signature for `digest` to the repository's signature image (keeping the
    /// signatures already there).
    pub async fn push_signature(&self, reference: &OciRef, digest: &str, sig: CosignSignature) -> anyhow::Result<()> {
        let tag = reference.at_tag(&signature::signature_tag(digest));
        let mut layers = Vec::new();
        for s in self.signatures(reference, digest).await?.into_iter().chain([sig]) {
            let annotations = BTreeMap::from([(signature::SIGNATURE_ANNOTATION.to_owned(), s.signature)]);
            layers.push(ImageLayer::new(s.payload, signature::SIMPLE_SIGNING.into(), Some(annotations)));
        }
        let config = oci_client::client::Config::new(b"{}".to_vec(), "application/vnd.oci.image.config.v1+json".into(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_MANIFEST.into());
        self.client
            .push(&tag.0, &layers, config, &self.auth, Some(manifest))
            .await
            .with_context(|| format!("pushing the signature to {tag}"))?;
        Ok(())
    }
}

/// A buffer that refuses to grow past `max` bytes.
struct Capped {
    buf: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, data: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.max {
            let e = std::io::Error::other(format!("the registry sent more than the {} bytes the manifest declares", self.max));
            return std::task::Poll::Ready(Err(e));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The manifest's one `application/wasm` layer.
fn wasm_layer(manifest: &OciImageManifest) -> anyhow::Result<&OciDescriptor> {
    let mut wasm = manifest.layers.iter().filter(|l| l.media_type == WASM_LAYER);
    match (wasm.next(), wasm.next()) {
        (Some(l), None) => Ok(l),
        (None, _) => {
            let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
            bail!("it has no {WASM_LAYER} layer (layers: {types:?}); push it with `sluice plugin push`, `wkg oci push` or `oras push REF file.wasm:{WASM_LAYER}`")
        }
        (Some(_), Some(_)) => bail!("it has more than one {WASM_LAYER} layer"),
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<oci_client::errors::OciDistributionError>(), Some(oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_)))
            || c.to_string().contains("MANIFEST_UNKNOWN")
            || c.to_string().contains("manifest unknown")
    })
}

/// A loopback registry host: `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = host.strip_prefix('[').and_then(|h| h.split(']').next()).unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(), std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_refuse() {
        let r = OciRef::parse("oci://127.0.0.1:5000/fleet/summary:1.2").unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/fleet/summary");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/fleet/summary:1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = OciRef::parse(&format!("oci://reg.example.com/x@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        for bad in ["oci://summary", "oci://fleet/summary:1", "oci://reg.example.com/x@sha512:abc", "oci://reg.example.com/x@sha256:zz"] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
        assert!(is_loopback_host("127.0.0.1:5000") && is_loopback_host("localhost") && is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("registry.example.com:5000") && !is_loopback_host("10.0.0.1"));
    }
}
