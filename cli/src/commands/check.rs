//! `medrelay check`: validate the configuration and the secrets it needs from the environment (no
//! network); with `--online`, also the templates against the WhatsApp Business Account.

use std::path::Path;

use clap::Args;

use super::load_config;
use super::templates::check_registry;
use crate::config::{ConfigError, ConnectorConfig, Loaded, WhatsAppMode, environment_problems};
use crate::{Output, exit};

/// Arguments of `medrelay check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also check the templates against the WhatsApp Business Account (the Cloud API, as
    /// `medrelay templates check`; exit 5 when they differ).
    #[arg(long)]
    pub online: bool,
}

/// Things that work but are probably not meant (printed, not failed).
fn warnings(loaded: &Loaded) -> Vec<String> {
    let mut w = loaded.compiled.warnings.clone();
    // A CSV profile that cannot yield a phone number: the import succeeds, and nobody is messaged.
    for c in &loaded.config.connectors {
        if let ConnectorConfig::Csv(csv) = c
            && let Some(profile) = loaded.profiles.get(&csv.profile)
        {
            for p in profile.warnings() {
                w.push(format!(
                    "connector `{}` (profile `{}`): {p}",
                    csv.name, csv.profile
                ));
            }
        }
    }
    if loaded.config.whatsapp.mode == WhatsAppMode::Cloud && loaded.webhook_listen.is_none() {
        w.push(
            "whatsapp.webhook.listen is not set: `medrelay run` will send, but delivery statuses and patient replies will not arrive"
                .to_string(),
        );
    }
    w
}

/// Validates and prints what was found.
pub async fn run(config: &Path, args: CheckArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    crate::wiring::load_secret(&loaded)?;
    let missing = environment_problems(&loaded);
    if !missing.is_empty() {
        return Err(ConfigError {
            path: loaded.path.display().to_string(),
            errors: missing,
        }
        .into());
    }
    let warnings = warnings(&loaded);
    let online = if args.online {
        Some(check_registry(&loaded).await?)
    } else {
        None
    };
    let c = &loaded.compiled;
    let wa = &loaded.config.whatsapp;
    let mode = match wa.mode {
        WhatsAppMode::Simulator => "simulator",
        WhatsAppMode::Cloud => "cloud",
    };
    if o.json {
        o.json(&serde_json::json!({
            "ok": online.as_ref().is_none_or(|r| r.problems.is_empty()),
            "sites": c.sites.keys().collect::<Vec<_>>(),
            "steps": c.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "templates": c.templates.keys().collect::<Vec<_>>(),
            "connectors": loaded.config.connectors.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "whatsapp": {
                "mode": mode,
                "base_url": loaded.cloud.as_ref().map(|c| &c.base_url),
                "webhook_listen": loaded.webhook_listen.map(|a| a.to_string()),
            },
            "warnings": warnings,
            "templates_check": online.as_ref().map(|r| r.to_json()),
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
        let mut whatsapp = mode.to_string();
        if let Some(cloud) = loaded
            .cloud
            .as_ref()
            .filter(|_| wa.mode == WhatsAppMode::Cloud)
        {
            whatsapp.push_str(&format!(
                " ({}, {}/s, token from ${})",
                cloud.base_url, cloud.per_second, cloud.token_env
            ));
        }
        if let Some(listen) = loaded.webhook_listen {
            whatsapp.push_str(&format!("; webhook on {listen}/webhook"));
        }
        o.line(format!("  whatsapp:   {whatsapp}"));
        for w in &warnings {
            o.line(format!("  warning: {w}"));
        }
        if let Some(r) = &online {
            r.print(o);
        }
    }
    Ok(online.map_or(exit::OK, |r| r.exit_code()))
}
