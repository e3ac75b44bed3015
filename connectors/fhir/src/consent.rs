//! FHIR `Consent` -> the EHR consent signal of an appointment.
//!
//! Which Consents count is configured ([`ConsentSelector`]): a Consent is about messaging when one
//! of its `category`, `provision.purpose`, `provision.action` (or nested provision) codings is one
//! of the configured `system|code` values. Of the matching Consents of the patient, the newest
//! (`dateTime`, else `meta.lastUpdated`) that is not a draft or proposal decides:
//! - `active`, and its `provision.period` covers the appointment: `permit` is an opt-in, `deny` an
//!   opt-out (`provision.type`, else `policyRule` OPTIN / OPTOUT);
//! - a `permit` that is `inactive`, `rejected`, `entered-in-error` or whose period has ended before
//!   the appointment is a withdrawn opt-in: an opt-out (revocation wins);
//! - anything else says nothing (the stored signal stays).
//!
//! R5 names these elements differently (`date`, `decision`, `period`, `regulatoryBasis`; status
//! `not-done` for R4's `rejected`, and `unknown`, which like any non-active permit is an opt-out):
//! the same rule reads both through one view of a Consent.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use medrelay_mapping::model::EhrConsent;

use crate::view::{ConsentStatus, ConsentView};

/// The codings that make a Consent a messaging consent, as `system|code`.
#[derive(Clone, Debug, Default)]
pub struct ConsentSelector {
    pub codes: Vec<String>,
}

impl ConsentSelector {
    fn matches(&self, system: Option<&str>, code: Option<&str>) -> bool {
        let (Some(s), Some(c)) = (system, code) else {
            return false;
        };
        self.codes
            .iter()
            .any(|k| k.split_once('|').is_some_and(|(ks, kc)| ks == s && kc == c))
    }

    /// Whether this Consent is about messaging.
    pub(crate) fn selects(&self, c: &ConsentView) -> bool {
        c.codes
            .iter()
            .any(|x| self.matches(x.system.as_deref(), x.code.as_deref()))
    }
}

/// The signal the patient's Consents (R4B or R5, as read into views) give for an appointment
/// starting at `start`.
pub(crate) fn ehr_consent(
    consents: &[&ConsentView],
    selector: &ConsentSelector,
    start: Timestamp,
    zone: &TimeZone,
) -> Option<EhrConsent> {
    let newest = consents
        .iter()
        .filter(|c| selector.selects(c))
        .filter(|c| !matches!(c.status, ConsentStatus::Draft | ConsentStatus::Proposed))
        .max_by_key(|c| c.recorded.and_then(|r| r.moment(zone)))?;
    let permit = newest.permit?;
    let covers = newest.period.is_none_or(|p| p.contains(start, zone));
    match (newest.status, permit, covers) {
        (ConsentStatus::Active, true, true) => Some(EhrConsent::OptIn),
        (ConsentStatus::Active, false, true) => Some(EhrConsent::OptOut),
        (_, true, _) => Some(EhrConsent::OptOut),
        _ => None,
    }
}
