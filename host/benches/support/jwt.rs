//! The benchmarks' identity provider: one Ed25519 key from a fixed seed and a token it signs, for
//! an issuer whose JWKS file holds the key (`[[auth.jwt.issuers]]` with `issuer =
//! "https://idp.bench"`, `audiences = ["sluice"]`).

/// The benchmark's identity-provider key: an Ed25519 key from a fixed seed (PKCS#8), and its JWK.
pub fn key() -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(&[7u8; 32]);
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::EdDSA).unwrap();
    jwk.common.key_id = Some("bench".into());
    (key, serde_json::to_value(jwk).unwrap())
}

/// A token of the bench issuer for every cluster and tool, good for a day.
pub fn token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 86_400;
    let claims = serde_json::json!({"iss": "https://idp.bench", "aud": "sluice", "sub": "bench", "exp": exp,
                                    "sluice_clusters": "*", "scope": "sluice:tools:*"});
    let header = jsonwebtoken::Header { kid: Some("bench".into()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA) };
    jsonwebtoken::encode(&header, &claims, &key().0).unwrap()
}
