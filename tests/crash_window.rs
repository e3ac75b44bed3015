//! The crash window between "WhatsApp accepted" and "we recorded it": a job left in `sending` by a
//! crash is not sent again blindly. A status webhook carrying its job id (`biz_opaque_callback_data`)
//! reconciles it; without one it is retried only after `[service] sending_grace`.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use jiff::SignedDuration;
use medrelay::commands::run::pass;
use medrelay::wiring::{build_service, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::whatsapp::webhook::{StatusUpdate, status_webhook};

#[tokio::test]
async fn an_interrupted_send_waits_for_its_status_webhook_before_any_retry() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    assert_eq!(loaded.sending_grace, SignedDuration::from_mins(10));
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));

    // The process that crashes: it plans, marks the due confirmations `sending`, and dies before
    // recording any outcome. WhatsApp had accepted the first one.
    let (crashed, other) = {
        let (store, service, _) =
            common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
        service.scheduler.plan_pending().await.unwrap();
        let claimed = store.claim_due(clock.now(), 100).await.unwrap();
        assert!(claimed.len() >= 2, "{claimed:?}");
        store.close().await;
        (claimed[0].id, claimed[1].id)
    };

    // The restarted service: WhatsApp's status webhook for the accepted message arrives.
    let store = open_store(&loaded).await.unwrap();
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let sim = service.simulator.clone().unwrap();
    let webhook = status_webhook(
        sim.business(),
        &StatusUpdate {
            wamid: "wamid.accepted-before-the-crash".into(),
            status: "delivered".into(),
            timestamp: clock.now().as_second(),
            recipient_id: "12127365001".into(),
            error_code: None,
            callback: Some(format!("job:{crashed}")),
            pricing: None,
        },
    );
    service
        .inbound
        .deliver(webhook.to_string().as_bytes())
        .await
        .unwrap();

    let stop = AtomicBool::new(false);
    let callbacks = || -> Vec<String> {
        sim.sent()
            .iter()
            .filter_map(|b| b["biz_opaque_callback_data"].as_str().map(str::to_string))
            .collect()
    };
    pass(&service, &loaded, clock.as_ref(), &stop)
        .await
        .unwrap();
    let sent = callbacks();
    assert!(
        !sent.contains(&format!("job:{crashed}")),
        "reconciled from its webhook, never resent: {sent:?}"
    );
    assert!(
        !sent.contains(&format!("job:{other}")),
        "within the grace period an unreconciled send is not repeated: {sent:?}"
    );

    // After the grace period the unreconciled one goes out, once; the reconciled one never does.
    clock.advance(SignedDuration::from_mins(11));
    pass(&service, &loaded, clock.as_ref(), &stop)
        .await
        .unwrap();
    pass(&service, &loaded, clock.as_ref(), &stop)
        .await
        .unwrap();
    let sent = callbacks();
    assert_eq!(
        sent.iter()
            .filter(|c| **c == format!("job:{other}"))
            .count(),
        1,
        "{sent:?}"
    );
    assert!(!sent.contains(&format!("job:{crashed}")), "{sent:?}");
    store.close().await;
}
