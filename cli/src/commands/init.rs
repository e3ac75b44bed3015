//! `medrelay init`: a starter configuration, secret and database.

use std::path::PathBuf;

use clap::Args;

use crate::wiring::{new_secret, open_store};
use crate::{Failure, Output, exit};

/// The starter configuration (the demo configuration, which documents every section).
pub const STARTER_CONFIG: &str = include_str!("../../../samples/medrelay.toml");
/// The sample CSV profiles the starter configuration refers to.
pub const STARTER_PROFILES: &str = include_str!("../../../samples/profiles.toml");

/// Arguments of `medrelay init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder to create the files in.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite an existing medrelay.toml.
    #[arg(long)]
    pub force: bool,
}

/// Writes `medrelay.toml`, `profiles.toml`, `medrelay.key` (mode 0600) and creates the database.
pub async fn run(args: InitArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&args.dir)?;
    let config = args.dir.join("medrelay.toml");
    if config.exists() && !args.force {
        return Err(Failure::usage(format!(
            "{} already exists (use --force to overwrite)",
            config.display()
        )));
    }
    std::fs::write(&config, STARTER_CONFIG)?;
    let profiles = args.dir.join("profiles.toml");
    if !profiles.exists() {
        std::fs::write(&profiles, STARTER_PROFILES)?;
    }
    let key = args.dir.join("medrelay.key");
    if !key.exists() {
        write_secret(&key)?;
    }
    let loaded = crate::config::load(&config)?;
    for c in &loaded.config.connectors {
        if let Some(inbox) = c.inbox() {
            std::fs::create_dir_all(loaded.resolve(inbox))?;
        }
    }
    let store = open_store(&loaded).await?;
    store.close().await;
    if o.json {
        o.json(&serde_json::json!({"config": config, "key": key, "database": loaded.resolve(&loaded.config.store.path)}));
    } else {
        o.line(format!("created {}", config.display()));
        o.line(format!(
            "created {} (keep it secret; back it up)",
            key.display()
        ));
        o.line(format!(
            "created database {}",
            loaded.resolve(&loaded.config.store.path).display()
        ));
        o.line("next: edit the sites, templates and connectors, then `medrelay check` and `medrelay run`");
    }
    Ok(exit::OK)
}

/// Writes a new secret readable by the owner only.
pub fn write_secret(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, new_secret() + "\n")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
