//! The after-pass alerts (issue 16): a feed whose quarantine grows fast, and an opt-out rate above
//! the threshold. Each fires once per incident, resolves once when the condition ends, and names
//! no patient (canary values in the quarantined rows and the patients' texts).

mod lifecycle_common;

use jiff::SignedDuration;
use lifecycle_common::{Harness, event, ny, phone};
use medrelay_mapping::model::AppointmentStatus;
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::ingest::Rejected;
use medrelay_pipeline::watch::{OPT_OUT_RATE_ALERT, QUARANTINE_GROWING_ALERT, Thresholds, check};

const CANARY: &str = "Zebulon Canary-Patient";

/// `(kind, detail, resolved)` of every alert of `kind`, oldest first.
async fn alerts(h: &Harness, kind: &str) -> Vec<(String, bool)> {
    let mut all = h.store.recent_alerts(100).await.unwrap();
    all.reverse();
    all.into_iter()
        .filter(|a| a.kind == kind)
        .map(|a| {
            assert!(
                !a.detail.contains(CANARY) && !a.detail.contains("2127365"),
                "{a:?}"
            );
            (a.detail, a.resolved_at.is_some())
        })
        .collect()
}

fn bad_row(n: usize) -> Rejected {
    Rejected {
        location: format!("export.csv:{n}"),
        column: Some("startdate".into()),
        reason: "start date is not a date".into(),
        raw: format!("{n},{CANARY},+1 212 736 5{n:03},13/45/2026").into_bytes(),
        filler_id: None,
    }
}

#[tokio::test]
async fn a_growing_quarantine_alerts_once_and_recovers_when_the_hour_passes() {
    let t0 = ny("2026-12-07T06:00");
    let h = Harness::new(t0).await;
    let t = Thresholds {
        quarantine_per_hour: Some(5),
        opt_out_rate: None,
        ..Thresholds::default()
    };
    let feeds = ["csv".to_string(), "hl7".to_string()];
    // Five bad rows: at the threshold, not above it.
    let rows: Vec<Rejected> = (0..5).map(bad_row).collect();
    h.service
        .ingest
        .accept(None, "csv", t0, &[], &rows, false)
        .await
        .unwrap();
    check(&h.store, &t, &feeds, t0).await.unwrap();
    assert!(alerts(&h, QUARANTINE_GROWING_ALERT).await.is_empty());
    // One more: fires, for that feed only, once however often it is checked.
    h.service
        .ingest
        .accept(None, "csv", t0, &[], &[bad_row(5)], false)
        .await
        .unwrap();
    for _ in 0..3 {
        check(&h.store, &t, &feeds, t0 + SignedDuration::from_mins(1))
            .await
            .unwrap();
    }
    let fired = alerts(&h, QUARANTINE_GROWING_ALERT).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(
        fired[0]
            .0
            .starts_with("feed csv: 6 inputs quarantined in the last hour (threshold 5)"),
        "{fired:?}"
    );
    assert!(!fired[0].1);
    // An hour later nothing new came: resolved, once.
    for _ in 0..2 {
        check(&h.store, &t, &feeds, t0 + SignedDuration::from_mins(61))
            .await
            .unwrap();
    }
    let after = alerts(&h, QUARANTINE_GROWING_ALERT).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].1, "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_rate_above_the_threshold_alerts_once_and_recovers() {
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::new(t0).await;
    let t = Thresholds {
        quarantine_per_hour: None,
        opt_out_rate: Some(0.2),
        opt_out_window: SignedDuration::from_hours(7 * 24),
        opt_out_min_contacts: 5,
        ..Thresholds::default()
    };
    // Five patients get their booking confirmation.
    let v = t0 - SignedDuration::from_hours(1);
    let events: Vec<_> = (0..5)
        .map(|n| {
            event(
                "emr",
                &format!("O{n}"),
                n,
                AppointmentStatus::Booked,
                ny("2026-12-09T12:00"),
                v,
                1,
            )
        })
        .collect();
    h.deliver("csv", &events).await;
    h.settle().await;
    assert_eq!(h.sim.sent().len(), 5);
    // One STOP: 20 %, not above the threshold.
    h.sim.patient_texts(&phone(0), "STOP");
    h.settle().await;
    check(&h.store, &t, &[], h.clock.now()).await.unwrap();
    assert!(alerts(&h, OPT_OUT_RATE_ALERT).await.is_empty());
    // A second: 40 %. Fires once.
    h.sim.patient_texts(&phone(1), "STOP");
    h.settle().await;
    for _ in 0..2 {
        check(&h.store, &t, &[], h.clock.now()).await.unwrap();
    }
    let fired = alerts(&h, OPT_OUT_RATE_ALERT).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(
        fired[0].0.starts_with("opt-out rate: 40.0 % of the 5 patients messaged in the last 7 days opted out (2; threshold 20.0 %)"),
        "{fired:?}"
    );
    // Eight days on, the window holds neither: resolved once.
    h.clock.set(t0 + SignedDuration::from_hours(8 * 24));
    for _ in 0..2 {
        check(&h.store, &t, &[], h.clock.now()).await.unwrap();
    }
    let after = alerts(&h, OPT_OUT_RATE_ALERT).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].1, "resolved: {after:?}");
}

/// A status webhook for job `job`'s message (its stored wamid), as Meta sends it.
async fn status_of(h: &Harness, job: i64, status: &str, code: Option<i64>) -> Vec<u8> {
    use medrelay_pipeline::whatsapp::webhook::{BusinessNumber, StatusUpdate, status_webhook};
    let wamid = h.store.job_ref(job).await.unwrap().unwrap().wamid.unwrap();
    let business = BusinessNumber {
        waba_id: "1".into(),
        phone_number_id: "2".into(),
        display_phone_number: "15550100000".into(),
    };
    status_webhook(
        &business,
        &StatusUpdate {
            wamid,
            status: status.into(),
            timestamp: h.clock.now().as_second(),
            recipient_id: "12127365100".into(),
            error_code: code,
            callback: Some(format!("job:{job}")),
            pricing: None,
        },
    )
    .to_string()
    .into_bytes()
}

/// WhatsApp accepted messages and then failed them with a template-level error (132001): one
/// `delivery_failed` for the template however many of its messages fail, resolved by the
/// template's next delivered message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_whose_messages_fail_after_acceptance_alerts_once_and_recovers_at_the_next_delivery()
 {
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::new(t0).await;
    let v = t0 - SignedDuration::from_hours(1);
    let book = |n: usize| {
        event(
            "emr",
            &format!("D{n}"),
            n,
            AppointmentStatus::Booked,
            ny("2026-12-09T12:00"),
            v,
            1,
        )
    };
    h.deliver("csv", &[book(0), book(1)]).await;
    h.settle().await;
    let jobs: Vec<i64> = h.sim.sent().iter().map(lifecycle_common::job_of).collect();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        let body = status_of(&h, *job, "failed", Some(132001)).await;
        h.service.inbound.deliver(&body).await.unwrap();
    }
    let fired = alerts(&h, "delivery_failed").await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(fired[0].0.starts_with("template `booked`:"), "{fired:?}");
    assert!(!fired[0].1);
    // The next booking's confirmation (same template) is delivered: resolved, once.
    h.deliver("csv", &[book(2)]).await;
    h.settle().await;
    let after = alerts(&h, "delivery_failed").await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].1, "resolved: {after:?}");
}

/// The Subscription counter's rules: the first status is the baseline, re-deliveries and
/// heartbeats that match are no gap, a jump in event numbers or a heartbeat ahead of them is.
#[tokio::test]
async fn a_subscription_counter_jump_is_a_gap_and_a_redelivery_is_not() {
    use medrelay_pipeline::store::subscriptions::EventGap;
    let h = Harness::new(ny("2026-12-07T10:00")).await;
    let now = h.clock.now();
    let heard = |events: Vec<u64>, since: Option<u64>| {
        let store = h.store.clone();
        async move {
            store
                .subscription_heard("fhir", "Subscription/1", &events, since, now)
                .await
                .unwrap()
        }
    };
    assert_eq!(heard(vec![12], Some(12)).await, None, "baseline");
    assert_eq!(heard(vec![13], Some(13)).await, None);
    assert_eq!(heard(vec![13], Some(13)).await, None, "a re-delivery");
    assert_eq!(
        heard(vec![], Some(13)).await,
        None,
        "a heartbeat that agrees"
    );
    assert_eq!(
        heard(vec![16], Some(16)).await,
        Some(EventGap {
            first: 14,
            last: 15
        })
    );
    assert_eq!(
        heard(vec![], Some(18)).await,
        Some(EventGap {
            first: 17,
            last: 18
        }),
        "a heartbeat ahead of the events"
    );
    assert_eq!(
        heard(vec![12], Some(12)).await,
        None,
        "an old event re-sent"
    );
    assert_eq!(heard(vec![19, 20], Some(20)).await, None);
}
