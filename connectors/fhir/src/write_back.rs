//! Patient answers back to the EHR's FHIR server: a JSON Patch of the patient participant's
//! `status` on the Appointment (never read-modify-PUT: fhir-sdk drops unknown elements, and a PUT
//! would erase what it does not know). Each patch starts with a `test` of that participant's
//! actor, so a reordered participant list fails (and is retried after a fresh read) instead of
//! changing someone else.
//!
//! | reply | written as |
//! |---|---|
//! | confirm | `participant.status` `accepted` |
//! | cancel | `participant.status` `declined` (staff cancel the slot in the EHR) |
//! | reschedule | an `AppointmentResponse` (`participantStatus` `declined`, comment `reschedule-requested`) or a `Task` for staff (`reschedule_as`); the Appointment is not touched |
//! | not_notified | `participant.status` `needs-action` (WhatsApp could not reach the patient) |
//!
//! A reschedule request is never `tentative`: FHIR defines that as "tentatively accepted", not
//! "wants another time". Writing the same batch again sets the same values, and creates the
//! same resource once (conditional create on `identifier=urn:medrelay:reply|<reply id>`):
//! idempotent per batch.

use medrelay_mapping::ports::{
    Confirmation, WriteBack, WriteBackBatch, WriteBackError, WriteReceipt,
};
use medrelay_mapping::reply::ReplyAction;
use serde::Deserialize;
use serde_json::{Value, json};

/// The identifier system of the resources a reschedule request creates: our reply id, so a
/// retried batch finds the one it made.
pub const REPLY_IDENTIFIER_SYSTEM: &str = "urn:medrelay:reply";

/// How a patient's reschedule request (no new time picked) reaches the EHR
/// (`[[connectors]] reschedule_as`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RescheduleAs {
    /// An `AppointmentResponse` for the patient: `participantStatus` `declined` with the comment
    /// `reschedule-requested` (the patient will not come at this time and asks for another).
    #[default]
    AppointmentResponse,
    /// A `Task` for staff (`status` requested, `focus` the Appointment, code `reschedule`).
    Task,
}

use crate::server::{FhirServer, PatchError};

/// The FHIR write-back target of one connector.
pub struct FhirWriteBack {
    server: FhirServer,
    /// When set, appointments are found by `identifier=system|id`; else by logical id.
    identifier_system: Option<String>,
    reschedule_as: RescheduleAs,
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
            reschedule_as: RescheduleAs::default(),
            handle,
        }
    }

    /// The same target, writing reschedule requests as `how`.
    pub fn with_reschedule_as(mut self, how: RescheduleAs) -> Self {
        self.reschedule_as = how;
        self
    }

    /// The participant status a reply sets on the Appointment; `None` for a reschedule request,
    /// which is a resource of its own.
    pub fn participant_status(action: ReplyAction) -> Option<&'static str> {
        match action {
            ReplyAction::Confirm => Some("accepted"),
            ReplyAction::Cancel => Some("declined"),
            ReplyAction::Reschedule => None,
            ReplyAction::NotNotified => Some("needs-action"),
        }
    }

    /// The resource that asks for another time for the Appointment `id`, from the patient
    /// `patient` (a reference).
    fn reschedule_request(&self, item: &Confirmation, id: &str, patient: &str) -> Value {
        let identifier =
            json!([{"system": REPLY_IDENTIFIER_SYSTEM, "value": item.reply_id.to_string()}]);
        match self.reschedule_as {
            RescheduleAs::AppointmentResponse => json!({
                "resourceType": "AppointmentResponse",
                "identifier": identifier,
                "appointment": {"reference": format!("Appointment/{id}")},
                "actor": {"reference": patient},
                "participantStatus": "declined",
                "comment": "reschedule-requested: the patient asked on WhatsApp for another time",
            }),
            RescheduleAs::Task => json!({
                "resourceType": "Task",
                "identifier": identifier,
                "status": "requested",
                "intent": "order",
                "priority": "routine",
                "code": {
                    "coding": [{"system": "urn:medrelay:task", "code": "reschedule", "display": "Reschedule the appointment"}],
                    "text": "Reschedule the appointment",
                },
                "description": "The patient asked on WhatsApp for another time for this appointment.",
                "focus": {"reference": format!("Appointment/{id}")},
                "for": {"reference": patient},
                "authoredOn": item.replied_at.to_string(),
            }),
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

    async fn write_one(&self, item: &Confirmation) -> Result<(), WriteBackError> {
        let (filler_id, action) = (item.filler_id.as_str(), item.action);
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
            let Some(status) = Self::participant_status(action) else {
                let resource = self.reschedule_request(item, id, &actor);
                let condition = format!("identifier={REPLY_IDENTIFIER_SYSTEM}|{}", item.reply_id);
                return match self.server.create_once(&resource, &condition).await {
                    Ok(_) => Ok(()),
                    Err(PatchError::Permanent(e)) => Err(WriteBackError::Permanent(e)),
                    Err(e) => Err(WriteBackError::Retryable(e.to_string())),
                };
            };
            let ops = json!([
                {"op": "test", "path": format!("/participant/{i}/actor/reference"), "value": actor},
                {"op": "replace", "path": format!("/participant/{i}/status"), "value": status},
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
                self.write_one(item).await?;
            }
            Ok(WriteReceipt {
                location: format!(
                    "fhir batch {} ({} Appointment answers)",
                    batch.batch_id,
                    batch.items.len()
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use medrelay_mapping::ports::{Confirmation, WriteBack, WriteBackBatch};
    use medrelay_mapping::reply::ReplyAction;
    use serde_json::{Value, json};

    use super::{FhirWriteBack, RescheduleAs};
    use crate::server::FhirServer;

    /// What the little EHR received: patches and created resources (with their If-None-Exist).
    #[derive(Default)]
    struct Ehr {
        patches: Vec<Value>,
        created: Vec<(String, Option<String>, Value)>,
    }

    type Shared = Arc<Mutex<Ehr>>;

    async fn read(Path(id): Path<String>) -> axum::Json<Value> {
        axum::Json(json!({
            "resourceType": "Appointment", "id": id, "status": "booked", "meta": {"versionId": "3"},
            "participant": [
                {"actor": {"reference": "Practitioner/dr-1"}, "status": "accepted"},
                {"actor": {"reference": "Patient/p-1"}, "status": "needs-action"}
            ]
        }))
    }

    async fn patch(State(ehr): State<Shared>, body: axum::body::Bytes) -> StatusCode {
        ehr.lock()
            .unwrap()
            .patches
            .push(serde_json::from_slice(&body).unwrap());
        StatusCode::OK
    }

    /// A conditional create as FHIR servers do it: 200 and nothing new when the identifier
    /// search matches one already made, else 201.
    async fn create(
        State(ehr): State<Shared>,
        Path(kind): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, axum::Json<Value>) {
        let mut ehr = ehr.lock().unwrap();
        let condition = headers
            .get("if-none-exist")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let resource: Value = serde_json::from_slice(&body).unwrap();
        let value = resource["identifier"][0]["value"].clone();
        if ehr
            .created
            .iter()
            .any(|(k, _, r)| *k == kind && r["identifier"][0]["value"] == value)
            && condition.is_some()
        {
            return (StatusCode::OK, axum::Json(json!({})));
        }
        let id = format!("{kind}-{}", ehr.created.len() + 1);
        ehr.created.push((kind, condition, resource));
        (StatusCode::CREATED, axum::Json(json!({"id": id})))
    }

    async fn ehr() -> (String, Shared) {
        let shared = Shared::default();
        let app = Router::new()
            .route("/fhir/Appointment/{id}", get(read).patch(patch))
            .route("/fhir/{kind}", post(create))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/fhir"), shared)
    }

    fn batch(batch_id: i64, items: &[(i64, ReplyAction)]) -> WriteBackBatch {
        WriteBackBatch {
            batch_id,
            items: items
                .iter()
                .map(|&(reply_id, action)| Confirmation {
                    reply_id,
                    source: "clinica".into(),
                    filler_id: "ag-1".into(),
                    placer_id: None,
                    patient_id: None,
                    action,
                    replied_at: "2026-12-07T14:00:00Z".parse().unwrap(),
                    appointment_start: "2026-12-09T13:00:00Z".parse().unwrap(),
                    time_zone: "America/Sao_Paulo".into(),
                })
                .collect(),
        }
    }

    async fn write(target: Arc<FhirWriteBack>, b: WriteBackBatch) {
        tokio::task::spawn_blocking(move || target.write_batch(&b).unwrap())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reschedule_request_is_never_tentative_but_an_appointment_response_or_a_task_once() {
        let (base, ehr) = ehr().await;
        let server = FhirServer::new(&base, None, Duration::from_secs(5)).unwrap();
        let target = Arc::new(FhirWriteBack::new(
            server.clone(),
            None,
            tokio::runtime::Handle::current(),
        ));
        write(
            target.clone(),
            batch(
                1,
                &[(41, ReplyAction::Confirm), (42, ReplyAction::Reschedule)],
            ),
        )
        .await;
        // The same batch again (a retry after a crash): nothing new is created.
        write(target.clone(), batch(1, &[(42, ReplyAction::Reschedule)])).await;
        {
            let ehr = ehr.lock().unwrap();
            // The confirm is a patch of the patient participant; the reschedule patches nothing.
            assert_eq!(ehr.patches.len(), 1);
            assert_eq!(ehr.patches[0][1]["value"], "accepted");
            assert_eq!(ehr.patches[0][1]["path"], "/participant/1/status");
            assert_eq!(ehr.created.len(), 1, "created once");
            let (kind, condition, r) = &ehr.created[0];
            assert_eq!(kind, "AppointmentResponse");
            assert_eq!(
                condition.as_deref(),
                Some("identifier=urn:medrelay:reply|42")
            );
            assert_eq!(r["participantStatus"], "declined");
            assert_eq!(r["appointment"]["reference"], "Appointment/ag-1");
            assert_eq!(r["actor"]["reference"], "Patient/p-1");
            assert!(
                r["comment"]
                    .as_str()
                    .unwrap()
                    .starts_with("reschedule-requested")
            );
            assert!(!r.to_string().contains("tentative"));
        }
        // Configured as a Task for staff.
        let tasks = Arc::new(
            FhirWriteBack::new(server, None, tokio::runtime::Handle::current())
                .with_reschedule_as(RescheduleAs::Task),
        );
        write(tasks, batch(2, &[(43, ReplyAction::Reschedule)])).await;
        let ehr = ehr.lock().unwrap();
        let (kind, _, task) = &ehr.created[1];
        assert_eq!(kind, "Task");
        assert_eq!(
            (task["status"].as_str(), task["intent"].as_str()),
            (Some("requested"), Some("order"))
        );
        assert_eq!(task["focus"]["reference"], "Appointment/ag-1");
        assert_eq!(task["for"]["reference"], "Patient/p-1");
        assert_eq!(task["code"]["coding"][0]["code"], "reschedule");
    }
}
