//! Keyed, offline-verifiable component signatures in the formats cosign makes and checks:
//! ECDSA P-256 over SHA-256, DER-encoded, base64 (standard alphabet).
//!
//! - A component in a registry is signed the way `cosign sign --key` signs an image: the signed
//!   bytes are a simple-signing payload naming the manifest digest, stored as a layer of the image
//!   tagged `sha256-<hex>.sig` with the signature in the `dev.cosignproject.cosign/signature`
//!   annotation. `cosign verify --key` checks it.
//! - A component file is signed the way `cosign sign-blob --key` signs a blob: the signature of
//!   the file's bytes, in `<file>.sig`. `cosign verify-blob` and
//!   `openssl dgst -sha256 -verify key.pub -signature <(base64 -d <file>.sig)` check it.
//!
//! Keys are PEM: public keys as SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, what `cosign
//! generate-key-pair` writes to `cosign.pub`), private keys as unencrypted PKCS#8 or SEC1
//! (`openssl ecparam -name prime256v1 -genkey`, or `sluice plugin keygen`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The tag under which cosign stores the signatures of `digest` (`sha256:<hex>` → `sha256-<hex>.sig`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// One signature found in a registry: the payload as stored, and the base64 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignSignature {
    /// The simple-signing payload (JSON), exactly as signed.
    #[serde(with = "b64_bytes")]
    pub payload: Vec<u8>,
    /// base64 of the DER signature over `payload`.
    pub signature: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    optional: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A public key allowed to sign components.
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    /// The first 16 hex digits of the SHA-256 of the key's DER: how logs and the plugin list name it.
    pub id: String,
}

impl PublicKey {
    /// Reads a PEM public key (SubjectPublicKeyInfo, ECDSA P-256).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| anyhow::anyhow!("not a PEM ECDSA P-256 public key (BEGIN PUBLIC KEY): {e}"))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: VerifyingKey) -> Self {
        let der = key.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        let id = hex::encode(&Sha256::digest(&der)[..8]);
        Self { key, id }
    }

    /// The key as PEM.
    pub fn to_pem(&self) -> String {
        self.key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// Checks a base64 DER signature over `message`.
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> bool {
        let Ok(der) = B64.decode(signature_b64.trim()) else { return false };
        let Ok(sig) = Signature::from_der(&der) else { return false };
        // Signers need not produce low-S signatures (openssl does not); both forms are valid.
        let sig = sig.normalize_s();
        self.key.verify(message, &sig).is_ok()
    }

    /// Checks a registry signature: signed by this key, of the right kind, naming `digest`.
    pub fn verify_cosign(&self, sig: &CosignSignature, digest: &str) -> Result<(), String> {
        if !self.verify(&sig.payload, &sig.signature) {
            return Err("signature does not verify".into());
        }
        let payload: Payload = serde_json::from_slice(&sig.payload).map_err(|e| format!("the signed payload is not a simple-signing payload: {e}"))?;
        if payload.critical.kind != PAYLOAD_TYPE {
            return Err(format!("the signed payload is of type {:?}", payload.critical.kind));
        }
        if payload.critical.image.docker_manifest_digest != digest {
            return Err(format!("the signature is for {}, not {digest}", payload.critical.image.docker_manifest_digest));
        }
        Ok(())
    }
}

/// A signing key.
pub struct KeyPair {
    key: SigningKey,
}

impl KeyPair {
    /// A new random key.
    pub fn generate() -> anyhow::Result<Self> {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return Ok(Self { key });
            }
        }
    }

    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let pem = pem.trim();
        if pem.contains("ENCRYPTED") {
            anyhow::bail!("the key is encrypted; give an unencrypted PKCS#8 key (e.g. `openssl pkcs8 -topk8 -nocrypt`)");
        }
        let key = if pem.contains("BEGIN EC PRIVATE KEY") {
            SigningKey::from(p256::SecretKey::from_sec1_pem(pem).map_err(|e| anyhow::anyhow!("not a SEC1 P-256 private key: {e}"))?)
        } else {
            SigningKey::from_pkcs8_pem(pem).map_err(|e| anyhow::anyhow!("not a PEM ECDSA P-256 private key (BEGIN PRIVATE KEY): {e}"))?
        };
        Ok(Self { key })
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_pem(&self) -> anyhow::Result<String> {
        Ok(self.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?.to_string())
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_key(*self.key.verifying_key())
    }

    /// base64 of the DER signature over `message` (cosign's `sign-blob` output).
    pub fn sign(&self, message: &[u8]) -> String {
        let sig: Signature = self.key.sign(message);
        B64.encode(sig.to_der().as_bytes())
    }

    /// A registry signature of `digest` in `repository` (cosign's `sign`).
    pub fn sign_cosign(&self, repository: &str, digest: &str) -> CosignSignature {
        let payload = Payload {
            critical: Critical {
                identity: Identity { docker_reference: repository.to_owned() },
                image: Image { docker_manifest_digest: digest.to_owned() },
                kind: PAYLOAD_TYPE.into(),
            },
            optional: None,
        };
        let payload = serde_json::to_vec(&payload).expect("a payload serialises");
        let signature = self.sign(&payload);
        CosignSignature { payload, signature }
    }
}

mod b64_bytes {
    use base64::Engine as _;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::B64.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::B64.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_refuse() {
        let k = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let pk = PublicKey::from_pem(&k.public().to_pem()).unwrap();
        let sig = k.sign(b"component bytes");
        assert!(pk.verify(b"component bytes", &sig));
        assert!(!pk.verify(b"component bytes!", &sig));
        assert!(!other.public().verify(b"component bytes", &sig));
        let again = KeyPair::from_pem(&k.private_pem().unwrap()).unwrap();
        assert_eq!(again.public().id, pk.id);

        let d = format!("sha256:{}", "b".repeat(64));
        let c = k.sign_cosign("reg.example.com/x", &d);
        assert_eq!(pk.verify_cosign(&c, &d), Ok(()));
        let other_digest = format!("sha256:{}", "c".repeat(64));
        assert!(pk.verify_cosign(&c, &other_digest).unwrap_err().contains("not sha256:ccc"));
        assert!(other.public().verify_cosign(&c, &d).is_err());
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "b".repeat(64)));
    }
}
