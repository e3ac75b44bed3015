//! SMART Backend Services (HL7 SMART App Launch 2.x, "Backend Services"): how an EHR that does
//! not hand out static tokens lets a system like medrelay in. medrelay holds a private key; the EHR
//! knows its public key (registered as a JWKS, printed by `medrelay fhir jwks`). For a token,
//! medrelay signs a short-lived JWT (RS384 or ES384: `iss` = `sub` = client id, `aud` = the token
//! endpoint, `exp` at most five minutes ahead, a fresh `jti`) and posts it with
//! `grant_type=client_credentials` to the token endpoint, which answers an access token and its
//! lifetime.
//!
//! [`SmartAuth`] caches the token and fetches a new one before it expires (a minute early, or
//! half-way through a short lifetime); a request answered 401 drops the token it used, so the
//! caller's one retry gets a fresh one. Nothing of a token, the assertion or the key reaches a log,
//! an error string or `Debug`: errors carry the token endpoint's status and OAuth `error` code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderValue;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The signing algorithms SMART Backend Services requires servers to support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum SmartAlgorithm {
    RS384,
    ES384,
}

impl SmartAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            SmartAlgorithm::RS384 => Algorithm::RS384,
            SmartAlgorithm::ES384 => Algorithm::ES384,
        }
    }
}

/// What a SMART client needs: the token endpoint, its registration and its key.
#[derive(Clone)]
pub struct SmartSettings {
    /// The EHR's token endpoint (from its `.well-known/smart-configuration`).
    pub token_url: String,
    /// The client id the EHR registered for medrelay.
    pub client_id: String,
    /// Scopes asked for, e.g. `system/Appointment.rs system/Patient.rs system/Appointment.u`.
    pub scope: String,
    pub algorithm: SmartAlgorithm,
    /// The private key, PEM (PKCS#8; PKCS#1 for RSA and SEC1 for EC are read too).
    pub private_key_pem: Vec<u8>,
    /// The key id in the JWT header and the JWKS; default: the key's RFC 7638 thumbprint.
    pub kid: Option<String>,
    /// Timeout of one token request.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmartSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartSettings")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why no token: never the token, the assertion or the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmartError {
    #[error("the SMART private key is not a PEM {0} key")]
    Key(&'static str),
    #[error("the SMART token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the SMART token endpoint answered {status}{}", .oauth_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Refused {
        status: u16,
        /// The OAuth `error` code (`invalid_client`, `invalid_scope`...), when given.
        oauth_error: Option<String>,
    },
    #[error("the SMART token endpoint's answer has no usable access_token")]
    BadAnswer,
}

/// A cached access token: the `Authorization` value (marked sensitive) and when to renew it.
struct Cached {
    header: HeaderValue,
    renew_at: Instant,
}

/// The JWT claims of a client assertion.
#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
}

/// A SMART Backend Services client: signs assertions, fetches and caches access tokens.
pub struct SmartAuth {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    algorithm: SmartAlgorithm,
    key: EncodingKey,
    kid: String,
    jwk: Jwk,
    cached: Mutex<Option<Cached>>,
    fetched: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SmartAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartAuth")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Assertions live at most this long (SMART: no more than five minutes).
const ASSERTION_LIFETIME_S: i64 = 300;
/// A token is renewed this long before it expires (or half-way, for shorter lifetimes).
const RENEW_EARLY: Duration = Duration::from_secs(60);

impl SmartAuth {
    /// Reads the key and prepares the client; no request is made yet.
    pub fn new(settings: SmartSettings) -> Result<Arc<Self>, SmartError> {
        let (key, kind) = match settings.algorithm {
            SmartAlgorithm::RS384 => (EncodingKey::from_rsa_pem(&settings.private_key_pem), "RSA"),
            SmartAlgorithm::ES384 => (EncodingKey::from_ec_pem(&settings.private_key_pem), "EC"),
        };
        let key = key.map_err(|_| SmartError::Key(kind))?;
        let mut jwk = Jwk::from_encoding_key(&key, settings.algorithm.jwt())
            .map_err(|_| SmartError::Key(kind))?;
        let kid = settings
            .kid
            .clone()
            .unwrap_or_else(|| jwk.thumbprint(ThumbprintHash::SHA256));
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match settings.algorithm {
            SmartAlgorithm::RS384 => KeyAlgorithm::RS384,
            SmartAlgorithm::ES384 => KeyAlgorithm::ES384,
        });
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("medrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SmartError::Unreachable(e.without_url().to_string()))?;
        Ok(Arc::new(SmartAuth {
            http,
            token_url: settings.token_url,
            client_id: settings.client_id,
            scope: settings.scope,
            algorithm: settings.algorithm,
            key,
            kid,
            jwk,
            cached: Mutex::new(None),
            fetched: Default::default(),
        }))
    }

    /// The public key as a JWK Set, for the EHR's client registration.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// The key id the assertions carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Tokens fetched so far (for tests and `status`; never the tokens).
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The `Authorization` value to send: the cached token, or a new one when there is none or it
    /// is due for renewal.
    pub async fn authorization(&self) -> Result<HeaderValue, SmartError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.header.clone());
        }
        let fresh = self.fetch().await?;
        let header = fresh.header.clone();
        *cached = Some(fresh);
        Ok(header)
    }

    /// The server answered 401 to `used`: forget it (unless another request already replaced it),
    /// so that the next [`SmartAuth::authorization`] fetches a new token.
    pub async fn rejected(&self, used: &HeaderValue) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.header == *used) {
            *cached = None;
        }
    }

    /// A signed client assertion for one token request.
    fn assertion(&self) -> Result<String, SmartError> {
        let now = jiff::Timestamp::now().as_second();
        let mut header = Header::new(self.algorithm.jwt());
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims = Assertion {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: &self.token_url,
            exp: now + ASSERTION_LIFETIME_S,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|_| {
            SmartError::Key(match self.algorithm {
                SmartAlgorithm::RS384 => "RSA",
                SmartAlgorithm::ES384 => "EC",
            })
        })
    }

    async fn fetch(&self) -> Result<Cached, SmartError> {
        let assertion = self.assertion()?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| SmartError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(SmartError::Refused {
                status: status.as_u16(),
                oauth_error: answer["error"]
                    .as_str()
                    .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()))
                    .map(str::to_owned),
            });
        }
        let token = answer["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or(SmartError::BadAnswer)?;
        let mut header =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| SmartError::BadAnswer)?;
        header.set_sensitive(true);
        let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(300).max(1));
        let early = RENEW_EARLY.min(lifetime / 2);
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(client_id = %self.client_id, expires_in_s = lifetime.as_secs(), "SMART access token obtained");
        Ok(Cached {
            header,
            renew_at: Instant::now() + lifetime - early,
        })
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn urlencode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(
            urlencode("system/Appointment.rs system/Patient.rs"),
            "system%2FAppointment.rs+system%2FPatient.rs"
        );
        assert_eq!(urlencode("a:b=c&d"), "a%3Ab%3Dc%26d");
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused_without_quoting_it() {
        let e = SmartAuth::new(SmartSettings {
            token_url: "https://ehr.example/token".into(),
            client_id: "medrelay".into(),
            scope: "system/Appointment.rs".into(),
            algorithm: SmartAlgorithm::ES384,
            private_key_pem: b"SMART-KEY-CANARY".to_vec(),
            kid: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap_err();
        assert_eq!(e, SmartError::Key("EC"));
        assert!(!e.to_string().contains("CANARY"));
    }
}
