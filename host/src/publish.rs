//! `sluice plugin keygen | push | sign | pull`: publishing components to an OCI registry and
//! signing them, for authors and release pipelines.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::oci::{Access, KeyPair, OciRef, PublicKey, Registry};

/// The publishing subcommands of `sluice plugin`.
#[derive(Debug, clap::Subcommand)]
pub enum Publish {
    /// Make an ECDSA P-256 key pair for signing components: KEY (PKCS#8 PEM, keep it secret)
    /// and KEY.pub (the public key for `[[plugins.trust]]`, also what cosign checks with).
    Keygen {
        /// Where to write the private key; the public key goes to the same path plus `.pub`.
        key: PathBuf,
    },
    /// Push a component to a registry as a WebAssembly OCI artifact (an `application/wasm`
    /// layer); prints the manifest digest.
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// oci://REGISTRY/REPOSITORY:TAG
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Sign a component: a file (writes FILE.sig, as `cosign sign-blob` does) or a component in
    /// a registry (adds a cosign signature of its digest to the registry).
    Sign {
        /// The private key (PEM: PKCS#8, or SEC1 as openssl writes it).
        #[arg(long)]
        key: PathBuf,
        /// A .wasm file, or oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST).
        target: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull a component from a registry, checked against its digest (and, with --key, its
    /// signature); prints the manifest digest.
    Pull {
        /// oci://REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST).
        reference: String,
        /// Where to write the component (default: the repository's last part, .wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Refuse it unless this public key (PEM) signed it.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// How to reach the registry.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Registry user name.
    #[arg(long, env = "SLUICE_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Registry password or token (prefer the environment variable to the flag).
    #[arg(long, env = "SLUICE_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// PEM certificates to trust for the registry, besides the public roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    fn registry(&self, reference: &OciRef) -> anyhow::Result<Registry> {
        let basic = match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => anyhow::bail!("give both --username and --password (or SLUICE_REGISTRY_USERNAME and SLUICE_REGISTRY_PASSWORD)"),
        };
        Registry::new(reference, &Access { basic, ca_file: self.ca_file.clone(), timeout: None })
    }
}

/// Runs one publishing command.
pub fn run(cmd: Publish) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(run_async(cmd))
}

async fn run_async(cmd: Publish) -> anyhow::Result<()> {
    match cmd {
        Publish::Keygen { key } => {
            let pair = KeyPair::generate()?;
            let public = pub_path(&key);
            anyhow::ensure!(!key.exists(), "{} exists; not overwriting a key", key.display());
            crate::secret::write_new(&key, pair.private_pem()?.as_bytes())?;
            std::fs::write(&public, pair.public().to_pem()).with_context(|| format!("writing {}", public.display()))?;
            println!("private key {} (keep it secret)", key.display());
            println!("public key  {} (id {})", public.display(), pair.public().id);
        }
        Publish::Push { file, reference, registry } => {
            let r = OciRef::parse(&reference)?;
            anyhow::ensure!(r.digest().is_none(), "push to a tag (oci://REGISTRY/REPOSITORY:TAG), not a digest");
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            anyhow::ensure!(bytes.starts_with(b"\0asm"), "{} is not a WebAssembly file", file.display());
            let annotations = std::collections::BTreeMap::from([(
                "org.opencontainers.image.title".to_owned(),
                file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            )]);
            let digest = registry.registry(&r)?.push(&r, bytes, annotations).await?;
            println!("{}", r.at_digest(&digest));
            println!("digest {digest}");
        }
        Publish::Sign { key, target, registry } => {
            let pem = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            let pair = KeyPair::from_pem(&pem).with_context(|| format!("in {}", key.display()))?;
            if target.starts_with("oci://") {
                let r = OciRef::parse(&target)?;
                let reg = registry.registry(&r)?;
                let digest = reg.resolve(&r).await?;
                reg.push_signature(&r, &digest, pair.sign_cosign(&r.repository(), &digest)).await?;
                println!("signed {} with key {}", r.at_digest(&digest), pair.public().id);
            } else {
                let file = PathBuf::from(&target);
                let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let sig = sig_path(&file);
                std::fs::write(&sig, format!("{}\n", pair.sign(&bytes))).with_context(|| format!("writing {}", sig.display()))?;
                println!("signed {} with key {}: {}", file.display(), pair.public().id, sig.display());
            }
        }
        Publish::Pull { reference, output, key, registry } => {
            let r = OciRef::parse(&reference)?;
            let reg = registry.registry(&r)?;
            let digest = reg.resolve(&r).await?;
            let pulled = reg.pull(&r, Some(&digest)).await?;
            match key {
                Some(k) => {
                    let pem = std::fs::read_to_string(&k).with_context(|| format!("reading {}", k.display()))?;
                    let pk = PublicKey::from_pem(&pem).with_context(|| format!("in {}", k.display()))?;
                    anyhow::ensure!(!pulled.signatures.is_empty(), "{r} ({digest}) is not signed; not writing it");
                    let checks: Vec<Result<(), String>> = pulled.signatures.iter().map(|s| pk.verify_cosign(s, &digest)).collect();
                    anyhow::ensure!(
                        checks.iter().any(Result::is_ok),
                        "no signature of {r} ({digest}) verifies with key {}: {}; not writing it",
                        pk.id,
                        checks.into_iter().filter_map(Result::err).collect::<Vec<_>>().join("; ")
                    );
                    eprintln!("signature verified with key {}", pk.id);
                }
                None => eprintln!("not verifying a signature (give --key KEY.pub to require one)"),
            }
            let out = output.unwrap_or_else(|| PathBuf::from(format!("{}.wasm", r.repository().rsplit('/').next().unwrap_or("component"))));
            crate::oci::write_atomic(&out, &pulled.bytes)?;
            println!("{}", out.display());
            println!("digest {digest}");
        }
    }
    Ok(())
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// `FILE.sig`, where the gateway looks for a directory component's signature.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}
