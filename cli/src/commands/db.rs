//! `medrelay db status|migrate`: where the database's schema stands against this binary, and
//! applying the missing migrations on purpose (every command that opens the database applies
//! them too; `migrate` is for doing it at a chosen moment, before the service starts).

use std::path::Path;

use clap::Subcommand;
use medrelay_pipeline::store::schema::{SchemaStatus, schema_status};

use super::load_config;
use crate::wiring::open_store;
use crate::{Output, exit};

/// `medrelay db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Backend, schema version, applied and pending migrations (changes nothing). Exit 0 when
    /// current, 1 when migrations are pending, failed or unknown to this binary.
    Status,
    /// Apply the pending migrations now.
    Migrate,
}

fn print(s: &SchemaStatus, o: &mut Output<'_>) {
    if o.json {
        o.json(&serde_json::to_value(s).unwrap_or_default());
        return;
    }
    o.line(format!(
        "backend {}, {}schema version {} ({} migration(s) applied)",
        s.backend,
        if s.exists { "" } else { "no database yet, " },
        s.version,
        s.applied
    ));
    for (what, list) in [
        ("pending", &s.pending),
        ("failed", &s.failed),
        (
            "unknown to this binary (migrated by a newer medrelay)",
            &s.unknown,
        ),
    ] {
        for m in list {
            o.line(format!("  {what}: {} {}", m.version, m.description));
        }
    }
    if s.pending.is_empty() && s.failed.is_empty() && s.unknown.is_empty() {
        o.line("  current");
    }
}

/// Runs a `db` command.
pub async fn run(config: &Path, command: DbCommand, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let location = loaded.store_location().map_err(anyhow::Error::msg)?;
    let before = schema_status(&location).await?;
    match command {
        DbCommand::Status => {
            print(&before, o);
            let current =
                before.pending.is_empty() && before.failed.is_empty() && before.unknown.is_empty();
            Ok(if current { exit::OK } else { exit::FAILURE })
        }
        DbCommand::Migrate => {
            let store = open_store(&loaded).await?;
            store.close().await;
            let after = schema_status(&location).await?;
            if !o.json {
                o.line(format!(
                    "{} migration(s) applied",
                    before.pending.len() - after.pending.len()
                ));
            }
            print(&after, o);
            Ok(exit::OK)
        }
    }
}
