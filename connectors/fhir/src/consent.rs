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

use fhir_sdk::r4b::codes::{ConsentProvisionType, ConsentState};
use fhir_sdk::r4b::resources::Consent;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use medrelay_mapping::model::EhrConsent;

use crate::time::{instant, moment, period_contains};

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
    pub fn selects(&self, c: &Consent) -> bool {
        let cat = c.category.iter().flatten().any(|cc| {
            cc.coding
                .iter()
                .flatten()
                .any(|x| self.matches(x.system.as_deref(), x.code.as_deref()))
        });
        cat || c
            .provision
            .as_ref()
            .is_some_and(|p| self.provision_selects(p))
    }

    fn provision_selects(&self, p: &fhir_sdk::r4b::resources::ConsentProvision) -> bool {
        p.purpose
            .iter()
            .flatten()
            .any(|x| self.matches(x.system.as_deref(), x.code.as_deref()))
            || p.action.iter().flatten().any(|cc| {
                cc.coding
                    .iter()
                    .flatten()
                    .any(|x| self.matches(x.system.as_deref(), x.code.as_deref()))
            })
            || p.provision
                .iter()
                .flatten()
                .any(|n| self.provision_selects(n))
    }
}

/// permit (true) / deny (false), from `provision.type` or the policy rule.
fn decision(c: &Consent) -> Option<bool> {
    if let Some(t) = c.provision.as_ref().and_then(|p| p.r#type) {
        return Some(matches!(t, ConsentProvisionType::Permit));
    }
    let rule = c.policy_rule.as_ref()?;
    rule.coding
        .iter()
        .flatten()
        .find_map(|x| match x.code.as_deref() {
            Some("OPTIN" | "OPTINR") => Some(true),
            Some("OPTOUT" | "OPTOUTE") => Some(false),
            _ => None,
        })
}

fn recorded_at(c: &Consent, zone: &TimeZone) -> Option<Timestamp> {
    c.date_time
        .as_ref()
        .and_then(|d| moment(d, zone))
        .or_else(|| c.meta.as_ref()?.last_updated.as_ref().map(instant))
}

/// The signal the patient's Consents give for an appointment starting at `start`.
pub fn ehr_consent(
    consents: &[&Consent],
    selector: &ConsentSelector,
    start: Timestamp,
    zone: &TimeZone,
) -> Option<EhrConsent> {
    let newest = consents
        .iter()
        .filter(|c| selector.selects(c))
        .filter(|c| !matches!(c.status, ConsentState::Draft | ConsentState::Proposed))
        .max_by_key(|c| recorded_at(c, zone))?;
    let permit = decision(newest)?;
    let covers = newest
        .provision
        .as_ref()
        .and_then(|p| p.period.as_ref())
        .is_none_or(|p| period_contains(p, start, zone));
    match (newest.status, permit, covers) {
        (ConsentState::Active, true, true) => Some(EhrConsent::OptIn),
        (ConsentState::Active, false, true) => Some(EhrConsent::OptOut),
        (_, true, _) => Some(EhrConsent::OptOut),
        _ => None,
    }
}
