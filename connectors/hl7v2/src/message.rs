//! A parsed message: hl7-parser's structure, checked for completeness, with decoded accessors.

use hl7_parser::Message;
use hl7_parser::message::{Segment, Separators};

use crate::error::{ErrLocation, ErrorCode, Hl7Error};
use crate::escape::unescape;
use crate::limits::ParseLimits;

/// Removes the v2.7 truncation character from MSH-2 (`^~\&#`): hl7-parser would otherwise shift
/// every MSH field by one. It has no meaning in a message we receive.
fn drop_truncation_character(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    if b.len() > 9 && text.starts_with("MSH") && b[9] == b[3] && b[3] != b'#' && b[8] == b'#' {
        let mut s = String::with_capacity(text.len());
        s.push_str(&text[..8]);
        s.push_str(&text[9..]);
        return std::borrow::Cow::Owned(s);
    }
    std::borrow::Cow::Borrowed(text)
}

/// The text of a message made ready for parsing: BOM and surrounding blank lines removed, the
/// truncation character dropped. Fails (AR) when it does not start with an MSH segment.
pub fn prepare(text: &str) -> Result<std::borrow::Cow<'_, str>, Hl7Error> {
    let t = text
        .trim_start_matches('\u{feff}')
        .trim_matches(|c: char| c == '\r' || c == '\n' || c == ' ' || c == '\t');
    if !t.starts_with("MSH") || t.len() < 8 {
        return Err(Hl7Error::reject(
            ErrorCode::SegmentSequence,
            Some(ErrLocation::field("MSH", 0)),
            "the message does not start with an MSH segment",
        ));
    }
    Ok(drop_truncation_character(t))
}

/// A value decoded (escapes resolved), trimmed, `None` when empty or `""` (HL7 null). A control
/// character the sender escaped (`\X00\`, `\.br\`) becomes a space: raw control characters are
/// rejected by [`Parsed::parse`], and none reaches a stored name or id.
fn decoded(raw: &str, separators: &Separators) -> Option<String> {
    let mut v = unescape(raw, separators);
    if v.chars().any(char::is_control) {
        v = v
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
    }
    let v = v.trim();
    (!v.is_empty() && v != "\"\"").then(|| v.to_owned())
}

/// A parsed message with decoded accessors (escapes resolved by [`unescape`]).
#[derive(Debug)]
pub struct Parsed<'m> {
    message: Message<'m>,
}

impl<'m> Parsed<'m> {
    /// Parses prepared text. hl7-parser silently ends a message at a segment it cannot parse, so
    /// the number of parsed segments is compared with the number of lines. Before anything is
    /// built, the text is held to [`ParseLimits::CEILING`] (AR; the MLLP listener has already held
    /// it to the configured limits) and checked for control characters (AE 102 at their field).
    pub fn parse(text: &'m str) -> Result<Self, Hl7Error> {
        crate::limits::check(text.as_bytes(), &ParseLimits::CEILING)?;
        crate::limits::check_controls(text)?;
        let message = Message::parse_with_lenient_newlines(text, true).map_err(|_| {
            Hl7Error::reject(
                ErrorCode::SegmentSequence,
                Some(ErrLocation::field("MSH", 0)),
                "the message cannot be parsed as HL7 v2 (header or segment structure)",
            )
        })?;
        let lines = text
            .split(['\r', '\n'])
            .filter(|l| !l.trim().is_empty())
            .count();
        if message.segments.len() < lines {
            return Err(Hl7Error {
                ack: crate::error::AckCode::Error,
                code: ErrorCode::SegmentSequence,
                location: None,
                reason: format!(
                    "segment {} of {lines} cannot be parsed (a segment name is three letters or digits)",
                    message.segments.len() + 1
                ),
            });
        }
        Ok(Parsed { message })
    }

    /// The separators MSH-1/MSH-2 declared.
    pub fn separators(&self) -> &Separators {
        &self.message.separators
    }

    /// The first segment called `name`.
    pub fn segment(&self, name: &str) -> Option<&Segment<'m>> {
        self.message.segment(name)
    }

    /// A field's raw (still escaped) text, as sent.
    pub fn raw(&self, seg: &Segment<'m>, field: usize) -> &'m str {
        seg.field(field).map(|f| f.raw_value()).unwrap_or("")
    }

    /// One component of one repetition (all 1-based), decoded; `None` when empty.
    pub fn value(
        &self,
        seg: &Segment<'m>,
        field: usize,
        repetition: usize,
        component: usize,
    ) -> Option<String> {
        let f = seg.field(field)?;
        let r = f.repeat(repetition)?;
        let c = r.component(component)?;
        decoded(c.raw_value(), self.separators())
    }

    /// A subcomponent (all 1-based), decoded; `None` when empty.
    pub fn sub(
        &self,
        seg: &Segment<'m>,
        field: usize,
        repetition: usize,
        component: usize,
        subcomponent: usize,
    ) -> Option<String> {
        let c = seg.field(field)?.repeat(repetition)?.component(component)?;
        let s = c.subcomponent(subcomponent)?;
        decoded(s.raw_value(), self.separators())
    }

    /// How many repetitions a field has (0 when absent).
    pub fn repetitions(&self, seg: &Segment<'m>, field: usize) -> usize {
        seg.field(field).map_or(0, |f| f.repeats.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_character_does_not_shift_msh_fields() {
        let t = prepare("MSH|^~\\&#|APP|FAC|ME|US|20260101||SIU^S12|42|P|2.7\r").unwrap();
        let p = Parsed::parse(&t).unwrap();
        let msh = p.segment("MSH").unwrap();
        assert_eq!(p.value(msh, 10, 1, 1).as_deref(), Some("42"));
        assert_eq!(p.value(msh, 9, 1, 2).as_deref(), Some("S12"));
    }

    #[test]
    fn a_segment_the_parser_cannot_read_is_an_error_not_a_shorter_message() {
        let t = prepare(
            "MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5\nSCH|1|2\nthis is not a segment\nPID|||9",
        )
        .unwrap();
        let e = Parsed::parse(&t).unwrap_err();
        assert_eq!(e.code, ErrorCode::SegmentSequence);
        assert!(e.reason.contains("segment 3 of 4"), "{}", e.reason);
    }

    #[test]
    fn an_escaped_nul_never_reaches_a_decoded_value() {
        let t = prepare(
            "MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5\rPID|||9||Sou\\X00\\za^Ma\\X1B\\ria",
        )
        .unwrap();
        let p = Parsed::parse(&t).unwrap();
        let pid = p.segment("PID").unwrap();
        assert_eq!(p.value(pid, 5, 1, 1).as_deref(), Some("Sou za"));
        assert_eq!(p.sub(pid, 5, 1, 2, 1).as_deref(), Some("Ma ria"));
        // Raw, they are not data at all.
        let t = prepare("MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5\rPID|||9||Sou\0za").unwrap();
        assert_eq!(Parsed::parse(&t).unwrap_err().code, ErrorCode::DataType);
    }

    #[test]
    fn text_that_is_not_hl7_is_rejected() {
        assert!(prepare("hello").is_err());
        assert!(prepare("\u{feff}\r\nMSH|^~\\&|A").is_ok());
    }
}
