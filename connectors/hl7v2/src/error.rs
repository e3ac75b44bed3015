//! Why a message was not accepted, in the terms an ACK needs: HL7 table 0357 code, the location
//! (segment, field, component) and a reason that never quotes a field value.

use std::fmt;

/// The acknowledgement code of MSA-1 (original mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCode {
    /// Application Accept: stored durably.
    Accept,
    /// Application Error: the content is wrong (a required field is missing, a value is invalid).
    /// The raw message is in quarantine; the sender should not resend it unchanged.
    Error,
    /// Application Reject: the message is not one we process (type, event, version, charset, an
    /// unreadable header), or it could not be read at all.
    Reject,
}

impl AckCode {
    /// The MSA-1 value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// HL7 table 0357 (message error condition codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequence,
    RequiredFieldMissing,
    DataType,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedEventCode,
    UnsupportedVersion,
    ApplicationInternal,
}

impl ErrorCode {
    /// The table 0357 code.
    pub fn code(self) -> u16 {
        match self {
            Self::SegmentSequence => 100,
            Self::RequiredFieldMissing => 101,
            Self::DataType => 102,
            Self::TableValueNotFound => 103,
            Self::UnsupportedMessageType => 200,
            Self::UnsupportedEventCode => 201,
            Self::UnsupportedVersion => 203,
            Self::ApplicationInternal => 207,
        }
    }

    /// The table 0357 display text.
    pub fn text(self) -> &'static str {
        match self {
            Self::SegmentSequence => "Segment sequence error",
            Self::RequiredFieldMissing => "Required field missing",
            Self::DataType => "Data type error",
            Self::TableValueNotFound => "Table value not found",
            Self::UnsupportedMessageType => "Unsupported message type",
            Self::UnsupportedEventCode => "Unsupported event code",
            Self::UnsupportedVersion => "Unsupported version id",
            Self::ApplicationInternal => "Application internal error",
        }
    }
}

/// Where in the message the problem is (ERR-2, an ERL): `SCH-2`, `PID-13[2].1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrLocation {
    pub segment: &'static str,
    /// 1-based field number; 0 for "the segment".
    pub field: usize,
    /// 1-based repetition of the field.
    pub repetition: Option<usize>,
    /// 1-based component.
    pub component: Option<usize>,
}

impl ErrLocation {
    /// A field of a segment.
    pub fn field(segment: &'static str, field: usize) -> Self {
        ErrLocation {
            segment,
            field,
            repetition: None,
            component: None,
        }
    }
}

impl fmt::Display for ErrLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segment)?;
        if self.field > 0 {
            write!(f, "-{}", self.field)?;
        }
        if let Some(r) = self.repetition {
            write!(f, "[{r}]")?;
        }
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        Ok(())
    }
}

/// A message we could not accept. The reason names fields and expectations, never values, so it
/// may go into logs, ACKs and the quarantine's error column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", code.text(), location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
pub struct Hl7Error {
    pub ack: AckCode,
    pub code: ErrorCode,
    pub location: Option<ErrLocation>,
    pub reason: String,
}

impl Hl7Error {
    /// An application error (AE) at a location.
    pub fn content(code: ErrorCode, location: ErrLocation, reason: impl Into<String>) -> Self {
        Hl7Error {
            ack: AckCode::Error,
            code,
            location: Some(location),
            reason: reason.into(),
        }
    }

    /// A reject (AR), optionally at a location.
    pub fn reject(
        code: ErrorCode,
        location: Option<ErrLocation>,
        reason: impl Into<String>,
    ) -> Self {
        Hl7Error {
            ack: AckCode::Reject,
            code,
            location,
            reason: reason.into(),
        }
    }
}
