//! Shared fixtures for the lifecycle tests: a pipeline over a temporary SQLite file, the in-process
//! WhatsApp simulator and a manual clock (no sleeping), and appointment events built in code.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::model::{
    Appointment, AppointmentEvent, AppointmentKey, AppointmentStatus, ContactPhone, EhrConsent,
    Patient, PhoneUse, SourceVersion,
};
use medrelay_mapping::phi::Phi;
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::config::{Compiled, PipelineConfig};
use medrelay_pipeline::keys::Keys;
use medrelay_pipeline::service::Service;
use medrelay_pipeline::store::Store;
use medrelay_pipeline::whatsapp::WhatsAppTransport;
use medrelay_pipeline::whatsapp::simulator::{SimTemplate, Simulator, SimulatorConfig};
use medrelay_pipeline::whatsapp::webhook::BusinessNumber;

/// The site every test appointment belongs to: New York, so plans cross both DST changes.
pub const ZONE: &str = "America/New_York";

/// A plan with every step kind, quiet hours and a 1 h minimum lead.
pub const CONFIG: &str = r#"
[sites.ny]
time_zone = "America/New_York"
default_region = "US"
phone = "+1 212-736-5000"
date_format = "%m/%d/%Y"
time_format = "%H:%M"
quiet_hours = "21:00-08:00"
min_lead = "1h"

[sites.sp]
time_zone = "America/Sao_Paulo"
default_region = "BR"
phone = "+55 11 3003-0000"

[[plan.steps]]
name = "booking_confirmation"
kind = "confirmation"
template = "booked"

[[plan.steps]]
name = "reminder_48h"
kind = "reminder"
offset = "48h"
template = "reminder"

[[plan.steps]]
name = "reminder_2h"
kind = "reminder"
offset = "2h"
template = "reminder"

[[plan.steps]]
name = "follow_up_24h"
kind = "follow_up"
offset = "24h"
template = "follow_up"

[[plan.steps]]
name = "no_show_2h"
kind = "no_show"
offset = "2h"
template = "missed"

[[plan.steps]]
name = "fasting_24h"
kind = "reminder"
offset = "24h"
template = "reminder"
sites = ["ny"]
service_types = ["Lab Draw"]

[templates.booked]
name = "booked"
languages = ["en_US"]
body = ["given_name", "local_date", "local_time"]

[templates.reminder]
name = "reminder"
languages = ["en_US"]
body = ["given_name", "local_date", "local_time"]
buttons = ["confirm", "cancel"]

[templates.follow_up]
name = "follow_up"
languages = ["en_US"]
body = ["given_name", "site_phone"]

[templates.missed]
name = "missed"
languages = ["en_US"]
body = ["given_name", "site_phone"]
"#;

/// A running pipeline for one test case.
pub struct Harness {
    pub service: Service,
    pub store: Store,
    pub sim: Arc<Simulator>,
    pub clock: Arc<ManualClock>,
    pub compiled: Arc<Compiled>,
    _dir: tempfile::TempDir,
}

/// A temporary folder on a RAM disk when there is one (property tests open many databases).
fn temp_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(&shm)
    {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

/// The compiled test configuration.
pub fn compiled() -> Compiled {
    let config: PipelineConfig = toml::from_str(CONFIG).expect("config parses");
    config.compile().expect("config compiles")
}

impl Harness {
    /// A fresh database, simulator (patients never answer) and a clock stopped at `now`.
    pub async fn new(now: Timestamp) -> Harness {
        Harness::with_config(now, compiled()).await
    }

    /// Like [`Harness::new`], with this compiled configuration.
    pub async fn with_config(now: Timestamp, compiled: Compiled) -> Harness {
        let dir = temp_dir();
        let store = medrelay_pipeline::store::testing::open(
            &dir.path().join("t.db"),
            Keys::from_secret(&[7u8; 32]),
        )
        .await
        .expect("store opens");
        let compiled = Arc::new(compiled);
        let clock = Arc::new(ManualClock::new(now));
        let registry: BTreeMap<String, SimTemplate> = compiled
            .templates
            .values()
            .map(|t| {
                (
                    t.name.clone(),
                    SimTemplate {
                        languages: t.languages.clone(),
                        body_parameters: t.body.len(),
                        header_parameters: usize::from(t.header.is_some()),
                        buttons: t.buttons.iter().map(|b| b.name()).collect(),
                        ttl_seconds: None,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let sim_config: SimulatorConfig = toml::from_str(
            "reply_mix = { confirm = 0, cancel = 0, reschedule = 0, good = 0, ok = 0, poor = 0 }\nblocklist = []",
        )
        .expect("simulator config");
        let sim = Arc::new(Simulator::new(
            sim_config,
            registry,
            BusinessNumber {
                waba_id: "1".into(),
                phone_number_id: "2".into(),
                display_phone_number: "15550100000".into(),
            },
            b"test-app-secret",
            clock.clone() as Arc<dyn Clock>,
        ));
        let transport: Arc<dyn WhatsAppTransport> = sim.clone();
        let service = Service::new(
            store.clone(),
            compiled.clone(),
            transport,
            Some(sim.clone()),
            Vec::new(),
            clock.clone() as Arc<dyn Clock>,
        );
        Harness {
            service,
            store,
            sim,
            clock,
            compiled,
            _dir: dir,
        }
    }

    /// Ticks until nothing is left to do (bounded, so a bug cannot hang the test).
    pub async fn settle(&self) {
        for _ in 0..20 {
            if self.service.tick(50).await.expect("tick").is_idle() {
                return;
            }
        }
        panic!("the service did not settle in 20 ticks");
    }

    /// Delivers events from `feed` (a delta, as of now).
    pub async fn deliver(&self, feed: &str, events: &[AppointmentEvent]) {
        self.service
            .ingest
            .accept(None, feed, self.clock.now(), events, &[], false)
            .await
            .expect("accept");
    }
}

/// A civil time in New York (the tests' site zone) as an instant.
pub fn ny(civil: &str) -> Timestamp {
    civil
        .parse::<jiff::civil::DateTime>()
        .expect("a civil datetime")
        .in_tz(ZONE)
        .expect("the zone")
        .timestamp()
}

/// The test phone of patient `n` (digits as WhatsApp gets them: `1212736510n`).
pub fn phone(n: usize) -> String {
    format!("+1212736{:04}", 5100 + n)
}

/// An appointment event of `system`/`id` for patient `n`.
#[allow(clippy::too_many_arguments)]
pub fn event(
    system: &str,
    id: &str,
    n: usize,
    status: AppointmentStatus,
    start: Timestamp,
    at: Timestamp,
    seq: i64,
) -> AppointmentEvent {
    AppointmentEvent {
        appointment: Appointment {
            key: AppointmentKey {
                source: system.into(),
                id: id.into(),
            },
            placer_id: None,
            status,
            start,
            end: Some(start + SignedDuration::from_mins(30)),
            time_unknown: false,
            site: "ny".into(),
            time_zone: ZONE.into(),
            location: Some("Midtown Test Clinic".into()),
            practitioner: None,
            service_type: Some(Phi::new("Office Visit".into())),
            reason: None,
            patient: Patient {
                id: Some(Phi::new(format!("P{n}"))),
                given_name: Some(Phi::new(format!("Pat{n}"))),
                family_name: None,
                phones: vec![ContactPhone {
                    e164: Some(Phi::new(phone(n))),
                    unusable: None,
                    use_: PhoneUse::Mobile,
                    rank: 0,
                }],
                preferred_language: Some("en".into()),
                protected: None,
            },
            ehr_consent: Some(EhrConsent::OptIn),
        },
        version: SourceVersion { at, seq },
        raw_ref: format!("test:{seq}"),
        message_id: None,
    }
}

/// `start` as the templates render it in the site zone: (local_date, local_time).
pub fn rendered(start: Timestamp) -> (String, String) {
    let z = start.to_zoned(jiff::tz::TimeZone::get(ZONE).expect("zone"));
    (
        z.strftime("%m/%d/%Y").to_string(),
        z.strftime("%H:%M").to_string(),
    )
}

/// The job id in a sent body (`biz_opaque_callback_data = "job:N"`).
pub fn job_of(body: &serde_json::Value) -> i64 {
    body["biz_opaque_callback_data"]
        .as_str()
        .and_then(|s| s.strip_prefix("job:"))
        .and_then(|s| s.parse().ok())
        .expect("callback names the job")
}

/// Body parameter `i` of a sent template.
pub fn param(body: &serde_json::Value, i: usize) -> String {
    body["template"]["components"][0]["parameters"][i]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
