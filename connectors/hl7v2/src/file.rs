//! HL7 files: one or many messages, as interface engines write them. Accepted layouts: messages
//! separated by newlines (each starts with `MSH`), MLLP-framed files (VT ... FS CR), and batch files
//! (FHS/BHS ... BTS/FTS envelopes, which are skipped).

/// One message cut from a file: its bytes and the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMessage {
    pub bytes: Vec<u8>,
    pub line: usize,
}

const VT: u8 = 0x0b;
const FS: u8 = 0x1c;

fn is_segment(line: &[u8], name: &[u8]) -> bool {
    line.len() >= 4 && &line[..3] == name && !line[3].is_ascii_alphanumeric()
}

/// Splits a file into messages. Bytes before the first MSH that are not a batch header are kept
/// as a message of their own, so that they are reported (and quarantined) rather than dropped.
pub fn split(content: &[u8]) -> Vec<FileMessage> {
    let mut out: Vec<FileMessage> = Vec::new();
    let mut current: Option<FileMessage> = None;
    let mut line_no = 0usize;
    let mut rest = content;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let mut line = &rest[..end];
        // Count "\r\n" as one line break.
        let mut next = end;
        if next < rest.len() {
            if rest[next] == b'\r' && rest.get(next + 1) == Some(&b'\n') {
                next += 1;
            }
            next += 1;
        }
        rest = &rest[next.min(rest.len())..];
        line_no += 1;
        // MLLP framing bytes and a BOM.
        while let Some((&first, tail)) = line.split_first() {
            if first == VT || first == FS {
                line = tail;
            } else {
                break;
            }
        }
        if line.starts_with(&[0xef, 0xbb, 0xbf]) {
            line = &line[3..];
        }
        let trimmed_end = line
            .iter()
            .rposition(|&b| b != FS && b != b' ' && b != b'\t');
        let line = match trimmed_end {
            Some(i) => &line[..=i],
            None => &[][..],
        };
        if line.is_empty() {
            continue;
        }
        if ["FHS", "BHS", "BTS", "FTS"]
            .iter()
            .any(|s| is_segment(line, s.as_bytes()))
        {
            if let Some(m) = current.take() {
                out.push(m);
            }
            continue;
        }
        if is_segment(line, b"MSH") {
            if let Some(m) = current.take() {
                out.push(m);
            }
            current = Some(FileMessage {
                bytes: Vec::new(),
                line: line_no,
            });
        }
        let m = current.get_or_insert_with(|| FileMessage {
            bytes: Vec::new(),
            line: line_no,
        });
        m.bytes.extend_from_slice(line);
        m.bytes.push(b'\r');
    }
    if let Some(m) = current {
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_mllp_and_batch_layouts() {
        let f = b"FHS|^~\\&\nBHS|^~\\&\nMSH|a\nSCH|1\n\nMSH|b\r\nPID|2\r\nBTS|2\nFTS|1\n";
        let m = split(f);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].bytes, b"MSH|a\rSCH|1\r");
        assert_eq!(
            (m[1].line, m[1].bytes.as_slice()),
            (6, &b"MSH|b\rPID|2\r"[..])
        );
        let framed = b"\x0bMSH|a\rSCH|1\r\x1c\r\x0bMSH|b\rPID|2\r\x1c\r";
        let m = split(framed);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].bytes, b"MSH|b\rPID|2\r");
    }

    #[test]
    fn junk_before_the_first_header_is_kept_as_its_own_message() {
        let m = split(b"garbage line\nMSH|a\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].bytes, b"garbage line\r");
        assert_eq!(m[0].line, 1);
    }
}
