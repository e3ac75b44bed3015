//! `medrelay templates check`: compares the configured templates with the WhatsApp Business
//! Account's approved ones, so a renamed, unapproved or re-worded template is found before the first
//! send halts it with 132000/132001. `medrelay check --online` runs the same check.

use std::path::Path;

use clap::Subcommand;
use medrelay_pipeline::whatsapp::cloud::{TemplateProblem, check_templates};
use serde_json::json;

use super::load_config;
use crate::config::Loaded;
use crate::wiring::{cloud_client, cloud_config};
use crate::{Output, exit};

/// `medrelay templates ...`.
#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Fetch the approved templates (Cloud API) and check every configured template, in every
    /// language, for approval, parameters, buttons and TTL. Exit 5 when something differs.
    Check,
}

/// What the registry check found.
#[derive(Debug)]
pub struct TemplatesReport {
    /// Templates (one per name and language) the account returned.
    pub fetched: usize,
    /// Configured (template, language) pairs checked.
    pub checked: usize,
    /// Every difference; empty means sends will not fail for template reasons.
    pub problems: Vec<TemplateProblem>,
}

impl TemplatesReport {
    /// The exit code: [`exit::OK`] or [`exit::TEMPLATES`].
    pub fn exit_code(&self) -> u8 {
        if self.problems.is_empty() {
            exit::OK
        } else {
            exit::TEMPLATES
        }
    }

    /// The report as JSON (template keys, names and languages only: no patient data exists here).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "ok": self.problems.is_empty(),
            "fetched": self.fetched,
            "checked": self.checked,
            "problems": self.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    /// Human lines: a summary, then one line per problem.
    pub fn print(&self, o: &mut Output<'_>) {
        if self.problems.is_empty() {
            o.line(format!(
                "templates: ok ({} configured template languages found approved among {} in the account)",
                self.checked, self.fetched
            ));
        } else {
            o.line(format!(
                "templates: {} problem(s) ({} configured template languages, {} in the account):",
                self.problems.len(),
                self.checked,
                self.fetched
            ));
            for p in &self.problems {
                o.line(format!("  {p}"));
            }
        }
    }
}

/// Fetches the registry through the Cloud API and compares (no output).
pub async fn check_registry(loaded: &Loaded) -> anyhow::Result<TemplatesReport> {
    let cloud = cloud_config(loaded, "templates check")?;
    let client = cloud_client(cloud)?;
    let remote = client
        .fetch_templates()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the template registry: {e}"))?;
    let problems = check_templates(&loaded.compiled.templates, &remote);
    Ok(TemplatesReport {
        fetched: remote.len(),
        checked: loaded
            .compiled
            .templates
            .values()
            .map(|t| t.languages.len())
            .sum(),
        problems,
    })
}

/// Runs a `templates` command.
pub async fn run(config: &Path, cmd: TemplatesCommand, o: &mut Output<'_>) -> anyhow::Result<u8> {
    match cmd {
        TemplatesCommand::Check => {
            let loaded = load_config(config)?;
            let report = check_registry(&loaded).await?;
            if o.json {
                o.json(&report.to_json());
            } else {
                report.print(o);
            }
            Ok(report.exit_code())
        }
    }
}
