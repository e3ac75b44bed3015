//! `medrelay audit verify|export`.

use std::path::Path;

use clap::{Args, Subcommand};
use jiff::Timestamp;

use super::load_config;
use crate::wiring::open_store;
use crate::{Output, exit};

/// `medrelay audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 4 if any record was altered or deleted.
    Verify,
    /// Write records as JSON lines (for a SIEM).
    Export(ExportArgs),
}

/// Arguments of export.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only records at or after this instant (RFC 3339).
    #[arg(long)]
    pub since: Option<Timestamp>,
}

/// Runs an audit command.
pub async fn run(config: &Path, command: AuditCommand, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let code = match command {
        AuditCommand::Verify => {
            let v = store.audit_verify().await?;
            if o.json {
                o.json(&serde_json::to_value(&v)?);
            } else {
                match &v.broken {
                    None => o.line(format!("audit trail intact: {} records", v.records)),
                    Some((id, why)) => o.line(format!("audit trail BROKEN at record {id}: {why}")),
                }
            }
            if v.broken.is_some() {
                exit::AUDIT_BROKEN
            } else {
                exit::OK
            }
        }
        AuditCommand::Export(a) => {
            for r in store
                .audit_since(a.since.unwrap_or(Timestamp::UNIX_EPOCH))
                .await?
            {
                o.json(&serde_json::to_value(&r)?);
            }
            exit::OK
        }
    };
    store.close().await;
    Ok(code)
}
