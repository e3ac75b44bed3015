//! medrelay's domain, with no I/O and no async runtime.
//!
//! Everything a connector produces is mapped into the canonical [`Appointment`]; everything the pipeline
//! decides (who may be messaged, what a message may say, when it goes out) is computed here by pure
//! functions so that it can be tested exhaustively and explained to an auditor.
//!
//! - [`phi`]: the [`Phi`] wrapper that keeps patient data out of logs and error strings.
//! - [`model`]: the canonical appointment, patient and event shapes.
//! - [`phone`]: E.164 normalisation; an unusable number is a skip reason, never a crash.
//! - [`template`]: the allow-list of fields a WhatsApp template may render.
//! - [`consent`]: how consent signals from every source combine into one decision.
//! - [`policy`]: the sensitive-services deny-list.
//! - [`plan`]: reminder steps, quiet hours and time-to-live in the site's time zone.
//! - [`reply`]: signed quick-reply payloads and the actions a patient can take.
//! - [`slots`]: open slots, and which of them may replace an appointment.
//! - [`ports`]: the traits adapters implement (write-back).

pub mod consent;
pub mod model;
pub mod phi;
pub mod phone;
pub mod plan;
pub mod policy;
pub mod ports;
pub mod reply;
pub mod slots;
pub mod template;

pub use model::{
    Appointment, AppointmentEvent, AppointmentKey, AppointmentStatus, Change, ContactPhone,
    Patient, PhoneUse, SourceVersion, StatusChange,
};
pub use phi::Phi;
