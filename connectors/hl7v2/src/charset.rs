//! Bytes -> text per MSH-18. hl7-parser takes `&str`, and hospital feeds are often ISO 8859-1:
//! the connector transcodes first, so that `São` stays `São`.

use encoding_rs::Encoding;

use crate::error::{ErrLocation, ErrorCode, Hl7Error};

/// The encoding MSH-18 names, `None` when it is one we do not know.
pub fn encoding_for(msh18: &str) -> Option<&'static Encoding> {
    let v = msh18.trim().to_ascii_uppercase();
    Some(match v.as_str() {
        // ASCII is a subset of UTF-8; non-ASCII bytes in an "ASCII" message fall back below.
        "" | "ASCII" | "ISO IR6" | "UNICODE UTF-8" | "UTF-8" | "ISO IR192" => encoding_rs::UTF_8,
        // encoding_rs (after the WHATWG standard) reads ISO 8859-1 as its superset windows-1252.
        "8859/1" | "ISO IR100" => encoding_rs::WINDOWS_1252,
        "8859/2" | "ISO IR101" => encoding_rs::ISO_8859_2,
        "8859/3" | "ISO IR109" => encoding_rs::ISO_8859_3,
        "8859/4" | "ISO IR110" => encoding_rs::ISO_8859_4,
        "8859/5" | "ISO IR144" => encoding_rs::ISO_8859_5,
        "8859/6" | "ISO IR127" => encoding_rs::ISO_8859_6,
        "8859/7" | "ISO IR126" => encoding_rs::ISO_8859_7,
        "8859/8" | "ISO IR138" => encoding_rs::ISO_8859_8,
        "8859/9" | "ISO IR148" => encoding_rs::WINDOWS_1254,
        "8859/15" => encoding_rs::ISO_8859_15,
        "GB 18030-2000" => encoding_rs::GB18030,
        "BIG-5" => encoding_rs::BIG5,
        "KS X 1001" => encoding_rs::EUC_KR,
        _ => return None,
    })
}

/// MSH-18 read straight from the bytes (the header is ASCII in every charset we accept).
fn raw_msh18(raw: &[u8]) -> Option<String> {
    let start = raw.windows(3).position(|w| w == b"MSH")?;
    let line = &raw[start..];
    let end = line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len());
    let line = &line[..end];
    let sep = *line.get(3)?;
    line.split(|&b| b == sep)
        .nth(17)
        .map(|f| String::from_utf8_lossy(f).into_owned())
}

/// Decodes a message. With no MSH-18, UTF-8 is tried first and `fallback` (the connector's
/// configured legacy charset) used when the bytes are not UTF-8. Malformed bytes in a declared
/// charset are an error rather than silently replaced.
pub fn decode(raw: &[u8], fallback: &'static Encoding) -> Result<String, Hl7Error> {
    let declared = raw_msh18(raw).unwrap_or_default();
    let Some(encoding) = encoding_for(declared.split('~').next().unwrap_or("")) else {
        return Err(Hl7Error::reject(
            ErrorCode::TableValueNotFound,
            Some(ErrLocation::field("MSH", 18)),
            "unsupported character set",
        ));
    };
    if encoding == encoding_rs::UTF_8 {
        if let Ok(s) = std::str::from_utf8(raw) {
            return Ok(s.to_owned());
        }
        if !declared.trim().is_empty() && !declared.trim().eq_ignore_ascii_case("ASCII") {
            return Err(Hl7Error::reject(
                ErrorCode::DataType,
                Some(ErrLocation::field("MSH", 18)),
                "the message is not valid UTF-8 although MSH-18 declares it",
            ));
        }
        let (text, _, _) = fallback.decode(raw);
        return Ok(text.into_owned());
    }
    encoding
        .decode_without_bom_handling_and_without_replacement(raw)
        .map(|c| c.into_owned())
        .ok_or_else(|| {
            Hl7Error::reject(
                ErrorCode::DataType,
                Some(ErrLocation::field("MSH", 18)),
                "the message has bytes that are invalid in the character set MSH-18 declares",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_declared_in_msh18_is_transcoded() {
        let mut raw =
            b"MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5||||||8859/1\rPID|||1||S".to_vec();
        raw.push(0xE3); // a-tilde in ISO 8859-1
        raw.push(b'o');
        let s = decode(&raw, encoding_rs::UTF_8).unwrap();
        assert!(s.ends_with("S\u{e3}o"), "{s}");
    }

    #[test]
    fn undeclared_non_utf8_uses_the_fallback_and_unknown_charsets_are_rejected() {
        let raw = b"MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5\rPID|||1||Jos\xe9".to_vec();
        let s = decode(&raw, encoding_rs::WINDOWS_1252).unwrap();
        assert!(s.ends_with("Jos\u{e9}"));
        let raw = b"MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5||||||EBCDIC\r".to_vec();
        let e = decode(&raw, encoding_rs::UTF_8).unwrap_err();
        assert_eq!(e.code, ErrorCode::TableValueNotFound);
        let raw =
            b"MSH|^~\\&|A|B|C|D|20260101||SIU^S12|1|P|2.5||||||UNICODE UTF-8\rPID|||\xff".to_vec();
        assert!(decode(&raw, encoding_rs::UTF_8).is_err());
    }
}
