//! Signed checkpoints of the audit trail, kept outside the database.
//!
//! A checkpoint says "at `at`, the trail had `records` records and the newest one's hash was
//! `last_hash`", sealed with the audit key ([`Keys::audit_mac`]). Nothing inside the database can
//! contradict a head that is consistent with its trail, so emptying the trail together with its
//! head, or putting back an older copy of the database file, is only visible against something kept
//! elsewhere: after either, the trail has fewer records than a checkpoint counts, or another record
//! at the position it names, and `medrelay audit verify` reports it.
//!
//! A checkpoint cannot be forged or edited without the secret, but it can be deleted by whoever can
//! write its folder: keep `[audit] checkpoint_dir` on other storage, or copy the files off the machine.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::keys::Keys;

/// The `format` of every checkpoint file (part of what its MAC covers).
pub const FORMAT: &str = "medrelay-audit-checkpoint/1";

/// Checkpoint file names start with this (and end with `.json`); other files in the folder are
/// not checkpoints.
pub const FILE_PREFIX: &str = "audit-checkpoint-";

/// One checkpoint, as written to its file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    /// How many records the trail had.
    pub records: i64,
    /// The hash of record number `records` (`genesis` for an empty trail).
    pub last_hash: String,
    /// When it was taken (whole seconds).
    pub at: Timestamp,
    /// HMAC-SHA256 of the fields above with the audit key.
    pub mac: String,
}

impl Checkpoint {
    /// A checkpoint of `records` records ending in `last_hash`, taken at `at`, signed.
    pub fn new(keys: &Keys, records: i64, last_hash: String, at: Timestamp) -> Self {
        let at = Timestamp::from_second(at.as_second()).unwrap_or(at);
        let mut c = Checkpoint {
            format: FORMAT.to_string(),
            records,
            last_hash,
            at,
            mac: String::new(),
        };
        let parts = c.parts();
        c.mac = keys.audit_mac(&parts.iter().map(String::as_str).collect::<Vec<_>>());
        c
    }

    fn parts(&self) -> [String; 5] {
        [
            "checkpoint".to_string(),
            self.format.clone(),
            self.records.to_string(),
            self.last_hash.clone(),
            self.at.as_second().to_string(),
        ]
    }

    /// Whether it was signed with this installation's key and not changed since.
    pub fn signed_by(&self, keys: &Keys) -> bool {
        let parts = self.parts();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.format == FORMAT && keys.audit_mac_matches(&parts, &self.mac)
    }

    /// `audit-checkpoint-<UTC time>-<records>.json`: sorts by time.
    pub fn file_name(&self) -> String {
        format!(
            "{FILE_PREFIX}{}-{:08}.json",
            self.at.strftime("%Y%m%dT%H%M%SZ"),
            self.records
        )
    }
}

/// A checkpoint file read for verification: its name and content, or why it could not be read
/// (an unreadable checkpoint is reported, never skipped).
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    pub name: String,
    pub checkpoint: Result<Checkpoint, String>,
}

/// Writes `checkpoint` into `dir` (created if needed) atomically: a temporary file, flushed to
/// disk, then renamed. Returns the file's path.
pub fn write(dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(checkpoint.file_name());
    let tmp = dir.join(format!(".{}.tmp", checkpoint.file_name()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(checkpoint)?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads one checkpoint file.
pub fn read(path: &Path) -> CheckpointFile {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let checkpoint = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot be read: {e}"))
        .and_then(|text| {
            serde_json::from_str(&text).map_err(|e| format!("is not a checkpoint: {e}"))
        });
    CheckpointFile { name, checkpoint }
}

/// Every checkpoint file in `dir`, oldest name first; none when the folder does not exist.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<CheckpointFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(FILE_PREFIX) && name.ends_with(".json") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths.iter().map(|p| read(p)).collect())
}

/// When the newest readable checkpoint among `files` was taken.
pub fn newest(files: &[CheckpointFile]) -> Option<Timestamp> {
    files
        .iter()
        .filter_map(|f| f.checkpoint.as_ref().ok())
        .map(|c| c.at)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_any_change_breaks_its_signature() {
        let keys = Keys::from_secret(b"installation secret");
        let dir = tempfile::tempdir().unwrap();
        let at: Timestamp = "2026-12-01T03:04:05.678Z".parse().unwrap();
        let c = Checkpoint::new(&keys, 42, "ab".repeat(32), at);
        let path = write(dir.path(), &c).unwrap();
        assert_eq!(
            path.file_name().unwrap(),
            "audit-checkpoint-20261201T030405Z-00000042.json"
        );
        let files = read_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let back = files[0].checkpoint.clone().unwrap();
        assert_eq!(back, c);
        assert!(back.signed_by(&keys));
        assert_eq!(
            newest(&files),
            Some("2026-12-01T03:04:05Z".parse().unwrap())
        );
        let mut fewer = back.clone();
        fewer.records = 41;
        assert!(!fewer.signed_by(&keys));
        assert!(!back.signed_by(&Keys::from_secret(b"another installation")));
        std::fs::write(dir.path().join("audit-checkpoint-x.json"), "{").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a checkpoint").unwrap();
        let files = read_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files.iter().any(|f| f.checkpoint.is_err()));
        assert!(read_dir(&dir.path().join("missing")).unwrap().is_empty());
    }
}
