//! EHR-side privacy flags from an export, through the whole pipeline: the protection indicator
//! (HL7 PD1-12 style) denies every message and no grant lifts it; a "no publicity" code (PD1-11 `N`)
//! is an EHR opt-out that a later staff grant can lift; a bad indicator is a bad row, not a guess.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::config::load;
use medrelay_pipeline::clock::ManualClock;
use medrelay_pipeline::service::Service;

async fn settle(service: &Service) {
    while !service.tick(50).await.unwrap().is_idle() {}
}

fn sent_to(service: &Service, digits: &str) -> usize {
    let sim = service.simulator.clone().unwrap();
    sim.sent().iter().filter(|b| b["to"] == digits).count()
}

#[tokio::test]
async fn protection_denies_always_and_no_publicity_is_an_ehr_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let config_path = dir.path().join("medrelay.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(
        r#"
[csv.profiles.privacy]
time_zone = "America/Sao_Paulo"
[csv.profiles.privacy.columns]
filler_id = "Appt"
start_date = "Date"
start_time = "Time"
full_name = "Name"
full_name_order = "given_family"
mobile_phone = "Mobile"
protection = "Protection"
publicity = "Publicity"
opt_in = "WhatsApp"
location = "Clinic"

[[connectors]]
type = "csv"
name = "registry"
site = "saopaulo"
profile = "privacy"
mode = "delta"
inbox = "inbox/registry"
"#,
    );
    std::fs::write(&config_path, text).unwrap();
    let loaded = load(&config_path).unwrap();
    let config = config_path.to_str().unwrap().to_string();
    let file = common::copy_sample(
        dir.path(),
        "connectors/csv/tests/fixtures/privacy_flags.csv",
    );
    // The appointments are 2026-12-05 09:00-11:00 in São Paulo (12:00Z-14:00Z): at 14:00Z on the 3rd
    // the booking confirmations and the 48 h reminders are due.
    let clock = Arc::new(ManualClock::new("2026-12-03T14:00:00Z".parse().unwrap()));
    let (store, service, imported) =
        common::service_with_import(&loaded, clock.clone(), "registry", &file).await;
    assert_eq!(
        (imported.summary.rows_ok, imported.summary.rows_bad),
        (4, 1)
    );
    settle(&service).await;

    assert_eq!(sent_to(&service, "5511987650001"), 0, "protected");
    assert_eq!(sent_to(&service, "5511987650002"), 0, "no publicity");
    let (_, p3) = cli(&config, &["explain", "registry/P-3"]).await;
    assert!(
        sent_to(&service, "5511987650003") >= 1,
        "family only: messaged\n{p3}"
    );
    assert_eq!(
        sent_to(&service, "5511987650004"),
        0,
        "bad indicator: not imported"
    );
    let (_, explain) = cli(&config, &["explain", "registry/P-1"]).await;
    assert!(explain.contains("protected in the EHR"), "{explain}");
    let (_, explain) = cli(&config, &["explain", "registry/P-2"]).await;
    assert!(explain.contains("EHR records an opt-out"), "{explain}");

    // Staff grant both: the "no publicity" opt-out is lifted by the newer grant; protection is not.
    for phone in ["(11) 98765-0001", "(11) 98765-0002"] {
        let (code, out) = cli(
            &config,
            &[
                "--now",
                "2026-12-03T14:05:00Z",
                "consent",
                "grant",
                "--phone",
                phone,
                "--site",
                "saopaulo",
                "--reason",
                "patient signed the WhatsApp form",
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}");
    }
    clock.set("2026-12-03T14:06:00Z".parse().unwrap());
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "5511987650001"),
        0,
        "protection beats every grant"
    );
    assert!(
        sent_to(&service, "5511987650002") >= 1,
        "the grant lifted the EHR opt-out"
    );
    store.close().await;
}
