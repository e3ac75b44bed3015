//! What a patient can answer, and the signed quick-reply payloads that carry it.
//!
//! A quick-reply button payload is opaque to WhatsApp and comes back verbatim when the patient taps.
//! Ours is `v1.<job>.<action>.<expiry>.<mac>`: the outbox job id, the action, a unix expiry and a
//! truncated HMAC-SHA256 over the rest. It names no patient and no appointment detail, and a forged or
//! expired payload is recognised as such.

use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A patient's answer to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyAction {
    Confirm,
    Cancel,
    Reschedule,
    /// Not a tap: WhatsApp could not deliver to this patient (131026, 131050...), so the EHR learns
    /// that staff must reach them another way.
    NotNotified,
}

impl ReplyAction {
    /// The actions a patient can tap, in button order.
    pub const ALL: [ReplyAction; 3] = [Self::Confirm, Self::Reschedule, Self::Cancel];

    /// Everything that can be written back to the EHR.
    pub const WRITE_BACK: [ReplyAction; 4] = [
        Self::Confirm,
        Self::Reschedule,
        Self::Cancel,
        Self::NotNotified,
    ];

    /// Stored and payload name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Cancel => "cancel",
            Self::Reschedule => "reschedule",
            Self::NotNotified => "not_notified",
        }
    }

    /// Parses a stored or configured name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "confirm" => Some(Self::Confirm),
            "cancel" => Some(Self::Cancel),
            "reschedule" => Some(Self::Reschedule),
            "not_notified" => Some(Self::NotNotified),
            _ => None,
        }
    }
}

/// A post-visit survey rating: the quick-reply buttons of a survey template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    Poor,
    Ok,
    Good,
}

impl Rating {
    /// Best first, the order a survey template's buttons usually have.
    pub const ALL: [Rating; 3] = [Rating::Good, Rating::Ok, Rating::Poor];

    /// Stored, configured and payload name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Good => "good",
            Rating::Ok => "ok",
            Rating::Poor => "poor",
        }
    }

    /// Parses a stored or configured name.
    pub fn parse(s: &str) -> Option<Rating> {
        Rating::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a signed payload says the patient chose: an answer about the appointment, a survey
/// rating (a template button) or a 0-10 score (a row of the follow-up list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    Reply(ReplyAction),
    Rating(Rating),
    /// Net Promoter Score, 0 to 10.
    Score(u8),
}

impl Choice {
    /// The payload (and configured button) name: `confirm`, `good`, `nps7`.
    pub fn name(self) -> String {
        match self {
            Choice::Reply(a) => a.as_str().to_string(),
            Choice::Rating(r) => r.as_str().to_string(),
            Choice::Score(n) => format!("nps{n}"),
        }
    }

    /// Back from [`Choice::name`]; `None` for anything else (a score above 10 included).
    pub fn parse(s: &str) -> Option<Choice> {
        if let Some(a) = ReplyAction::parse(s) {
            return Some(Choice::Reply(a));
        }
        if let Some(r) = Rating::parse(s) {
            return Some(Choice::Rating(r));
        }
        let n: u8 = s.strip_prefix("nps")?.parse().ok()?;
        (n <= 10 && s.len() == 3 + n.to_string().len()).then_some(Choice::Score(n))
    }

    /// The appointment answer, if that is what was chosen.
    pub fn reply(self) -> Option<ReplyAction> {
        match self {
            Choice::Reply(a) => Some(a),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Choice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Choice::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown button `{s}` (expected confirm, cancel, reschedule, or for a survey good, ok, poor)"
            ))
        })
    }
}

/// A verified quick-reply (or list row) payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ButtonPayload {
    pub job_id: i64,
    pub choice: Choice,
    pub expires: Timestamp,
}

/// Why a payload was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not a medrelay button payload")]
    Malformed,
    #[error("payload signature does not match")]
    BadSignature,
    #[error("payload has expired")]
    Expired,
}

fn mac(key: &[u8], body: &str) -> String {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body.as_bytes());
    hex::encode(&m.finalize().into_bytes()[..12])
}

impl ButtonPayload {
    /// Encodes and signs the payload.
    pub fn sign(&self, key: &[u8]) -> String {
        let body = format!(
            "v1.{}.{}.{}",
            self.job_id,
            self.choice.name(),
            self.expires.as_second()
        );
        let sig = mac(key, &body);
        format!("{body}.{sig}")
    }

    /// Verifies signature and expiry.
    pub fn verify(raw: &str, key: &[u8], now: Timestamp) -> Result<Self, PayloadError> {
        let (body, sig) = raw.rsplit_once('.').ok_or(PayloadError::Malformed)?;
        let mut parts = body.split('.');
        let (Some("v1"), Some(job), Some(action), Some(exp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PayloadError::Malformed);
        };
        let expected = mac(key, body);
        // Constant-time comparison of the hex strings.
        let ok = expected.len() == sig.len()
            && expected
                .bytes()
                .zip(sig.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !ok {
            return Err(PayloadError::BadSignature);
        }
        let payload = ButtonPayload {
            job_id: job.parse().map_err(|_| PayloadError::Malformed)?,
            choice: Choice::parse(action).ok_or(PayloadError::Malformed)?,
            expires: exp
                .parse::<i64>()
                .ok()
                .and_then(|s| Timestamp::from_second(s).ok())
                .ok_or(PayloadError::Malformed)?,
        };
        if now > payload.expires {
            return Err(PayloadError::Expired);
        }
        Ok(payload)
    }
}

/// What a free-text message means, by keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextIntent {
    /// Revoke consent (STOP and equivalents).
    Stop,
    /// Restore consent (START and equivalents).
    Start,
    /// An emergency phrase: reply with the safety message and alert staff.
    Emergency,
    /// Anything else: route to the staff queue, never answered by a bot.
    Other,
}

const STOP_WORDS: &[&str] = &[
    "stop",
    "unsubscribe",
    "cancel messages",
    "opt out",
    "optout", // en
    "parar",
    "pare",
    "sair",
    "cancelar mensagens", // pt
    "baja",
    "detener",
    "no más mensajes",
    "no mas mensajes", // es
    "arrêt",
    "arret",
    "stopper",
    "désabonner",
    "desabonner", // fr
    "basta",
    "annulla iscrizione",
    "disiscrivi", // it
    "توقف",
    "إلغاء",
    "الغاء", // ar
];

const START_WORDS: &[&str] = &[
    "start",
    "subscribe",
    "unstop",
    "opt in",
    "optin", // en
    "começar",
    "comecar",
    "voltar",
    "iniciar", // pt
    "alta",
    "empezar",
    "reanudar", // es
    "démarrer",
    "demarrer",
    "commencer",
    "reprendre", // fr
    "inizia",
    "riattiva",
    "ricomincia", // it
    "ابدأ",
    "اشتراك", // ar
];

const EMERGENCY_PHRASES: &[&str] = &[
    "chest pain",
    "can't breathe",
    "cant breathe",
    "cannot breathe",
    "suicide",
    "kill myself",
    "overdose",
    "stroke",
    "unconscious",
    "bleeding heavily",
    "heart attack", // en
    "dor no peito",
    "não consigo respirar",
    "nao consigo respirar",
    "suicídio",
    "infarto", // pt
    "dolor de pecho",
    "dolor en el pecho",
    "no puedo respirar",
    "suicidio", // es
    "douleur thoracique",
    "douleur à la poitrine",
    "je ne peux pas respirer", // fr
    "dolore al petto",
    "non riesco a respirare", // it
    "ألم في الصدر",
    "لا أستطيع التنفس", // ar
];

/// Classifies free text. Emergency phrases are looked for anywhere in the text; STOP/START must be the
/// whole message (so "please don't stop my reminders" is not an opt-out).
pub fn classify_text(text: &str) -> TextIntent {
    let lower = text.trim().to_lowercase();
    let lower = lower.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace());
    if EMERGENCY_PHRASES.iter().any(|p| lower.contains(p)) {
        return TextIntent::Emergency;
    }
    if STOP_WORDS.contains(&lower) {
        return TextIntent::Stop;
    }
    if START_WORDS.contains(&lower) {
        return TextIntent::Start;
    }
    TextIntent::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-key";

    #[test]
    fn payload_round_trips_and_carries_no_phi() {
        let p = ButtonPayload {
            job_id: 42,
            choice: Choice::Reply(ReplyAction::Confirm),
            expires: "2026-06-10T12:00:00Z".parse().unwrap(),
        };
        let raw = p.sign(KEY);
        assert!(raw.starts_with("v1.42.confirm."));
        assert!(raw.len() < 128, "WhatsApp payloads must stay short");
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        assert_eq!(ButtonPayload::verify(&raw, KEY, now), Ok(p));
    }

    #[test]
    fn tampered_forged_and_expired_payloads_are_rejected() {
        let p = ButtonPayload {
            job_id: 42,
            choice: Choice::Reply(ReplyAction::Confirm),
            expires: "2026-06-10T12:00:00Z".parse().unwrap(),
        };
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        let raw = p.sign(KEY);
        let tampered = raw.replace(".confirm.", ".cancel.");
        assert_eq!(
            ButtonPayload::verify(&tampered, KEY, now),
            Err(PayloadError::BadSignature)
        );
        assert_eq!(
            ButtonPayload::verify(&raw, b"other", now),
            Err(PayloadError::BadSignature)
        );
        assert_eq!(
            ButtonPayload::verify("CONFIRM", KEY, now),
            Err(PayloadError::Malformed)
        );
        let later = "2026-06-11T00:00:00Z".parse().unwrap();
        assert_eq!(
            ButtonPayload::verify(&raw, KEY, later),
            Err(PayloadError::Expired)
        );
    }

    #[test]
    fn survey_ratings_and_scores_round_trip_and_nothing_else_parses() {
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        for choice in [
            Choice::Rating(Rating::Poor),
            Choice::Rating(Rating::Good),
            Choice::Score(0),
            Choice::Score(10),
        ] {
            let p = ButtonPayload {
                job_id: 7,
                choice,
                expires: "2026-06-10T12:00:00Z".parse().unwrap(),
            };
            assert_eq!(ButtonPayload::verify(&p.sign(KEY), KEY, now), Ok(p));
        }
        for bad in ["nps11", "nps", "nps07", "nps-1", "great", "NPS5"] {
            assert_eq!(Choice::parse(bad), None, "{bad}");
        }
        assert!(Rating::Poor < Rating::Ok && Rating::Ok < Rating::Good);
    }

    #[test]
    fn keywords_in_several_languages() {
        for w in ["STOP", "Parar", "baja", "ARRÊT", "basta", "توقف", " stop! "] {
            assert_eq!(classify_text(w), TextIntent::Stop, "{w}");
        }
        for w in ["START", "Começar", "alta", "commencer", "inizia", "ابدأ"] {
            assert_eq!(classify_text(w), TextIntent::Start, "{w}");
        }
        for w in [
            "I have chest pain",
            "can't breathe!!",
            "Estou com dor no peito",
            "no puedo respirar",
        ] {
            assert_eq!(classify_text(w), TextIntent::Emergency, "{w}");
        }
        assert_eq!(
            classify_text("please don't stop my reminders"),
            TextIntent::Other
        );
    }
}
