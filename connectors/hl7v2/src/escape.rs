//! HL7 escape sequences, decoded by us: hl7-parser's own decoder mixes char and byte indices and
//! corrupts non-ASCII text (`São Paulo \S\ centro` -> `São Paulo \ centro`).

use hl7_parser::message::Separators;

/// Decodes `\F\ \S\ \T\ \R\ \E\` (the separators), `\.br\` (a line break), `\Xhh..\` (hex bytes,
/// read as UTF-8 when valid, else Latin-1) and drops the highlighting commands `\H\ \N\`. An
/// unterminated or unknown sequence is kept as written.
pub fn unescape(value: &str, sep: &Separators) -> String {
    let esc = sep.escape;
    if !value.contains(esc) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(sep.field),
            "S" => out.push(sep.component),
            "T" => out.push(sep.subcomponent),
            "R" => out.push(sep.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\n'),
            "H" | "N" => {}
            // Only ASCII hex digits after the X: slicing by two bytes is then on char boundaries
            // (a fuzzed `\XCà3AD\` panicked here).
            s if s.len() > 1
                && s.len() % 2 == 1
                && s.starts_with('X')
                && s[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                let bytes: Option<Vec<u8>> = (1..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
                    .collect();
                match bytes {
                    Some(b) => match String::from_utf8(b) {
                        Ok(t) => out.push_str(&t),
                        Err(e) => out.extend(e.into_bytes().into_iter().map(char::from)),
                    },
                    None => {
                        out.push(esc);
                        out.push_str(seq);
                        out.push(esc);
                    }
                }
            }
            _ => {
                out.push(esc);
                out.push_str(seq);
                out.push(esc);
            }
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// Escapes our own text for an outgoing field (ACK texts).
pub fn escape(value: &str, sep: &Separators) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let code = if c == sep.field {
            Some('F')
        } else if c == sep.component {
            Some('S')
        } else if c == sep.subcomponent {
            Some('T')
        } else if c == sep.repetition {
            Some('R')
        } else if c == sep.escape {
            Some('E')
        } else {
            None
        };
        match code {
            Some(k) => {
                out.push(sep.escape);
                out.push(k);
                out.push(sep.escape);
            }
            None if c == '\r' || c == '\n' => out.push(' '),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz` (hl7_process): a hex escape with a non-ASCII character inside was
    /// sliced in the middle of that character and panicked.
    #[test]
    fn fuzz_crash_hex_escape_with_non_ascii_is_kept_as_written() {
        let sep = Separators::default();
        assert_eq!(unescape("Jos\\XC\u{e0}3AD\\", &sep), "Jos\\XC\u{e0}3AD\\");
        assert_eq!(unescape("\\X\u{e9}\\", &sep), "\\X\u{e9}\\");
        // A well-formed one next to it still decodes.
        assert_eq!(
            unescape("\\XC3A9\\ \\XC\u{e0}3AD\\", &sep),
            "\u{e9} \\XC\u{e0}3AD\\"
        );
    }

    #[test]
    fn non_ascii_text_survives_escapes() {
        let sep = Separators::default();
        assert_eq!(
            unescape("S\u{e3}o Paulo \\S\\ centro", &sep),
            "S\u{e3}o Paulo ^ centro"
        );
        assert_eq!(unescape("a\\F\\b\\T\\c\\R\\d\\E\\e", &sep), "a|b&c~d\\e");
        assert_eq!(unescape("x\\.br\\y\\H\\z\\N\\", &sep), "x\nyz");
        assert_eq!(unescape("Jos\\XC3A9\\", &sep), "Jos\u{e9}");
        assert_eq!(unescape("Jos\\XE9\\", &sep), "Jos\u{e9}");
        assert_eq!(unescape("open \\Q\\ end\\", &sep), "open \\Q\\ end\\");
    }

    #[test]
    fn escape_round_trips() {
        let sep = Separators::default();
        let text = "a|b^c&d~e\\f S\u{e3}o";
        assert_eq!(unescape(&escape(text, &sep), &sep), text);
    }
}
