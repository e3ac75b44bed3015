//! The per-file row report: `<input file name>.report.csv` next to the input, listing every bad row
//! and every warning as `line,column,reason`, then a summary.
//!
//! The summary rows have `summary` in the `line` column: one per column and reason with the number
//! of rows, then, for the columns that carry codes rather than patient data (status, opt-in,
//! protection), the values that were not understood and the values the profile allows, so the
//! profile can be fixed in one go. No other cell value is ever written, so the report can be handed
//! to whoever fixes the export. Even a code column's values are withheld when they do not look like
//! codes (long, many digits) or are too many to be a vocabulary: that column is probably mapped to
//! the wrong header, and its values could be patient data.
//!
//! It is created only when there is something to report, and a stale report left by an earlier run
//! of the same file is removed when the new run is clean (a report on disk always describes the
//! latest run).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use crate::source::{BadRow, RowWarning};

/// The unknown values of one code column, as the summary lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeValues {
    /// The column's header.
    pub column: String,
    /// The profile setting that lists the allowed values (`status_map`, `opt_in_yes / opt_in_no`).
    pub setting: String,
    /// What happened to rows with an unknown value.
    pub meaning: String,
    /// Unknown value (trimmed, as written) -> rows.
    pub unknown: Vec<(String, u64)>,
    /// Rows whose value was only counted (too many distinct values to tally).
    pub untallied: u64,
    /// The values the profile allows (lower-cased keys).
    pub allowed: Vec<String>,
}

/// What a whole file added up to, from [`crate::CsvRows::summary`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSummary {
    /// Rows mapped into appointments.
    pub appointments: u64,
    /// Rows that were status changes (not booked, no start).
    pub status_changes: u64,
    /// Appointments without a usable phone number: nothing can be sent for them.
    pub without_phone: u64,
    /// How many phone columns the profile maps (0: no row can have a phone).
    pub phone_columns: usize,
    /// Code columns with unknown values.
    pub code_columns: Vec<CodeValues>,
}

/// At most this many distinct unknown values are listed for a column; more are not a vocabulary
/// (and a column with more than 3 is listed only if its values repeat: at most half as many distinct
/// values as rows).
const LIST_MAX: usize = 12;

/// Whether a value can be shown as a code: short, few digits (a phone number, a record number or a
/// date is not a status code).
fn looks_like_code(v: &str) -> bool {
    v.chars().count() <= 24 && v.chars().filter(char::is_ascii_digit).count() <= 4
}

fn rows(n: u64) -> String {
    if n == 1 {
        "1 row".to_string()
    } else {
        format!("{n} rows")
    }
}

impl CodeValues {
    /// The summary text: the unknown values that look like codes with their row counts, and the
    /// allowed values; or why the values are not listed.
    pub fn describe(&self) -> String {
        let total: u64 = self.unknown.iter().map(|(_, n)| n).sum::<u64>() + self.untallied;
        let allowed = if self.allowed.is_empty() {
            format!("{} is empty", self.setting)
        } else {
            format!(
                "allowed ({}): {}",
                self.setting,
                self.allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let distinct = self.unknown.len() as u64;
        // Codes repeat; names, numbers and notes hardly do. Values that are too many, or that
        // mostly appear once, are not a vocabulary and are not listed.
        if self.untallied > 0
            || distinct > LIST_MAX as u64
            || (distinct > 3 && distinct * 2 > total)
        {
            return format!(
                "{} with {distinct}{} different unknown values ({}), not listed: values that vary that much are not codes (is the column mapped to the right header?); {allowed}",
                rows(total),
                if self.untallied > 0 { " or more" } else { "" },
                self.meaning
            );
        }
        let (shown, hidden): (Vec<_>, Vec<_>) =
            self.unknown.iter().partition(|(v, _)| looks_like_code(v));
        let mut listed: Vec<String> = shown
            .iter()
            .map(|(v, n)| format!("`{v}` ({})", rows(*n)))
            .collect();
        let hidden_rows: u64 = hidden.iter().map(|(_, n)| n).sum();
        if hidden_rows > 0 {
            listed.push(format!(
                "{} with a value that does not look like a code (not shown)",
                rows(hidden_rows)
            ));
        }
        format!(
            "unknown values ({}): {}; {allowed}",
            self.meaning,
            listed.join(", ")
        )
    }
}

/// Collects bad rows and warnings of one import into the row report, writing as it goes, and
/// appends the summary when finished.
#[derive(Debug)]
pub struct RowReport {
    path: PathBuf,
    writer: Option<csv::Writer<BufWriter<File>>>,
    rows: u64,
    warnings: u64,
    /// (column, reason) -> rows, in order of first appearance, for the summary.
    counts: Vec<((String, String), u64)>,
    /// Position of each (column, reason) in `counts`.
    index: HashMap<(String, String), usize>,
    error: Option<io::Error>,
}

impl RowReport {
    /// The report for `input`; nothing is written until the first bad row or warning.
    pub fn new(input: &Path) -> Self {
        let mut name = input
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".report.csv");
        RowReport {
            path: input.with_file_name(name),
            writer: None,
            rows: 0,
            warnings: 0,
            counts: Vec::new(),
            index: HashMap::new(),
            error: None,
        }
    }

    /// Where the report is (or would be) written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bad rows were recorded.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// How many warnings were recorded.
    pub fn warnings(&self) -> u64 {
        self.warnings
    }

    /// Adds one bad row. An I/O failure is kept and returned by [`RowReport::finish`], so an import
    /// is not interrupted by a full disk halfway through its report.
    pub fn record(&mut self, bad: &BadRow) {
        self.rows += 1;
        self.add(bad.line, bad.column.as_deref(), &bad.reason);
    }

    /// Adds one warning about an imported row.
    pub fn warn(&mut self, warning: &RowWarning) {
        self.warnings += 1;
        self.add(warning.line, warning.column.as_deref(), &warning.reason);
    }

    fn add(&mut self, line: u64, column: Option<&str>, reason: &str) {
        let key = (column.unwrap_or("").to_string(), reason.to_string());
        match self.index.get(&key) {
            Some(&i) => self.counts[i].1 += 1,
            None => {
                self.index.insert(key.clone(), self.counts.len());
                self.counts.push((key, 1));
            }
        }
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.write([line.to_string().as_str(), column.unwrap_or(""), reason]) {
            self.error = Some(e);
        }
    }

    fn write(&mut self, record: [&str; 3]) -> io::Result<()> {
        if self.writer.is_none() {
            let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&self.path)?));
            w.write_record(["line", "column", "reason"])?;
            self.writer = Some(w);
        }
        let w = self.writer.as_mut().expect("created above");
        w.write_record(record)?;
        Ok(())
    }

    /// Flushes the report; returns its path when one was written. With no bad rows and nothing to
    /// summarise, removes a stale report from an earlier run.
    pub fn finish(self) -> io::Result<Option<PathBuf>> {
        self.finish_with(&FileSummary::default())
    }

    /// As [`RowReport::finish`], first appending the summary: rows per column and reason, then the
    /// unknown values of the code columns in `summary` (which alone are reason enough to write a
    /// report: an opt-in value that is not understood reads as no signal).
    pub fn finish_with(mut self, summary: &FileSummary) -> io::Result<Option<PathBuf>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.writer.is_some() || !summary.code_columns.is_empty() {
            let counts = std::mem::take(&mut self.counts);
            for ((column, reason), n) in &counts {
                self.write(["summary", column, &format!("{}: {reason}", rows(*n))])?;
            }
            for code in &summary.code_columns {
                self.write(["summary", &code.column, &code.describe()])?;
            }
        }
        match self.writer {
            Some(mut w) => {
                w.flush()?;
                let file = w
                    .into_inner()
                    .map_err(|e| io::Error::other(e.to_string()))?
                    .into_inner()
                    .map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(Some(self.path))
            }
            None => match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(line: u64) -> BadRow {
        BadRow {
            line,
            column: Some("Appt Date".into()),
            reason: "value does not match date format %d/%m/%Y".into(),
            raw: b"secret,row".to_vec(),
            filler_id: Some("A1".into()),
        }
    }

    #[test]
    fn report_is_lazy_and_stale_reports_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("export.csv");
        std::fs::write(&input, "x\n").unwrap();

        let mut r = RowReport::new(&input);
        r.record(&bad(3));
        r.record(&bad(7));
        let path = r.finish().unwrap().unwrap();
        assert_eq!(path, dir.path().join("export.csv.report.csv"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "line,column,reason\n3,Appt Date,value does not match date format %d/%m/%Y\n\
             7,Appt Date,value does not match date format %d/%m/%Y\n\
             summary,Appt Date,2 rows: value does not match date format %d/%m/%Y\n"
        );
        assert!(!text.contains("secret"));

        // A clean re-run removes the stale report and creates nothing.
        let r = RowReport::new(&input);
        assert_eq!(r.finish().unwrap(), None);
        assert!(!path.exists());
        assert_eq!(RowReport::new(&input).finish().unwrap(), None);
    }
}
