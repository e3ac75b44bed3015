//! The return file: patient answers written back to the EHR as a CSV the EHR (or an interface engine)
//! imports.
//!
//! One file per batch, named from the batch id, written atomically (temporary file in the same
//! directory, `sync_all`, rename, directory fsync) so the EHR never picks up half a file, and written
//! byte-for-byte identically when a batch is retried, so a retry is harmless.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use medrelay_mapping::ports::{
    Confirmation, WriteBack, WriteBackBatch, WriteBackError, WriteReceipt,
};
use medrelay_mapping::reply::ReplyAction;
use serde::Deserialize;

/// One column of the return file, in the order configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnColumn {
    /// The scheduling system's appointment id (the match key).
    FillerId,
    /// The placer's id, when known.
    PlacerId,
    /// The patient's identifier (MRN), for EHRs that match on it.
    PatientId,
    /// `confirm`, `cancel` or `reschedule`.
    Action,
    /// The EHR's own code for the action, from `action_codes`.
    ActionCode,
    /// When the patient answered, UTC RFC 3339.
    RepliedAt,
    /// When the patient answered, in the site's zone (`%Y-%m-%d %H:%M`).
    RepliedAtLocal,
    /// The appointment start in the site's zone (`%Y-%m-%d %H:%M`), for EHRs matching on it.
    AppointmentStartLocal,
    /// The connector name the appointment came from.
    Source,
    /// Our reply id: stable across retries, so the EHR can deduplicate.
    ReplyId,
}

/// Where and how return files are written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnFileConfig {
    /// Directory the EHR picks files up from.
    pub dir: PathBuf,
    /// File name prefix: files are `<prefix>-<batch_id:08>.csv`.
    #[serde(default = "default_prefix")]
    pub file_prefix: String,
    /// Field separator (ASCII).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Columns, in order.
    #[serde(default = "default_columns")]
    pub columns: Vec<ReturnColumn>,
    /// Action name (`confirm`, `cancel`, `reschedule`) -> the EHR's code, for `action_code`.
    #[serde(default = "default_action_codes")]
    pub action_codes: BTreeMap<String, String>,
}

fn default_prefix() -> String {
    "medrelay-return".to_string()
}
fn default_delimiter() -> char {
    ','
}
fn default_columns() -> Vec<ReturnColumn> {
    use ReturnColumn::*;
    vec![
        FillerId, PatientId, Action, ActionCode, RepliedAt, Source, ReplyId,
    ]
}
fn default_action_codes() -> BTreeMap<String, String> {
    [
        ("confirm", "C"),
        ("cancel", "X"),
        ("reschedule", "R"),
        ("not_notified", "N"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The CSV return-file write-back target.
#[derive(Clone, Debug)]
pub struct CsvReturnFile {
    config: ReturnFileConfig,
}

impl CsvReturnFile {
    /// Checks the configuration (ASCII delimiter, a code for every action when `action_code` is a
    /// column, at least one column, a plain prefix), so a bad setting fails at startup and not at the
    /// first patient answer.
    pub fn new(config: ReturnFileConfig) -> Result<Self, Vec<String>> {
        let mut errs = Vec::new();
        if !config.delimiter.is_ascii() || matches!(config.delimiter, '"' | '\r' | '\n') {
            errs.push(
                "return file delimiter must be an ASCII character other than a quote or line break"
                    .to_string(),
            );
        }
        if config.columns.is_empty() {
            errs.push("return file needs at least one column".to_string());
        }
        if config.file_prefix.is_empty()
            || config.file_prefix.contains(['/', '\\'])
            || config.file_prefix.starts_with('.')
        {
            errs.push("return file prefix must be a plain file name part".to_string());
        }
        if config.columns.contains(&ReturnColumn::ActionCode) {
            for a in ReplyAction::WRITE_BACK {
                if !config.action_codes.contains_key(a.as_str()) {
                    errs.push(format!("action_codes has no code for \"{}\"", a.as_str()));
                }
            }
        }
        for k in config.action_codes.keys() {
            if ReplyAction::parse(k).is_none() {
                errs.push(format!("action_codes: \"{k}\" is not an action"));
            }
        }
        if errs.is_empty() {
            Ok(CsvReturnFile { config })
        } else {
            Err(errs)
        }
    }

    /// The path a batch is written to: deterministic, so a retry overwrites the same file.
    pub fn path_for(&self, batch_id: i64) -> PathBuf {
        self.config
            .dir
            .join(format!("{}-{batch_id:08}.csv", self.config.file_prefix))
    }

    /// The file's bytes for a batch (header row first).
    pub fn render(&self, batch: &WriteBackBatch) -> Result<Vec<u8>, WriteBackError> {
        let mut w = csv::WriterBuilder::new()
            .delimiter(self.config.delimiter as u8)
            .from_writer(Vec::new());
        let header: Vec<&str> = self
            .config
            .columns
            .iter()
            .map(|c| column_name(*c))
            .collect();
        w.write_record(&header)
            .map_err(|e| WriteBackError::Permanent(format!("cannot render return file: {e}")))?;
        for item in &batch.items {
            let fields = self
                .config
                .columns
                .iter()
                .map(|c| self.field(*c, item))
                .collect::<Result<Vec<String>, _>>()?;
            w.write_record(&fields).map_err(|e| {
                WriteBackError::Permanent(format!("cannot render return file: {e}"))
            })?;
        }
        w.into_inner()
            .map_err(|_| WriteBackError::Permanent("cannot render return file".to_string()))
    }

    fn field(&self, col: ReturnColumn, c: &Confirmation) -> Result<String, WriteBackError> {
        let local = |ts: Timestamp| -> Result<String, WriteBackError> {
            let tz = TimeZone::get(&c.time_zone).map_err(|_| {
                WriteBackError::Permanent(format!("unknown time zone \"{}\"", c.time_zone))
            })?;
            Ok(ts.to_zoned(tz).strftime("%Y-%m-%d %H:%M").to_string())
        };
        Ok(match col {
            ReturnColumn::FillerId => c.filler_id.clone(),
            ReturnColumn::PlacerId => c.placer_id.clone().unwrap_or_default(),
            // PHI: the EHR matches the return row on its own patient id; it goes into the file only.
            #[allow(clippy::disallowed_methods)]
            ReturnColumn::PatientId => c
                .patient_id
                .as_ref()
                .map(|p| p.expose().clone())
                .unwrap_or_default(),
            ReturnColumn::Action => c.action.as_str().to_string(),
            ReturnColumn::ActionCode => self
                .config
                .action_codes
                .get(c.action.as_str())
                .cloned()
                .ok_or_else(|| {
                    WriteBackError::Permanent(format!(
                        "no action code configured for \"{}\"",
                        c.action.as_str()
                    ))
                })?,
            ReturnColumn::RepliedAt => c
                .replied_at
                .to_zoned(TimeZone::UTC)
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            ReturnColumn::RepliedAtLocal => local(c.replied_at)?,
            ReturnColumn::AppointmentStartLocal => local(c.appointment_start)?,
            ReturnColumn::Source => c.source.clone(),
            ReturnColumn::ReplyId => c.reply_id.to_string(),
        })
    }
}

/// The header text of a column (its configuration name).
fn column_name(c: ReturnColumn) -> &'static str {
    match c {
        ReturnColumn::FillerId => "filler_id",
        ReturnColumn::PlacerId => "placer_id",
        ReturnColumn::PatientId => "patient_id",
        ReturnColumn::Action => "action",
        ReturnColumn::ActionCode => "action_code",
        ReturnColumn::RepliedAt => "replied_at",
        ReturnColumn::RepliedAtLocal => "replied_at_local",
        ReturnColumn::AppointmentStartLocal => "appointment_start_local",
        ReturnColumn::Source => "source",
        ReturnColumn::ReplyId => "reply_id",
    }
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename, then
/// fsync of the directory so the rename itself survives a crash.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

impl WriteBack for CsvReturnFile {
    fn write_batch(&self, batch: &WriteBackBatch) -> Result<WriteReceipt, WriteBackError> {
        if batch.batch_id < 0 {
            return Err(WriteBackError::Permanent(
                "batch id must not be negative".to_string(),
            ));
        }
        let bytes = self.render(batch)?;
        let path = self.path_for(batch.batch_id);
        // Already written by an earlier attempt: leave the file (and its mtime) alone.
        if fs::read(&path).is_ok_and(|existing| existing == bytes) {
            return Ok(WriteReceipt {
                location: path.display().to_string(),
            });
        }
        // The EHR's pick-up folder may not exist yet on a fresh install.
        fs::create_dir_all(&self.config.dir)
            .and_then(|()| write_atomic(&path, &bytes))
            .map_err(|e| {
                WriteBackError::Retryable(format!(
                    "cannot write return file in {}: {e}",
                    self.config.dir.display()
                ))
            })?;
        Ok(WriteReceipt {
            location: path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medrelay_mapping::Phi;

    fn confirmation(id: i64, action: ReplyAction) -> Confirmation {
        Confirmation {
            reply_id: id,
            source: "clinica".into(),
            filler_id: format!("AP-{id}"),
            placer_id: None,
            patient_id: Some(Phi::new(format!("P{id}"))),
            action,
            replied_at: "2026-12-02T13:05:09.5Z".parse().unwrap(),
            appointment_start: "2026-12-03T12:30:00Z".parse().unwrap(),
            time_zone: "America/Sao_Paulo".into(),
        }
    }

    fn config(dir: &Path) -> ReturnFileConfig {
        toml::from_str(&format!(
            r#"
            dir = "{}"
            delimiter = ";"
            columns = ["filler_id", "placer_id", "patient_id", "action", "action_code", "replied_at",
                       "replied_at_local", "appointment_start_local", "source", "reply_id"]
            action_codes = {{ confirm = "C", cancel = "X", reschedule = "R", not_notified = "N" }}
            "#,
            dir.display()
        ))
        .unwrap()
    }

    #[test]
    fn writes_every_column_atomically_and_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let target = CsvReturnFile::new(config(dir.path())).unwrap();
        let batch = WriteBackBatch {
            batch_id: 42,
            items: vec![
                confirmation(1, ReplyAction::Confirm),
                confirmation(2, ReplyAction::Cancel),
            ],
        };
        let receipt = target.write_batch(&batch).unwrap();
        let path = dir.path().join("medrelay-return-00000042.csv");
        assert_eq!(receipt.location, path.display().to_string());
        let first = fs::read_to_string(&path).unwrap();
        assert_eq!(
            first,
            "filler_id;placer_id;patient_id;action;action_code;replied_at;replied_at_local;\
             appointment_start_local;source;reply_id\n\
             AP-1;;P1;confirm;C;2026-12-02T13:05:09Z;2026-12-02 10:05;2026-12-03 09:30;clinica;1\n\
             AP-2;;P2;cancel;X;2026-12-02T13:05:09Z;2026-12-02 10:05;2026-12-03 09:30;clinica;2\n"
        );

        // Same batch again: identical file, no temporary left behind.
        target.write_batch(&batch).unwrap();
        // And after a partial/corrupted earlier attempt, the retry repairs it.
        fs::write(&path, "garbage").unwrap();
        target.write_batch(&batch).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), first);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["medrelay-return-00000042.csv".to_string()]);
    }

    #[test]
    fn defaults_and_config_checks() {
        let cfg: ReturnFileConfig = toml::from_str("dir = \"/tmp/x\"").unwrap();
        assert_eq!(cfg.file_prefix, "medrelay-return");
        assert_eq!(cfg.delimiter, ',');
        assert_eq!(cfg.action_codes["reschedule"], "R");
        let target = CsvReturnFile::new(cfg.clone()).unwrap();
        assert_eq!(
            target.path_for(7),
            PathBuf::from("/tmp/x/medrelay-return-00000007.csv")
        );

        let mut bad = cfg;
        bad.action_codes.remove("cancel");
        bad.action_codes.insert("maybe".into(), "M".into());
        bad.file_prefix = "../evil".into();
        let errs = CsvReturnFile::new(bad).unwrap_err().join("\n");
        assert!(errs.contains("no code for \"cancel\""), "{errs}");
        assert!(errs.contains("\"maybe\" is not an action"), "{errs}");
        assert!(errs.contains("prefix"), "{errs}");
        assert!(toml::from_str::<ReturnFileConfig>("dir = \"x\"\ncolumns = [\"nope\"]").is_err());
    }

    #[test]
    fn missing_pickup_folder_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.dir = dir.path().join("not/yet/there");
        let target = CsvReturnFile::new(cfg).unwrap();
        let receipt = target
            .write_batch(&WriteBackBatch {
                batch_id: 1,
                items: vec![confirmation(9, ReplyAction::Confirm)],
            })
            .unwrap();
        assert!(std::path::Path::new(&receipt.location).is_file());
    }

    #[test]
    fn unwritable_directory_is_retryable_without_phi() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        // A regular file where the folder should be: neither creatable nor writable.
        std::fs::write(dir.path().join("blocked"), b"").unwrap();
        cfg.dir = dir.path().join("blocked");
        let target = CsvReturnFile::new(cfg).unwrap();
        // Canaries long enough that the random temp folder name in the error cannot contain them
        // (a 2-character "P9" once matched the folder name: a false failure).
        let mut item = confirmation(9, ReplyAction::Reschedule);
        item.patient_id = Some(Phi::new("PATIENTCANARY9".into()));
        item.filler_id = "APPTCANARY9".into();
        let err = target
            .write_batch(&WriteBackBatch {
                batch_id: 1,
                items: vec![item],
            })
            .unwrap_err();
        assert!(matches!(err, WriteBackError::Retryable(_)));
        assert!(!err.to_string().contains("PATIENTCANARY9"));
        assert!(!err.to_string().contains("APPTCANARY9"));
    }
}
