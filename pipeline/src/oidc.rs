//! OpenID Connect sign-in to the staff console, against the hospital's identity provider:
//! the authorization code flow with PKCE (RFC 7636, `S256`), `state` and `nonce`, and the ID
//! token checked as OpenID Connect Core 3.1.3.7 asks (signature by a key of the provider's JWKS,
//! `iss`, `aud`, `exp`, `nonce`; asymmetric algorithms only).
//!
//! The provider authenticates; authorisation stays local. A person gets a session only when a
//! local account of the same name (the configured claim, `preferred_username` by default) exists
//! and is not disabled: its role and sites apply, and disabling it locks the person out whatever
//! the provider says. Nothing of a token is logged or put in an error.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::accounts::new_token;

/// How long a sign-in at the provider may take (the pending cookie's life).
pub const PENDING_FOR: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

/// How the console signs in with the provider (`[console.oidc]`).
#[derive(Clone)]
pub struct OidcSettings {
    /// The provider's issuer URL; its discovery document is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// The client secret (`client_secret_basic`); `None`: a public client (PKCE only).
    pub client_secret: Option<String>,
    /// This console's callback, `https://console.example/oidc/callback`, as registered.
    pub redirect_url: String,
    /// Scopes asked for (`openid` is always included).
    pub scopes: Vec<String>,
    /// The ID token claim that names the local account.
    pub username_claim: String,
    /// What the sign-in button says ("Sign in with <display_name>").
    pub display_name: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<set>"),
            )
            .field("redirect_url", &self.redirect_url)
            .field("username_claim", &self.username_claim)
            .finish_non_exhaustive()
    }
}

/// Why a sign-in with the provider failed. The texts name what was wrong, never a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider answered {0}")]
    Provider(String),
    #[error("the sign-in was not started here, expired, or was tampered with")]
    BadState,
    #[error("the ID token was refused: {0}")]
    BadToken(String),
}

/// A sign-in under way: what the browser carries (in a signed, HttpOnly cookie) from the
/// redirect to the provider until the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier (the provider saw only its SHA-256).
    pub verifier: String,
    pub expires: Timestamp,
}

fn mac(key: &[u8], body: &str) -> String {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body.as_bytes());
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

impl PendingLogin {
    /// A fresh state, nonce and verifier, valid for [`PENDING_FOR`].
    pub fn new(now: Timestamp) -> PendingLogin {
        PendingLogin {
            state: new_token(),
            nonce: new_token(),
            verifier: new_token(),
            expires: now + PENDING_FOR,
        }
    }

    /// The cookie value: the fields and an HMAC over them with `key`.
    pub fn seal(&self, key: &[u8]) -> String {
        let body = format!(
            "v1.{}.{}.{}.{}",
            self.state,
            self.nonce,
            self.verifier,
            self.expires.as_second()
        );
        let sig = mac(key, &body);
        format!("{body}.{sig}")
    }

    /// Back from [`PendingLogin::seal`]: `None` when forged, altered or expired.
    pub fn open(raw: &str, key: &[u8], now: Timestamp) -> Option<PendingLogin> {
        let (body, sig) = raw.rsplit_once('.')?;
        if !medrelay_listener::same(mac(key, body).as_bytes(), sig.as_bytes()) {
            return None;
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(state), Some(nonce), Some(verifier), Some(exp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let expires = Timestamp::from_second(exp.parse().ok()?).ok()?;
        (now < expires).then(|| PendingLogin {
            state: state.to_owned(),
            nonce: nonce.to_owned(),
            verifier: verifier.to_owned(),
            expires,
        })
    }

    /// The PKCE `code_challenge` (`S256`).
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }
}

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug)]
struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The console's OpenID Connect client.
pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    provider: Mutex<Option<Provider>>,
    keys: Mutex<Option<JwkSet>>,
}

/// Algorithms an ID token may be signed with: asymmetric only (never `none`, never an HMAC with
/// a secret an attacker might know).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("a constant URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

impl Oidc {
    /// A client for `settings`; the provider is asked for its endpoints on first use.
    pub fn new(settings: OidcSettings) -> Result<Oidc, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("medrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        Ok(Oidc {
            settings,
            http,
            provider: Mutex::new(None),
            keys: Mutex::new(None),
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    async fn get_json(&self, url: &str) -> Result<Value, OidcError> {
        let r = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        if !r.status().is_success() {
            return Err(OidcError::Provider(format!("HTTP {}", r.status().as_u16())));
        }
        r.json()
            .await
            .map_err(|_| OidcError::Provider("an answer that is not JSON".into()))
    }

    async fn provider(&self) -> Result<Provider, OidcError> {
        let mut cached = self.provider.lock().await;
        if let Some(p) = cached.as_ref() {
            return Ok(p.clone());
        }
        let issuer = self.settings.issuer.trim_end_matches('/');
        let doc = self
            .get_json(&format!("{issuer}/.well-known/openid-configuration"))
            .await?;
        // OpenID Connect Discovery 4.3: the document's issuer is exactly the configured one.
        if doc["issuer"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer) {
            return Err(OidcError::Provider(
                "a discovery document for another issuer".into(),
            ));
        }
        let field = |name: &str| {
            doc[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| OidcError::Provider(format!("a discovery document without {name}")))
        };
        let p = Provider {
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            jwks_uri: field("jwks_uri")?,
        };
        *cached = Some(p.clone());
        Ok(p)
    }

    /// Where to send the browser to sign in for `pending`.
    pub async fn authorization_url(&self, pending: &PendingLogin) -> Result<String, OidcError> {
        let p = self.provider().await?;
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(
            self.settings
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .cloned(),
        );
        let mut url = reqwest::Url::parse(&p.authorization_endpoint).map_err(|_| {
            OidcError::Provider("an authorization_endpoint that is not a URL".into())
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.settings.redirect_url)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &pending.challenge())
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// The key of the provider's JWKS named `kid` (the set is fetched again once for a key it
    /// does not have: the provider rotated its keys).
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, OidcError> {
        let p = self.provider().await?;
        for fresh in [false, true] {
            let mut keys = self.keys.lock().await;
            if fresh || keys.is_none() {
                let set: JwkSet = serde_json::from_value(self.get_json(&p.jwks_uri).await?)
                    .map_err(|_| OidcError::Provider("a JWKS that cannot be read".into()))?;
                *keys = Some(set);
            }
            let set = keys.as_ref().expect("just set");
            let found = match kid {
                Some(kid) => set.find(kid),
                // No kid: the one key of the set that fits the algorithm.
                None => set.keys.iter().find(|k| {
                    k.common
                        .key_algorithm
                        .is_none_or(|a| a.to_string() == format!("{alg:?}"))
                }),
            };
            if let Some(jwk) = found {
                return DecodingKey::from_jwk(jwk)
                    .map_err(|_| OidcError::BadToken("a JWKS key that cannot be used".into()));
            }
        }
        Err(OidcError::BadToken(
            "signed by a key the provider does not publish".into(),
        ))
    }

    /// Exchanges the callback's `code` for tokens and checks the ID token against `pending`.
    /// Returns the local account name it names.
    pub async fn finish(
        &self,
        code: &str,
        pending: &PendingLogin,
        now: Timestamp,
    ) -> Result<String, OidcError> {
        let p = self.provider().await?;
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_url.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        if self.settings.client_secret.is_none() {
            pairs.push(("client_id", self.settings.client_id.as_str()));
        }
        let mut request = self
            .http
            .post(&p.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form(&pairs));
        if let Some(secret) = &self.settings.client_secret {
            request = request.basic_auth(&self.settings.client_id, Some(secret));
        }
        let r = request
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            // RFC 6749 5.2: `error` is a code from a closed list; its description is not shown.
            let code = body["error"]
                .as_str()
                .filter(|e| e.len() <= 40 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .unwrap_or("an error");
            return Err(OidcError::Provider(format!(
                "HTTP {status} ({code}) to the code"
            )));
        }
        let id_token = body["id_token"]
            .as_str()
            .ok_or_else(|| OidcError::BadToken("the token answer has no id_token".into()))?;
        self.check_id_token(id_token, pending, now).await
    }

    /// OpenID Connect Core 3.1.3.7 for an ID token from the token endpoint.
    async fn check_id_token(
        &self,
        id_token: &str,
        pending: &PendingLogin,
        now: Timestamp,
    ) -> Result<String, OidcError> {
        let bad = |why: &str| OidcError::BadToken(why.to_owned());
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| bad("not a JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(bad("signed with an algorithm that is not accepted"));
        }
        let key = self.key(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[
            self.settings.issuer.trim_end_matches('/'),
            &self.settings.issuer,
        ]);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 60;
        // `exp` is checked against our clock (a test runs on a manual one).
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => bad("issued by another issuer"),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    bad("issued for another client")
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    bad("the signature does not verify")
                }
                _ => bad("its claims cannot be read"),
            })?
            .claims;
        let exp = claims["exp"].as_i64().ok_or_else(|| bad("no exp"))?;
        if now.as_second() > exp + 60 {
            return Err(bad("expired"));
        }
        // With several audiences, `azp` must be us.
        if claims["aud"].as_array().is_some_and(|a| a.len() > 1)
            && claims["azp"].as_str() != Some(self.settings.client_id.as_str())
        {
            return Err(bad("issued to another party (azp)"));
        }
        let nonce = claims["nonce"].as_str().unwrap_or_default();
        if !medrelay_listener::same(nonce.as_bytes(), pending.nonce.as_bytes()) {
            return Err(bad("its nonce is not this sign-in's"));
        }
        claims[self.settings.username_claim.as_str()]
            .as_str()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| bad("it does not carry the configured username claim"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_sign_in_round_trips_and_a_forged_or_expired_one_does_not() {
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let p = PendingLogin::new(now);
        let sealed = p.seal(b"key");
        assert_eq!(PendingLogin::open(&sealed, b"key", now), Some(p.clone()));
        assert_eq!(PendingLogin::open(&sealed, b"other", now), None);
        let tampered = sealed.replacen(&p.state, &new_token(), 1);
        assert_eq!(PendingLogin::open(&tampered, b"key", now), None);
        assert_eq!(
            PendingLogin::open(&sealed, b"key", now + PENDING_FOR),
            None,
            "expired"
        );
        // RFC 7636 appendix B: the S256 challenge of its example verifier.
        let rfc = PendingLogin {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            ..p
        };
        assert_eq!(
            rfc.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
