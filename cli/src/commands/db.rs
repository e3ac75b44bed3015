//! `medrelay db status|migrate|copy`: where the database's schema stands against this binary, and
//! applying the missing migrations on purpose (every command that opens the database applies
//! them too; `migrate` is for doing it at a chosen moment, before the service starts).

use std::path::Path;

use clap::Subcommand;
use medrelay_pipeline::keys::Keys;
use medrelay_pipeline::store::copy::copy_sqlite_to_postgres;
use medrelay_pipeline::store::schema::{SchemaStatus, schema_status};
use medrelay_pipeline::store::{Store, StoreLocation};

use super::load_config;
use crate::wiring::{load_secret, open_store};
use crate::{Output, exit};

/// `medrelay db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Backend, schema version, applied and pending migrations (changes nothing). Exit 0 when
    /// current, 1 when migrations are pending, failed or unknown to this binary.
    Status,
    /// Apply the pending migrations now.
    Migrate,
    /// Move an installation: copy every table of an SQLite store into a new PostgreSQL
    /// database (migrated here first), then verify the target (its status equals the source's,
    /// its audit trail verifies). Exit 0 only when both checks pass. Uses this configuration's
    /// installation secret for both.
    Copy {
        /// The source, `sqlite://PATH` (or a plain path).
        #[arg(long)]
        from: String,
        /// The target, `postgres://...`; an environment variable's name prefixed with `env:`
        /// (`env:MEDRELAY_DATABASE_URL`) keeps a password off the command line.
        #[arg(long)]
        to: String,
    },
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
    if let DbCommand::Copy { from, to } = &command {
        return copy(&loaded, from, to, o).await;
    }
    let location = loaded.store_location().map_err(anyhow::Error::msg)?;
    let before = schema_status(&location).await?;
    match command {
        DbCommand::Status => {
            print(&before, o);
            let current =
                before.pending.is_empty() && before.failed.is_empty() && before.unknown.is_empty();
            Ok(if current { exit::OK } else { exit::FAILURE })
        }
        DbCommand::Copy { .. } => unreachable!("handled above"),
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

/// `db copy`: copies, then checks the target against the source.
async fn copy(
    loaded: &crate::config::Loaded,
    from: &str,
    to: &str,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let to = match to.strip_prefix("env:") {
        Some(var) => {
            std::env::var(var).map_err(|_| anyhow::anyhow!("--to names {var}, which is not set"))?
        }
        None => to.to_owned(),
    };
    let (source, target) = (StoreLocation::parse(from), StoreLocation::parse(&to));
    if !matches!(source, StoreLocation::Sqlite(_)) || !matches!(target, StoreLocation::Postgres(_))
    {
        anyhow::bail!(
            "db copy moves an SQLite store (--from sqlite://PATH) to PostgreSQL (--to postgres://...)"
        );
    }
    if let StoreLocation::Sqlite(p) = &source
        && !p.exists()
    {
        anyhow::bail!("no SQLite database at {}", p.display());
    }
    let keys = Keys::from_secret(&load_secret(loaded)?);
    let src = Store::connect(&source, keys.clone()).await?;
    let dst = Store::connect(&target, keys)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the target database: {e}"))?;
    let report = copy_sqlite_to_postgres(&src, &dst).await?;
    let now = jiff::Timestamp::now();
    let same_status = serde_json::to_value(src.status_summary(now).await?)?
        == serde_json::to_value(dst.status_summary(now).await?)?;
    let audit = dst.audit_verify().await?;
    src.close().await;
    dst.close().await;
    let rows: u64 = report.tables.iter().map(|(_, n)| n).sum();
    if o.json {
        o.json(&serde_json::json!({
            "tables": report.tables, "rows": rows, "status_equal": same_status,
            "audit_records": audit.records, "audit_broken": audit.broken.as_ref().map(|(at, why)| format!("record {at}: {why}")),
        }));
    } else {
        for (t, n) in &report.tables {
            o.line(format!("  {t}: {n} row(s)"));
        }
        o.line(format!(
            "copied {rows} row(s) in {} table(s)",
            report.tables.len()
        ));
        o.line(format!(
            "status on the target {} the source's",
            if same_status {
                "equals"
            } else {
                "DIFFERS FROM"
            }
        ));
        match &audit.broken {
            None => o.line(format!(
                "audit trail verifies on the target ({} records)",
                audit.records
            )),
            Some((at, why)) => o.line(format!(
                "audit trail BROKEN on the target at record {at}: {why}"
            )),
        }
    }
    Ok(if same_status && audit.broken.is_none() {
        exit::OK
    } else {
        exit::FAILURE
    })
}
