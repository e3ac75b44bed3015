//! One module per command.

pub mod audit;
pub mod bench;
pub mod bench_connectors;
pub mod bench_webhooks;
pub mod check;
pub mod consent;
pub mod db;
pub mod demo;
pub mod explain;
pub mod fhir;
pub mod inbox;
pub mod ingest;
pub mod init;
pub mod prune;
pub mod report;
pub mod run;
pub mod simulate;
pub mod slots;
pub mod status;
pub mod templates;
pub mod writeback;

use std::path::Path;

use crate::config::{Loaded, load};

/// The audit actor of a staff command, as `consent` records it: `staff:<name>`, the name given
/// or else `$USER`.
pub(crate) fn actor(given: Option<String>) -> String {
    format!(
        "staff:{}",
        given
            .filter(|a| !a.trim().is_empty())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into())
    )
}

/// Loads the configuration, turning a missing file into a usage error with a hint.
pub(crate) fn load_config(path: &Path) -> anyhow::Result<Loaded> {
    if !path.exists() {
        return Err(crate::Failure::usage(format!(
            "configuration file {} not found: create one with `medrelay init`, or pass --config",
            path.display()
        )));
    }
    Ok(load(path)?)
}
