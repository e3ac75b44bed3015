//! HL7v2 connector: SIU^S12..S26 scheduling messages, from an MLLP port or from files, mapped to the
//! canonical appointment and answered with an ACK (AA) or a NAK (AE / AR with an ERR segment).
//!
//! The connector never touches the store: [`process`] turns bytes into an [`Outcome`], the caller
//! (the pipeline's ingest) commits it, and only then is the ACK built ([`Processed::ack`]). The MLLP
//! listener ([`mllp::serve`]) follows that order through a [`mllp::MessageSink`].
//!
//! hl7-parser does the structural parse; charsets ([`charset`]), escapes ([`escape`]) and
//! timestamps ([`dtm`]) are decoded here because the parser gets them wrong (DEPENDENCIES.md).

pub mod access;
pub mod ack;
pub mod charset;
pub mod dtm;
pub mod error;
pub mod escape;
pub mod file;
pub mod limits;
pub mod message;
pub mod mllp;
pub mod siu;
pub mod write_back;

use jiff::Timestamp;
use medrelay_mapping::Change;

pub use error::{AckCode, ErrLocation, ErrorCode, Hl7Error};
pub use siu::{Arrival, Header, Hl7Options, LocationPart, Ordering};

/// What a message amounts to.
#[derive(Debug)]
pub enum Outcome {
    /// An appointment event (or a status change alone) to commit (then AA).
    Event(Change),
    /// A valid message that carries nothing for us (then AA, nothing stored); why, without PHI.
    Ignored(&'static str),
    /// A message we cannot accept: the raw bytes go to quarantine, then AE or AR.
    Rejected(Hl7Error),
}

/// A processed message: its header (when readable) and outcome.
#[derive(Debug)]
pub struct Processed {
    pub header: Option<Header>,
    pub outcome: Outcome,
}

impl Processed {
    /// The acknowledgement to send once the outcome is durable (`stored = true`). When it could
    /// not be stored, the answer is AR 207 so that the sender keeps the message and sends it again.
    pub fn ack(&self, stored: bool, opts: &Hl7Options, now: Timestamp) -> String {
        if !stored {
            let e = Hl7Error::reject(
                ErrorCode::ApplicationInternal,
                None,
                "the message could not be stored; send it again later",
            );
            return ack::build(self.header.as_ref(), AckCode::Reject, Some(&e), opts, now);
        }
        match &self.outcome {
            Outcome::Event(_) | Outcome::Ignored(_) => {
                ack::build(self.header.as_ref(), AckCode::Accept, None, opts, now)
            }
            Outcome::Rejected(e) => ack::build(self.header.as_ref(), e.ack, Some(e), opts, now),
        }
    }

    /// Every frame to answer with once the outcome is durable (`stored`), in order. Original mode
    /// (MSH-15 and MSH-16 empty): the one [`Processed::ack`]. Enhanced mode: the accept
    /// acknowledgment (CA stored, CE not stored: send again, CR refused: a type, event or version
    /// we do not take) when MSH-15 asks for it, then, for a stored message, the application
    /// acknowledgment (AA, or AE with ERR for content medrelay could not use) when MSH-16 asks for
    /// it, as its own message on the same connection. Each of AL (or empty), NE, ER and SU is
    /// honoured, so the answer may be no frame at all.
    pub fn answers(&self, stored: bool, opts: &Hl7Options, now: Timestamp) -> Vec<String> {
        let Some(h) = self.header.as_ref().filter(|h| h.enhanced()) else {
            return vec![self.ack(stored, opts, now)];
        };
        let not_stored = Hl7Error::reject(
            ErrorCode::ApplicationInternal,
            None,
            "the message could not be stored; send it again later",
        );
        let (commit, commit_error, application) = if !stored {
            ("CE", Some(&not_stored), None)
        } else {
            match &self.outcome {
                Outcome::Event(_) | Outcome::Ignored(_) => {
                    ("CA", None, Some((AckCode::Accept, None)))
                }
                Outcome::Rejected(e) if e.ack == AckCode::Reject => ("CR", Some(e), None),
                Outcome::Rejected(e) => ("CA", None, Some((e.ack, Some(e)))),
            }
        };
        let mut out = Vec::with_capacity(2);
        if wanted(&h.accept_ack, commit == "CA") {
            out.push(ack::build_code(
                Some(h),
                commit,
                commit_error,
                opts,
                now,
                false,
            ));
        }
        if let Some((code, error)) = application
            && wanted(&h.application_ack, code == AckCode::Accept)
        {
            out.push(ack::build_code(
                Some(h),
                code.as_str(),
                error,
                opts,
                now,
                true,
            ));
        }
        out
    }
}

/// Whether an acknowledgment type (HL7 table 0155) asks for an answer that is a success or not:
/// AL always (also when empty or unknown: answering is the safe side), NE never, ER on errors
/// only, SU on success only.
fn wanted(kind: &str, success: bool) -> bool {
    match kind.trim().to_ascii_uppercase().as_str() {
        "NE" => false,
        "ER" => !success,
        "SU" => success,
        _ => true,
    }
}

/// Decodes, parses and maps one message. `arrival` is when and in which order it arrived (the
/// version in arrival ordering, the tie-breaker otherwise: see [`Ordering`]); `raw_ref` says where
/// it came from (no PHI).
pub fn process(raw: &[u8], opts: &Hl7Options, arrival: Arrival, raw_ref: &str) -> Processed {
    let rejected = |header, e| Processed {
        header,
        outcome: Outcome::Rejected(e),
    };
    let text = match charset::decode(raw, opts.fallback_charset) {
        Ok(t) => t,
        Err(e) => return rejected(None, e),
    };
    let prepared = match message::prepare(&text) {
        Ok(p) => p,
        Err(e) => return rejected(None, e),
    };
    let parsed = match message::Parsed::parse(&prepared) {
        Ok(p) => p,
        Err(e) => {
            // The MSH alone may still be readable, so that the NAK echoes MSH-10.
            let first = prepared.split(['\r', '\n']).next().unwrap_or("");
            let header = message::Parsed::parse(first)
                .ok()
                .map(|p| siu::read_header(&p));
            return rejected(header, e);
        }
    };
    let header = siu::read_header(&parsed);
    if let Err(e) = siu::check_header(&header) {
        return rejected(Some(header), e);
    }
    match siu::map(&parsed, &header, opts, arrival, raw_ref) {
        Ok(siu::Mapped::Event(e)) => Processed {
            header: Some(header),
            outcome: Outcome::Event(e),
        },
        Ok(siu::Mapped::Ignored(why)) => Processed {
            header: Some(header),
            outcome: Outcome::Ignored(why),
        },
        Err(e) => rejected(Some(header), e),
    }
}
