//! Post-visit surveys (issue 15): a survey step after the visit, rated with the template's
//! Good / OK / Poor buttons; inside the window the rating opened, the 0-10 list and a comment;
//! a low answer opens an inbox conversation flagged for follow-up; the KPI report counts it all.
//! In-process simulator playing the patients, manual clock.

mod lifecycle_common;

use jiff::SignedDuration;
use lifecycle_common::{Harness, event, ny, phone};
use medrelay_mapping::model::AppointmentStatus;
use medrelay_mapping::reply::Rating;
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::config::PipelineConfig;
use medrelay_pipeline::store::inbox::{ConversationReason, InboxFilter};
use medrelay_pipeline::store::report::ReportGroup;
use medrelay_pipeline::whatsapp::simulator::PatientAction;
use medrelay_pipeline::whatsapp::webhook::{InboundContent, InboundMessage, message_webhook};
use serde_json::Value;

const CONFIG: &str = r#"
[sites.ny]
time_zone = "America/New_York"
default_region = "US"
phone = "+1 212-736-5000"
reply_sla = "30m"

[[plan.steps]]
name = "booking_confirmation"
kind = "confirmation"
template = "booked"

[[plan.steps]]
name = "survey_2h"
kind = "survey"
offset = "2h"
template = "survey"

[templates.booked]
name = "booked"
languages = ["en_US"]
body = ["given_name", "local_date", "local_time"]

[templates.survey]
name = "visit_survey"
languages = ["en_US"]
body = ["given_name"]
buttons = ["good", "ok", "poor"]

[survey]
low_rating = "poor"
low_score = 6
"#;

/// The digits WhatsApp uses for patient `n`.
fn digits(n: usize) -> String {
    phone(n).trim_start_matches('+').to_string()
}

/// What the simulator was sent to patient `n`, by message type.
fn sent_to(h: &Harness, n: usize) -> Vec<Value> {
    h.sim
        .sent()
        .into_iter()
        .filter(|b| b["to"] == digits(n).as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survey_is_rated_scored_and_commented_and_a_low_answer_reaches_the_inbox() {
    let config: PipelineConfig = toml::from_str(CONFIG).unwrap();
    let compiled = config.compile().unwrap();
    let t0 = ny("2026-12-09T08:00");
    let h = Harness::with_config(t0, compiled).await;
    let start = ny("2026-12-09T10:00");
    let events: Vec<_> = (1..=4)
        .map(|n| {
            event(
                "emr",
                &format!("S{n}"),
                n,
                AppointmentStatus::Booked,
                start,
                t0 - SignedDuration::from_mins(5),
                1,
            )
        })
        .collect();
    // 1 rates Good and 10; 2 rates Poor (low) and 3; 3 rates OK, ignores the list and types 7;
    // 4 rates Good and picks "0-1" (a low score).
    let scripts = [
        vec![
            PatientAction::Tap("good".into()),
            PatientAction::Tap("10".into()),
        ],
        vec![
            PatientAction::Tap("poor".into()),
            PatientAction::Tap("3".into()),
        ],
        vec![PatientAction::Tap("ok".into()), PatientAction::Ignore],
        vec![
            PatientAction::Tap("good".into()),
            PatientAction::Tap("0-1".into()),
        ],
    ];
    for (n, s) in (1..=4).zip(scripts) {
        h.sim.script(&phone(n), s);
    }
    h.deliver("emr", &events).await;
    h.settle().await;
    // The visit ends at 10:30; the survey is due two hours later.
    h.clock.set(ny("2026-12-09T12:29"));
    h.settle().await;
    assert!(
        sent_to(&h, 1)
            .iter()
            .all(|b| b["template"]["name"] != "visit_survey"),
        "not before it is due"
    );
    h.clock.set(ny("2026-12-09T12:31"));
    h.settle().await;
    // A few minutes later (the simulated taps came a minute after each message) they write.
    h.clock.set(ny("2026-12-09T12:40"));
    h.sim.patient_texts(&phone(3), " 7 ");
    h.settle().await;
    h.sim
        .patient_texts(&phone(2), "I waited two hours CANARY-SURVEY-COMMENT");
    h.sim.patient_texts(&phone(1), "Lovely staff");
    h.settle().await;

    // Patient 1: survey template, the 0-10 list (ten rows, the Cloud API's limit), the comment
    // question, the thanks.
    let to1 = sent_to(&h, 1);
    let kinds: Vec<String> = to1
        .iter()
        .map(|b| match b["type"].as_str().unwrap() {
            "template" => b["template"]["name"].as_str().unwrap().to_string(),
            "interactive" => "list".into(),
            _ => b["text"]["body"].as_str().unwrap().to_string(),
        })
        .collect();
    let texts = &h.compiled.reply_texts;
    assert_eq!(
        kinds,
        [
            "booked",
            "visit_survey",
            "list",
            texts.survey_comment.as_str(),
            texts.survey_thanks.as_str()
        ]
    );
    let list = &to1[2]["interactive"];
    assert_eq!(list["type"], "list");
    assert_eq!(list["body"]["text"], texts.survey_score.as_str());
    assert_eq!(
        list["action"]["sections"][0]["rows"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    // The survey's buttons are signed ratings for its job, nothing about the patient.
    let survey_body = &to1[1];
    let job = lifecycle_common::job_of(survey_body);
    let payloads: Vec<&str> = survey_body["template"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "button")
        .map(|c| c["parameters"][0]["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads.len(), 3);
    assert!(payloads[0].starts_with(&format!("v1.{job}.good.")));
    assert!(payloads[2].starts_with(&format!("v1.{job}.poor.")));

    let s1 = h.store.survey_by_job(job).await.unwrap().unwrap();
    assert_eq!(
        (s1.rating, s1.score, s1.low),
        (Rating::Good, Some(10), false)
    );
    assert!(s1.has_comment && s1.awaiting.is_none() && s1.conversation_id.is_none());

    // A second tap on the same survey (Poor this time) changes nothing: the first answer counts.
    let again = InboundMessage {
        id: "wamid.LATE-TAP".into(),
        from: digits(1),
        timestamp: h.clock.now().as_second(),
        context_id: None,
        content: InboundContent::Button {
            payload: payloads[2].to_string(),
        },
    };
    let business = h.sim.business().clone();
    h.service
        .inbound
        .deliver(message_webhook(&business, &again).to_string().as_bytes())
        .await
        .unwrap();
    let s1_after = h.store.survey_by_job(job).await.unwrap().unwrap();
    assert_eq!(s1_after, s1);
    assert_eq!(sent_to(&h, 1).len(), 5, "nothing more asked");

    // Patient 3 typed the score instead of picking it; 4 picked "0-1", which records 0.
    let survey_job = |n: usize| {
        lifecycle_common::job_of(
            sent_to(&h, n)
                .iter()
                .find(|b| b["template"]["name"] == "visit_survey")
                .unwrap(),
        )
    };
    let s3 = h.store.survey_by_job(survey_job(3)).await.unwrap().unwrap();
    assert_eq!((s3.rating, s3.score, s3.low), (Rating::Ok, Some(7), false));
    assert_eq!(s3.awaiting.map(|a| a.as_str()), Some("comment"));
    let s4 = h.store.survey_by_job(survey_job(4)).await.unwrap().unwrap();
    assert_eq!((s4.rating, s4.score, s4.low), (Rating::Good, Some(0), true));

    // The low answers (2: Poor; 4: a score of 0) are inbox conversations about the visit,
    // flagged as surveys, with the site's 30 min SLA running; 1 and 3 are not.
    let s2 = h.store.survey_by_job(survey_job(2)).await.unwrap().unwrap();
    assert_eq!((s2.rating, s2.score, s2.low), (Rating::Poor, Some(3), true));
    let inbox = h
        .store
        .conversations(&InboxFilter::default())
        .await
        .unwrap();
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    for line in &inbox {
        assert_eq!(line.reason, ConversationReason::Survey);
        assert!(line.reply_due_at.is_some());
        assert_eq!(line.site.as_deref(), Some("ny"));
    }
    let c2 = s2
        .conversation_id
        .expect("patient 2's survey opened a conversation");
    assert_eq!(
        s4.conversation_id.map(|c| inbox.iter().any(|l| l.id == c)),
        Some(true)
    );
    let detail = h
        .store
        .open_conversation(c2, "staff:ana", "test", h.clock.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.line.appointment_id, Some(s2.appointment_id));
    let said: Vec<&str> = detail
        .messages
        .iter()
        .map(|m| m.body.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        said,
        [
            "Survey: rated the visit Poor",
            "Survey: 3 of 10 for recommending the clinic",
            "I waited two hours CANARY-SURVEY-COMMENT"
        ]
    );
    // No acknowledgement "a person will answer" for a survey: the patient got the thanks.
    let to2 = sent_to(&h, 2);
    assert_eq!(
        to2.last().unwrap()["text"]["body"],
        texts.survey_thanks.as_str()
    );
    assert!(
        to2.iter()
            .all(|b| b["text"]["body"] != texts.acknowledgement.as_str())
    );

    // The KPI report: four sent, four answered (2 good, 1 ok, 1 poor); scores 10, 3, 7, 0 make
    // one promoter and two detractors of four: NPS -25; two low answers followed up.
    let rows = h
        .store
        .kpi_report(
            ny("2026-12-09T00:00"),
            ny("2026-12-10T00:00"),
            ReportGroup::Site,
            None,
        )
        .await
        .unwrap();
    let [r] = rows.as_slice() else {
        panic!("{rows:?}")
    };
    assert_eq!(r.group, "ny");
    assert_eq!((r.surveys_sent, r.surveys_answered), (4, 4));
    assert_eq!((r.survey_good, r.survey_ok, r.survey_poor), (2, 1, 1));
    assert_eq!(r.survey_response_rate, Some(1.0));
    assert_eq!(r.nps_responses, 4);
    assert_eq!(r.nps, Some(-25.0));
    assert_eq!(r.survey_low, 2);
    // The survey answers are not appointment answers: nothing confirmed, nothing written back.
    assert_eq!(r.confirmed, 0);
    let backlog = h.store.status_summary(h.clock.now()).await.unwrap();
    assert_eq!(
        backlog.replies_by_outcome.get("accepted:confirm"),
        None,
        "{:?}",
        backlog.replies_by_outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survey_is_withdrawn_for_a_cancelled_visit_and_kept_for_a_fulfilled_one() {
    let config: PipelineConfig = toml::from_str(CONFIG).unwrap();
    let h = Harness::with_config(ny("2026-12-09T08:00"), config.compile().unwrap()).await;
    let start = ny("2026-12-09T10:00");
    let v = |m: i64| ny("2026-12-09T08:00") + SignedDuration::from_mins(m);
    let booked: Vec<_> = (1..=2)
        .map(|n| {
            event(
                "emr",
                &format!("W{n}"),
                n,
                AppointmentStatus::Booked,
                start,
                v(-5),
                1,
            )
        })
        .collect();
    h.deliver("emr", &booked).await;
    h.settle().await;
    // During the visit the EHR says: 1 fulfilled, 2 cancelled (the trigger of migration 0022).
    h.clock.set(ny("2026-12-09T10:40"));
    let changed = vec![
        event(
            "emr",
            "W1",
            1,
            AppointmentStatus::Fulfilled,
            start,
            h.clock.now() - SignedDuration::from_mins(1),
            2,
        ),
        event(
            "emr",
            "W2",
            2,
            AppointmentStatus::Cancelled,
            start,
            h.clock.now() - SignedDuration::from_mins(1),
            2,
        ),
    ];
    h.deliver("emr", &changed).await;
    h.settle().await;
    h.clock.set(ny("2026-12-09T12:31"));
    h.settle().await;
    let surveyed = |n: usize| {
        sent_to(&h, n)
            .iter()
            .any(|b| b["template"]["name"] == "visit_survey")
    };
    assert!(surveyed(1), "a fulfilled visit gets its survey");
    assert!(!surveyed(2), "a cancelled one does not");
}
