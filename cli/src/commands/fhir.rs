//! `medrelay fhir jwks`: the public key of a FHIR connector's SMART Backend Services client as a
//! JWK Set, to register medrelay with the EHR (as the JWKS document, or served at the `jku` the
//! EHR is told). Only the public half is printed.

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
    }
}
