//! Phone numbers normalised to E.164 with `rlibphonenumber` (a port of Google's libphonenumber).
//!
//! Hospital data holds numbers in every shape (`(11) 98765-4321`, `0044 7700 900123`, `+1 555...`). We
//! parse with the site's default region and keep only numbers libphonenumber considers valid. An
//! unusable number becomes a reason to skip the patient, never a crash, and the reason never repeats
//! the number.

use rlibphonenumber::enums::Region;
use rlibphonenumber::{PHONE_NUMBER_UTIL, PhoneNumberFormat};
use std::str::FromStr;

/// Why a number cannot be used. Carries no digits of the number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number could not be parsed")]
    Unparsable,
    #[error("phone number is not a valid number for its region")]
    Invalid,
    #[error("unknown default region code in configuration")]
    UnknownRegion,
}

/// Validates a default region (ISO 3166 alpha-2, e.g. `BR`) at config load time.
pub fn check_region(region: &str) -> Result<(), PhoneError> {
    parse_region(region).map(|_| ())
}

/// A region the metadata knows (every two-letter code parses as a `Region`; only real ones have a
/// country calling code).
fn parse_region(region: &str) -> Result<Region, PhoneError> {
    Region::from_str(&region.to_ascii_uppercase())
        .ok()
        .filter(|r| *r != Region::World)
        .filter(|r| PHONE_NUMBER_UTIL.get_country_code_for_region(*r).is_some())
        .ok_or(PhoneError::UnknownRegion)
}

/// Normalises `raw` to E.164, reading national numbers in `default_region`.
pub fn normalize_e164(raw: &str, default_region: &str) -> Result<String, PhoneError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    let region = parse_region(default_region)?;
    // "00" international prefix is common in European exports.
    let candidate = match trimmed.strip_prefix("00") {
        Some(rest) if !trimmed.starts_with("000") => format!("+{rest}"),
        _ => trimmed.to_string(),
    };
    // An international number is parsed without a region (phonenumber 0.3, used before, stripped the
    // default region's national prefix from `+55 11 9...` read with region US; the test stays).
    let region = (!candidate.starts_with('+')).then_some(region);
    let parsed = PHONE_NUMBER_UTIL
        .parse(&candidate, region)
        .map_err(|_| PhoneError::Unparsable)?;
    if !parsed.is_valid() {
        return Err(PhoneError::Invalid);
    }
    Ok(parsed.format_as(PhoneNumberFormat::E164).to_string())
}

/// The country calling code of an E.164 number (`+44...` -> 44): what a per-country rate table
/// needs, without keeping the number.
pub fn calling_code(e164: &str) -> Option<u16> {
    let parsed = PHONE_NUMBER_UTIL.parse(e164.trim(), None).ok()?;
    u16::try_from(parsed.country_code).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calling_codes_of_e164_numbers() {
        assert_eq!(calling_code("+5511987654321"), Some(55));
        assert_eq!(calling_code("+12127365101"), Some(1));
        assert_eq!(calling_code("+442072193000"), Some(44));
        assert_eq!(calling_code("not a number"), None);
    }

    #[test]
    fn national_and_international_forms_normalise() {
        assert_eq!(
            normalize_e164("(11) 98765-4321", "BR").unwrap(),
            "+5511987654321"
        );
        assert_eq!(
            normalize_e164("+55 11 98765-4321", "US").unwrap(),
            "+5511987654321"
        );
        assert_eq!(
            normalize_e164("0044 20 7219 3000", "BR").unwrap(),
            "+442072193000"
        );
        assert_eq!(
            normalize_e164("(212) 736-5000", "us").unwrap(),
            "+12127365000"
        );
    }

    #[test]
    fn international_number_keeps_its_area_code_whatever_the_default_region() {
        // Regression: phonenumber 0.3 stripped `11` (read as the US national prefix) from `+55 11 ...`.
        assert_eq!(
            normalize_e164("+55 11 98765-4321", "US").unwrap(),
            "+5511987654321"
        );
    }

    #[test]
    fn unusable_numbers_are_errors_without_digits() {
        assert_eq!(normalize_e164("  ", "BR"), Err(PhoneError::Empty));
        let err = normalize_e164("12", "BR").unwrap_err();
        assert!(!err.to_string().contains("12"));
        assert!(normalize_e164("not a phone", "BR").is_err());
        assert_eq!(
            normalize_e164("+5511987654321", "XX"),
            Err(PhoneError::UnknownRegion)
        );
    }
}
