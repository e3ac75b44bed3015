//! `medrelay consent grant|revoke|show`: staff decisions, with who, when and why recorded.

use std::path::Path;

use clap::{Args, Subcommand, ValueEnum};
use jiff::Timestamp;
use medrelay_mapping::consent::{ConsentSource, Purpose};
use medrelay_mapping::phone::normalize_e164;

use super::load_config;
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// `medrelay consent ...`
#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record that the patient agreed to WhatsApp messages.
    Grant(ChangeArgs),
    /// Record that the patient withdrew consent (takes effect at once, also for queued messages).
    Revoke(ChangeArgs),
    /// Show the consent ledger of a phone number.
    Show(ShowArgs),
}

/// Which purposes a change covers.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PurposeArg {
    Logistics,
    FollowUp,
    All,
}

/// Arguments of grant / revoke.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// The patient's phone number (national numbers are read in the site's region).
    #[arg(long)]
    pub phone: String,
    /// Site whose region reads a national number (default: the first site).
    #[arg(long)]
    pub site: Option<String>,
    #[arg(long, value_enum, default_value = "all")]
    pub purpose: PurposeArg,
    /// Who made the decision (defaults to $USER).
    #[arg(long)]
    pub actor: Option<String>,
    /// Why (recorded in the ledger and the audit trail; no clinical details).
    #[arg(long)]
    pub reason: String,
}

/// Arguments of show.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub phone: String,
    #[arg(long)]
    pub site: Option<String>,
}

fn contact(
    loaded: &crate::config::Loaded,
    phone: &str,
    site: Option<&str>,
) -> anyhow::Result<String> {
    let site = match site {
        Some(s) => loaded
            .compiled
            .sites
            .get(s)
            .ok_or_else(|| Failure::usage(format!("unknown site `{s}`")))?,
        None => loaded
            .compiled
            .sites
            .values()
            .next()
            .ok_or_else(|| Failure::usage("no site configured"))?,
    };
    normalize_e164(phone, &site.default_region).map_err(|e| Failure::usage(format!("--phone: {e}")))
}

/// Runs a consent command.
pub async fn run(
    config: &Path,
    clock: std::sync::Arc<dyn medrelay_pipeline::clock::Clock>,
    command: ConsentCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    match command {
        ConsentCommand::Grant(a) | ConsentCommand::Revoke(a) if a.reason.trim().is_empty() => {
            return Err(Failure::usage("--reason must say why"));
        }
        ConsentCommand::Grant(a) => change(&store, &loaded, a, true, clock.now(), o).await?,
        ConsentCommand::Revoke(a) => change(&store, &loaded, a, false, clock.now(), o).await?,
        ConsentCommand::Show(a) => {
            let e164 = contact(&loaded, &a.phone, a.site.as_deref())?;
            let hash = store.keys().contact_hash(&e164);
            let ledger = store.consent_ledger(&hash).await?;
            if o.json {
                o.json(&serde_json::json!({"contact": hash, "ledger": ledger}));
            } else {
                o.line(format!("contact {hash}"));
                if ledger.is_empty() {
                    o.line("  no consent recorded (EHR opt-in flags on appointments still apply)");
                }
                for e in ledger {
                    o.line(format!(
                        "  {} {:<9} {:<7} by {} ({}): {}",
                        e.at,
                        e.purpose,
                        if e.granted { "grant" } else { "revoke" },
                        e.actor,
                        e.source,
                        e.reason
                    ));
                }
            }
        }
    }
    store.close().await;
    Ok(exit::OK)
}

async fn change(
    store: &medrelay_pipeline::store::Store,
    loaded: &crate::config::Loaded,
    a: ChangeArgs,
    granted: bool,
    now: Timestamp,
    o: &mut Output<'_>,
) -> anyhow::Result<()> {
    let e164 = contact(loaded, &a.phone, a.site.as_deref())?;
    let hash = store.keys().contact_hash(&e164);
    let purposes: &[Purpose] = match a.purpose {
        PurposeArg::Logistics => &[Purpose::Logistics],
        PurposeArg::FollowUp => &[Purpose::FollowUp],
        PurposeArg::All => &[Purpose::Logistics, Purpose::FollowUp],
    };
    let actor = format!(
        "staff:{}",
        a.actor
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into())
    );
    let withdrawn = store
        .record_consent(
            &hash,
            purposes,
            granted,
            ConsentSource::Staff,
            &actor,
            &a.reason,
            now,
        )
        .await?;
    if o.json {
        o.json(&serde_json::json!({"contact": hash, "granted": granted, "pending_steps_withdrawn": withdrawn}));
    } else {
        o.line(format!(
            "{} recorded for contact {hash}{}",
            if granted { "grant" } else { "revocation" },
            if granted {
                String::new()
            } else {
                format!("; {withdrawn} pending message(s) withdrawn")
            }
        ));
    }
    Ok(())
}
