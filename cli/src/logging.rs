//! The one log filter every subscriber uses (the binary's and the tests'): `MEDRELAY_LOG` chooses
//! the level of medrelay's own crates, and third-party crates are capped whatever it says.
//!
//! Why a cap: medrelay's own log lines are written to carry no PHI (the canary suite checks it at
//! trace level), but dependencies log what they see. `rlibphonenumber` writes the numbers it parses
//! at trace level; hyper, h2 and reqwest write headers and bodies at debug and trace (and request URLs,
//! which hold patient references in FHIR searches). So a crate that can see patient
//! data is never allowed below `warn`, a crate whose warnings can still quote it is `off`, and a
//! crate that is not listed here is `off`: a new dependency is silent until someone decides.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::combinator::And;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The environment variable that sets medrelay's log level (RUST_LOG syntax).
pub const LOG_ENV: &str = "MEDRELAY_LOG";

/// Level of medrelay's crates when `MEDRELAY_LOG` is unset.
pub const DEFAULT_DIRECTIVES: &str = "info";

/// medrelay's own crates (every target starting with `medrelay`): their level is `MEDRELAY_LOG`'s.
pub const OWN_TARGET_PREFIX: &str = "medrelay";

/// The most each third-party crate may log, whatever `MEDRELAY_LOG` says, and why.
pub const THIRD_PARTY: &[(&str, LevelFilter)] = &[
    // Parses patients' phone numbers and logs them at trace; its warnings quote country codes
    // taken from the number. Nothing of it is worth the risk.
    ("rlibphonenumber", LevelFilter::OFF),
    // Statement logging (debug; slow statements at warn) carries the SQL text and never bound
    // values; every query binds its values (checked: the two formatted queries insert constant
    // lists), so warnings about slow statements or a locked database stay useful and safe.
    ("sqlx", LevelFilter::WARN),
    // HTTP stacks: headers and bodies (webhook payloads, FHIR resources, phone numbers in message
    // bodies) at debug/trace; warnings are about connections and protocol errors.
    ("hyper", LevelFilter::WARN),
    ("hyper_util", LevelFilter::WARN),
    ("h2", LevelFilter::WARN),
    ("reqwest", LevelFilter::WARN),
    ("axum", LevelFilter::WARN),
    ("tower", LevelFilter::WARN),
    ("tower_http", LevelFilter::WARN),
    ("rustls", LevelFilter::WARN),
    // Only its models are used (the FHIR connector's HTTP goes through reqwest, capped above);
    // its client, were it enabled again, logs request URLs (patient references) at info.
    ("fhir_sdk", LevelFilter::WARN),
    ("tokio", LevelFilter::WARN),
    ("mio", LevelFilter::WARN),
];

/// The filter of every subscriber: `directives` (the value of `MEDRELAY_LOG`, RUST_LOG syntax)
/// decides what is enabled, and the ceiling of [`THIRD_PARTY`] decides what may be at all. A
/// record passes only if both let it, so `MEDRELAY_LOG=trace` or even `rlibphonenumber=trace`
/// never lets a dependency log below its cap. An invalid `directives` falls back to the default.
pub fn filter<S>(directives: &str) -> And<EnvFilter, Targets, S> {
    let env = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_DIRECTIVES));
    env.and(ceiling())
}

/// The ceiling alone: medrelay's crates at any level, the listed crates at their cap, every other
/// target off.
pub fn ceiling() -> Targets {
    THIRD_PARTY
        .iter()
        .fold(Targets::new(), |t, (target, level)| {
            t.with_target(*target, *level)
        })
        .with_target(OWN_TARGET_PREFIX, LevelFilter::TRACE)
        .with_default(LevelFilter::OFF)
}

/// The directives from the environment (`MEDRELAY_LOG`), or the default.
pub fn directives_from_env() -> String {
    std::env::var(LOG_ENV).unwrap_or_else(|_| DEFAULT_DIRECTIVES.to_string())
}

/// Installs the process's subscriber: stderr, text or JSON, with [`filter`]. Also routes the `log`
/// crate's records (rlibphonenumber uses it) through the same filter.
pub fn init(format: crate::LogFormat) {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        crate::LogFormat::Json => layer.json().boxed(),
        crate::LogFormat::Text => layer.boxed(),
    };
    Registry::default()
        .with(layer.with_filter(filter(&directives_from_env())))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber with `directives` writes for one event per target at trace level.
    fn captured(directives: &str) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = Registry::default().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(filter(directives)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "medrelay_pipeline::send", "own-trace");
            tracing::warn!(target: "medrelay::wiring", "own-warn");
            tracing::trace!(target: "rlibphonenumber::phonenumberutil", "phone-trace");
            tracing::error!(target: "rlibphonenumber::phonenumberutil", "phone-error");
            tracing::debug!(target: "sqlx::query", "sql-debug");
            tracing::warn!(target: "sqlx::query", "sql-warn");
            tracing::trace!(target: "hyper::proto", "hyper-trace");
            tracing::warn!(target: "some_new_crate", "unlisted-warn");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn third_party_crates_are_capped_whatever_medrelay_log_says() {
        for directives in [
            "trace",
            "trace,rlibphonenumber=trace,sqlx=trace,hyper=trace,some_new_crate=trace",
        ] {
            let out = captured(directives);
            for own in ["own-trace", "own-warn", "sql-warn"] {
                assert!(out.contains(own), "{directives}: {own} missing in {out}");
            }
            for capped in [
                "phone-trace",
                "phone-error",
                "sql-debug",
                "hyper-trace",
                "unlisted-warn",
            ] {
                assert!(!out.contains(capped), "{directives}: {capped} in {out}");
            }
        }
        // MEDRELAY_LOG still lowers medrelay's own level.
        let out = captured("warn");
        assert!(
            out.contains("own-warn") && !out.contains("own-trace"),
            "{out}"
        );
        // An invalid value falls back to the default (info), not to everything.
        let out = captured("medrelay=[[");
        assert!(
            out.contains("own-warn") && !out.contains("own-trace"),
            "{out}"
        );
    }
}
