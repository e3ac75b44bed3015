//! `medrelay audit verify|export`, and the checkpoints both (and `run`) rely on.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use jiff::{SignedDuration, Timestamp};
use medrelay_pipeline::checkpoint;
use medrelay_pipeline::store::{Store, StoreError};

use super::load_config;
use crate::config::Loaded;
use crate::wiring::open_store;
use crate::{Output, exit};

/// `medrelay audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the keyed chain, its head and the checkpoints; exit 4 if any record was altered or
    /// deleted.
    Verify(VerifyArgs),
    /// Write records as JSON lines (for a SIEM), after writing a signed checkpoint.
    Export(ExportArgs),
}

/// Arguments of verify.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Compare with this checkpoint file only (default: every checkpoint in `[audit]
    /// checkpoint_dir`).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
}

/// Arguments of export.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only records at or after this instant (RFC 3339).
    #[arg(long)]
    pub since: Option<Timestamp>,
}

/// Writes a signed checkpoint of the trail as it is now into the configured folder.
pub async fn write_checkpoint(
    store: &Store,
    loaded: &Loaded,
    now: Timestamp,
) -> anyhow::Result<PathBuf> {
    let c = store.audit_checkpoint(now).await?;
    let dir = loaded.checkpoint_dir();
    checkpoint::write(&dir, &c).with_context(|| {
        format!(
            "cannot write the audit checkpoint into {} ([audit] checkpoint_dir)",
            dir.display()
        )
    })
}

/// The daily checkpoint of `medrelay run`: written when the newest one in the folder is a day old
/// (or there is none), so that a cron-style `run --once` does not write one per run.
pub async fn checkpoint_if_due(
    store: &Store,
    loaded: &Loaded,
    now: Timestamp,
) -> anyhow::Result<Option<PathBuf>> {
    let existing = checkpoint::read_dir(&loaded.checkpoint_dir()).unwrap_or_default();
    let due = checkpoint::newest(&existing)
        .is_none_or(|t| t > now || now.duration_since(t) >= SignedDuration::from_hours(24));
    if !due {
        return Ok(None);
    }
    write_checkpoint(store, loaded, now).await.map(Some)
}

/// Runs an audit command.
pub async fn run(
    config: &Path,
    clock: std::sync::Arc<dyn medrelay_pipeline::clock::Clock>,
    command: AuditCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let result = run_on(&store, &loaded, clock.now(), command, o).await;
    store.close().await;
    result
}

async fn run_on(
    store: &Store,
    loaded: &Loaded,
    now: Timestamp,
    command: AuditCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    match command {
        AuditCommand::Verify(a) => {
            let dir = loaded.checkpoint_dir();
            let files = match &a.checkpoint {
                Some(file) => vec![checkpoint::read(file)],
                None => checkpoint::read_dir(&dir)
                    .with_context(|| format!("cannot read {}", dir.display()))?,
            };
            let v = store.audit_verify_against(&files).await?;
            if o.json {
                o.json(&serde_json::to_value(&v)?);
            } else {
                match &v.broken {
                    None => {
                        let legacy = match v.legacy_records {
                            0 => String::new(),
                            n => format!(
                                " ({n} written before keying, checked with the unkeyed rule)"
                            ),
                        };
                        o.line(format!("audit trail intact: {} records{legacy}", v.records));
                        match v.checkpoints.len() {
                            0 => o.line(format!(
                                "no checkpoint in {}: a truncation of the whole trail with its head would not show",
                                dir.display()
                            )),
                            1 => o.line("consistent with 1 checkpoint"),
                            n => o.line(format!("consistent with {n} checkpoints")),
                        }
                    }
                    Some((0, why)) => o.line(format!("audit trail BROKEN: {why}")),
                    Some((id, why)) => o.line(format!("audit trail BROKEN at record {id}: {why}")),
                }
            }
            Ok(if v.broken.is_some() {
                exit::AUDIT_BROKEN
            } else {
                exit::OK
            })
        }
        AuditCommand::Export(a) => {
            // The checkpoint first: it covers every record exported below. A trail whose head is
            // missing or altered gets none (it must not be vouched for), but is still exported: the
            // copy is evidence.
            let code = match store.audit_checkpoint(now).await {
                Ok(c) => {
                    let dir = loaded.checkpoint_dir();
                    let path = checkpoint::write(&dir, &c).with_context(|| {
                        format!(
                            "cannot write the audit checkpoint into {} ([audit] checkpoint_dir)",
                            dir.display()
                        )
                    })?;
                    tracing::info!(checkpoint = %path.display(), "audit checkpoint written");
                    exit::OK
                }
                Err(StoreError::Inconsistent(why)) => {
                    tracing::error!("{why}");
                    exit::AUDIT_BROKEN
                }
                Err(e) => return Err(e.into()),
            };
            for r in store
                .audit_since(a.since.unwrap_or(Timestamp::UNIX_EPOCH))
                .await?
            {
                o.json(&serde_json::to_value(&r)?);
            }
            Ok(code)
        }
    }
}
