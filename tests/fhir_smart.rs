//! SMART Backend Services against a local token endpoint, for both algorithms SMART requires
//! (ES384, RS384), configured as a site would (`[connectors.server.smart]`):
//!
//! - the token endpoint checks every client assertion the way an EHR does: signature against the
//!   JWK Set `medrelay fhir jwks` printed (found by `kid`), `iss` = `sub` = client id, `aud` = the
//!   token endpoint, `exp` at most five minutes ahead, `jti` never seen before;
//! - the FHIR server takes only tokens the endpoint issued and not revoked;
//! - medrelay caches its token, renews it before it expires, fetches a new one once when a request
//!   is answered 401, and a write-back that a fresh token does not cure is retryable, never a
//!   refused reply; no token and no assertion reach an error string.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use medrelay::config::load;
use medrelay_connector_fhir::server::PatchError;
use serde_json::{Value, json};

const CLIENT_ID: &str = "medrelay-test-client";

#[derive(Default)]
struct Ehr {
    token_url: String,
    jwks: Option<JwkSet>,
    /// Tokens issued, in order.
    issued: Vec<String>,
    /// Tokens the FHIR server takes.
    valid: HashSet<String>,
    jtis: HashSet<String>,
    /// `expires_in` of new tokens.
    lifetime: u64,
    /// The FHIR server answers 401 whatever the token.
    refuse_all: bool,
    /// Assertions refused, with why.
    refused: Vec<String>,
}

type Shared = Arc<Mutex<Ehr>>;

fn oauth_error(why: String, ehr: &mut Ehr) -> Response {
    ehr.refused.push(why);
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_client"})),
    )
        .into_response()
}

async fn token(State(ehr): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut ehr = ehr.lock().unwrap();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        || field("scope").is_empty()
    {
        return oauth_error("form".into(), &mut ehr);
    }
    let assertion = field("client_assertion");
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return oauth_error("header".into(), &mut ehr);
    };
    let Some(jwk) = header
        .kid
        .as_deref()
        .and_then(|kid| ehr.jwks.as_ref()?.find(kid).cloned())
    else {
        return oauth_error("unknown kid".into(), &mut ehr);
    };
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[ehr.token_url.clone()]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = match jsonwebtoken::decode::<Value>(
        assertion,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    ) {
        Ok(t) => t.claims,
        Err(e) => return oauth_error(format!("signature or claims: {e}"), &mut ehr),
    };
    let now = jiff::Timestamp::now().as_second();
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let jti = claims["jti"].as_str().unwrap_or("").to_owned();
    if claims["sub"] != CLIENT_ID || exp > now + 300 || jti.is_empty() || !ehr.jtis.insert(jti) {
        return oauth_error(format!("claims {claims}"), &mut ehr);
    }
    let token = format!("tok-{}-{}", ehr.issued.len() + 1, uuid_like(now));
    ehr.issued.push(token.clone());
    ehr.valid.insert(token.clone());
    Json(json!({
        "access_token": token, "token_type": "bearer",
        "expires_in": ehr.lifetime, "scope": field("scope"),
    }))
    .into_response()
}

fn uuid_like(n: i64) -> String {
    format!("{:x}", n.wrapping_mul(0x9e37_79b9))
}

fn authorised(ehr: &Ehr, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    !ehr.refuse_all && given.is_some_and(|t| ehr.valid.contains(t))
}

async fn read(
    State(ehr): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&ehr.lock().unwrap(), &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"resourceType": "Appointment", "id": id, "status": "booked"})).into_response()
}

async fn patch(State(ehr): State<Shared>, headers: HeaderMap) -> Response {
    if !authorised(&ehr.lock().unwrap(), &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"resourceType": "Appointment", "meta": {"versionId": "2"}})).into_response()
}

/// The token endpoint and the FHIR server on one loopback port.
async fn start_ehr() -> (String, Shared) {
    let ehr: Shared = Arc::default();
    let app = Router::new()
        .route("/oauth2/token", post(token))
        .route("/fhir/Appointment/{id}", get(read).patch(patch))
        .with_state(ehr.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    {
        let mut e = ehr.lock().unwrap();
        e.token_url = format!("{base}/oauth2/token");
        e.lifetime = 3600;
    }
    (base, ehr)
}

/// The sample site with the FHIR connector's server behind SMART (`algorithm`, key `key`).
fn site(dir: &std::path::Path, base: &str, algorithm: &str, key: &str) -> std::path::PathBuf {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let key = common::root().join("tests/fixtures/smart").join(key);
    let text = std::fs::read_to_string(&path).unwrap();
    let from = "# [connectors.server]\n# base_url = \"https://ehr.clinica.example/fhir/R4\"";
    assert!(text.contains(from));
    let text = text.replace(
        from,
        &format!(
            "[connectors.server]\nbase_url = \"{base}/fhir\"\n\
             [connectors.server.smart]\ntoken_url = \"{base}/oauth2/token\"\nclient_id = \"{CLIENT_ID}\"\n\
             scope = \"system/Appointment.rs system/Appointment.u\"\nprivate_key = \"{}\"\nalgorithm = \"{algorithm}\"",
            key.display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn smart_flow(algorithm: &str, key: &str) {
    let (base, ehr) = start_ehr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = site(dir.path(), &base, algorithm, key);
    // The EHR registers medrelay's public key from `medrelay fhir jwks`.
    let (code, out) = common::cli_with_config(
        path.to_str().unwrap(),
        &["fhir", "jwks", "--connector", "clinica-fhir"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("PRIVATE"), "{out}");
    let jwks: JwkSet = serde_json::from_str(&out).unwrap();
    assert_eq!(jwks.keys.len(), 1);
    assert!(jwks.keys[0].common.key_id.is_some());
    ehr.lock().unwrap().jwks = Some(jwks);

    let loaded = load(&path).unwrap();
    let c = loaded.fhir_connector(Some("clinica-fhir")).unwrap();
    let server = medrelay::fhir::server(&loaded, c).unwrap().unwrap();
    let issued = || ehr.lock().unwrap().issued.clone();

    // Two requests, one token.
    for id in ["ag-1", "ag-2"] {
        let r = server.get_json(&format!("Appointment/{id}")).await.unwrap();
        assert_eq!(r["id"], id);
    }
    assert_eq!(issued().len(), 1, "the token is cached");
    // The same client serves write-back (one SMART client per connector): still one token.
    let again = medrelay::fhir::server(&loaded, c).unwrap().unwrap();
    again.get_json("Appointment/ag-3").await.unwrap();
    assert_eq!(issued().len(), 1, "shared by every use of the connector");

    // The EHR revokes the token: the next request is answered 401, a new token is fetched once,
    // and the request goes through.
    {
        let mut e = ehr.lock().unwrap();
        let t = e.issued[0].clone();
        e.valid.remove(&t);
    }
    server.get_json("Appointment/ag-4").await.unwrap();
    assert_eq!(issued().len(), 2, "one refresh after the 401");

    // Short lifetimes are renewed before they run out (half-way for a 2 s token).
    ehr.lock().unwrap().lifetime = 2;
    {
        let mut e = ehr.lock().unwrap();
        let t = e.issued[1].clone();
        e.valid.remove(&t);
    }
    server.get_json("Appointment/ag-5").await.unwrap();
    assert_eq!(issued().len(), 3);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    server.get_json("Appointment/ag-6").await.unwrap();
    assert_eq!(issued().len(), 4, "renewed before expiry, without a 401");
    ehr.lock().unwrap().lifetime = 3600;

    // The FHIR server refuses every token: one new token per request, then the failure; a
    // write-back is retried later, never recorded as refused. No token in the errors.
    ehr.lock().unwrap().refuse_all = true;
    let before = issued().len();
    let e = server.get_json("Appointment/ag-7").await.unwrap_err();
    assert!(e.contains("401"), "{e}");
    assert_eq!(issued().len(), before + 1, "exactly one refresh");
    let p = server
        .patch(
            "Appointment/ag-7",
            &json!([{"op": "replace", "path": "/status", "value": "booked"}]),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(p, PatchError::Retryable(_)), "{p:?}");
    for shown in [e, p.to_string()] {
        assert!(!shown.contains("tok-"), "{shown}");
        assert!(!shown.contains("eyJ"), "an assertion in {shown}");
    }
    ehr.lock().unwrap().refuse_all = false;
    let ok = server
        .patch(
            "Appointment/ag-7",
            &json!([{"op": "replace", "path": "/status", "value": "booked"}]),
            Some("1"),
        )
        .await
        .unwrap();
    assert_eq!(ok.as_deref(), Some("2"));
    assert!(
        ehr.lock().unwrap().refused.is_empty(),
        "every assertion passed the EHR's checks: {:?}",
        ehr.lock().unwrap().refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es384_assertions_get_tokens_that_are_cached_renewed_and_refreshed_once_on_401() {
    smart_flow("ES384", "es384.pem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs384_assertions_get_tokens_that_are_cached_renewed_and_refreshed_once_on_401() {
    smart_flow("RS384", "rs384.pem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_ehr_does_not_know_gets_no_token_and_the_error_says_why_without_the_assertion() {
    let (base, ehr) = start_ehr().await;
    let dir = tempfile::tempdir().unwrap();
    // Registered: the RSA key. Configured: the EC key.
    let registered = site(dir.path(), &base, "RS384", "rs384.pem");
    let (_, out) = common::cli_with_config(
        registered.to_str().unwrap(),
        &["fhir", "jwks", "--connector", "clinica-fhir"],
    )
    .await;
    ehr.lock().unwrap().jwks = Some(serde_json::from_str(&out).unwrap());
    let other = tempfile::tempdir().unwrap();
    let path = site(other.path(), &base, "ES384", "es384.pem");
    let loaded = load(&path).unwrap();
    let c = loaded.fhir_connector(Some("clinica-fhir")).unwrap();
    let server = medrelay::fhir::server(&loaded, c).unwrap().unwrap();
    let e = server.get_json("Appointment/ag-1").await.unwrap_err();
    assert!(
        e.contains("token endpoint answered 401") && e.contains("invalid_client"),
        "{e}"
    );
    assert!(!e.contains("eyJ"), "{e}");
    assert_eq!(ehr.lock().unwrap().refused, ["unknown kid"]);
}

#[test]
fn a_token_url_that_is_not_https_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = site(dir.path(), "http://ehr.example.org", "ES384", "es384.pem");
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("server.smart.token_url must be https://"), "{e}");
}
