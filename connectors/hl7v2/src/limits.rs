//! Bounds on what one message may make the parser build, and the check for control characters.
//!
//! hl7-parser allocates a vector for every field, repetition, component and subcomponent (60-250
//! bytes each), so a frame's size does not bound the memory its parse takes: a 1 MB frame of `|`
//! made the process peak at 750 MiB. [`check`] counts the separators on the raw bytes, before
//! anything is decoded or built, and rejects (AR) a message with more structure than
//! [`ParseLimits`] allows. [`check_controls`] turns a control character in the content (NUL, an FS
//! byte inside a field, ESC...) into an AE with its location instead of data.

use crate::error::{AckCode, ErrLocation, ErrorCode, Hl7Error};

/// How much structure one message may have. The defaults are far above real SIU messages (a few
/// dozen segments and a few hundred fields) and keep one parse under ~10 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Segments (lines).
    pub max_segments: usize,
    /// Fields (field separators) in the whole message.
    pub max_fields: usize,
    /// Field repetitions (repetition separators) in the whole message.
    pub max_repetitions: usize,
    /// Components and subcomponents (their separators) in the whole message.
    pub max_components: usize,
}

impl ParseLimits {
    /// The defaults of an MLLP listener and of `[[connectors]]` (`max_segments = 1000` ...).
    pub const DEFAULT: ParseLimits = ParseLimits {
        max_segments: 1_000,
        max_fields: 10_000,
        max_repetitions: 10_000,
        max_components: 50_000,
    };

    /// The most a configuration may allow, and what every parse (files too) is held to: about
    /// 40 MiB of parse structures at worst.
    pub const CEILING: ParseLimits = ParseLimits {
        max_segments: 5_000,
        max_fields: 50_000,
        max_repetitions: 50_000,
        max_components: 200_000,
    };

    /// Whether every bound is at least 1 and at most [`ParseLimits::CEILING`]'s (the name of the
    /// first one that is not, for the configuration check).
    pub fn out_of_range(&self) -> Option<&'static str> {
        let c = Self::CEILING;
        [
            ("max_segments", self.max_segments, c.max_segments),
            ("max_fields", self.max_fields, c.max_fields),
            ("max_repetitions", self.max_repetitions, c.max_repetitions),
            ("max_components", self.max_components, c.max_components),
        ]
        .into_iter()
        .find(|(_, v, max)| *v == 0 || v > max)
        .map(|(name, _, _)| name)
    }
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The separators a message declares in MSH-1 / MSH-2 (HL7 defaults where MSH-2 is short), read
/// from the bytes. `None` when the bytes do not start with `MSH` (after a BOM and blank space).
fn separators(raw: &[u8]) -> Option<(u8, u8, u8, u8)> {
    let raw = raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw);
    let start = raw
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))?;
    let raw = &raw[start..];
    if !raw.starts_with(b"MSH") || raw.len() < 4 {
        return None;
    }
    let field = raw[3];
    let enc = &raw[4..];
    let enc = &enc[..enc.iter().position(|&b| b == field).unwrap_or(enc.len())];
    let at = |i: usize, default: u8| enc.get(i).copied().unwrap_or(default);
    Some((field, at(0, b'^'), at(1, b'~'), at(3, b'&')))
}

/// Rejects (AR 100, naming the limit) a message with more segments, fields, repetitions or
/// components than `limits` allow. Linear in the bytes, allocates nothing, stops at the first
/// bound exceeded. Bytes that do not start with MSH pass: the parser rejects them cheaply.
pub fn check(raw: &[u8], limits: &ParseLimits) -> Result<(), Hl7Error> {
    let Some((field, component, repetition, subcomponent)) = separators(raw) else {
        return Ok(());
    };
    let (mut segments, mut fields, mut repetitions, mut components) = (1usize, 0, 0, 0);
    let over = |what: &str, limit: usize, key: &str| {
        Err(Hl7Error::reject(
            ErrorCode::SegmentSequence,
            None,
            format!(
                "the message has more {what} than this interface accepts ({key} = {limit}); it was not parsed"
            ),
        ))
    };
    let mut previous_was_break = false;
    for &b in raw {
        let is_break = b == b'\r' || b == b'\n';
        if is_break && !previous_was_break {
            segments += 1;
            if segments > limits.max_segments {
                return over("segments", limits.max_segments, "max_segments");
            }
        } else if b == field {
            fields += 1;
            if fields > limits.max_fields {
                return over("fields", limits.max_fields, "max_fields");
            }
        } else if b == repetition {
            repetitions += 1;
            if repetitions > limits.max_repetitions {
                return over("repetitions", limits.max_repetitions, "max_repetitions");
            }
        } else if b == component || b == subcomponent {
            components += 1;
            if components > limits.max_components {
                return over("components", limits.max_components, "max_components");
            }
        }
        previous_was_break = is_break;
    }
    Ok(())
}

/// Segment names an ERR location can carry (it names a `&'static str`); a control character in
/// any other segment is reported by its position in the message instead.
const SEGMENTS: &[&str] = &[
    "MSH", "EVN", "SCH", "TQ1", "TQ2", "NTE", "PID", "PD1", "PV1", "PV2", "OBX", "DG1", "RGS",
    "AIS", "AIG", "AIL", "AIP", "ARQ", "APR", "CTD", "MSA", "ERR", "SFT", "UAC", "ROL", "IN1",
    "GT1", "NK1", "ZZZ",
];

/// Whether `c` is a control character that has no place in HL7 content: every Unicode control
/// (C0, DEL, C1) except the segment terminator CR and the LF that lenient newlines accept. A
/// sender that means one escapes it (`\X09\`); NUL and FS are never data.
fn forbidden(c: char) -> bool {
    c.is_control() && c != '\r' && c != '\n'
}

/// Rejects (AE 102 at the field, repetition and component where it is) a message whose text
/// contains a control character (see [`forbidden`]). The reason names the character's code point
/// class and position, never the content around it.
pub fn check_controls(text: &str) -> Result<(), Hl7Error> {
    let Some((at, c)) = text.char_indices().find(|&(_, c)| forbidden(c)) else {
        return Ok(());
    };
    let line_start = text[..at].rfind(['\r', '\n']).map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let segment_number = text[..line_start]
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .count()
        + 1;
    let what = match c as u32 {
        0 => "a NUL byte".to_string(),
        0x1c => "an FS (0x1C) byte".to_string(),
        n => format!("the control character U+{n:04X}"),
    };
    let name = line
        .get(..3)
        .and_then(|n| SEGMENTS.iter().find(|s| **s == n));
    let field_sep = text.as_bytes().get(3).map(|&b| b as char).unwrap_or('|');
    let encoding: Vec<char> = text.get(4..).unwrap_or("").chars().take(4).collect();
    let component = encoding.first().copied().unwrap_or('^');
    let repetition = encoding.get(1).copied().unwrap_or('~');
    let location = name.map(|&segment| {
        let before = &line[..at - line_start];
        let fields = before.matches(field_sep).count();
        let this_field = before.rsplit(field_sep).next().unwrap_or("");
        let reps = this_field.matches(repetition).count();
        let this_rep = this_field.rsplit(repetition).next().unwrap_or("");
        let comps = this_rep.matches(component).count();
        // MSH-1 is the field separator itself, so MSH's fields are numbered one higher.
        let field = if segment == "MSH" { fields + 1 } else { fields };
        ErrLocation {
            segment,
            field,
            repetition: (field > 0 && reps > 0).then_some(reps + 1),
            component: (field > 0 && comps > 0).then_some(comps + 1),
        }
    });
    let reason = match &location {
        Some(_) => format!("{what} in the content: control characters are not data"),
        None => format!("{what} in segment {segment_number}: control characters are not data"),
    };
    Err(Hl7Error {
        ack: AckCode::Error,
        code: ErrorCode::DataType,
        location,
        reason,
    })
}

/// The header of a message that is not parsed whole (over a limit, over the time budget, framed
/// wrongly), from its MSH line alone cut to 21 fields and 4 KiB, so that the NAK still echoes
/// MSH-10 and the routing fields.
pub(crate) fn header_only(raw: &[u8]) -> Option<crate::siu::Header> {
    let start = raw.windows(3).position(|w| w == b"MSH")?;
    let line = &raw[start..];
    let line = &line[..line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len())
        .min(4096)];
    let sep = *line.get(3)?;
    let end = line
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == sep)
        .nth(20)
        .map_or(line.len(), |(i, _)| i);
    let text = String::from_utf8_lossy(&line[..end]);
    let text: String = text.chars().filter(|c| !forbidden(*c)).collect();
    let prepared = crate::message::prepare(&text).ok()?;
    let parsed = crate::message::Parsed::parse(&prepared).ok()?;
    Some(crate::siu::read_header(&parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSH: &str = "MSH|^~\\&|A|B|C|D|20261201||SIU^S12|X1|P|2.5\r";

    #[test]
    fn a_million_field_separators_are_rejected_before_parsing() {
        let mut raw = MSH.as_bytes().to_vec();
        raw.extend_from_slice(b"PID");
        raw.extend(std::iter::repeat_n(b'|', 1_000_000));
        let e = check(&raw, &ParseLimits::DEFAULT).unwrap_err();
        assert_eq!(e.ack, AckCode::Reject);
        assert!(e.reason.contains("max_fields = 10000"), "{}", e.reason);
    }

    #[test]
    fn repetition_component_and_segment_bombs_name_their_limit() {
        let bomb = |filler: &[u8], n: usize| {
            let mut raw = MSH.as_bytes().to_vec();
            raw.extend_from_slice(b"PID|||");
            for _ in 0..n {
                raw.extend_from_slice(filler);
            }
            raw
        };
        let l = ParseLimits::DEFAULT;
        let reason = |raw: Vec<u8>| check(&raw, &l).unwrap_err().reason;
        assert!(reason(bomb(b"~", 1_000_000)).contains("max_repetitions"));
        assert!(reason(bomb(b"^", 1_000_000)).contains("max_components"));
        assert!(reason(bomb(b"&", 1_000_000)).contains("max_components"));
        assert!(reason(bomb(b"\rZZZ", 100_000)).contains("max_segments"));
        // A real message passes; CRLF line ends count as one break.
        let ok = format!("{MSH}SCH|1|2\r\nPID|||9^^^MR~8^^^PI||Doe^Jane\r\n");
        assert!(check(ok.as_bytes(), &l).is_ok());
    }

    #[test]
    fn declared_separators_are_the_ones_counted() {
        let mut raw = b"MSH#*@\\$#A#B\r".to_vec();
        raw.extend(std::iter::repeat_n(b'|', 50_000));
        assert!(check(&raw, &ParseLimits::DEFAULT).is_ok(), "| is data here");
        raw.extend(std::iter::repeat_n(b'#', 20_000));
        assert!(check(&raw, &ParseLimits::DEFAULT).is_err());
    }

    #[test]
    fn control_characters_are_located_without_quoting_the_content() {
        let text = format!("{MSH}SCH|1|2\rPID|||9||Smi\u{1c}th^Jane\r");
        let e = check_controls(&text).unwrap_err();
        assert_eq!((e.ack, e.code), (AckCode::Error, ErrorCode::DataType));
        assert_eq!(e.location.as_ref().unwrap().to_string(), "PID-5");
        assert!(!e.to_string().contains("Smi"), "{e}");
        let text = format!("{MSH}PID|||9||Doe^Ja\0ne~X^Y\r");
        let e = check_controls(&text).unwrap_err();
        assert_eq!(e.location.as_ref().unwrap().to_string(), "PID-5.2");
        assert!(e.reason.contains("NUL"), "{}", e.reason);
        let text = format!("{MSH}PID|||9||A~B^C\u{7}D\r");
        let l = check_controls(&text).unwrap_err().location.unwrap();
        assert_eq!(l.to_string(), "PID-5[2].2");
        let text = "MSH|^~\\&|A\u{1b}|B\r";
        assert_eq!(
            check_controls(text)
                .unwrap_err()
                .location
                .unwrap()
                .to_string(),
            "MSH-3"
        );
        let e = check_controls(&format!("{MSH}XYZ|\0\r")).unwrap_err();
        assert_eq!(e.location, None);
        assert!(e.reason.contains("segment 2"), "{}", e.reason);
        assert!(check_controls(&format!("{MSH}PID|||9\r\n")).is_ok());
    }

    #[test]
    fn the_header_of_an_unparsed_bomb_is_still_read() {
        let mut raw = MSH.trim_end().as_bytes().to_vec();
        raw.extend(std::iter::repeat_n(b'|', 100_000));
        let h = header_only(&raw).unwrap();
        assert_eq!(h.control_id, "X1");
        assert_eq!(h.version, "2.5");
    }

    #[test]
    fn configured_limits_are_checked_against_the_ceiling() {
        assert_eq!(ParseLimits::DEFAULT.out_of_range(), None);
        let mut l = ParseLimits::DEFAULT;
        l.max_fields = 0;
        assert_eq!(l.out_of_range(), Some("max_fields"));
        l.max_fields = ParseLimits::CEILING.max_fields + 1;
        assert_eq!(l.out_of_range(), Some("max_fields"));
    }
}
