//! `medrelay check`: validate the configuration (no network).

use std::path::Path;

use clap::Args;

use super::load_config;
use crate::{Failure, Output, exit};

/// Arguments of `medrelay check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also check the templates against the WhatsApp Business Account (needs the Cloud API).
    #[arg(long)]
    pub online: bool,
}

/// Validates and prints what was found.
pub async fn run(config: &Path, args: CheckArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    crate::wiring::load_secret(&loaded)?;
    if args.online {
        return Err(Failure::usage(
            "--online needs whatsapp.mode = \"cloud\", which this build does not support yet",
        ));
    }
    let c = &loaded.compiled;
    if o.json {
        o.json(&serde_json::json!({
            "ok": true,
            "sites": c.sites.keys().collect::<Vec<_>>(),
            "steps": c.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "templates": c.templates.keys().collect::<Vec<_>>(),
            "connectors": loaded.config.connectors.iter().map(|c| c.name()).collect::<Vec<_>>(),
        }));
    } else {
        o.line(format!("{}: ok", loaded.path.display()));
        o.line(format!(
            "  sites:      {}",
            c.sites.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        o.line(format!(
            "  plan:       {}",
            c.steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        o.line(format!(
            "  templates:  {}",
            c.templates.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        o.line(format!(
            "  connectors: {}",
            loaded
                .config
                .connectors
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        o.line(format!(
            "  consent:    {}",
            if c.opt_in_required {
                "opt-in required"
            } else {
                "opt-in not required"
            }
        ));
    }
    Ok(exit::OK)
}
