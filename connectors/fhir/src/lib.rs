//! FHIR connector: Appointments (with their Patient and Consent resources) from Bundles, whether a
//! REST search page, a collection file or a Subscription notification, mapped to the canonical
//! appointment. Problems are reported as FHIR `OperationOutcome` issues.
//!
//! This is the one crate that depends on fhir-sdk (R4B models, wire-compatible with the R4 servers
//! we meet), and no fhir-sdk type crosses its public API: downstream crates do not re-monomorphize
//! its serde code (DEPENDENCIES.md: minutes per rebuild otherwise). R5 resources are read by a
//! targeted reader of the elements medrelay uses (`r5.rs`), not by fhir-sdk's R5 models (build cost:
//! BENCHMARKS.md).

pub mod consent;
pub mod map;
pub mod outcome;
mod r4b;
mod r5;
pub mod server;
pub mod slots;
pub mod smart;
pub mod subscription;
mod time;
mod view;
pub mod write_back;

pub use consent::ConsentSelector;
pub use map::{
    FhirOptions, MappedBundle, NotificationStatus, RejectedEntry, id_only_without_server,
    map_bundle,
};
pub use outcome::{Issue, Severity, operation_outcome};
