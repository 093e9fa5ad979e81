//! JWT bearers: keys made by the test (openssl), a JWKS the test serves on loopback (or writes to
//! a file), tokens the test signs; the gateway in-process over the seeded fleet, and the binary
//! for the Python MCP SDK.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{GatewayOptions, Reply, TENANT_TOKEN, TempDir, TestGateway, component};

const ISSUER: &str = "https://idp.test/realms/ops";
const AUDIENCE: &str = "sluice";

/// A signing key and its public JWK.
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl (Debian package openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh key pair of the algorithm's kind, made by openssl.
fn key(dir: &TempDir, kid: &str, alg: Algorithm) -> Key {
    let private = dir.path().join(format!("{kid}.pem"));
    let public = dir.path().join(format!("{kid}.pub.pem"));
    let p = private.to_str().unwrap();
    match alg {
        Algorithm::RS256 => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p]),
        Algorithm::ES256 => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p]),
        Algorithm::EdDSA => openssl(&["genpkey", "-algorithm", "ED25519", "-out", p]),
        other => panic!("no test keys for {other:?}"),
    }
    openssl(&["pkey", "-in", p, "-pubout", "-out", public.to_str().unwrap()]);
    let pem = std::fs::read(&private).unwrap();
    let encoding = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    Key { kid: kid.into(), alg, encoding, jwk: serde_json::to_value(jwk).unwrap(), public_pem: std::fs::read(&public).unwrap() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims of a token good for an hour, for `aud`, with `extra` merged in.
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "agent-7", "jti": "jti-1", "iat": now(), "exp": now() + 3600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn sign(key: &Key, claims: &Value) -> String {
    let header = Header { kid: Some(key.kid.clone()), ..Header::new(key.alg) };
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The identity provider's key endpoint on loopback: the keys it publishes, whether it is
/// down, and how often it was asked.
struct Idp {
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    fetches: AtomicUsize,
    url: String,
}

async fn idp(keys: &[&Key]) -> Arc<Idp> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let idp = Arc::new(Idp {
        keys: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
        down: AtomicBool::new(false),
        fetches: AtomicUsize::new(0),
        url,
    });
    let served = idp.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let idp = served.clone();
            async move {
                idp.fetches.fetch_add(1, Ordering::SeqCst);
                if idp.down.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                axum::Json(json!({"keys": *idp.keys.lock().unwrap()})).into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    idp
}

use axum::response::IntoResponse as _;

/// A gateway with the static test bearers and `issuers` (TOML of `[[auth.jwt.issuers]]` bodies).
fn gateway(issuers: &[String]) -> TestGateway {
    let toml_text: String = issuers.iter().map(|i| format!("[[issuers]]\n{i}\n")).collect();
    let jwt: sluice::auth::jwt::JwtConfig = toml::from_str(&toml_text).unwrap();
    let opts = GatewayOptions { configure: Box::new(move |c| c.auth.jwt = jwt), ..GatewayOptions::default() };
    TestGateway::start(opts.with_catalogue())
}

fn url_issuer(idp: &Idp) -> String {
    format!(
        "issuer = {ISSUER:?}\naudiences = [{AUDIENCE:?}]\njwks_url = {:?}\nrefresh_interval = \"1h\"\nmin_refresh_interval = \"100ms\"",
        idp.url
    )
}

async fn get(gw: &TestGateway, token: &str, path: &str) -> Reply {
    gw.request_with(Some(&format!("Bearer {token}")), "GET", path, None).await
}

fn tool_names(r: &Reply) -> Vec<String> {
    r.body["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_jwt_calls_tools_within_its_clusters_and_grants_like_a_static_bearer() {
    // RSA and EC key generation by openssl: latency-asserting tests wait.
    let _cpu = crate::common::shared_cpu().await;
    let dir = TempDir::new("jwt-grants");
    let k = key(&dir, "k1", Algorithm::RS256);
    let idp = idp(&[&k]).await;
    let gw = gateway(&[url_issuer(&idp)]);

    // Scoped to cluster-a with every fleet tool: the same answers as the static tenant bearer,
    // down to the rows the component's own queries see.
    let tenant = sign(&k, &claims(json!({"sluice_clusters": ["cluster-a"], "scope": "openid sluice:tools:fleet.cluster.*"})));
    let by_jwt = gw.call_as(&tenant, "fleet.cluster.summary", json!({})).await;
    assert_eq!(by_jwt.status, 200, "{}", by_jwt.text);
    let by_static = gw.call_as(TENANT_TOKEN, "fleet.cluster.summary", json!({})).await;
    assert_eq!(by_jwt.body, by_static.body);
    let rows = by_jwt.body["result"]["rows"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["cluster_id"] == "cluster-a"), "{rows:?}");
    gw.call_as(&tenant, "fleet.cluster.summary", json!({"cluster_id": "cluster-b"})).await.assert_error(403, "tenant_scoped_bearer_refused");
    gw.call_as(&tenant, "fleet.cluster.run_analysis", json!({"sql": "SELECT 1"})).await.assert_error(403, "tenant_scoped_bearer_refused");
    gw.request_with(Some(&format!("Bearer {tenant}")), "POST", "/api/v2/sql", Some(r#"{"sql":"SELECT 1"}"#))
        .await
        .assert_error(403, "tenant_scoped_bearer_refused");

    // One tool granted: the lists show only it, the others are 403 with the scope to ask for.
    let one = sign(&k, &claims(json!({"sluice_clusters": "cluster-a cluster-b", "scope": "sluice:tools:fleet.cluster.summary"})));
    assert_eq!(tool_names(&get(&gw, &one, "/api/v2/tools/list").await), ["fleet.cluster.summary"]);
    let doc = get(&gw, &one, "/api/v2/openapi.json").await;
    let paths: Vec<&String> = doc.body["paths"].as_object().unwrap().keys().filter(|p| p.starts_with("/api/v2/tools/fleet")).collect();
    assert_eq!(paths, ["/api/v2/tools/fleet.cluster.summary"]);
    let refused = gw.call_as(&one, "fleet.cluster.find_stragglers", json!({})).await;
    refused.assert_error(403, "tool_not_permitted");
    assert_eq!(refused.body["scope"], "sluice:tools:fleet.cluster.find_stragglers");
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"sluice:tools:fleet.cluster.find_stragglers\"")
    );
    // Not granted and not there: the same 403, so what exists does not show.
    gw.call_as(&one, "fleet.cluster.nothing_here", json!({})).await.assert_error(403, "tool_not_permitted");
    assert_eq!(gw.call_as(&one, "fleet.cluster.summary", json!({"cluster_id": "cluster-b"})).await.status, 200);

    // Every cluster, but admin only with its scope.
    let all = sign(&k, &claims(json!({"sluice_clusters": "*", "scope": "sluice:tools:*"})));
    let admin = sign(&k, &claims(json!({"scope": "sluice:clusters:* sluice:admin sluice:tools:*", "jti": "jti-admin"})));
    for (path, method, body) in [("/api/v2/admin/plugins", "GET", None), ("/api/v2/sql", "POST", Some(r#"{"sql":"SELECT 1 AS x"}"#))] {
        let r = gw.request_with(Some(&format!("Bearer {all}")), method, path, body).await;
        r.assert_error(403, "admin_permission_required");
        assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"insufficient_scope\", scope=\"sluice:admin\""));
        let r = gw.request_with(Some(&format!("Bearer {admin}")), method, path, body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    let whoami = get(&gw, &all, "/api/v2/whoami").await;
    assert_eq!(whoami.body["capabilities"], json!({"sql": false, "tools": true, "admin": false}));
    assert_eq!(get(&gw, &admin, "/api/v2/whoami").await.body["capabilities"]["admin"], true);

    // No cluster claim means no cluster: nothing to read, nothing to write.
    let none = sign(&k, &claims(json!({"scope": "sluice:tools:*"})));
    gw.call_as(&none, "fleet.cluster.summary", json!({})).await.assert_error(403, "tenant_scoped_bearer_refused");
    assert_eq!(get(&gw, &none, "/api/v2/whoami").await.body["capabilities"]["tools"], false);
    // No tool scope means no tool.
    let no_tools = sign(&k, &claims(json!({"sluice_clusters": "*"})));
    assert!(tool_names(&get(&gw, &no_tools, "/api/v2/tools/list").await).is_empty());

    // Audit lines name the issuer, subject and token id, never the token.
    let calls = gw.audit_lines("tool_call");
    let line = calls.iter().find(|l| l["issuer"] == ISSUER).expect("a JWT caller's tool_call line");
    assert_eq!((&line["subject"], &line["jti"], &line["bearer_key_name"]), (&json!("agent-7"), &json!("jti-1"), &json!("agent-7")));
    let audit = serde_json::to_string(&*gw.audit.lock().unwrap()).unwrap();
    for t in [&tenant, &one, &all, &admin, &none] {
        assert!(!audit.contains(t.as_str()) && !audit.contains(t.split('.').nth(2).unwrap()), "a token reached the audit log");
    }
}

#[tokio::test]
async fn refused_tokens_get_401_with_a_reason_each_audited_and_counted() {
    // RSA and EC key generation by openssl: latency-asserting tests wait.
    let _cpu = crate::common::shared_cpu().await;
    let dir = TempDir::new("jwt-refused");
    let (k, ec, ed) = (key(&dir, "k1", Algorithm::RS256), key(&dir, "e1", Algorithm::ES256), key(&dir, "d1", Algorithm::EdDSA));
    let idp = idp(&[&k, &ec, &ed]).await;
    let gw = gateway(&[url_issuer(&idp)]);
    let grant = json!({"sluice_clusters": "*", "scope": "sluice:tools:*"});

    // Each default algorithm verifies.
    for key in [&k, &ec, &ed] {
        let r = gw.call_as(&sign(key, &claims(grant.clone())), "fleet.cluster.summary", json!({"cluster_id": "cluster-a"})).await;
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.text);
    }

    let valid = sign(&k, &claims(grant.clone()));
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    parts[1] = b64(claims(json!({"sluice_clusters": "*", "scope": "sluice:tools:* sluice:admin"})).to_string().as_bytes());
    let tampered = parts.join(".");
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims(grant.clone()).to_string().as_bytes()));
    let hs256 = jsonwebtoken::encode(
        &Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) },
        &claims(grant.clone()),
        &EncodingKey::from_secret(&k.public_pem).unwrap(),
    )
    .unwrap();
    let unpublished = key(&dir, "k9", Algorithm::RS256);
    let other_idp = key(&dir, "c1", Algorithm::RS256);
    let cases = [
        ("expired", sign(&k, &claims(json!({"exp": now() - 3600, "sluice_clusters": "*"})))),
        ("not_yet_valid", sign(&k, &claims(json!({"nbf": now() + 3600, "sluice_clusters": "*"})))),
        ("wrong_issuer", sign(&k, &claims(json!({"iss": "https://evil.test/"})))),
        ("wrong_issuer", sign(&other_idp, &claims(json!({"iss": "https://idp-c.test/"})))),
        ("wrong_audience", sign(&k, &claims(json!({"aud": "someone-else"})))),
        ("missing_claim", sign(&k, &json!({"iss": ISSUER, "sub": "x", "exp": now() + 60}))),
        ("algorithm_refused", none),
        ("algorithm_refused", hs256),
        ("unknown_key", sign(&unpublished, &claims(grant.clone()))),
        ("bad_signature", tampered),
    ];
    for (want, token) in &cases {
        let fetches = idp.fetches.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await; // past min_refresh_interval
        let r = gw.call_as(token, "fleet.cluster.summary", json!({})).await;
        r.assert_error(401, "invalid_bearer");
        assert_eq!(r.body["reason"], *want, "{}", r.text);
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""), "{challenge}");
        assert!(challenge.contains("resource_metadata=\"http://localhost/.well-known/oauth-protected-resource\""), "{challenge}");
        // An unknown key is looked for once more before the token is refused; nothing else fetches.
        let fetched = idp.fetches.load(Ordering::SeqCst) - fetches;
        assert_eq!(fetched, usize::from(*want == "unknown_key"), "{want}");
        let line = gw.audit_lines("auth_failure").pop().unwrap();
        assert_eq!(line["reason"], *want);
        assert_eq!(line["bearer_hash"], crate::common::sha256_hex(token.as_bytes()));
    }
    // Within min_refresh_interval of that fetch, another unknown key fetches nothing: tokens
    // with made-up key ids cannot make Sluice hammer the identity provider.
    // (min_refresh_interval is 100 ms here: at most one fetch per 100 ms of these calls.)
    let (fetches, started) = (idp.fetches.load(Ordering::SeqCst), std::time::Instant::now());
    for i in 0..10 {
        let r = gw.call_as(&sign(&unpublished, &claims(json!({"jti": format!("again-{i}")}))), "fleet.cluster.summary", json!({})).await;
        assert_eq!(r.body["reason"], "unknown_key");
    }
    let allowed = 1 + started.elapsed().as_millis() as usize / 100;
    let fetched = idp.fetches.load(Ordering::SeqCst) - fetches;
    assert!(fetched <= allowed.min(9), "{fetched} fetches for 10 unknown keys in {:?}", started.elapsed());
    let metrics = gw.request("GET", "/metrics", None).await.text;
    for want in ["expired", "not_yet_valid", "wrong_audience", "bad_signature", "missing_claim"] {
        let line = format!("sluice_authentications_total{{method=\"jwt\",outcome=\"{want}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in metrics");
    }
    assert!(metrics.contains("sluice_authentications_total{method=\"jwt\",outcome=\"algorithm_refused\"} 2"));
    assert!(metrics.contains("sluice_authentications_total{method=\"jwt\",outcome=\"unknown_key\"} 11"));
    assert!(metrics.contains("sluice_authentications_total{method=\"jwt\",outcome=\"ok\"} 3"));
    // A static token still works, and an unknown opaque one is the contract's plain 401.
    assert_eq!(gw.call_as(TENANT_TOKEN, "fleet.cluster.summary", json!({})).await.status, 200);
    let r = gw.call_as("not-a-token", "fleet.cluster.summary", json!({})).await;
    r.assert_error(401, "invalid_bearer");
    assert!(r.body.get("reason").is_none(), "{}", r.text);
}

#[tokio::test]
async fn keys_rotate_without_a_restart_and_a_dead_jwks_keeps_the_keys_in_hand() {
    // RSA and EC key generation by openssl: latency-asserting tests wait.
    let _cpu = crate::common::shared_cpu().await;
    let dir = TempDir::new("jwt-rotate");
    let (old, new) = (key(&dir, "2026-10", Algorithm::RS256), key(&dir, "2026-11", Algorithm::ES256));
    let idp = idp(&[&old]).await;
    // A second issuer whose keys are a watched file.
    let file = dir.path().join("jwks.json");
    let f1 = key(&dir, "f1", Algorithm::EdDSA);
    std::fs::write(&file, json!({"keys": [f1.jwk]}).to_string()).unwrap();
    let file_issuer = format!("issuer = \"https://files.test\"\naudiences = [{AUDIENCE:?}]\njwks_file = {file:?}");
    let gw = gateway(&[url_issuer(&idp), file_issuer]);
    let grant = json!({"sluice_clusters": "*", "scope": "sluice:tools:*"});
    let call = |t: String| {
        let gw = &gw;
        async move { gw.call_as(&t, "fleet.cluster.summary", json!({"cluster_id": "cluster-a"})).await }
    };
    let by_old = sign(&old, &claims(grant.clone()));
    assert_eq!(call(by_old.clone()).await.status, 200);

    // The IdP publishes the new key and retires the old one: new tokens work at once, old ones
    // stop once their key is gone (fetched again when the unknown key shows up).
    *idp.keys.lock().unwrap() = vec![new.jwk.clone()];
    tokio::time::sleep(Duration::from_millis(150)).await;
    let by_new = sign(&new, &claims(grant.clone()));
    assert_eq!(call(by_new.clone()).await.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = call(by_old.clone()).await;
    r.assert_error(401, "invalid_bearer");
    assert_eq!(r.body["reason"], "unknown_key");

    // The IdP goes down: a fetch for another unknown key fails, the keys in hand stay and say so.
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stranger = key(&dir, "2026-12", Algorithm::RS256);
    assert_eq!(call(sign(&stranger, &claims(grant.clone()))).await.body["reason"], "unknown_key");
    assert_eq!(call(by_new.clone()).await.status, 200);
    assert_eq!(call(sign(&new, &claims(json!({"sluice_clusters": "*", "scope": "sluice:tools:*", "jti": "fresh"})))).await.status, 200);
    let metrics = gw.request("GET", "/metrics", None).await.text;
    assert!(metrics.contains(&format!("sluice_jwks_stale{{issuer=\"{ISSUER}\"}} 1")), "{metrics}");
    assert!(metrics.contains(&format!("sluice_jwks_refreshes_total{{issuer=\"{ISSUER}\",outcome=\"failed\"}} 1")));
    // Back up: the next fetch clears the flag.
    idp.down.store(false, Ordering::SeqCst);
    *idp.keys.lock().unwrap() = vec![new.jwk.clone(), stranger.jwk.clone()];
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(call(sign(&stranger, &claims(grant.clone()))).await.status, 200);
    let metrics = gw.request("GET", "/metrics", None).await.text;
    assert!(metrics.contains(&format!("sluice_jwks_stale{{issuer=\"{ISSUER}\"}} 0")));

    // The file issuer: its tokens work, and a rewritten file brings its new key without a restart.
    let file_claims = |extra: Value| {
        let mut c = claims(extra);
        c["iss"] = json!("https://files.test");
        c
    };
    assert_eq!(call(sign(&f1, &file_claims(grant.clone()))).await.status, 200);
    let f2 = key(&dir, "f2", Algorithm::RS256);
    std::fs::write(&file, json!({"keys": [f2.jwk]}).to_string()).unwrap();
    let by_f2 = sign(&f2, &file_claims(grant.clone()));
    let mut status = 0;
    for _ in 0..100 {
        status = call(by_f2.clone()).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the rewritten JWKS file was not picked up");
}

#[tokio::test]
async fn protected_resource_metadata_and_challenges_follow_rfc_9728() {
    // RSA and EC key generation by openssl: latency-asserting tests wait.
    let _cpu = crate::common::shared_cpu().await;
    let dir = TempDir::new("jwt-metadata");
    let k = key(&dir, "k1", Algorithm::ES256);
    let idp = idp(&[&k]).await;
    let gw = gateway(&[url_issuer(&idp)]);
    let host = [("host", "sluice.test:8443")];
    let r = gw.request_raw("GET", "/.well-known/oauth-protected-resource", &host, vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["resource"], "http://sluice.test:8443");
    assert_eq!(r.body["authorization_servers"], json!([ISSUER]));
    assert_eq!(r.body["bearer_methods_supported"], json!(["header"]));
    let scopes = r.body["scopes_supported"].as_array().unwrap();
    assert!(scopes.contains(&json!("sluice:admin")) && scopes.contains(&json!("sluice:tools:*")), "{scopes:?}");
    let r = gw.request_raw("GET", "/.well-known/oauth-protected-resource/mcp", &host, vec![]).await;
    assert_eq!(r.body["resource"], "http://sluice.test:8443/mcp");
    // A 401 points at the metadata of the resource that was asked for.
    let r = gw.request_raw("POST", "/mcp", &host, b"{}".to_vec()).await;
    r.assert_error(401, "missing_bearer");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\", resource_metadata=\"http://sluice.test:8443/.well-known/oauth-protected-resource/mcp\"")
    );
    // A Host that cannot be quoted safely gets no URL at all.
    let r = gw.request_raw("POST", "/mcp", &[("host", "evil\".test")], b"{}".to_vec()).await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));

    // With the resource configured, that is the identifier whatever the Host.
    let mut jwt: sluice::auth::jwt::JwtConfig = toml::from_str(&format!("[[issuers]]\n{}", url_issuer(&idp))).unwrap();
    jwt.resource = Some("https://sluice.example.com/".into());
    let gw2 = TestGateway::start(GatewayOptions { configure: Box::new(move |c| c.auth.jwt = jwt), ..GatewayOptions::default() });
    let r = gw2.request_raw("GET", "/.well-known/oauth-protected-resource", &host, vec![]).await;
    assert_eq!(r.body["resource"], "https://sluice.example.com");

    // Without identity providers nothing changes: no metadata, the contract's plain challenge.
    let plain = TestGateway::start(GatewayOptions::default());
    plain.request_raw("GET", "/.well-known/oauth-protected-resource", &[], vec![]).await.assert_error(404, "not_found");
    let r = plain.request_raw("POST", "/mcp", &host, b"{}".to_vec()).await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
}

#[tokio::test]
async fn configuration_refuses_what_would_be_unsafe_and_names_the_key() {
    let base = |extra: &str| format!("[[issuers]]\nissuer = \"https://i\"\naudiences = [\"a\"]\n{extra}\n");
    for (extra, says) in [
        ("jwks_url = \"http://idp.example.com/jwks\"", "plain http only to a loopback address"),
        ("jwks_url = \"https://i/jwks\"\nalgorithms = [\"HS256\"]", "HMAC) is never accepted"),
        ("jwks_url = \"https://i/jwks\"\nalgorithms = [\"none\"]", "unknown algorithm"),
        ("", "exactly one of jwks_url and jwks_file"),
        ("jwks_url = \"https://i/jwks\"\njwks_file = \"/x\"", "exactly one of jwks_url and jwks_file"),
    ] {
        let c: sluice::auth::jwt::JwtConfig = toml::from_str(&base(extra)).unwrap();
        let err = c.check().unwrap_err();
        assert!(err.contains(says) && err.contains("auth.jwt.issuers[0]"), "{extra}: {err}");
    }
    let c: sluice::auth::jwt::JwtConfig = toml::from_str("[[issuers]]\nissuer = \"https://i\"\naudiences = []\njwks_file = \"/x\"").unwrap();
    assert!(c.check().unwrap_err().contains("audiences"));
    assert!(toml::from_str::<sluice::auth::jwt::JwtConfig>(&base("jwks_file = \"/x\"\nclaims = 1")).is_err(), "unknown keys are refused");
    assert!(c.check().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_mcp_sdk_with_a_jwt_lists_and_calls_only_the_permitted_tools() {
    let _cpu = crate::common::shared_cpu().await;
    let dir = TempDir::new("jwt-python");
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    for c in ["fleet-cluster-summary", "fleet-cluster-find-stragglers", "trivial"] {
        std::fs::copy(component(c), dir.path().join(format!("plugins/{c}.wasm"))).unwrap();
    }
    let seeded = Command::new(crate::common::sluice_bin())
        .current_dir(dir.path())
        .args(["demo", "seed", "--db", "fleet.duckdb", "--clusters", "2", "--nodes", "3", "--hours", "2"])
        .output()
        .unwrap();
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    std::fs::write(dir.path().join("token"), format!("{}\n", crate::binary::TOKEN)).unwrap();
    let k = key(&dir, "k1", Algorithm::EdDSA);
    std::fs::write(dir.path().join("jwks.json"), json!({"keys": [k.jwk]}).to_string()).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("[plugins]\nwatch = false\n[[auth.jwt.issuers]]\nissuer = {ISSUER:?}\naudiences = [{AUDIENCE:?}]\njwks_file = \"jwks.json\"\n"),
    )
    .unwrap();
    let server = crate::binary::Server::start(&dir, &["--config", "sluice.toml"]);
    let token = sign(&k, &claims(json!({"sluice_clusters": ["cluster-a"], "scope": "sluice:tools:fleet.cluster.find_* sluice:tools:fleet.cluster.summary"})));
    let sdk = std::env::var("SLUICE_MCP_PYTHON").expect("SLUICE_MCP_PYTHON is not set: run the tests with `scripts/dev test`");
    let script = crate::common::root().join("tests/mcp/python_client.py");
    for (mode, path) in [("legacy", "/mcp"), ("2026-07-28", "/")] {
        let url = format!("{}{path}", server.api);
        let out = Command::new("python3")
            .arg(&script)
            .args([url.as_str(), token.as_str(), mode, "fleet.cluster.summary"])
            .env("SLUICE_MCP_PYTHON", &sdk)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["tools"], json!(["fleet.cluster.find_stragglers", "fleet.cluster.summary"]), "{mode}: {v}");
        assert_eq!(v["is_error"], false, "{mode}: {v}");
        let rows = v["structured"]["rows"].as_array().unwrap();
        assert!(!rows.is_empty() && rows.iter().all(|r| r["cluster_id"] == "cluster-a"), "{mode}: {v}");
    }
}
