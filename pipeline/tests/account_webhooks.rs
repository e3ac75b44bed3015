//! WhatsApp's account webhooks (issue 16): `message_template_status_update`,
//! `template_category_update` and `phone_number_quality_update`. A configured template that
//! WhatsApp pauses is held (its steps wait, nothing fails) and released when it is approved again;
//! a recategorisation away from UTILITY alerts and, under the `halt` policy, holds; a number's
//! quality drop alerts. Each alert fires once per incident (Meta repeats webhooks), recovers once,
//! and names no patient.

mod lifecycle_common;

use jiff::SignedDuration;
use lifecycle_common::{Harness, compiled, event, ny, phone};
use medrelay_mapping::model::AppointmentStatus;
use medrelay_pipeline::config::RecategorisedPolicy;
use medrelay_pipeline::inbound::{
    NUMBER_QUALITY_ALERT, TEMPLATE_CATEGORY_ALERT, TEMPLATE_STATUS_ALERT,
};
use medrelay_pipeline::store::alerts::AlertNotice;
use medrelay_pipeline::whatsapp::webhook::{AccountEvent, BusinessNumber, account_webhook};

fn business() -> BusinessNumber {
    BusinessNumber {
        waba_id: "1".into(),
        phone_number_id: "2".into(),
        display_phone_number: "15550100000".into(),
    }
}

async fn account(h: &Harness, event: AccountEvent) {
    let body = account_webhook(&business(), &event).to_string();
    let report = h.service.inbound.deliver(body.as_bytes()).await.unwrap();
    assert_eq!(report.account_events, 1);
}

fn status(name: &str, event: &str) -> AccountEvent {
    AccountEvent::TemplateStatus {
        name: name.into(),
        language: "en_US".into(),
        event: event.into(),
        reason: Some("NONE".into()),
    }
}

fn category(name: &str, previous: &str, new: &str) -> AccountEvent {
    AccountEvent::TemplateCategory {
        name: name.into(),
        language: "en_US".into(),
        previous: Some(previous.into()),
        new: new.into(),
        upcoming: None,
        effective_at: None,
    }
}

/// Patient 0 books Wednesday 12:00 (an hour before `t0`): a confirmation is due at once.
async fn book_patient_0(h: &Harness, t0: jiff::Timestamp) {
    let v = t0 - SignedDuration::from_hours(1);
    let e = event(
        "emr",
        "A0",
        0,
        AppointmentStatus::Booked,
        ny("2026-12-09T12:00"),
        v,
        1,
    );
    h.deliver("csv", &[e]).await;
}

/// The alert notices owed to the sink now, consumed (as the sink would take them).
async fn notices(h: &Harness) -> Vec<AlertNotice> {
    let now = h.clock.now();
    let due = h.store.due_alert_notices(now, 100).await.unwrap();
    for n in &due {
        h.store.alert_notified(n, now).await.unwrap();
    }
    for n in &due {
        // Canaries: the patient's name, phone and the clinic never reach an alert.
        for secret in ["Pat0", &phone(0)[1..], "Midtown"] {
            assert!(!n.detail.contains(secret), "{}", n.detail);
        }
    }
    due
}

use medrelay_pipeline::clock::Clock;

#[tokio::test]
async fn paused_template_holds_its_steps_until_approved_and_alerts_once() {
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::new(t0).await;
    account(&h, status("booked", "PAUSED")).await;
    book_patient_0(&h, t0).await;
    h.settle().await;
    assert!(h.sim.sent().is_empty(), "the confirmation waits");
    // Meta delivers the same webhook again: nothing new fires.
    account(&h, status("booked", "PAUSED")).await;
    let fired = notices(&h).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].kind, TEMPLATE_STATUS_ALERT);
    assert!(
        fired[0]
            .detail
            .contains("template booked (en_US): WhatsApp says PAUSED")
    );
    assert!(!fired[0].is_recovery());

    // A template this installation does not use changes nothing.
    account(&h, status("someone_elses_template", "DISABLED")).await;
    assert!(notices(&h).await.is_empty());

    account(&h, status("booked", "APPROVED")).await;
    h.clock.set(t0 + SignedDuration::from_mins(6));
    h.settle().await;
    let sent = h.sim.sent();
    assert_eq!(sent.len(), 1, "sent once released");
    assert_eq!(sent[0]["template"]["name"], "booked");
    let recovered = notices(&h).await;
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].is_recovery() && recovered[0].kind == TEMPLATE_STATUS_ALERT);
}

#[tokio::test]
async fn recategorised_template_alerts_and_holds_only_under_the_halt_policy() {
    let t0 = ny("2026-12-07T10:00");
    for policy in [RecategorisedPolicy::Warn, RecategorisedPolicy::Halt] {
        let mut config = compiled();
        config.on_recategorised = policy;
        let h = Harness::with_config(t0, config).await;
        account(&h, category("booked", "UTILITY", "MARKETING")).await;
        book_patient_0(&h, t0).await;
        h.settle().await;
        let fired = notices(&h).await;
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].kind, TEMPLATE_CATEGORY_ALERT);
        assert!(
            fired[0]
                .detail
                .contains("recategorised UTILITY -> MARKETING")
                && fired[0].detail.contains("131049"),
            "{}",
            fired[0].detail
        );
        let expected_sent = usize::from(policy == RecategorisedPolicy::Warn);
        assert_eq!(h.sim.sent().len(), expected_sent, "{policy:?}");
        // Moved back to UTILITY: released and recovered.
        account(&h, category("booked", "MARKETING", "UTILITY")).await;
        h.clock.set(t0 + SignedDuration::from_mins(6));
        h.settle().await;
        assert_eq!(h.sim.sent().len(), 1, "{policy:?}");
        let recovered = notices(&h).await;
        assert_eq!(recovered.len(), 1, "{recovered:?}");
        assert!(recovered[0].is_recovery());
    }
}

#[tokio::test]
async fn announced_recategorisation_warns_before_it_happens() {
    let h = Harness::new(ny("2026-12-07T10:00")).await;
    account(
        &h,
        AccountEvent::TemplateCategory {
            name: "reminder".into(),
            language: "en_US".into(),
            previous: None,
            new: "UTILITY".into(),
            upcoming: Some("MARKETING".into()),
            effective_at: Some(1_796_000_000),
        },
    )
    .await;
    let fired = notices(&h).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(
        fired[0]
            .detail
            .contains("will recategorise it UTILITY -> MARKETING at 2026-"),
        "{}",
        fired[0].detail
    );
}

#[tokio::test]
async fn number_quality_drop_alerts_once_and_recovers_once() {
    let mut config = compiled();
    config.messaging_limit = Some(2000);
    let h = Harness::with_config(ny("2026-12-07T10:00"), config).await;
    let quality = |event: &str, limit: &str| AccountEvent::NumberQuality {
        display_phone_number: "15550100000".into(),
        event: event.into(),
        limit: Some(limit.into()),
    };
    account(&h, quality("DOWNGRADE", "TIER_250")).await;
    account(&h, quality("FLAGGED", "TIER_250")).await;
    let fired = notices(&h).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].kind, NUMBER_QUALITY_ALERT);
    assert!(
        fired[0]
            .detail
            .contains("DOWNGRADE, messaging limit TIER_250")
            && fired[0].detail.contains("whatsapp.messaging_limit is 2000"),
        "{}",
        fired[0].detail
    );
    // The stated tier is now the one the sender spends (it beats the configured 2000).
    let reported = h.store.reported_messaging_limit().await.unwrap().unwrap();
    assert_eq!(
        (reported.limit, reported.source.as_str()),
        (Some(250), "webhook")
    );
    account(&h, quality("UPGRADE", "TIER_2K")).await;
    let recovered = notices(&h).await;
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].is_recovery());
    let reported = h.store.reported_messaging_limit().await.unwrap().unwrap();
    assert_eq!(reported.limit, Some(2000));
    account(&h, quality("UPGRADE", "TIER_UNLIMITED")).await;
    let reported = h.store.reported_messaging_limit().await.unwrap().unwrap();
    assert_eq!(reported.limit, None, "unlimited");
}

/// Another process's sender (a restart) over its own simulator of the account: `registry` is
/// what the account has, `failing` a patient number and the code every send to it gets.
fn sender_over(
    h: &Harness,
    registry: std::collections::BTreeMap<
        String,
        medrelay_pipeline::whatsapp::simulator::SimTemplate,
    >,
    failing: Option<(&str, i64)>,
) -> medrelay_pipeline::send::Sender {
    use medrelay_pipeline::whatsapp::WhatsAppTransport;
    use medrelay_pipeline::whatsapp::simulator::{Simulator, SimulatorConfig};
    use std::sync::Arc;
    let config: SimulatorConfig =
        toml::from_str("reply_mix = { confirm = 0, cancel = 0, reschedule = 0 }\nblocklist = []")
            .unwrap();
    let sim = Arc::new(Simulator::new(
        config,
        registry,
        business(),
        b"test-app-secret",
        h.clock.clone() as Arc<dyn Clock>,
    ));
    if let Some((to, code)) = failing {
        sim.fail_with(to, code);
    }
    medrelay_pipeline::send::Sender::new(
        h.store.clone(),
        h.compiled.clone(),
        sim as Arc<dyn WhatsAppTransport>,
        h.clock.clone() as Arc<dyn Clock>,
    )
}

/// A sender over a simulator whose account has no templates at all (every send is 132001).
fn sender_without_templates(h: &Harness) -> medrelay_pipeline::send::Sender {
    sender_over(h, Default::default(), None)
}

#[tokio::test]
async fn template_halted_fires_once_across_restarts_and_recovers_at_the_next_good_send() {
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::new(t0).await;
    book_patient_0(&h, t0).await;
    h.service.scheduler.plan_pending().await.unwrap();
    // Two processes in turn (a restart between), both against an account without the templates:
    // the second fires nothing new.
    let mut fired = Vec::new();
    // (Minute 61: the halted steps are due again, nothing else is yet.)
    for minutes in [0, 61] {
        h.clock.set(t0 + SignedDuration::from_mins(minutes));
        let report = sender_without_templates(&h).send_due(10).await.unwrap();
        assert!(
            report.claimed >= 1 && report.retried == report.claimed,
            "{report:?}"
        );
        fired.push(notices(&h).await);
    }
    assert!(
        fired[1].is_empty(),
        "one incident per template: {:?}",
        fired[1]
    );
    assert!(!fired[0].is_empty());
    assert!(
        fired[0]
            .iter()
            .all(|n| n.kind == "template_halted" && !n.is_recovery())
    );
    assert!(
        fired[0]
            .iter()
            .any(|n| n.detail.starts_with("template `booked` halted: ")),
        "{:?}",
        fired[0]
    );
    // The templates exist again (the real account): the next sends go through and recover.
    h.clock.set(t0 + SignedDuration::from_mins(125));
    let report = h.service.sender.send_due(10).await.unwrap();
    assert!(report.sent >= 1, "{report:?}");
    let recovered = notices(&h).await;
    assert!(
        recovered
            .iter()
            .any(|n| n.is_recovery() && n.detail.starts_with("template `booked` halted: ")),
        "{recovered:?}"
    );
    assert!(recovered.iter().all(|n| n.is_recovery()), "{recovered:?}");
}

/// A sender whose account is blocked (every send answers 131048, spam rate limit: all sending
/// halts until a restart).
fn sender_of_a_blocked_account(h: &Harness) -> medrelay_pipeline::send::Sender {
    sender_over(h, h.sim.registry().clone(), Some((&phone(0), 131048)))
}

#[tokio::test]
async fn sending_halted_fires_once_across_restarts_and_recovers_at_the_first_send_after_one() {
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::new(t0).await;
    book_patient_0(&h, t0).await;
    h.service.scheduler.plan_pending().await.unwrap();
    // Two processes in turn, both blocked: one incident.
    for minutes in [0, 61] {
        h.clock.set(t0 + SignedDuration::from_mins(minutes));
        let report = sender_of_a_blocked_account(&h).send_due(10).await.unwrap();
        assert!(report.halted, "{report:?}");
    }
    let fired = notices(&h).await;
    let halted: Vec<&AlertNotice> = fired
        .iter()
        .filter(|n| n.kind == "sending_halted")
        .collect();
    assert_eq!(halted.len(), 1, "{fired:?}");
    assert!(!halted[0].is_recovery());
    assert!(
        halted[0].detail.starts_with("all sending halted: "),
        "{halted:?}"
    );
    for canary in ["Pat0", "2127365", "+1"] {
        assert!(!halted[0].detail.contains(canary), "{canary}: {halted:?}");
    }
    // The block is lifted (a restart with a working account): the first send recovers it.
    h.clock.set(t0 + SignedDuration::from_mins(125));
    let report = h.service.sender.send_due(10).await.unwrap();
    assert!(report.sent >= 1, "{report:?}");
    let recovered = notices(&h).await;
    assert!(
        recovered
            .iter()
            .any(|n| n.kind == "sending_halted" && n.is_recovery()),
        "{recovered:?}"
    );
}
