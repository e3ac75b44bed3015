//! Streaming reader: one file in, one [`RowResult`] per record out, with flat memory.
//!
//! Rows are never collected: the csv crate reads [`ByteRecord`]s through a small tap that keeps only
//! the bytes of the record being read (so a bad row can be quarantined exactly as it was in the file).
//! Each field is decoded in the profile's encoding. One bad record never stops the import: it becomes
//! a [`BadRow`] and reading goes on. When an unbalanced quote swallows the following lines into one
//! record (which then has the wrong number of fields), only its first line is reported and reading
//! restarts on the next line, so one stray quote cannot hide the rest of the file.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use csv::ByteRecord;
use jiff::Timestamp;
use medrelay_mapping::phone::check_region;
use medrelay_mapping::{AppointmentEvent, SourceVersion, StatusChange};

use crate::config::CsvProfile;
use crate::map::{Mapped, Mapper, decode};
use crate::report::FileSummary;

/// What the caller knows about this import that the file does not say.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The connector's configured name: the `source` half of every appointment key.
    pub source: String,
    /// The configured site the appointments belong to (unless a `site` column says otherwise).
    pub site: String,
    /// IANA zone of the site, used when the profile sets none.
    pub site_time_zone: String,
    /// Region (ISO 3166 alpha-2) for reading national phone numbers.
    pub default_region: String,
    /// The snapshot's time (or the file's modification time): the version of rows without an
    /// `updated_at` value.
    pub as_of: Timestamp,
}

/// Why a file cannot be imported at all. Names headers, settings and the file, never a cell value.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file (a configured path, not patient data).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file has no header row.
    #[error("file is empty: no header row")]
    Empty,
    /// A header cell cannot be decoded in the configured encoding.
    #[error(
        "header column {index} cannot be decoded as {encoding} (the profile's `encoding`): is the file in another encoding?"
    )]
    HeaderEncoding {
        /// 1-based column position.
        index: usize,
        /// The profile's encoding name.
        encoding: &'static str,
    },
    /// A header named in the profile is not in the file.
    #[error("mapped header \"{header}\" is not in the file")]
    MissingHeader {
        /// The header text from the profile.
        header: String,
    },
    /// The profile or the import options are invalid.
    #[error("invalid CSV profile: {}", .0.join("; "))]
    Profile(Vec<String>),
}

impl CsvError {
    /// Whether the file itself is bad input (empty, an undecodable header), as opposed to a file
    /// that cannot be read ([`CsvError::Io`]) or a profile that does not fit it
    /// ([`CsvError::MissingHeader`], [`CsvError::Profile`]). Callers choose exit codes with it.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, CsvError::Empty | CsvError::HeaderEncoding { .. })
    }

    /// Whether the profile does not fit the file or is invalid.
    pub fn is_profile_mismatch(&self) -> bool {
        matches!(self, CsvError::MissingHeader { .. } | CsvError::Profile(_))
    }
}

/// One record's outcome.
///
/// Not boxed: rows are yielded one at a time, so the size gap with [`BadRow`] costs no memory, while a
/// box would add an allocation per good row.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RowResult {
    /// A mapped appointment.
    Event(AppointmentEvent),
    /// A row whose status is not `booked` (cancelled, noshow...) and whose start is empty: it
    /// changes the status of the stored appointment it names, and never creates one.
    Status(StatusChange),
    /// A record that could not be mapped, for the row report and quarantine.
    Bad(BadRow),
}

/// A row that was imported with a remark for the row report (a civil time in a daylight-saving
/// gap). Like [`BadRow::reason`], no cell value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowWarning {
    /// 1-based physical line where the record starts.
    pub line: u64,
    /// Header of the column concerned.
    pub column: Option<String>,
    /// What is remarkable, starting with `warning:`.
    pub reason: String,
}

/// A record that could not be mapped. `reason` and `column` carry no cell value; `raw` and
/// `filler_id` do, so they must go to quarantine storage only, never to a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based physical line where the record starts (the header is line 1).
    pub line: u64,
    /// Header of the offending column, when one column is to blame.
    pub column: Option<String>,
    /// What is wrong, e.g. "value does not match date format %d/%m/%Y".
    pub reason: String,
    /// The record's bytes exactly as in the file, without its line terminator.
    pub raw: Vec<u8>,
    /// The filler id, if that cell was readable: a snapshot sweep then knows the appointment still
    /// exists even though this version of it could not be read.
    pub filler_id: Option<String>,
}

/// Records every byte the csv reader pulls, so a record's raw bytes can be cut out afterwards.
struct Tap {
    inner: Box<dyn Read + Send>,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Drop logged bytes once this many are behind the cursor (keeps memory flat, copies rarely).
const COMPACT_AFTER: usize = 64 * 1024;

/// A record's bytes as cut out of the log.
struct Slice {
    line: u64,
    raw: Vec<u8>,
    first_line: Option<(Vec<u8>, u64)>,
    newlines: u64,
}

/// The rows of one file, read lazily.
pub struct CsvRows {
    reader: Option<csv::Reader<Tap>>,
    log: Arc<Mutex<Vec<u8>>>,
    /// Absolute file offset of `log[0]`.
    log_base: u64,
    /// Absolute file offset of the current csv reader's position 0.
    pos_base: u64,
    /// Absolute offset where the next record starts, and how many `\n` precede it.
    cursor: u64,
    lines_before_cursor: u64,
    delimiter: u8,
    quote: u8,
    header_len: usize,
    mapper: Mapper,
    file_name: String,
    total_bytes: u64,
    record: ByteRecord,
    path: PathBuf,
    warnings: Vec<RowWarning>,
}

impl std::fmt::Debug for CsvRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvRows")
            .field("file_name", &self.file_name)
            .field("bytes_read", &self.cursor)
            .field("total_bytes", &self.total_bytes)
            .finish_non_exhaustive()
    }
}

fn build_reader(
    inner: Box<dyn Read + Send>,
    log: Arc<Mutex<Vec<u8>>>,
    d: u8,
    q: u8,
) -> csv::Reader<Tap> {
    csv::ReaderBuilder::new()
        .delimiter(d)
        .quote(q)
        .flexible(true)
        // The header is read as the first record so a restart can reuse the same builder.
        .has_headers(false)
        .from_reader(Tap { inner, log })
}

/// Opens `path`, reads and resolves the header row, and returns the rows as a lazy iterator.
///
/// Fails only for problems with the whole file: unreadable, no header, an invalid profile, or a mapped
/// header that is missing (named in the error).
pub fn open(
    path: &Path,
    profile: &CsvProfile,
    options: ImportOptions,
) -> Result<CsvRows, CsvError> {
    profile.validate().map_err(CsvError::Profile)?;
    let mut problems = Vec::new();
    if profile.time_zone.is_none() && jiff::tz::TimeZone::get(&options.site_time_zone).is_err() {
        problems.push(format!(
            "site time zone \"{}\" is not a known IANA time zone",
            options.site_time_zone
        ));
    }
    if check_region(&options.default_region).is_err() {
        problems.push(format!(
            "default region \"{}\" is not a known region code",
            options.default_region
        ));
    }
    if !problems.is_empty() {
        return Err(CsvError::Profile(problems));
    }

    let io_err = |source| CsvError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let total_bytes = file.metadata().map_err(io_err)?.len();
    let log = Arc::new(Mutex::new(Vec::new()));
    let delimiter = profile.delimiter as u8;
    let quote = profile.quote as u8;
    let mut reader = build_reader(
        Box::new(BufReader::with_capacity(64 * 1024, file)),
        log.clone(),
        delimiter,
        quote,
    );

    let mut header = ByteRecord::new();
    let has = reader
        .read_byte_record(&mut header)
        .map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(source) => io_err(source),
            _ => CsvError::Empty,
        })?;
    if !has {
        return Err(CsvError::Empty);
    }
    let mut headers = Vec::with_capacity(header.len());
    for (i, field) in header.iter().enumerate() {
        let field = if i == 0 {
            field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
        } else {
            field
        };
        let text = decode(profile.encoding, field).ok_or(CsvError::HeaderEncoding {
            index: i + 1,
            encoding: profile.encoding.name(),
        })?;
        headers.push(text.trim().to_string());
    }
    let mapper = Mapper::new(profile, &headers, options)?;

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rows = CsvRows {
        reader: Some(reader),
        log,
        log_base: 0,
        pos_base: 0,
        cursor: 0,
        lines_before_cursor: 0,
        delimiter,
        quote,
        header_len: headers.len(),
        mapper,
        file_name,
        total_bytes,
        record: ByteRecord::new(),
        path: path.to_path_buf(),
        warnings: Vec::new(),
    };
    // Account for the header's bytes and lines.
    let end = rows.reader_pos();
    let newlines = rows.slice(end).newlines;
    rows.advance(end, newlines);
    Ok(rows)
}

impl CsvRows {
    /// Bytes consumed so far (the start of the next record), for progress bars.
    pub fn bytes_read(&self) -> u64 {
        self.cursor
    }

    /// Size of the file when it was opened.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The warnings about rows yielded since the last call (imported rows with a remark for the
    /// row report), in line order.
    pub fn take_warnings(&mut self) -> Vec<RowWarning> {
        std::mem::take(&mut self.warnings)
    }

    /// What the rows read so far add up to: appointments, status changes, rows without a usable
    /// phone, and the unknown values of code columns. Complete once the iterator has ended.
    pub fn summary(&self) -> FileSummary {
        self.mapper.summary()
    }

    fn reader_pos(&self) -> u64 {
        self.pos_base
            + self
                .reader
                .as_ref()
                .map(|r| r.position().byte())
                .unwrap_or(0)
    }

    /// Looks at the bytes from the cursor up to `end`: the record's start line, its raw bytes
    /// (leading blank lines and the trailing terminator removed), the absolute offset just after its
    /// first physical line when it spans several, and how many newlines the span holds.
    fn slice(&self, end: u64) -> Slice {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let from = (self.cursor - self.log_base) as usize;
        let to = ((end - self.log_base) as usize).min(log.len());
        let bytes = &log[from.min(to)..to];
        // csv-core skips terminators and blank lines before a record: they belong to no record.
        let lead = bytes
            .iter()
            .take_while(|b| **b == b'\n' || **b == b'\r')
            .count();
        let lead_lines = bytes[..lead].iter().filter(|b| **b == b'\n').count() as u64;
        let mut raw = &bytes[lead..];
        while let [rest @ .., b'\n' | b'\r'] = raw {
            raw = rest;
        }
        // When the record spans several physical lines: its first line, and where the next begins.
        let first_line = raw.iter().position(|b| *b == b'\n').map(|p| {
            let mut first = &raw[..p];
            while let [rest @ .., b'\r'] = first {
                first = rest;
            }
            (first.to_vec(), self.cursor + (lead + p + 1) as u64)
        });
        Slice {
            line: self.lines_before_cursor + lead_lines + 1,
            raw: raw.to_vec(),
            first_line,
            newlines: bytes.iter().filter(|b| **b == b'\n').count() as u64,
        }
    }

    /// Moves the cursor to `end` and forgets logged bytes well behind it.
    fn advance(&mut self, end: u64, newlines: u64) {
        self.lines_before_cursor += newlines;
        self.cursor = end;
        let behind = (end - self.log_base) as usize;
        if behind > COMPACT_AFTER {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let behind = behind.min(log.len());
            log.drain(..behind);
            self.log_base += behind as u64;
        }
    }

    /// Restarts parsing at `at` (an absolute offset just after a newline), replaying logged bytes.
    fn restart_at(&mut self, at: u64, lines_before: u64) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let tap = reader.into_inner();
        let replay = {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let from = ((at - self.log_base) as usize).min(log.len());
            let replay = log[from..].to_vec();
            log.clear();
            replay
        };
        self.log_base = at;
        self.pos_base = at;
        self.cursor = at;
        self.lines_before_cursor = lines_before;
        let inner: Box<dyn Read + Send> = Box::new(Cursor::new(replay).chain(tap.inner));
        self.reader = Some(build_reader(
            inner,
            self.log.clone(),
            self.delimiter,
            self.quote,
        ));
    }

    fn bad(
        &self,
        line: u64,
        column: Option<String>,
        reason: String,
        raw: Vec<u8>,
        filler_id: Option<String>,
    ) -> RowResult {
        RowResult::Bad(BadRow {
            line,
            column,
            reason,
            raw,
            filler_id,
        })
    }
}

impl Iterator for CsvRows {
    type Item = RowResult;

    fn next(&mut self) -> Option<RowResult> {
        loop {
            let reader = self.reader.as_mut()?;
            let mut record = std::mem::take(&mut self.record);
            let read = reader.read_byte_record(&mut record);
            let end = self.reader_pos();
            let slice = self.slice(end);
            let line = slice.line;
            let result = match read {
                Ok(false) => {
                    self.advance(end, slice.newlines);
                    self.reader = None;
                    return None;
                }
                Err(e) => {
                    // With flexible records and byte fields only I/O can fail here.
                    self.reader = None;
                    let reason = match e.kind() {
                        csv::ErrorKind::Io(_) => "the file could not be read past this point",
                        _ => "the record could not be parsed as CSV",
                    };
                    self.bad(line, None, reason.to_string(), slice.raw, None)
                }
                Ok(true) if record.len() != self.header_len && slice.first_line.is_some() => {
                    // A quote left open joined the following lines into this record: report its
                    // first line only and read again from the line after it.
                    let (first, next_at) = slice.first_line.expect("checked above");
                    self.restart_at(next_at, line);
                    self.record = record;
                    return Some(
                        self.bad(
                            line,
                            None,
                            "unbalanced quote: the record runs over several lines with the wrong \
                         number of fields"
                                .to_string(),
                            first,
                            None,
                        ),
                    );
                }
                Ok(true) => {
                    self.advance(end, slice.newlines);
                    // Excel leaves rows of bare delimiters at the end of sheets: not data.
                    if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
                        self.record = record;
                        continue;
                    }
                    if record.len() != self.header_len {
                        let reason = format!(
                            "wrong number of fields: {}, expected {}",
                            record.len(),
                            self.header_len
                        );
                        self.bad(line, None, reason, slice.raw, None)
                    } else {
                        match self.mapper.map(&record) {
                            Ok((mapped, warnings)) => {
                                self.warnings
                                    .extend(warnings.into_iter().map(|w| RowWarning {
                                        line,
                                        column: w.column,
                                        reason: w.reason,
                                    }));
                                let version = SourceVersion {
                                    at: self
                                        .mapper
                                        .updated_at(&record)
                                        .unwrap_or(self.mapper.options().as_of),
                                    seq: line as i64,
                                };
                                let raw_ref = format!("{}:{line}", self.file_name);
                                match mapped {
                                    Mapped::Appointment(appointment) => {
                                        RowResult::Event(AppointmentEvent {
                                            appointment,
                                            version,
                                            raw_ref,
                                            message_id: None,
                                        })
                                    }
                                    Mapped::Status {
                                        key,
                                        placer_id,
                                        status,
                                    } => RowResult::Status(StatusChange {
                                        key,
                                        placer_id,
                                        status,
                                        version,
                                        raw_ref,
                                        message_id: None,
                                    }),
                                }
                            }
                            Err(e) => {
                                let filler = self.mapper.filler_id(&record);
                                self.bad(line, e.column, e.reason, slice.raw, filler)
                            }
                        }
                    }
                }
            };
            self.record = record;
            return Some(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rows_can_move_to_a_blocking_thread() {
        fn send<T: Send>() {}
        send::<CsvRows>();
        send::<RowResult>();
    }

    #[test]
    fn memory_stays_flat_and_an_unbalanced_quote_far_into_the_file_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        let mut f = io::BufWriter::new(File::create(&path).unwrap());
        writeln!(f, "id,start,note").unwrap();
        let rows = 40_000u64;
        let broken = 30_000u64;
        for i in 0..rows {
            let note = if i == broken {
                "\"left open".to_string()
            } else if i % 100 == 0 {
                "\"quoted, with a comma\"".to_string()
            } else {
                format!("note {i}")
            };
            writeln!(f, "A{i},2026-12-01 09:00,{note}").unwrap();
        }
        drop(f);
        let profile: CsvProfile =
            toml::from_str("[columns]\nfiller_id = \"id\"\nstart = \"start\"\nreason = \"note\"")
                .unwrap();
        let options = ImportOptions {
            source: "big".into(),
            site: "s".into(),
            site_time_zone: "UTC".into(),
            default_region: "US".into(),
            as_of: Timestamp::UNIX_EPOCH,
        };
        let mut it = open(&path, &profile, options).unwrap();
        let (mut ok, mut bad, mut max_log) = (0u64, Vec::new(), 0usize);
        while let Some(r) = it.next() {
            max_log = max_log.max(it.log.lock().unwrap().len());
            match r {
                RowResult::Event(e) => {
                    assert_eq!(e.version.seq as u64, ok + 2 + bad.len() as u64);
                    ok += 1;
                }
                RowResult::Status(s) => panic!("{s:?}"),
                RowResult::Bad(b) => bad.push(b),
            }
        }
        assert_eq!(it.bytes_read(), it.total_bytes());
        assert_eq!(ok, rows - 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, broken + 2);
        assert_eq!(
            bad[0].raw,
            format!("A{broken},2026-12-01 09:00,\"left open").into_bytes()
        );
        assert!(it.total_bytes() > 1_000_000);
        assert!(max_log < 256 * 1024, "log grew to {max_log} bytes");
    }
}
