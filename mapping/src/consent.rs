//! Combining consent signals from every source into one decision per contact and purpose.
//!
//! Precedence (documented in README.md, tested below):
//! 1. The EHR's protection indicator (HL7 PD1-12 = Y, a confidential patient) always denies.
//! 2. Revocation wins over any *older* grant, from whichever source. A patient's own WhatsApp STOP can be
//!    lifted only by the patient (START) or by staff with a recorded reason (`medrelay consent grant`);
//!    an EHR opt-in flag that merely repeats an old value never lifts it.
//! 3. Otherwise the newest explicit grant permits.
//! 4. With no explicit signal, the site default applies: `opt_in_required = true` (the default) denies.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What a message is for; consent is recorded per purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Booking confirmations and reminders.
    Logistics,
    /// Follow-ups after the visit.
    FollowUp,
}

impl Purpose {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logistics => "logistics",
            Self::FollowUp => "follow_up",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "logistics" => Some(Self::Logistics),
            "follow_up" => Some(Self::FollowUp),
            _ => None,
        }
    }
}

/// Who expressed a consent signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSource {
    /// The EHR record (CSV opt-in column, FHIR Consent, HL7 PD1).
    Ehr,
    /// The patient on WhatsApp (STOP / START).
    Patient,
    /// Hospital staff through `medrelay consent`.
    Staff,
}

impl ConsentSource {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ehr => "ehr",
            Self::Patient => "patient",
            Self::Staff => "staff",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ehr" => Some(Self::Ehr),
            "patient" => Some(Self::Patient),
            "staff" => Some(Self::Staff),
            _ => None,
        }
    }
}

/// One recorded consent signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsentSignal {
    pub source: ConsentSource,
    pub granted: bool,
    pub at: Timestamp,
}

/// Everything known about one contact for one purpose.
#[derive(Clone, Debug, Default)]
pub struct ConsentFacts {
    /// EHR protection indicator.
    pub protected: bool,
    pub signals: Vec<ConsentSignal>,
}

/// The combined decision, with the reason `medrelay explain` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsentDecision {
    Permit(&'static str),
    Deny(&'static str),
}

impl ConsentDecision {
    /// Whether a message may be sent.
    pub fn permits(&self) -> bool {
        matches!(self, Self::Permit(_))
    }

    /// The human reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Permit(r) | Self::Deny(r) => r,
        }
    }
}

/// Combines the facts under the site policy. Pure and total.
pub fn decide(facts: &ConsentFacts, opt_in_required: bool) -> ConsentDecision {
    if facts.protected {
        return ConsentDecision::Deny("patient is marked protected in the EHR");
    }
    let latest = |pred: &dyn Fn(&ConsentSignal) -> bool| {
        facts
            .signals
            .iter()
            .filter(|s| pred(s))
            .max_by_key(|s| s.at)
            .copied()
    };
    // A patient STOP is lifted only by a later patient START or a later staff grant.
    if let Some(stop) = latest(&|s| s.source == ConsentSource::Patient && !s.granted) {
        let lifted = facts.signals.iter().any(|s| {
            s.granted
                && s.at > stop.at
                && matches!(s.source, ConsentSource::Patient | ConsentSource::Staff)
        });
        if !lifted {
            return ConsentDecision::Deny("patient opted out on WhatsApp (STOP)");
        }
    }
    match latest(&|_| true) {
        Some(s) if !s.granted => ConsentDecision::Deny(match s.source {
            ConsentSource::Ehr => "EHR records an opt-out",
            ConsentSource::Staff => "consent revoked by staff",
            ConsentSource::Patient => "patient opted out on WhatsApp (STOP)",
        }),
        Some(s) => ConsentDecision::Permit(match s.source {
            ConsentSource::Ehr => "EHR records an opt-in",
            ConsentSource::Staff => "consent granted by staff",
            ConsentSource::Patient => "patient opted in on WhatsApp (START)",
        }),
        None if opt_in_required => {
            ConsentDecision::Deny("no recorded opt-in and the site requires one")
        }
        None => ConsentDecision::Permit("site does not require an opt-in"),
    }
}

#[cfg(test)]
// PHI: tests read values back to check them.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        format!("2026-01-{s}T00:00:00Z").parse().unwrap()
    }

    fn sig(source: ConsentSource, granted: bool, day: &str) -> ConsentSignal {
        ConsentSignal {
            source,
            granted,
            at: at(day),
        }
    }

    #[test]
    fn site_default_applies_without_signals() {
        let none = ConsentFacts::default();
        assert!(!decide(&none, true).permits());
        assert!(decide(&none, false).permits());
    }

    #[test]
    fn protection_indicator_beats_every_grant() {
        let facts = ConsentFacts {
            protected: true,
            signals: vec![sig(ConsentSource::Staff, true, "05")],
        };
        assert!(!decide(&facts, false).permits());
    }

    #[test]
    fn ehr_opt_in_repeated_later_does_not_lift_a_patient_stop() {
        let facts = ConsentFacts {
            protected: false,
            signals: vec![
                sig(ConsentSource::Ehr, true, "01"),
                sig(ConsentSource::Patient, false, "02"),
                sig(ConsentSource::Ehr, true, "03"),
            ],
        };
        assert_eq!(
            decide(&facts, true),
            ConsentDecision::Deny("patient opted out on WhatsApp (STOP)")
        );
    }

    #[test]
    fn patient_start_or_staff_grant_lifts_a_stop() {
        for lifter in [ConsentSource::Patient, ConsentSource::Staff] {
            let facts = ConsentFacts {
                protected: false,
                signals: vec![
                    sig(ConsentSource::Patient, false, "02"),
                    sig(lifter, true, "03"),
                ],
            };
            assert!(decide(&facts, true).permits());
        }
    }

    #[test]
    fn newest_revocation_wins_over_older_grant() {
        let facts = ConsentFacts {
            protected: false,
            signals: vec![
                sig(ConsentSource::Ehr, true, "01"),
                sig(ConsentSource::Staff, false, "02"),
            ],
        };
        assert_eq!(
            decide(&facts, false),
            ConsentDecision::Deny("consent revoked by staff")
        );
    }
}
