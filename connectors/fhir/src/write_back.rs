//! Patient answers back to the EHR's FHIR server: a JSON Patch of the patient participant's
//! `status` on the Appointment (never read-modify-PUT: fhir-sdk drops unknown elements, and a PUT
//! would erase what it does not know). Each patch starts with a `test` of that participant's
//! actor, so a reordered participant list fails (and is retried after a fresh read) instead of
//! changing someone else.
//!
//! | reply | `participant.status` |
//! |---|---|
//! | confirm | `accepted` |
//! | cancel | `declined` (staff cancel the slot in the EHR) |
//! | reschedule | `tentative` (staff offer another time) |
//! | not_notified | `needs-action` (WhatsApp could not reach the patient) |
//!
//! Writing the same batch again sets the same values: idempotent per batch.

use medrelay_mapping::ports::{WriteBack, WriteBackBatch, WriteBackError, WriteReceipt};
use medrelay_mapping::reply::ReplyAction;
use serde_json::{Value, json};

use crate::server::{FhirServer, PatchError};

/// The FHIR write-back target of one connector.
pub struct FhirWriteBack {
    server: FhirServer,
    /// When set, appointments are found by `identifier=system|id`; else by logical id.
    identifier_system: Option<String>,
    handle: tokio::runtime::Handle,
}

impl FhirWriteBack {
    /// A target writing through `server`; `handle` runs the requests (write-back runs on a
    /// blocking thread).
    pub fn new(
        server: FhirServer,
        identifier_system: Option<String>,
        handle: tokio::runtime::Handle,
    ) -> Self {
        FhirWriteBack {
            server,
            identifier_system,
            handle,
        }
    }

    /// The participant status a reply sets.
    pub fn participant_status(action: ReplyAction) -> &'static str {
        match action {
            ReplyAction::Confirm => "accepted",
            ReplyAction::Cancel => "declined",
            ReplyAction::Reschedule => "tentative",
            ReplyAction::NotNotified => "needs-action",
        }
    }

    async fn find(&self, filler_id: &str) -> Result<Value, WriteBackError> {
        match &self.identifier_system {
            None => self
                .server
                .get_json(&format!("Appointment/{filler_id}"))
                .await
                .map_err(WriteBackError::Retryable),
            Some(system) => {
                let page = self
                    .server
                    .get_json(&format!(
                        "Appointment?identifier={system}|{filler_id}&_count=2"
                    ))
                    .await
                    .map_err(WriteBackError::Retryable)?;
                let found: Vec<&Value> = page["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| &e["resource"])
                    .filter(|r| r["resourceType"] == "Appointment")
                    .collect();
                match found.as_slice() {
                    [one] => Ok((*one).clone()),
                    [] => Err(WriteBackError::Permanent(
                        "no Appointment on the server has this identifier".into(),
                    )),
                    _ => Err(WriteBackError::Permanent(
                        "several Appointments on the server have this identifier".into(),
                    )),
                }
            }
        }
    }

    async fn write_one(&self, filler_id: &str, action: ReplyAction) -> Result<(), WriteBackError> {
        for _attempt in 0..2 {
            let appointment = self.find(filler_id).await?;
            let id = appointment["id"]
                .as_str()
                .ok_or_else(|| WriteBackError::Permanent("the Appointment has no id".into()))?;
            let participants = appointment["participant"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let Some((i, actor)) = participants.iter().enumerate().find_map(|(i, p)| {
                p["actor"]["reference"]
                    .as_str()
                    .filter(|r| r.contains("Patient/"))
                    .map(|r| (i, r.to_owned()))
            }) else {
                return Err(WriteBackError::Permanent(
                    "the Appointment has no Patient participant".into(),
                ));
            };
            let ops = json!([
                {"op": "test", "path": format!("/participant/{i}/actor/reference"), "value": actor},
                {"op": "replace", "path": format!("/participant/{i}/status"), "value": Self::participant_status(action)},
            ]);
            let version = appointment["meta"]["versionId"].as_str();
            match self
                .server
                .patch(&format!("Appointment/{id}"), &ops, version)
                .await
            {
                Ok(_) => return Ok(()),
                // Changed since we read it: read again and retry once.
                Err(PatchError::Conflict) => continue,
                Err(PatchError::Retryable(e)) => return Err(WriteBackError::Retryable(e)),
                Err(PatchError::Permanent(e)) => return Err(WriteBackError::Permanent(e)),
            }
        }
        Err(WriteBackError::Retryable(
            "the Appointment kept changing while it was patched".into(),
        ))
    }
}

impl WriteBack for FhirWriteBack {
    fn write_batch(&self, batch: &WriteBackBatch) -> Result<WriteReceipt, WriteBackError> {
        self.handle.block_on(async {
            for item in &batch.items {
                self.write_one(&item.filler_id, item.action).await?;
            }
            Ok(WriteReceipt {
                location: format!(
                    "fhir batch {} ({} Appointment patches)",
                    batch.batch_id,
                    batch.items.len()
                ),
            })
        })
    }
}
