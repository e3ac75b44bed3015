//! `medrelay fhir jwks`: the public key of a FHIR connector's SMART Backend Services client as a
//! JWK Set, to register medrelay with the EHR (as the JWKS document, or served at the `jku` the
//! EHR is told). Only the public half is printed.
//!
//! `medrelay fhir subscribe`: the Subscription the EHR's server needs so that it notifies the
//! connector's endpoint: a rest-hook to the public URL of `[connectors.subscription]`, carrying
//! its `Authorization` header, with the configured heartbeat; R4B / R4 backport (a topic) or R4
//! classic (criteria). Printed with the header's value left out, or created on the server
//! (`--create`, through `[connectors.server]`, whose credentials it uses).

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::load_config;
use crate::{Failure, Output, exit};

/// `medrelay fhir ...`.
#[derive(Debug, Subcommand)]
pub enum FhirCommand {
    /// Print the JWK Set of the connector's `[connectors.server.smart]` key (public part only).
    Jwks(JwksArgs),
    /// Print (or `--create` on the server) the Subscription that makes the EHR notify this
    /// connector's endpoint.
    Subscribe(SubscribeArgs),
}

/// Arguments of `medrelay fhir subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The FHIR connector (default: the only one).
    #[arg(long)]
    pub connector: Option<String>,
    /// The URL the EHR reaches the endpoint at (`https://medrelay.example.org/fhir/subscription`).
    #[arg(long)]
    pub endpoint: String,
    /// A SubscriptionTopic canonical URL (R4B / the R4 backport); without it, R4 `criteria`.
    #[arg(long)]
    pub topic: Option<String>,
    /// The filter: R4 criteria, or the backport's filter criteria with a topic.
    #[arg(long, default_value = "Appointment?")]
    pub criteria: String,
    /// `full-resource` (the Appointment, its Patient and Consent in the notification) or `id-only`
    /// (medrelay reads them from the server).
    #[arg(long, default_value = "full-resource")]
    pub payload: String,
    /// Create it on the connector's server instead of printing it.
    #[arg(long)]
    pub create: bool,
}

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";

/// The Subscription resource for `a`, with `authorization` as its channel header.
fn subscription(
    a: &SubscribeArgs,
    authorization: &str,
    heartbeat_s: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    use serde_json::json;
    anyhow::ensure!(
        a.endpoint.starts_with("https://") || a.endpoint.starts_with("http://127.0.0.1"),
        "--endpoint must be an https:// URL (the notifications carry patient data and the header)"
    );
    anyhow::ensure!(
        matches!(a.payload.as_str(), "full-resource" | "id-only"),
        "--payload is full-resource or id-only"
    );
    let mut channel = json!({
        "type": "rest-hook",
        "endpoint": a.endpoint,
        "payload": "application/fhir+json",
        "header": [format!("Authorization: {authorization}")],
    });
    let mut s = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "medrelay: appointment messages for patients over WhatsApp",
    });
    match &a.topic {
        Some(topic) => {
            s["meta"] = json!({"profile": [format!("{BACKPORT}/backport-subscription")]});
            s["criteria"] = json!(topic);
            s["_criteria"] = json!({"extension": [{
                "url": format!("{BACKPORT}/backport-filter-criteria"),
                "valueString": a.criteria,
            }]});
            channel["_payload"] = json!({"extension": [{
                "url": format!("{BACKPORT}/backport-payload-content"),
                "valueCode": a.payload,
            }]});
            if let Some(h) = heartbeat_s {
                channel["extension"] = json!([{
                    "url": format!("{BACKPORT}/backport-heartbeat-period"),
                    "valueUnsignedInt": h,
                }]);
            }
        }
        None => s["criteria"] = json!(a.criteria),
    }
    s["channel"] = channel;
    Ok(s)
}

/// Arguments of `medrelay fhir jwks`.
#[derive(Debug, Args)]
pub struct JwksArgs {
    /// The FHIR connector (default: the only one).
    #[arg(long)]
    pub connector: Option<String>,
}

/// Runs a `fhir` command.
pub async fn run(config: &Path, cmd: FhirCommand, o: &mut Output<'_>) -> anyhow::Result<u8> {
    match cmd {
        FhirCommand::Jwks(a) => {
            let loaded = load_config(config)?;
            let c = loaded
                .fhir_connector(a.connector.as_deref())
                .map_err(Failure::usage)?;
            let Some((server, smart)) = c
                .server
                .as_ref()
                .and_then(|s| s.smart.as_ref().map(|m| (s, m)))
            else {
                return Err(Failure::usage(format!(
                    "connector `{}` has no [connectors.server.smart]",
                    c.name
                )));
            };
            let auth = loaded
                .smart_auth(&c.name, smart, Duration::from_secs(server.timeout_secs))
                .map_err(Failure::usage)?;
            let jwks = auth.jwks();
            if o.json {
                o.json(&jwks);
            } else {
                o.line(serde_json::to_string_pretty(&jwks)?);
            }
            Ok(exit::OK)
        }
        FhirCommand::Subscribe(a) => {
            let loaded = load_config(config)?;
            let c = loaded
                .fhir_connector(a.connector.as_deref())
                .map_err(Failure::usage)?;
            let Some(sub) = &c.subscription else {
                return Err(Failure::usage(format!(
                    "connector `{}` has no [connectors.subscription] endpoint to notify",
                    c.name
                )));
            };
            let heartbeat = sub
                .heartbeat_period
                .as_deref()
                .and_then(medrelay_mapping::plan::parse_duration)
                .map(|d| d.as_secs().max(1) as u64);
            if !a.create {
                // The header's value is a secret: the printed resource names its variable only.
                let shown = format!("<the value of ${}>", sub.authorization_env);
                let s = subscription(&a, &shown, heartbeat)
                    .map_err(|e| Failure::usage(e.to_string()))?;
                if o.json {
                    o.json(&s);
                } else {
                    o.line(serde_json::to_string_pretty(&s)?);
                }
                return Ok(exit::OK);
            }
            let authorization = crate::wiring::secret_from_env(
                &sub.authorization_env,
                &format!(
                    "the Subscription's Authorization header (connector `{}` subscription.authorization_env)",
                    c.name
                ),
            )?;
            let s = subscription(&a, &authorization, heartbeat)
                .map_err(|e| Failure::usage(e.to_string()))?;
            let server = crate::fhir::server(&loaded, c)?.ok_or_else(|| {
                Failure::usage(format!(
                    "connector `{}` has no [connectors.server] to create the Subscription on",
                    c.name
                ))
            })?;
            let id = server
                .create(&s)
                .await
                .map_err(|e| anyhow::anyhow!("connector `{}`: {e}", c.name))?;
            o.line(format!(
                "Subscription/{id} created on the server of connector `{}`; it notifies {}",
                c.name, a.endpoint
            ));
            Ok(exit::OK)
        }
    }
}
