//! `medrelay writeback list|show|retry|skip`: the write-back dead letter. A batch the EHR refused
//! for good holds every later reply of its system (replies go back in order); staff see why, retry
//! it once the EHR is fixed, or skip it and pass its replies on by hand. Skips are recorded with
//! who, when and why, and audited.

use std::path::Path;

use clap::{Args, Subcommand};
use medrelay_pipeline::store::writeback::{BatchLine, BatchState};

use super::{actor, load_config};
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// `medrelay writeback ...`
#[derive(Debug, Subcommand)]
pub enum WritebackCommand {
    /// Open write-back batches (pending, failing, refused), oldest first; `--all`: also the newest
    /// written and skipped ones.
    List(ListArgs),
    /// One batch and its replies (appointment ids and actions, for passing them on by hand).
    Show(BatchArgs),
    /// Try an open batch again at the next pass of the service (after the EHR was fixed).
    Retry(ActArgs),
    /// Close an open batch without writing it, so that the replies after it go back.
    Skip(SkipArgs),
}

/// Arguments of list.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also the newest written and skipped batches (up to `--limit`).
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

/// A batch id.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The batch id (`writeback list`).
    pub id: i64,
}

/// Arguments of retry.
#[derive(Debug, Args)]
pub struct ActArgs {
    pub id: i64,
    /// Who decided (defaults to $USER).
    #[arg(long)]
    pub actor: Option<String>,
}

/// Arguments of skip.
#[derive(Debug, Args)]
pub struct SkipArgs {
    pub id: i64,
    /// Who decided (defaults to $USER).
    #[arg(long)]
    pub actor: Option<String>,
    /// Why (recorded on the batch and in the audit trail; no clinical details).
    #[arg(long)]
    pub reason: String,
}

fn line(b: &BatchLine) -> String {
    let mut s = format!(
        "  batch {:<5} {:<8} {:<14} {} repl{} created {}",
        b.id,
        b.state.as_str(),
        b.target,
        b.replies,
        if b.replies == 1 { "y" } else { "ies" },
        b.created_at
    );
    match b.state {
        BatchState::Failing | BatchState::Refused => {
            s.push_str(&format!(
                "; {} failure(s), last {}: {}",
                b.failures,
                b.failed_at.map_or("-".into(), |t| t.to_string()),
                b.last_error.as_deref().unwrap_or("-")
            ));
        }
        BatchState::Written => {
            if let (Some(at), Some(loc)) = (b.completed_at, &b.location) {
                s.push_str(&format!("; written {at} to {loc}"));
            }
        }
        BatchState::Skipped => s.push_str(&format!(
            "; skipped {} by {}: {}",
            b.completed_at.map_or("-".into(), |t| t.to_string()),
            b.skipped_by.as_deref().unwrap_or("-"),
            b.skip_reason.as_deref().unwrap_or("-")
        )),
        BatchState::Pending => {}
    }
    s
}

/// Runs a writeback command.
pub async fn run(
    config: &Path,
    clock: std::sync::Arc<dyn medrelay_pipeline::clock::Clock>,
    command: WritebackCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let now = clock.now();
    let result = match command {
        WritebackCommand::List(a) => {
            let batches = store.writeback_batches(a.all, a.limit.max(1)).await?;
            if o.json {
                o.json(&serde_json::json!({ "batches": batches }));
            } else if batches.is_empty() {
                o.line(if a.all {
                    "no write-back batches"
                } else {
                    "no open write-back batches"
                });
            } else {
                for b in &batches {
                    o.line(line(b));
                }
                if batches.iter().any(|b| b.state == BatchState::Refused) {
                    o.line(
                        "  a refused batch holds the later replies of its system: fix the cause and `medrelay writeback retry ID`, or `medrelay writeback skip ID --reason ...` and pass its replies on by hand (`writeback show ID`)",
                    );
                }
            }
            exit::OK
        }
        WritebackCommand::Show(a) => {
            let Some((b, replies)) = store.writeback_batch(a.id).await? else {
                store.close().await;
                return Err(Failure::usage(format!(
                    "there is no write-back batch {}",
                    a.id
                )));
            };
            if o.json {
                o.json(&serde_json::json!({ "batch": b, "replies": replies }));
            } else {
                o.line(line(&b));
                for r in replies {
                    o.line(format!(
                        "    reply {:<6} {:<11} {} (received {})",
                        r.reply_id,
                        r.action.as_deref().unwrap_or("-"),
                        r.appointment,
                        r.received_at
                    ));
                }
            }
            exit::OK
        }
        WritebackCommand::Retry(a) => {
            let who = actor(a.actor);
            match store.retry_batch(a.id, &who, now).await? {
                Ok(()) => {
                    o.line(format!(
                        "write-back batch {} will be tried again at the service's next pass",
                        a.id
                    ));
                    exit::OK
                }
                Err(e) => {
                    store.close().await;
                    return Err(Failure::usage(e.to_string()));
                }
            }
        }
        WritebackCommand::Skip(a) => {
            if a.reason.trim().is_empty() {
                store.close().await;
                return Err(Failure::usage("--reason must say why"));
            }
            let who = actor(a.actor);
            match store.skip_batch(a.id, &who, a.reason.trim(), now).await? {
                Ok(()) => {
                    o.line(format!(
                        "write-back batch {} skipped: its replies were not written back (see `medrelay writeback show {}`); the replies after it go back now",
                        a.id, a.id
                    ));
                    exit::OK
                }
                Err(e) => {
                    store.close().await;
                    return Err(Failure::usage(e.to_string()));
                }
            }
        }
    };
    store.close().await;
    Ok(result)
}
