//! The EHR's FHIR server, over reqwest (the HTTP client medrelay already uses for WhatsApp): read
//! what an id-only notification points at, search a window of Appointments (with their Patients
//! and Consents), and write patient answers back with JSON Patch. Results leave this module as
//! JSON bytes. fhir-sdk's own client is not used: every request here is a plain GET or PATCH of
//! JSON, and the client would pull in fhir-sdk's `builders` (a builder for every model type), the
//! bulk of the FHIR crate's build (BENCHMARKS.md, "Build cost").
//!
//! No retries at the HTTP level: a request retried behind our back can apply twice; the
//! pipeline's outbox retries instead. Every request has a timeout. URLs (search URLs carry
//! patient references) never reach a log or an error string.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::map::normalize_reference;
use crate::smart::{SmartAuth, SmartError};

/// A FHIR server connection (cheap to clone).
#[derive(Clone, Debug)]
pub struct FhirServer {
    client: reqwest::Client,
    base: String,
    /// SMART Backend Services, when the server hands out tokens instead of a static header.
    smart: Option<Arc<SmartAuth>>,
}

/// Why a request got no response (the connection, a timeout, no token).
enum SendError {
    Transport(String),
    Token(SmartError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transport(e) => f.write_str(e),
            SendError::Token(e) => write!(f, "{e}"),
        }
    }
}

/// Why a request failed, for logs and write-back errors: the HTTP client's message with every URL
/// replaced by `<url>` (search URLs carry patient references), never a body.
fn failure(what: &str, e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("http://").or_else(|| rest.find("https://")) {
        out.push_str(&rest[..i]);
        out.push_str("<url>");
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == ')' || c == '"')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    format!("{what}: {out}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_links_stay_on_the_configured_server() {
        let base = "https://ehr.example/fhir/R4";
        let pin = |l: &str| super::pin_to_base(base, l);
        let same = "https://ehr.example/fhir/R4/Appointment?page=2&patient=Patient/p-1";
        assert_eq!(pin(same).unwrap(), same);
        // The server names itself differently (behind a proxy): same path, our origin.
        assert_eq!(
            pin("http://10.0.0.5:8080/fhir/R4/Appointment?page=2").unwrap(),
            "https://ehr.example/fhir/R4/Appointment?page=2"
        );
        assert_eq!(pin("Appointment?page=2").unwrap(), "Appointment?page=2");
        for elsewhere in [
            "https://attacker.example/collect?page=2",
            "https://attacker.example/fhir/R4x/Appointment",
        ] {
            let e = pin(elsewhere).unwrap_err();
            assert!(
                e.contains("outside base_url") && !e.contains("attacker"),
                "{e}"
            );
        }
    }

    #[test]
    fn failures_carry_no_url() {
        let f = super::failure(
            "FHIR request failed",
            "error sending request for url (http://ehr/fhir/Consent?patient=Patient/p-2002): connection refused",
        );
        assert_eq!(
            f,
            "FHIR request failed: error sending request for url (<url>): connection refused"
        );
    }
}

impl FhirServer {
    /// Connects to `base_url` (`https://ehr/fhir/R4`), with `authorization` as the whole
    /// `Authorization` header value when the server needs one.
    pub fn new(
        base_url: &str,
        authorization: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let base = base_url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&format!("{base}/"))
            .map_err(|e| failure("base_url is not a URL", e))?;
        let mut headers = HeaderMap::new();
        if let Some(a) = authorization {
            let mut v = HeaderValue::from_str(a)
                .map_err(|_| "the authorization value is not a valid header".to_owned())?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("medrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| failure("cannot build the FHIR client", e.without_url()))?;
        Ok(FhirServer {
            client,
            base,
            smart: None,
        })
    }

    /// The same server, authorised by SMART Backend Services tokens (instead of a static header).
    pub fn with_smart(mut self, smart: Arc<SmartAuth>) -> Self {
        self.smart = Some(smart);
        self
    }

    /// Sends the request `make` builds, with a SMART token when configured; a 401 drops the token
    /// and the request is sent once more with a new one (a token revoked or expired early).
    async fn send(
        &self,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let Some(smart) = &self.smart else {
            return make(&self.client).send().await.map_err(|e| {
                SendError::Transport(failure("FHIR request failed", e.without_url()))
            });
        };
        let mut refreshed = false;
        loop {
            let token = smart.authorization().await.map_err(SendError::Token)?;
            let response = make(&self.client)
                .header(header::AUTHORIZATION, token.clone())
                .send()
                .await
                .map_err(|e| {
                    SendError::Transport(failure("FHIR request failed", e.without_url()))
                })?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !refreshed {
                tracing::info!("FHIR server answered 401: fetching a new SMART token once");
                smart.rejected(&token).await;
                refreshed = true;
                continue;
            }
            return Ok(response);
        }
    }

    fn absolute(&self, reference: &str) -> String {
        if reference.starts_with("http://") || reference.starts_with("https://") {
            reference.to_owned()
        } else {
            format!("{}/{}", self.base, normalize_reference(reference))
        }
    }

    /// GETs JSON from a URL or a `Type/id` reference.
    pub async fn get_json(&self, reference: &str) -> Result<Value, String> {
        let url = self.absolute(reference);
        let response = self
            .send(|c| c.get(&url).header(header::ACCEPT, "application/fhir+json"))
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("FHIR server answered {status}"));
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| failure("FHIR response is not JSON", e.without_url()))
    }

    /// Follows a searchset's `next` links, collecting every entry.
    async fn search_all(&self, first: String, entries: &mut Vec<Value>) -> Result<(), String> {
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 1000 {
                return Err("more than 1000 search pages; narrow the window".into());
            }
            let page = self.get_json(&url).await?;
            entries.extend(page["entry"].as_array().cloned().unwrap_or_default());
            next = next_link(&page)
                .map(|l| pin_to_base(&self.base, &l))
                .transpose()?;
        }
        Ok(())
    }

    /// Adds the Consents of every Patient in `entries` (one search per 50 patients).
    async fn add_consents(&self, entries: &mut Vec<Value>) -> Result<(), String> {
        let patients = patients_in(entries);
        let patients: Vec<String> = patients.into_iter().collect();
        for chunk in patients.chunks(50) {
            let url = format!(
                "{}/Consent?patient={}&_count=100",
                self.base,
                chunk.join(",")
            );
            self.search_all(url, entries).await?;
        }
        Ok(())
    }

    /// Appointments starting in `[from, until)`, one collection Bundle (JSON bytes, for
    /// [`crate::map_bundle`]) per search page, each with the page's Patients and their Consents:
    /// memory follows the page size, not the window.
    pub async fn appointments_between(
        &self,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut next = Some(format!(
            "{}/Appointment?date=ge{}&date=lt{}&_include=Appointment:patient&_count=100",
            self.base,
            from.strftime("%Y-%m-%dT%H:%M:%SZ"),
            until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ));
        let mut pages = Vec::new();
        while let Some(url) = next.take() {
            if pages.len() >= 1000 {
                return Err("more than 1000 search pages; narrow the window".into());
            }
            let page = self.get_json(&url).await?;
            next = next_link(&page)
                .map(|l| pin_to_base(&self.base, &l))
                .transpose()?;
            let mut entries = match page {
                Value::Object(mut o) => match o.remove("entry") {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            self.add_missing_patients(&mut entries).await?;
            self.add_consents(&mut entries).await?;
            pages.push(collection(entries));
        }
        Ok(pages)
    }

    /// Free Slots starting in `[from, until)` with their Schedules (`_include=Slot:schedule`;
    /// a Schedule the page did not include is read), every page's entries together. The open
    /// slots of the window, for [`crate::slots::map_slots`].
    pub async fn free_slots(
        &self,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Value>, String> {
        let mut next = Some(format!(
            "{}/Slot?status=free&start=ge{}&start=lt{}&_include=Slot:schedule&_count=100",
            self.base,
            from.strftime("%Y-%m-%dT%H:%M:%SZ"),
            until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ));
        let mut entries = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 1000 {
                return Err("more than 1000 search pages; narrow the window".into());
            }
            let page = self.get_json(&url).await?;
            next = next_link(&page)
                .map(|l| pin_to_base(&self.base, &l))
                .transpose()?;
            if let Value::Object(mut o) = page
                && let Some(Value::Array(a)) = o.remove("entry")
            {
                entries.extend(a);
            }
        }
        let have: BTreeSet<String> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Schedule")
            .filter_map(|e| {
                e["resource"]["id"]
                    .as_str()
                    .map(|id| format!("Schedule/{id}"))
            })
            .collect();
        let wanted: BTreeSet<String> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Slot")
            .filter_map(|e| e["resource"]["schedule"]["reference"].as_str())
            .map(normalize_reference)
            .filter(|r| r.starts_with("Schedule/"))
            .collect();
        for r in wanted.difference(&have) {
            let schedule = self.get_json(r).await?;
            entries.push(json!({"fullUrl": self.absolute(r), "resource": schedule}));
        }
        Ok(entries)
    }

    /// Reads Patients the Appointments reference but the search did not include.
    async fn add_missing_patients(&self, entries: &mut Vec<Value>) -> Result<(), String> {
        let have = patients_in(entries);
        let wanted: BTreeSet<String> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Appointment")
            .flat_map(|e| {
                let a = &e["resource"];
                // R5 names the patient in `subject` too.
                let subject = a["subject"]["reference"].as_str();
                let actors = a["participant"].as_array().into_iter().flatten();
                subject
                    .into_iter()
                    .chain(actors.filter_map(|p| p["actor"]["reference"].as_str()))
                    .map(normalize_reference)
                    .collect::<Vec<_>>()
            })
            .filter(|r| r.starts_with("Patient/"))
            .collect();
        for r in wanted.difference(&have) {
            let p = self.get_json(r).await?;
            entries.push(json!({"fullUrl": self.absolute(r), "resource": p}));
        }
        Ok(())
    }

    /// Creates `resource` (POST to `[base]/<resourceType>`); returns the id the server gave it.
    pub async fn create(&self, resource: &Value) -> Result<String, String> {
        let kind = resource["resourceType"]
            .as_str()
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphabetic()))
            .ok_or("the resource has no resourceType")?;
        let url = format!("{}/{kind}", self.base);
        let body = resource.to_string();
        let response = self
            .send(|c| {
                c.post(&url)
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .header(header::ACCEPT, "application/fhir+json")
                    .body(body.clone())
            })
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("FHIR server answered {status}"));
        }
        let created: Value = response.json().await.unwrap_or(Value::Null);
        created["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the server's answer names no id".to_owned())
    }

    /// Creates `resource` unless one matching the search `if_none_exist` (e.g.
    /// `identifier=urn:medrelay:reply|42`) exists already: FHIR's conditional create, so that
    /// writing the same answer twice makes one resource. Returns the id the server gave (or the
    /// existing one's, when the server names it).
    pub async fn create_once(
        &self,
        resource: &Value,
        if_none_exist: &str,
    ) -> Result<String, PatchError> {
        let kind = resource["resourceType"]
            .as_str()
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphabetic()))
            .ok_or_else(|| PatchError::Permanent("the resource has no resourceType".into()))?;
        let url = format!("{}/{kind}", self.base);
        let body = resource.to_string();
        let condition = HeaderValue::from_str(if_none_exist).map_err(|_| {
            PatchError::Permanent("the If-None-Exist search is not a valid header".into())
        })?;
        let response = self
            .send(|c| {
                c.post(&url)
                    .header(header::CONTENT_TYPE, "application/fhir+json")
                    .header(header::ACCEPT, "application/fhir+json")
                    .header("If-None-Exist", condition.clone())
                    .body(body.clone())
            })
            .await
            .map_err(|e| PatchError::Retryable(e.to_string()))?;
        let status = response.status();
        match status.as_u16() {
            // 201 Created, or 200 OK: one already matched (the body may be empty then).
            200..=299 => {
                let created: Value = response.json().await.unwrap_or(Value::Null);
                Ok(created["id"].as_str().unwrap_or_default().to_owned())
            }
            401 if self.smart.is_some() => Err(PatchError::Retryable(format!(
                "FHIR server answered {status} with a fresh SMART token"
            ))),
            408 | 429 | 500..=599 => Err(PatchError::Retryable(format!(
                "FHIR server answered {status}"
            ))),
            _ => Err(PatchError::Permanent(format!(
                "FHIR server answered {status}"
            ))),
        }
    }

    /// Writes a JSON Patch to `Type/id`, conditional on `version` (If-Match) when given.
    /// Returns the new version id when the server reports one.
    pub async fn patch(
        &self,
        reference: &str,
        ops: &Value,
        version: Option<&str>,
    ) -> Result<Option<String>, PatchError> {
        let url = self.absolute(reference);
        let body = ops.to_string();
        let response = self
            .send(|c| {
                let request = c
                    .patch(&url)
                    .header(header::CONTENT_TYPE, "application/json-patch+json")
                    .header(header::ACCEPT, "application/fhir+json")
                    .body(body.clone());
                match version {
                    Some(v) => request.header(header::IF_MATCH, format!("W/\"{v}\"")),
                    None => request,
                }
            })
            .await
            .map_err(|e| PatchError::Retryable(e.to_string()))?;
        let status = response.status();
        match status.as_u16() {
            // With SMART, a 401 that a new token did not cure is the authorisation server's or
            // the registration's problem, which someone fixes: retried, never a refused reply.
            401 if self.smart.is_some() => Err(PatchError::Retryable(format!(
                "FHIR server answered {status} with a fresh SMART token"
            ))),
            200..=299 => {
                let v: Value = response.json().await.unwrap_or(Value::Null);
                Ok(v["meta"]["versionId"].as_str().map(str::to_owned))
            }
            412 => Err(PatchError::Conflict),
            408 | 429 | 500..=599 => Err(PatchError::Retryable(format!(
                "FHIR server answered {status}"
            ))),
            _ => Err(PatchError::Permanent(format!(
                "FHIR server answered {status}"
            ))),
        }
    }
}

/// Why a patch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The resource changed since the version we hold (412).
    #[error("the resource changed on the server (412)")]
    Conflict,
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

/// A searchset's `next` link.
fn next_link(page: &Value) -> Option<String> {
    page["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str().map(str::to_owned))
}

/// A `next` link to follow, on `base`'s origin: the Authorization header goes only to the
/// configured server. A link on another origin whose path lies under `base`'s path (a server that
/// knows itself by another name, behind a proxy) is rewritten onto `base`'s origin; any other is
/// refused. Relative links are left to [`FhirServer::get_json`]. The error names no URL (search
/// URLs carry patient references).
fn pin_to_base(base: &str, link: &str) -> Result<String, String> {
    if !(link.starts_with("http://") || link.starts_with("https://")) {
        return Ok(link.to_owned());
    }
    let refused = || {
        "the FHIR server's next link points outside base_url; not followed (the Authorization header goes only to base_url)"
            .to_owned()
    };
    let (Ok(b), Ok(l)) = (reqwest::Url::parse(base), reqwest::Url::parse(link)) else {
        return Err(refused());
    };
    if b.origin() == l.origin() {
        return Ok(link.to_owned());
    }
    let base_path = b.path().trim_end_matches('/');
    if l.path() == base_path || l.path().starts_with(&format!("{base_path}/")) {
        let mut pinned = b.clone();
        pinned.set_path(l.path());
        pinned.set_query(l.query());
        return Ok(pinned.to_string());
    }
    Err(refused())
}

/// `Patient/id` of every Patient among `entries`.
fn patients_in(entries: &[Value]) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .filter_map(|e| {
            e["resource"]["id"]
                .as_str()
                .map(|id| format!("Patient/{id}"))
        })
        .collect()
}

fn collection(entries: Vec<Value>) -> Vec<u8> {
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
        .to_string()
        .into_bytes()
}

/// Reads what an id-only notification points at. Each reference is read as `Type/id` from this
/// server's own base URL, whatever host a notification names: the Authorization header never goes
/// to a host the notification chose.
#[async_trait::async_trait]
impl crate::subscription::ResourceFetcher for FhirServer {
    async fn fetch(&self, references: &[String]) -> Result<Vec<u8>, String> {
        let mut entries = Vec::new();
        for r in references {
            let r = normalize_reference(r);
            let v = self.get_json(&format!("{}/{r}", self.base)).await?;
            entries.push(json!({"fullUrl": self.absolute(&r), "resource": v}));
        }
        self.add_missing_patients(&mut entries).await?;
        self.add_consents(&mut entries).await?;
        Ok(collection(entries))
    }
}
