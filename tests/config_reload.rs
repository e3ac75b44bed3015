//! Configuration reload (issue 16): SIGHUP (here its trigger, `run_until_with_reload`) makes a
//! running service read its file again between passes: a new plan step is planned for the
//! appointments already imported, without a restart; a file that changes what needs a restart
//! (a connector, the store) or does not validate is refused and the running configuration stays.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use medrelay::commands::run::{RunArgs, reload_config, run_until_with_reload};
use medrelay_pipeline::clock::ManualClock;

const NEW_STEP: &str = "\n[[plan.steps]]\nname = \"reminder_6h\"\nkind = \"reminder\"\noffset = \"6h\"\ntemplate = \"appointment_reminder\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_plans_a_new_step_for_imported_appointments_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let config = dir.path().join("medrelay.toml");
    let config_str = config.to_str().unwrap().to_owned();
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let now = "2026-11-29T13:30:00Z";
    let (code, out) = cli(
        &config_str,
        &[
            "--now",
            now,
            "ingest",
            "csv",
            "--connector",
            "openemr",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let clock = Arc::new(ManualClock::new(now.parse().unwrap()));
    let reload = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut buf = Vec::new();
    let mut o = medrelay::Output {
        out: &mut buf,
        json: false,
    };
    let service = run_until_with_reload(
        &config,
        clock,
        RunArgs { once: false },
        &mut o,
        async move {
            let _ = stop_rx.await;
        },
        reload.clone(),
    );
    let explain = || {
        let c = config_str.clone();
        async move { cli(&c, &["--now", now, "explain", "openemr/50001"]).await.1 }
    };
    let until = |what: &'static str, want: bool| async move {
        let deadline = Timestamp::now() + SignedDuration::from_secs(60);
        loop {
            let text = explain().await;
            if text.contains(what) == want {
                return text;
            }
            assert!(Timestamp::now() < deadline, "{what}: {want}?\n{text}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let checks = async {
        let before = until("reminder_48h", true).await;
        assert!(!before.contains("reminder_6h"), "{before}");
        // A new step in the file, then SIGHUP: planned for Alice's appointment, no restart.
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(NEW_STEP);
        std::fs::write(&config, &text).unwrap();
        reload.notify_one();
        until("reminder_6h", true).await;
        stop_tx.send(()).unwrap();
    };
    let (result, ()) = tokio::join!(service, checks);
    assert_eq!(result.unwrap(), 0);
}

#[tokio::test]
async fn a_reload_that_needs_a_restart_or_does_not_validate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let current = common::demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    // Templates, plans and texts may change.
    std::fs::write(&path, format!("{original}{NEW_STEP}")).unwrap();
    let next = reload_config(&current).unwrap();
    assert_eq!(next.compiled.steps.len(), current.compiled.steps.len() + 1);
    // A connector's listener may not (the socket is bound once).
    let moved = original.replace("# listen = \"0.0.0.0:2575\"", "listen = \"127.0.0.1:2599\"");
    assert_ne!(moved, original);
    std::fs::write(&path, format!("{moved}{NEW_STEP}")).unwrap();
    let why = reload_config(&current).unwrap_err();
    assert!(
        why.contains("[[connectors]] changed, which needs a restart"),
        "{why}"
    );
    // Nor may the database.
    let moved = original.replace("path = \"medrelay.db\"", "path = \"other.db\"");
    assert_ne!(moved, original);
    std::fs::write(&path, moved).unwrap();
    assert!(reload_config(&current).unwrap_err().contains("[store]"));
    // A file that does not validate says why, as `check` would.
    std::fs::write(
        &path,
        original.replace("offset = \"48h\"", "offset = \"soon\""),
    )
    .unwrap();
    let why = reload_config(&current).unwrap_err();
    assert!(why.contains("soon"), "{why}");
}
