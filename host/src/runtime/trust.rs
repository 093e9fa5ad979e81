//! The trust policy: which keys may sign which components. Checked before a component is
//! compiled (the signature) and after `describe` (the tool name the key may sign).

use crate::config::{TrustKey, matches_any};
use crate::oci::{CosignSignature, PublicKey};

/// What came with a component to prove who made it.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// A file of the plugins directory, and its `<file>.sig` (cosign `sign-blob`), if any.
    File { signature: Option<String> },
    /// A component from a registry: its repository, manifest digest and cosign signatures.
    Oci { repository: String, digest: String, signatures: Vec<CosignSignature> },
}

impl Evidence {
    /// A short fingerprint of the evidence, so a reload notices a signature added or changed.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        match self {
            Evidence::File { signature } => h.update(signature.as_deref().unwrap_or("-")),
            Evidence::Oci { repository, digest, signatures } => {
                h.update(repository);
                h.update(digest);
                for s in signatures {
                    h.update(&s.payload);
                    h.update(&s.signature);
                }
            }
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Why a component was refused by the trust policy; the label of `sluice_plugin_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature, and one is required.
    Unsigned,
    /// Signatures, none valid from a trusted key (another key, or the component changed after signing).
    BadSignature,
    /// A trusted key signed it, but that key may not sign this repository or tool name.
    KeyNotAllowed,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::KeyNotAllowed => "key_not_allowed",
        }
    }
}

/// A refusal and its explanation.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: Refusal,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

struct Key {
    key: PublicKey,
    tools: Vec<String>,
    repositories: Vec<String>,
}

/// The keys of `[[plugins.trust]]`.
#[derive(Default)]
pub struct Trust {
    keys: Vec<Key>,
}

/// The trusted keys that made a valid signature, with the tool names they may sign.
#[derive(Debug, Clone)]
pub struct Signers(Vec<(String, Vec<String>)>);

impl Signers {
    /// The first signing key's id (shown in the plugin list).
    pub fn key_id(&self) -> Option<&str> {
        self.0.first().map(|(id, _)| id.as_str())
    }

    /// Checks that one of the signing keys may sign `tool`.
    pub fn allow_tool(&self, tool: &str) -> Result<(), Refused> {
        if self.0.iter().any(|(_, tools)| matches_any(tools, tool)) {
            return Ok(());
        }
        let ids: Vec<&str> = self.0.iter().map(|(id, _)| id.as_str()).collect();
        Err(Refused {
            reason: Refusal::KeyNotAllowed,
            message: format!("signed by key {}, which the trust policy does not allow to sign the tool {tool:?}", ids.join(", ")),
        })
    }
}

impl Trust {
    /// Reads the keys (their PEM from `file:`/`env:`).
    pub fn new(keys: &[TrustKey]) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let what = format!("plugins.trust[{i}].key");
            let pem = crate::secret::resolve(&what, &k.key)?;
            let key = PublicKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            out.push(Key { key, tools: k.tools.clone(), repositories: k.repositories.clone() });
        }
        Ok(Self { keys: out })
    }

    /// Checks a component's signature before it is compiled. `Ok(None)`: not required and not
    /// checked; `Ok(Some(signers))`: valid signatures from these trusted keys.
    pub fn check(&self, name: &str, bytes: &[u8], evidence: &Evidence, required: bool) -> Result<Option<Signers>, Refused> {
        if !required {
            return Ok(None);
        }
        let mut signers = Vec::new();
        let mut not_allowed = Vec::new();
        let mut why = Vec::new();
        if is_unsigned(evidence) {
            let hint = match evidence {
                Evidence::File { .. } => format!("no {name}.sig next to it"),
                Evidence::Oci { digest, .. } => format!("no cosign signature for {digest} in the registry"),
            };
            return Err(Refused { reason: Refusal::Unsigned, message: format!("unsigned ({hint}); the trust policy requires a signature") });
        }
        match evidence {
            Evidence::File { signature: None } => {}
            Evidence::File { signature: Some(sig) } => {
                for k in &self.keys {
                    if k.key.verify(bytes, sig) {
                        signers.push((k.key.id.clone(), k.tools.clone()));
                    }
                }
                if signers.is_empty() {
                    why.push("the signature does not verify with any trusted key (another key made it, or the file changed after signing)".to_owned());
                }
            }
            Evidence::Oci { repository, digest, signatures } => {
                for k in &self.keys {
                    let verified: Vec<Result<(), String>> = signatures.iter().map(|s| k.key.verify_cosign(s, digest)).collect();
                    if verified.iter().any(Result::is_ok) {
                        if matches_any(&k.repositories, repository) {
                            signers.push((k.key.id.clone(), k.tools.clone()));
                        } else {
                            not_allowed.push(k.key.id.clone());
                        }
                    } else {
                        why.extend(verified.into_iter().filter_map(Result::err).filter(|e| e != "signature does not verify"));
                    }
                }
                if signers.is_empty() && not_allowed.is_empty() && why.is_empty() {
                    why.push("no signature verifies with a trusted key (another key made them, or the component changed after signing)".to_owned());
                }
            }
        }
        if !signers.is_empty() {
            return Ok(Some(Signers(signers)));
        }
        if !not_allowed.is_empty() {
            let repository = match evidence {
                Evidence::Oci { repository, .. } => repository.as_str(),
                Evidence::File { .. } => "",
            };
            return Err(Refused {
                reason: Refusal::KeyNotAllowed,
                message: format!("signed by key {}, which the trust policy does not allow to sign for {repository}", not_allowed.join(", ")),
            });
        }
        why.dedup();
        Err(Refused { reason: Refusal::BadSignature, message: format!("refused: {}", why.join("; ")) })
    }
}

/// The signature of a component file: `FILE.sig`, when present and not empty.
pub fn read_signature(file: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(crate::publish::sig_path(file)).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn is_unsigned(evidence: &Evidence) -> bool {
    match evidence {
        Evidence::File { signature } => signature.is_none(),
        Evidence::Oci { signatures, .. } => signatures.is_empty(),
    }
}
