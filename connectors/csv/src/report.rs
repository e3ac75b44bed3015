//! The per-file row report: `<input file name>.report.csv` next to the input, listing every bad row as
//! `line,column,reason`.
//!
//! It carries no cell value, so it can be handed to whoever fixes the export. It is created only when
//! there is something to report, and a stale report left by an earlier run of the same file is removed
//! when the new run is clean (a report on disk always describes the latest run).

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use crate::source::BadRow;

/// Collects bad rows of one import into the row report, writing as it goes.
#[derive(Debug)]
pub struct RowReport {
    path: PathBuf,
    writer: Option<csv::Writer<BufWriter<File>>>,
    rows: u64,
    error: Option<io::Error>,
}

impl RowReport {
    /// The report for `input`; nothing is written until the first bad row.
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

    /// Adds one bad row. An I/O failure is kept and returned by [`RowReport::finish`], so an import
    /// is not interrupted by a full disk halfway through its report.
    pub fn record(&mut self, bad: &BadRow) {
        self.rows += 1;
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.write(bad) {
            self.error = Some(e);
        }
    }

    fn write(&mut self, bad: &BadRow) -> io::Result<()> {
        if self.writer.is_none() {
            let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&self.path)?));
            w.write_record(["line", "column", "reason"])?;
            self.writer = Some(w);
        }
        let w = self.writer.as_mut().expect("created above");
        w.write_record([
            bad.line.to_string().as_str(),
            bad.column.as_deref().unwrap_or(""),
            bad.reason.as_str(),
        ])?;
        Ok(())
    }

    /// Flushes the report; returns its path when one was written. With no bad rows, removes a stale
    /// report from an earlier run.
    pub fn finish(self) -> io::Result<Option<PathBuf>> {
        if let Some(e) = self.error {
            return Err(e);
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
             7,Appt Date,value does not match date format %d/%m/%Y\n"
        );
        assert!(!text.contains("secret"));

        // A clean re-run removes the stale report and creates nothing.
        let r = RowReport::new(&input);
        assert_eq!(r.finish().unwrap(), None);
        assert!(!path.exists());
        assert_eq!(RowReport::new(&input).finish().unwrap(), None);
    }
}
