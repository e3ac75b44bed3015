//! The KPI report (issue 16) on a seeded database whose answers are known: six bookings, two
//! taps, an opt-out, an EHR opt-out and two no-shows, reported as counted by hand, and costed
//! with a price list.

mod lifecycle_common;

use jiff::SignedDuration;
use lifecycle_common::{Harness, event, ny, phone};
use medrelay_mapping::model::{AppointmentStatus, EhrConsent};
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::costs::RateTable;
use medrelay_pipeline::store::report::ReportGroup;
use medrelay_pipeline::whatsapp::simulator::PatientAction;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_on_a_seeded_day_equals_the_hand_counted_figures() {
    // Monday 10:00 New York: six visits booked for Wednesday 12:00.
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::new(t0).await;
    let start = ny("2026-12-09T12:00");
    let v = t0 - SignedDuration::from_hours(1);
    let mut events: Vec<_> = (1..=6)
        .map(|n| {
            event(
                "emr",
                &format!("K{n}"),
                n,
                AppointmentStatus::Booked,
                start,
                v,
                1,
            )
        })
        .collect();
    // Patient 6 said no to WhatsApp in the EHR: never messaged.
    events[5].appointment.ehr_consent = Some(EhrConsent::OptOut);
    // Each gets the booking confirmation, then the 48 h reminder (with Confirm / Cancel), to
    // which: 1 confirms, 2 cancels, 3 and 5 say nothing, 4 answers STOP.
    let answers = [
        PatientAction::Tap("confirm".into()),
        PatientAction::Tap("cancel".into()),
        PatientAction::Ignore,
        PatientAction::Text("STOP".into()),
        PatientAction::Ignore,
    ];
    for (n, a) in (1..=5).zip(answers) {
        // Scripts answer messages with buttons: the reminder (the confirmation has none).
        h.sim.script(&phone(n), [a]);
    }
    h.deliver("csv", &events).await;
    h.settle().await;
    h.clock.set(ny("2026-12-07T12:05"));
    h.settle().await;
    // After the visit the EHR marks 5 and 6 no-shows (no pass runs after that).
    h.clock.set(ny("2026-12-09T15:00"));
    let later = h.clock.now() - SignedDuration::from_mins(1);
    let no_shows: Vec<_> = [5, 6]
        .iter()
        .map(|&n| {
            let mut e = event(
                "emr",
                &format!("K{n}"),
                n,
                AppointmentStatus::Noshow,
                start,
                later,
                2,
            );
            if n == 6 {
                e.appointment.ehr_consent = Some(EhrConsent::OptOut);
            }
            e
        })
        .collect();
    h.deliver("csv", &no_shows).await;
    // The price list: +1 numbers have their own utility price, marketing only a default one.
    let rates: RateTable = toml::from_str(
        r#"
        currency = "USD"
        [rates.default]
        utility = 0.004
        marketing = 0.025
        [rates.1]
        utility = 0.0034
        "#,
    )
    .unwrap();

    let rows = h
        .store
        .kpi_report(
            ny("2026-12-09T00:00"),
            ny("2026-12-10T00:00"),
            ReportGroup::All,
            Some(&rates),
        )
        .await
        .unwrap();
    let [r] = rows.as_slice() else {
        panic!("{rows:?}")
    };
    assert_eq!(r.appointments, 6);
    assert_eq!(r.messaged, 5);
    assert_eq!(r.not_messaged, 1);
    // A confirmation and a 48 h reminder for each of the five.
    assert_eq!(r.messages_sent, 10);
    assert_eq!(r.confirmed, 1);
    assert_eq!(r.cancelled_via_whatsapp, 1);
    assert_eq!(r.reschedule_requests, 0);
    assert_eq!(r.confirmation_rate, Some(0.2));
    assert_eq!(r.opt_outs, 1);
    assert_eq!(r.opt_out_rate, Some(0.2));
    assert_eq!(r.reminded, 5);
    assert_eq!(r.no_show_reminded, 1);
    assert_eq!(r.no_show_rate_reminded, Some(0.2));
    assert_eq!(r.no_show_not_messaged, 1);
    assert_eq!(r.no_show_rate_not_messaged, Some(1.0));
    // The simulator's patients tap a minute after the message.
    assert_eq!(r.reply_seconds_median, Some(60.0));
    assert_eq!(r.reply_seconds_p90, Some(60.0));
    // Pricing from the status webhooks: all ten are utility templates sent outside a customer
    // service window (each patient answered only the last one), so all are billable at the +1
    // price: 10 x 0.0034, and one confirmed appointment carries it all.
    assert_eq!(r.messages_by_category.get("utility"), Some(&10));
    assert_eq!(r.billable_messages, 10);
    assert_eq!(r.unpriced_billable, 0);
    let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    assert!(near(r.cost, 0.034), "{:?}", r.cost);
    assert!(
        near(r.cost_by_category.get("utility").copied(), 0.034),
        "{:?}",
        r.cost_by_category
    );
    assert!(
        near(r.cost_per_confirmed, 0.034),
        "{:?}",
        r.cost_per_confirmed
    );
    // Reconciles with status: delivered and read by the messages' latest status.
    let s = h.store.status_summary(h.clock.now()).await.unwrap();
    let by = |k: &str| s.messages_by_status.get(k).copied().unwrap_or(0);
    assert_eq!(r.messages_read, by("read"));
    assert_eq!(r.messages_delivered, by("delivered") + by("read"));
    assert_eq!(r.messages_failed, by("failed"));
    assert_eq!(r.messages_sent, s.messages_by_status.values().sum::<i64>());

    // By site: the same single group; another period: nothing.
    let by_site = h
        .store
        .kpi_report(
            ny("2026-12-09T00:00"),
            ny("2026-12-10T00:00"),
            ReportGroup::Site,
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_site.len(), 1);
    assert_eq!(by_site[0].group, "ny");
    assert_eq!(by_site[0].confirmed, 1);
    assert_eq!(by_site[0].cost, None, "no rate table, no cost");
    // By template: the five messaged appointments under their first template (the booking
    // confirmation), with all ten messages; the one never messaged under `(none)`.
    let by_template = h
        .store
        .kpi_report(
            ny("2026-12-09T00:00"),
            ny("2026-12-10T00:00"),
            ReportGroup::Template,
            None,
        )
        .await
        .unwrap();
    let groups: Vec<(&str, i64, i64)> = by_template
        .iter()
        .map(|r| (r.group.as_str(), r.appointments, r.messages_sent))
        .collect();
    assert_eq!(groups, [("(none)", 1, 0), ("booked", 5, 10)]);
    let empty = h
        .store
        .kpi_report(
            ny("2026-12-10T00:00"),
            ny("2026-12-11T00:00"),
            ReportGroup::All,
            None,
        )
        .await
        .unwrap();
    assert!(empty.is_empty(), "{empty:?}");
}
