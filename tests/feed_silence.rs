//! A feed that stays silent past its expected time (issue 16): the nightly OpenEMR export is due
//! by 06:00 in New York; when the night's file does not come, `run` raises one `feed_silent`
//! alert (not one per pass), and the next file resolves it.

mod common;
use common::cli_with_config as cli;

async fn ingest(config: &str, file: &str, now: &str) {
    let args = [
        "--now",
        now,
        "ingest",
        "csv",
        "--connector",
        "openemr",
        "--as-of",
        now,
        file,
    ];
    let (code, out) = cli(config, &args).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn nightly_export_missing_by_six_raises_feed_silent_once_and_the_next_file_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let config_path = dir.path().join("medrelay.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str("\n[alerts.feeds.openemr]\nexpect_by = \"06:00\"\n");
    std::fs::write(&config_path, text).unwrap();
    let config = config_path.to_str().unwrap();
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let file = file.to_str().unwrap();

    // The export of the night of 1 December arrives at 02:00 New York time (07:00Z).
    ingest(config, file, "2026-12-01T07:00:00Z").await;
    // 2 December, 05:59 in New York (10:59Z): not late yet.
    let (code, out) = cli(config, &["--now", "2026-12-02T10:59:00Z", "run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    let (_, status) = cli(config, &["status"]).await;
    assert!(!status.contains("feed_silent"), "{status}");
    // 06:00 has passed and the night's file never came: one alert, however many passes.
    for now in ["2026-12-02T11:00:00Z", "2026-12-02T11:05:00Z"] {
        let (code, out) = cli(config, &["--now", now, "run", "--once"]).await;
        assert_eq!(code, 0, "{out}");
    }
    let (_, status) = cli(config, &["status"]).await;
    assert_eq!(status.matches("feed_silent").count(), 1, "{status}");
    assert!(
        status.contains("feed openemr: no input since 2026-12-01T07:00:00Z; expected each day by 06:00 America/New_York"),
        "{status}"
    );
    // The file comes late; the next pass resolves the alert.
    ingest(config, file, "2026-12-02T11:30:00Z").await;
    let (code, out) = cli(config, &["--now", "2026-12-02T11:31:00Z", "run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    let (_, status) = cli(config, &["status"]).await;
    assert!(!status.contains("feed_silent"), "{status}");
}

#[tokio::test]
async fn feed_expectation_names_a_connector_and_one_rhythm() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let config_path = dir.path().join("medrelay.toml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(
        "\n[alerts.feeds.nosuch]\nexpect_every = \"2h\"\n[alerts.feeds.openemr]\nexpect_every = \"2h\"\nexpect_by = \"06:00\"\n[alerts.feeds.clinica]\nexpect_every = \"soon\"\n",
    );
    std::fs::write(&config_path, text).unwrap();
    let err = medrelay::config::load(&config_path)
        .unwrap_err()
        .to_string();
    for expected in [
        "alerts.feeds.nosuch: no connector is named `nosuch`",
        "alerts.feeds.openemr: set exactly one of `expect_every`",
        "alerts.feeds.clinica.expect_every `soon` is not a duration",
    ] {
        assert!(err.contains(expected), "{err}");
    }
}
