//! SIU^S12..S26 -> one canonical [`AppointmentEvent`].
//!
//! Where each field comes from (v2.3 to v2.8):
//! - filler id SCH-2.1 (required), placer id SCH-1.1;
//! - start and end TQ1-7 / TQ1-8 (v2.5+), else SCH-11.4 / SCH-11.5, else AIS-4; an end from
//!   SCH-9 + SCH-10 (duration and unit) when none is given;
//! - status from the trigger (S15/S16 cancelled, S17 deleted = entered-in-error, S26 no-show),
//!   otherwise SCH-25 (table 0278 codes, common synonyms, then the connector's `status_map`),
//!   otherwise booked; a non-booked status without any timing is a [`StatusChange`] (it needs
//!   only the appointment's identity);
//! - version per [`Ordering`]: arrival order by default (the stream's order), or MSH-7 / EVN;
//! - patient PID-3 (the MR identifier), PID-5 (legal name), PID-13 / PID-14 phones (XTN, emails
//!   skipped), PID-15 language; PD1-11 publicity code and PD1-12 protection indicator;
//! - location AIL-3 (a PL: the parts in [`Hl7Options::location_parts`], by default the
//!   description, else the facility, else the point of care), practitioner AIP-3 (XCN name),
//!   service type AIS-3 (else SCH-8), reason SCH-7. NTE notes are never read.
//!
//! Error reasons name the field, never its value.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::phone::normalize_e164;
use medrelay_mapping::{
    Appointment, AppointmentEvent, AppointmentKey, AppointmentStatus, Change, ContactPhone,
    Patient, Phi, PhoneUse, SourceVersion, StatusChange,
};

use crate::dtm::{self, Precision};
use crate::error::{ErrLocation, ErrorCode, Hl7Error};
use crate::message::Parsed;

/// What the connector needs to know to map a message (from its configuration and site).
#[derive(Clone, Debug)]
pub struct Hl7Options {
    /// The system whose appointment ids the feed carries: the `source` half of every key.
    pub system: String,
    /// The configured site the appointments belong to.
    pub site: String,
    /// The site's IANA zone: times without an offset are civil times there.
    pub time_zone: String,
    /// Region (ISO 3166 alpha-2) for reading national phone numbers.
    pub default_region: String,
    /// Charset for messages without MSH-18 whose bytes are not UTF-8.
    pub fallback_charset: &'static encoding_rs::Encoding,
    /// PD1-11 publicity codes (table 0215) that mean "do not contact": an EHR opt-out.
    pub publicity_opt_out: Vec<String>,
    /// PD1-11 publicity codes a site uses to record an opt-in to messaging (none by default).
    pub publicity_opt_in: Vec<String>,
    /// Our MSH-3 / MSH-4 in ACKs.
    pub application: String,
    pub facility: String,
    /// Which clock orders the messages about one appointment.
    pub ordering: Ordering,
    /// Local SCH-25 values (normalised with [`status_key`]) and the status each means; consulted
    /// before the built-in codes and synonyms.
    pub status_map: Vec<(String, AppointmentStatus)>,
    /// Which parts of the AIL-3 location (a PL) make the appointment's location, joined by ", ";
    /// empty: the description, else the facility, else the point of care.
    pub location_parts: Vec<LocationPart>,
}

/// How the messages about one appointment are ordered (each event's [`SourceVersion`]).
///
/// The default is arrival order: the messages of one ordered stream (one MLLP connection, one
/// file) apply in the order the sender sent them, whatever MSH-7 says, because senders' clocks skew,
/// batches are replayed and some systems stamp MSH-7 from another field; a cancellation sent after
/// a booking then always cancels it. A message sent again (same MSH-3/4/10, same content) is a
/// repeat whenever it arrives. A site whose interface engine reorders messages can order by the
/// message time instead; an event older than the stored one is then ignored and reported as such.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// The order of arrival on the connection or in the file.
    #[default]
    Arrival,
    /// MSH-7 (message date/time); the arrival order breaks ties.
    MessageTime,
    /// EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7; the arrival order breaks ties.
    EventTime,
}

impl Ordering {
    /// Parses the configuration value (`arrival`, `message_time`, `event_time`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "arrival" => Self::Arrival,
            "message_time" => Self::MessageTime,
            "event_time" => Self::EventTime,
            _ => return None,
        })
    }
}

/// A part of a PL (person location) data type, as AIL-3 carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationPart {
    /// PL.1 point of care (a clinic, a unit).
    PointOfCare,
    /// PL.2 room: a room change is a change the patient must hear about.
    Room,
    /// PL.3 bed.
    Bed,
    /// PL.4 facility (HD.1).
    Facility,
    /// PL.7 building.
    Building,
    /// PL.8 floor.
    Floor,
    /// PL.9 location description.
    Description,
}

impl LocationPart {
    /// Every configuration name, for error messages.
    pub const NAMES: &'static str =
        "point_of_care, room, bed, facility, building, floor, description";

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "point_of_care" => Self::PointOfCare,
            "room" => Self::Room,
            "bed" => Self::Bed,
            "facility" => Self::Facility,
            "building" => Self::Building,
            "floor" => Self::Floor,
            "description" => Self::Description,
            _ => return None,
        })
    }

    fn component(self) -> usize {
        match self {
            Self::PointOfCare => 1,
            Self::Room => 2,
            Self::Bed => 3,
            Self::Facility => 4,
            Self::Building => 7,
            Self::Floor => 8,
            Self::Description => 9,
        }
    }
}

/// When and in which order a message arrived: the version of an event in arrival ordering, and
/// the tie-breaker in the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Timestamp,
    pub seq: i64,
}

impl Arrival {
    /// An arrival at `at`, `seq` in its stream (a file's message number).
    pub fn new(at: Timestamp, seq: i64) -> Self {
        Arrival { at, seq }
    }

    /// A message received now on a connection: `seq` grows across all connections of the process
    /// (seeded from the wall clock), so two messages received in one clock tick keep their order.
    pub fn received(at: Timestamp) -> Self {
        use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
        static NEXT: AtomicI64 = AtomicI64::new(0);
        let _ = NEXT.compare_exchange(
            0,
            Timestamp::now().as_microsecond(),
            AtomicOrdering::Relaxed,
            AtomicOrdering::Relaxed,
        );
        Arrival {
            at,
            seq: NEXT.fetch_add(1, AtomicOrdering::Relaxed),
        }
    }
}

/// The key under which an SCH-25 value is looked up: lower case, letters and digits only
/// (`No-Show`, `no_show` and `NOSHOW` are one value).
pub fn status_key(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

impl Hl7Options {
    /// Options with the usual defaults: `N` (no publicity) is an opt-out, ISO 8859-1 fallback.
    pub fn new(system: &str, site: &str, time_zone: &str, default_region: &str) -> Self {
        Hl7Options {
            system: system.to_owned(),
            site: site.to_owned(),
            time_zone: time_zone.to_owned(),
            default_region: default_region.to_owned(),
            fallback_charset: encoding_rs::WINDOWS_1252,
            publicity_opt_out: vec!["N".to_owned()],
            publicity_opt_in: Vec::new(),
            application: "MEDRELAY".to_owned(),
            facility: String::new(),
            ordering: Ordering::Arrival,
            status_map: Vec::new(),
            location_parts: Vec::new(),
        }
    }
}

/// The MSH facts an ACK echoes (routing ids and codes, never patient data).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-10 exactly as sent (still escaped, spaces kept): MSA-2 must match it.
    pub control_id: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub message_type: String,
    pub trigger: String,
    pub processing_id: String,
    pub version: String,
    /// MSH-15 (accept acknowledgment type: AL, NE, ER, SU) and MSH-16 (application
    /// acknowledgment type): either set means the sender uses the enhanced acknowledgment mode.
    pub accept_ack: String,
    pub application_ack: String,
}

impl Header {
    /// Whether the sender asked for the enhanced acknowledgment mode (MSH-15 or MSH-16 valued).
    pub fn enhanced(&self) -> bool {
        !self.accept_ack.trim().is_empty() || !self.application_ack.trim().is_empty()
    }
}

/// Versions whose SIU layout this mapping knows.
const VERSIONS: &[&str] = &[
    "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2",
];

/// Reads the MSH facts an ACK echoes (fields may be empty; [`check_header`] judges them).
pub fn read_header(p: &Parsed<'_>) -> Header {
    let msh = p.segment("MSH").expect("prepared text starts with MSH");
    Header {
        control_id: p.raw(msh, 10).to_owned(),
        sending_application: p.raw(msh, 3).to_owned(),
        sending_facility: p.raw(msh, 4).to_owned(),
        message_type: p.value(msh, 9, 1, 1).unwrap_or_default(),
        trigger: p.value(msh, 9, 1, 2).unwrap_or_default(),
        processing_id: p.value(msh, 11, 1, 1).unwrap_or_default(),
        version: p.value(msh, 12, 1, 1).unwrap_or_default(),
        accept_ack: p.value(msh, 15, 1, 1).unwrap_or_default(),
        application_ack: p.value(msh, 16, 1, 1).unwrap_or_default(),
    }
}

/// Rejects (AR) a header we do not process: no control id, not SIU, an unknown version.
pub fn check_header(header: &Header) -> Result<(), Hl7Error> {
    let reject = |code, field, reason: &str| {
        Err(Hl7Error::reject(
            code,
            Some(ErrLocation::field("MSH", field)),
            reason,
        ))
    };
    if header.control_id.trim().is_empty() {
        return reject(
            ErrorCode::RequiredFieldMissing,
            10,
            "MSH-10 (message control id) is empty",
        );
    }
    if header.message_type != "SIU" {
        return reject(
            ErrorCode::UnsupportedMessageType,
            9,
            "only SIU (scheduling) messages are processed",
        );
    }
    if !VERSIONS.contains(&header.version.as_str()) {
        return reject(
            ErrorCode::UnsupportedVersion,
            12,
            "supported versions are 2.3 to 2.8",
        );
    }
    Ok(())
}

/// What one trigger means for the appointment.
enum Trigger {
    /// The message describes the appointment; its status comes from SCH-25.
    Describe,
    /// The trigger itself sets the status.
    Status(AppointmentStatus),
    /// Schedule blocks (S23/S24) carry no patient appointment.
    Ignore,
}

fn trigger(code: &str) -> Option<Trigger> {
    Some(match code {
        "S12" | "S13" | "S14" | "S18" | "S19" | "S20" | "S21" | "S22" => Trigger::Describe,
        "S15" | "S16" => Trigger::Status(AppointmentStatus::Cancelled),
        "S17" => Trigger::Status(AppointmentStatus::EnteredInError),
        "S26" => Trigger::Status(AppointmentStatus::Noshow),
        "S23" | "S24" => Trigger::Ignore,
        _ => return None,
    })
}

/// SCH-25 filler status -> status: the connector's `status_map` first, then table 0278's codes and
/// the synonyms real feeds send (English, Portuguese, Spanish, French, Italian, German words;
/// status words only, never single letters, whose meaning differs between vendors: map those in
/// `status_map`). `None` for an unknown value.
pub fn filler_status(
    value: &str,
    status_map: &[(String, AppointmentStatus)],
) -> Option<AppointmentStatus> {
    use AppointmentStatus as S;
    let key = status_key(value);
    if let Some((_, s)) = status_map.iter().find(|(k, _)| *k == key) {
        return Some(*s);
    }
    Some(match key.as_str() {
        // Table 0278 (Booked, Overbook, Started; the rest below).
        "booked" | "overbook" | "started" | "confirmed" | "scheduled" | "arrived" | "checkedin"
        | "inprogress" | "confirmado" | "confirmada" | "agendado" | "agendada" | "marcado"
        | "marcada" | "programado" | "programada" | "reservado" | "confirme" | "confirmé"
        | "confirmato" | "prenotato" | "bestätigt" | "bestaetigt" | "gebucht" => S::Booked,
        "pending" | "tentative" | "requested" | "pendente" | "pendiente" | "enattente"
        | "inattesa" | "ausstehend" => S::Pending,
        "waitlist" | "waitinglist" | "listadeespera" | "listedattente" => S::Waitlist,
        "complete" | "completed" | "fulfilled" | "done" | "attended" | "seen" | "realizado"
        | "realizada" | "atendido" | "atendida" | "concluido" | "concluído" | "termine"
        | "terminé" | "effectue" | "effectué" | "eseguito" | "erledigt" => S::Fulfilled,
        "cancelled" | "canceled" | "dc" | "discontinued" | "cancelado" | "cancelada" | "annule"
        | "annulé" | "annulee" | "annulée" | "annullato" | "annullata" | "cancellato"
        | "storniert" | "abgesagt" => S::Cancelled,
        "deleted" | "enteredinerror" | "excluido" | "excluído" | "eliminado" | "supprime"
        | "supprimé" | "eliminato" | "gelöscht" | "geloescht" => S::EnteredInError,
        "noshow" | "didnotattend" | "dna" | "faltou" | "naocompareceu" | "nãocompareceu"
        | "ausente" | "nopresentado" | "absent" | "assente" | "nichterschienen" => S::Noshow,
        _ => return None,
    })
}

/// The result of mapping a message body.
pub enum Mapped {
    Event(Change),
    /// A valid message with nothing for us (why, no PHI).
    Ignored(&'static str),
}

fn missing(seg: &'static str, field: usize, what: &str) -> Hl7Error {
    Hl7Error::content(
        ErrorCode::RequiredFieldMissing,
        ErrLocation::field(seg, field),
        format!("{seg}-{field} ({what}) is required"),
    )
}

fn bad(seg: &'static str, field: usize, what: &str) -> Hl7Error {
    Hl7Error::content(
        ErrorCode::DataType,
        ErrLocation::field(seg, field),
        format!("{seg}-{field} is not {what}"),
    )
}

/// A DTM field with at least minute precision (an appointment time).
fn instant(
    p: &Parsed<'_>,
    seg_name: &'static str,
    field: usize,
    component: usize,
    zone: &TimeZone,
) -> Result<Option<Timestamp>, Hl7Error> {
    let Some(seg) = p.segment(seg_name) else {
        return Ok(None);
    };
    let Some(v) = p.value(seg, field, 1, component) else {
        return Ok(None);
    };
    match dtm::parse(&v, zone) {
        Some(d) if d.precision >= Precision::Minute => Ok(Some(d.at)),
        Some(_) => Err(bad(seg_name, field, "a date and time to the minute")),
        None => Err(bad(
            seg_name,
            field,
            "a valid HL7 date/time (YYYYMMDDHHMM[SS][+ZZZZ])",
        )),
    }
}

/// ISO 639-2 (three letters, as many EHRs send in PID-15) -> the BCP-47 language.
fn language(code: &str) -> Option<String> {
    let c = code.trim().to_ascii_lowercase().replace('_', "-");
    let base = c.split('-').next().unwrap_or("");
    let two = match base {
        "eng" => "en",
        "spa" => "es",
        "por" => "pt",
        "fra" | "fre" => "fr",
        "deu" | "ger" => "de",
        "ita" => "it",
        "nld" | "dut" => "nl",
        "ara" => "ar",
        "zho" | "chi" => "zh",
        "rus" => "ru",
        "hin" => "hi",
        "jpn" => "ja",
        "kor" => "ko",
        "vie" => "vi",
        "pol" => "pl",
        "tur" => "tr",
        b if b.len() == 2 && b.bytes().all(|x| x.is_ascii_alphabetic()) => b,
        _ => return None,
    };
    Some(match c.split_once('-') {
        Some((_, region)) if region.len() == 2 => format!("{two}-{}", region.to_ascii_uppercase()),
        _ => two.to_owned(),
    })
}

/// The phones of PID-13 (home) and PID-14 (business), in order, emails skipped.
// PHI: phone numbers are read to be normalised and kept as Phi.
#[allow(clippy::disallowed_methods)]
fn phones(p: &Parsed<'_>, opts: &Hl7Options) -> Vec<ContactPhone> {
    let Some(pid) = p.segment("PID") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (field, default_use) in [(13, PhoneUse::Home), (14, PhoneUse::Work)] {
        for rep in 1..=p.repetitions(pid, field) {
            let c = |n| p.value(pid, field, rep, n);
            let use_code = c(2).unwrap_or_default().to_ascii_uppercase();
            let equipment = c(3).unwrap_or_default().to_ascii_uppercase();
            if use_code == "NET" || matches!(equipment.as_str(), "INTERNET" | "X.400") {
                continue;
            }
            let number = match (c(5), c(6), c(7)) {
                (country, area, Some(local)) => Some(format!(
                    "{}{}{local}",
                    country
                        .map(|c| format!("+{}", c.trim_start_matches('+')))
                        .unwrap_or_default(),
                    area.unwrap_or_default()
                )),
                _ => c(12).or_else(|| c(1)),
            };
            let Some(number) = number else { continue };
            let use_ = if matches!(equipment.as_str(), "CP" | "BP") {
                PhoneUse::Mobile
            } else {
                match use_code.as_str() {
                    "PRN" | "ORN" | "VHN" => PhoneUse::Home,
                    "WPN" => PhoneUse::Work,
                    "" => default_use,
                    _ => PhoneUse::Other,
                }
            };
            let rank = c(18)
                .and_then(|r| r.parse().ok())
                .unwrap_or(out.len() as u32 + 1);
            let (e164, unusable) = match normalize_e164(&number, &opts.default_region) {
                Ok(n) => (Some(Phi::new(n)), None),
                Err(e) => (None, Some(e.to_string())),
            };
            out.push(ContactPhone {
                e164,
                unusable,
                use_,
                rank,
            });
        }
    }
    out
}

/// Maps a parsed SIU whose header was accepted.
// PHI: patient fields are read into Phi values; error strings name fields only.
#[allow(clippy::disallowed_methods)]
pub fn map(
    p: &Parsed<'_>,
    header: &Header,
    opts: &Hl7Options,
    arrival: Arrival,
    raw_ref: &str,
) -> Result<Mapped, Hl7Error> {
    let zone = TimeZone::get(&opts.time_zone).map_err(|_| {
        Hl7Error::reject(
            ErrorCode::ApplicationInternal,
            None,
            "the site's time zone is not known",
        )
    })?;
    let Some(trigger) = trigger(&header.trigger) else {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedEventCode,
            Some(ErrLocation::field("MSH", 9)),
            "SIU events S12 to S26 are processed (S25 is a query)",
        ));
    };
    if matches!(trigger, Trigger::Ignore) {
        return Ok(Mapped::Ignored(
            "schedule block events (S23/S24) carry no appointment",
        ));
    }
    let msh = p.segment("MSH").expect("header was read");
    let sent = p
        .value(msh, 7, 1, 1)
        .ok_or_else(|| missing("MSH", 7, "message date/time"))?;
    let sent = dtm::parse(&sent, &zone)
        .ok_or_else(|| bad("MSH", 7, "a valid HL7 date/time"))?
        .at;
    let version = match opts.ordering {
        Ordering::Arrival => SourceVersion {
            at: arrival.at,
            seq: arrival.seq,
        },
        Ordering::MessageTime => SourceVersion {
            at: sent,
            seq: arrival.seq,
        },
        Ordering::EventTime => {
            let evn = match instant(p, "EVN", 6, 1, &zone)? {
                Some(t) => Some(t),
                None => instant(p, "EVN", 2, 1, &zone)?,
            };
            SourceVersion {
                at: evn.unwrap_or(sent),
                seq: arrival.seq,
            }
        }
    };
    let message_id = Some(format!(
        "{}^{}^{}",
        header.sending_application,
        header.sending_facility,
        header.control_id.trim()
    ));
    let sch = p
        .segment("SCH")
        .ok_or_else(|| missing("SCH", 0, "the SCH segment"))?;
    let filler_id = p
        .value(sch, 2, 1, 1)
        .ok_or_else(|| missing("SCH", 2, "filler appointment id"))?;
    let placer_id = p.value(sch, 1, 1, 1);

    let start = match instant(p, "TQ1", 7, 1, &zone)? {
        Some(s) => Some(s),
        None => match instant(p, "SCH", 11, 4, &zone)? {
            Some(s) => Some(s),
            None => instant(p, "AIS", 4, 1, &zone)?,
        },
    };
    let status = match trigger {
        Trigger::Status(s) => s,
        _ => match p.value(sch, 25, 1, 1) {
            None => AppointmentStatus::Booked,
            Some(code) => filler_status(&code, &opts.status_map).ok_or_else(|| {
                Hl7Error::content(
                    ErrorCode::TableValueNotFound,
                    ErrLocation::field("SCH", 25),
                    "SCH-25 (filler status) is neither a table 0278 code nor a known synonym; \
                     map the sender's value in the connector's `status_map`",
                )
            })?,
        },
    };
    let Some(start) = start else {
        if status == AppointmentStatus::Booked {
            return Err(Hl7Error::content(
                ErrorCode::RequiredFieldMissing,
                ErrLocation::field("TQ1", 7),
                "a booked appointment needs its start (TQ1-7, SCH-11.4 or AIS-4)",
            ));
        }
        // A cancellation, no-show or deletion needs only the identity.
        return Ok(Mapped::Event(Change::Status(StatusChange {
            key: AppointmentKey {
                source: opts.system.clone(),
                id: filler_id,
            },
            placer_id,
            status,
            version,
            raw_ref: raw_ref.to_owned(),
            message_id,
        })));
    };
    let mut end = match instant(p, "TQ1", 8, 1, &zone)? {
        Some(e) => Some(e),
        None => instant(p, "SCH", 11, 5, &zone)?,
    };
    if end.is_none()
        && let Some(minutes) = p.value(sch, 9, 1, 1)
    {
        let n: i64 = minutes
            .parse()
            .map_err(|_| bad("SCH", 9, "a whole number (appointment duration)"))?;
        let unit = p.value(sch, 10, 1, 1).unwrap_or_else(|| "MIN".into());
        let secs = match unit.to_ascii_uppercase().as_str() {
            "MIN" | "M" | "MINUTES" => 60,
            "HR" | "H" | "HOURS" => 3600,
            "S" | "SEC" | "SECONDS" => 1,
            _ => return Err(bad("SCH", 10, "a duration unit (MIN, HR, S)")),
        };
        // Checked: a duration read from the message can be absurd (a fuzzed SCH-9 of 14 digits
        // overflowed the timestamp and panicked).
        end = Some(
            start
                .checked_add(SignedDuration::from_secs(n.saturating_mul(secs)))
                .map_err(|_| bad("SCH", 9, "an appointment duration that ends in a real time"))?,
        );
    }
    if end.is_some_and(|e| e < start) {
        return Err(bad("TQ1", 8, "after the start"));
    }

    // Patient.
    let mut patient = Patient::default();
    if let Some(pid) = p.segment("PID") {
        let mrn = (1..=p.repetitions(pid, 3))
            .find(|&r| p.value(pid, 3, r, 5).as_deref() == Some("MR"))
            .or_else(|| (p.repetitions(pid, 3) > 0).then_some(1))
            .and_then(|r| p.value(pid, 3, r, 1));
        patient.id = mrn.map(Phi::new);
        // The legal name (PID-5.7 = L) when it has a given name, else the first that has one.
        let reps = 1..=p.repetitions(pid, 5);
        let name_rep = reps
            .clone()
            .find(|&r| {
                p.value(pid, 5, r, 7).as_deref() == Some("L") && p.value(pid, 5, r, 2).is_some()
            })
            .or_else(|| reps.clone().find(|&r| p.value(pid, 5, r, 2).is_some()))
            .unwrap_or(1);
        patient.family_name = p.sub(pid, 5, name_rep, 1, 1).map(Phi::new);
        patient.given_name = p.value(pid, 5, name_rep, 2).map(Phi::new);
        patient.preferred_language = p.value(pid, 15, 1, 1).and_then(|l| language(&l));
    }
    patient.phones = phones(p, opts);

    let mut ehr_consent = None;
    if let Some(pd1) = p.segment("PD1") {
        match p
            .value(pd1, 12, 1, 1)
            .map(|v| v.to_ascii_uppercase())
            .as_deref()
        {
            None => {}
            Some("N") => patient.protected = Some(false),
            Some("Y") => patient.protected = Some(true),
            Some(_) => {
                return Err(Hl7Error::content(
                    ErrorCode::TableValueNotFound,
                    ErrLocation::field("PD1", 12),
                    "PD1-12 (protection indicator) must be Y or N",
                ));
            }
        }
        if let Some(code) = p.value(pd1, 11, 1, 1) {
            let is = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case(&code));
            if is(&opts.publicity_opt_out) {
                ehr_consent = Some(EhrConsent::OptOut);
            } else if is(&opts.publicity_opt_in) {
                ehr_consent = Some(EhrConsent::OptIn);
            }
        }
    }

    // Resources: the first of each kind, in any resource group.
    let location = p.segment("AIL").and_then(|ail| {
        let part = |part: LocationPart| match part {
            LocationPart::Facility => p.sub(ail, 3, 1, 4, 1),
            other => p.value(ail, 3, 1, other.component()),
        };
        if opts.location_parts.is_empty() {
            part(LocationPart::Description)
                .or_else(|| part(LocationPart::Facility))
                .or_else(|| part(LocationPart::PointOfCare))
        } else {
            let parts: Vec<String> = opts
                .location_parts
                .iter()
                .filter_map(|&l| part(l))
                .collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        }
    });
    let practitioner = p.segment("AIP").and_then(|aip| {
        let name: Vec<String> = [6, 3, 2]
            .into_iter()
            .filter_map(|c| p.sub(aip, 3, 1, c, 1))
            .collect();
        (!name.is_empty() && p.value(aip, 3, 1, 2).is_some()).then(|| name.join(" "))
    });
    let text_or_code = |seg: &'static str, field: usize| {
        p.segment(seg)
            .and_then(|s| p.value(s, field, 1, 2).or_else(|| p.value(s, field, 1, 1)))
    };
    let service_type = text_or_code("AIS", 3).or_else(|| text_or_code("SCH", 8));
    let reason = text_or_code("SCH", 7);

    let appointment = Appointment {
        key: AppointmentKey {
            source: opts.system.clone(),
            id: filler_id,
        },
        placer_id,
        status,
        start,
        end,
        time_unknown: false,
        site: opts.site.clone(),
        time_zone: opts.time_zone.clone(),
        location,
        practitioner,
        service_type: service_type.map(Phi::new),
        reason: reason.map(Phi::new),
        patient,
        ehr_consent,
    };
    Ok(Mapped::Event(Change::from(AppointmentEvent {
        appointment,
        version,
        raw_ref: raw_ref.to_owned(),
        message_id,
    })))
}
