//! ACK / NAK: MSH + MSA (+ ERR). Written by hand rather than with hl7-parser's builder because
//! MSA-2 and the routing fields are echoed exactly as the sender wrote them (still escaped), which
//! the builder would escape a second time. Our own texts go through [`escape`].

use std::sync::atomic::{AtomicU64, Ordering};

use hl7_parser::message::Separators;
use jiff::Timestamp;

use crate::error::{AckCode, Hl7Error};
use crate::escape::escape;
use crate::siu::{Header, Hl7Options};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh MSH-10 for an ACK (at most 20 characters, the v2.5 limit).
fn control_id(now: Timestamp) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 100;
    format!("MR{}{n:02}", now.as_microsecond())
}

fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut it = version.split('.').filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(2), it.next().unwrap_or(5));
    (a, b) >= (major, minor)
}

/// Builds the acknowledgement for a message whose header is `header` (default when unreadable).
/// `error` is `None` for AA. v2.5+ peers get ERR-2/3/4/8; v2.3/2.4 peers ERR-1 and MSA-3.
pub fn build(
    header: Option<&Header>,
    code: AckCode,
    error: Option<&Hl7Error>,
    opts: &Hl7Options,
    now: Timestamp,
) -> String {
    build_code(header, code.as_str(), error, opts, now, false)
}

/// [`build`] with any MSA-1 code: the enhanced mode's accept acknowledgments (CA, CE, CR) too.
/// `final_answer`: the ACK is itself a message in enhanced mode (the application acknowledgment)
/// and asks for no acknowledgment of its own (MSH-15 and MSH-16 = NE).
pub fn build_code(
    header: Option<&Header>,
    code: &str,
    error: Option<&Hl7Error>,
    opts: &Hl7Options,
    now: Timestamp,
    final_answer: bool,
) -> String {
    let sep = Separators::default();
    let empty = Header::default();
    let h = header.unwrap_or(&empty);
    let version = if h.version.is_empty() {
        "2.5"
    } else {
        h.version.as_str()
    };
    let modern = version_at_least(version, 2, 5);
    let structure = if version_at_least(version, 2, 4) || version == "2.3.1" {
        "^ACK"
    } else {
        ""
    };
    let trigger = escape(&h.trigger, &sep);
    let processing = if h.processing_id.is_empty() {
        "P"
    } else {
        h.processing_id.as_str()
    };
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||ACK^{trigger}{structure}|{}|{}|{}\r",
        escape(&opts.application, &sep),
        escape(&opts.facility, &sep),
        h.sending_application,
        h.sending_facility,
        now.strftime("%Y%m%d%H%M%S%z"),
        control_id(now),
        escape(processing, &sep),
        escape(version, &sep),
    );
    if final_answer {
        out.insert_str(out.len() - 1, "|||NE|NE");
    }
    out.push_str("MSA|");
    out.push_str(code);
    out.push('|');
    out.push_str(&h.control_id);
    if let Some(e) = error {
        let text = escape(&e.to_string(), &sep);
        if !modern {
            out.push('|');
            out.push_str(&text);
        }
        out.push('\r');
        let loc = e.location.as_ref();
        if modern {
            // ERR-2 (ERL: segment^sequence^field^repetition^component), ERR-3, ERR-4, ERR-8.
            let erl = loc
                .map(|l| {
                    format!(
                        "{}^1{}",
                        l.segment,
                        if l.field > 0 {
                            format!(
                                "^{}^{}{}",
                                l.field,
                                l.repetition.unwrap_or(1),
                                l.component.map(|c| format!("^{c}")).unwrap_or_default()
                            )
                        } else {
                            String::new()
                        }
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "ERR||{erl}|{}^{}^HL70357|E||||{text}\r",
                e.code.code(),
                e.code.text()
            ));
        } else {
            // ERR-1 (ELD: segment^sequence^field^code&text&table).
            let (s, f) = loc.map_or(("", String::new()), |l| (l.segment, l.field.to_string()));
            out.push_str(&format!(
                "ERR|{s}^1^{f}^{}&{}&HL70357\r",
                e.code.code(),
                escape(e.code.text(), &sep)
            ));
        }
    } else {
        out.push('\r');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrLocation, ErrorCode};

    fn header(version: &str) -> Header {
        Header {
            control_id: " 38762".into(),
            sending_application: "ORSOS".into(),
            sending_facility: "G^1.2&x^ISO".into(),
            message_type: "SIU".into(),
            trigger: "S14".into(),
            processing_id: "P".into(),
            version: version.into(),
            ..Header::default()
        }
    }

    #[test]
    fn accept_echoes_control_id_and_routing_exactly() {
        let opts = Hl7Options::new("s", "site", "UTC", "US");
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let ack = build(Some(&header("2.3")), AckCode::Accept, None, &opts, now);
        let lines: Vec<&str> = ack.split('\r').collect();
        assert!(
            lines[0].starts_with(
                "MSH|^~\\&|MEDRELAY||ORSOS|G^1.2&x^ISO|20261201100000+0000||ACK^S14|MR"
            ),
            "{ack}"
        );
        assert!(lines[0].ends_with("|P|2.3"), "{ack}");
        assert_eq!(lines[1], "MSA|AA| 38762");
        assert_eq!(lines.len(), 3, "ends with one segment terminator");
    }

    #[test]
    fn errors_carry_err_in_the_form_of_the_senders_version() {
        let opts = Hl7Options::new("s", "site", "UTC", "US");
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let e = Hl7Error::content(
            ErrorCode::RequiredFieldMissing,
            ErrLocation::field("SCH", 2),
            "SCH-2 (filler appointment id) is required",
        );
        let ack = build(Some(&header("2.8")), AckCode::Error, Some(&e), &opts, now);
        assert!(ack.contains("|ACK^S14^ACK|"), "{ack}");
        assert!(ack.contains("\rMSA|AE| 38762\r"), "{ack}");
        assert!(
            ack.contains("\rERR||SCH^1^2^1|101^Required field missing^HL70357|E||||Required field missing at SCH-2: SCH-2 (filler appointment id) is required\r"),
            "{ack}"
        );
        let old = build(Some(&header("2.3")), AckCode::Error, Some(&e), &opts, now);
        assert!(
            old.contains("\rERR|SCH^1^2^101&Required field missing&HL70357\r"),
            "{old}"
        );
        assert!(
            old.contains("MSA|AE| 38762|Required field missing at SCH-2"),
            "{old}"
        );
    }
}
