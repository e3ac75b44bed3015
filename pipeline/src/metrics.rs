//! The `/metrics` exposition: [`crate::store::metrics::StoreMetrics`] plus the readiness checks
//! and the process's [`crate::instruments`], encoded by prometheus-client in the OpenMetrics text format (which Prometheus scrapes). Built
//! afresh for each scrape from the store, so every instance on one database exports the same
//! numbers and nothing is lost at a restart.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::http::health::Check;
use crate::store::metrics::{Sample, StoreMetrics};

type Labels = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

fn labels(s: &Sample) -> Labels {
    s.labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn gauges(r: &mut Registry, name: &str, help: &str, samples: &[Sample]) {
    let f = Family::<Labels, GaugeF>::default();
    for s in samples {
        f.get_or_create(&labels(s)).set(s.value);
    }
    r.register(name, help, f);
}

fn counters(r: &mut Registry, name: &str, help: &str, samples: &[Sample]) {
    let f = Family::<Labels, CounterF>::default();
    for s in samples {
        f.get_or_create(&labels(s)).inc_by(s.value);
    }
    r.register(name, help, f);
}

fn gauge(r: &mut Registry, name: &str, help: &str, value: f64) {
    let g = GaugeF::default();
    g.set(value);
    r.register(name, help, g);
}

/// The exposition text for one scrape: the store's numbers, the readiness checks and, when
/// given, this process's own instruments.
pub fn render(
    m: &StoreMetrics,
    checks: &[Check],
    instruments: Option<&crate::instruments::Instruments>,
) -> String {
    let mut r = Registry::with_prefix("medrelay");
    if let Some(i) = instruments {
        i.register(&mut r);
    }
    gauges(
        &mut r,
        "outbox_jobs",
        "Planned message steps by state and lane (lower lanes go first)",
        &m.outbox_jobs,
    );
    gauge(
        &mut r,
        "outbox_oldest_due_seconds",
        "How long the oldest due pending step has waited",
        m.oldest_due_seconds,
    );
    gauges(
        &mut r,
        "messages",
        "Messages sent, by template and current delivery status",
        &m.messages,
    );
    gauges(
        &mut r,
        "message_errors",
        "Messages whose last status carried a Cloud API error, by code",
        &m.message_errors,
    );
    counters(
        &mut r,
        "imported",
        "Rows and messages imported, by connector and outcome (ok, bad, applied)",
        &m.imported,
    );
    gauges(
        &mut r,
        "quarantined",
        "Inputs kept in quarantine, by connector",
        &m.quarantined,
    );
    counters(
        &mut r,
        "replies",
        "Patient replies by action and outcome",
        &m.replies,
    );
    counters(
        &mut r,
        "store_commit_groups",
        "Write groups committed by this process's database writer (one fsync each)",
        &[Sample {
            labels: Vec::new(),
            value: m.commit_groups,
        }],
    );
    gauges(
        &mut r,
        "inbox_conversations",
        "Staff inbox conversations not closed, by state; overdue: past the reply SLA",
        &m.inbox_conversations,
    );
    gauge(
        &mut r,
        "writeback_backlog",
        "Accepted replies not yet written back to the EHR",
        m.writeback_backlog,
    );
    gauge(
        &mut r,
        "writeback_oldest_open_seconds",
        "Age of the oldest write-back batch not yet written",
        m.writeback_oldest_open_seconds,
    );
    gauges(
        &mut r,
        "writeback_batches",
        "Write-back batches by target and state",
        &m.writeback_batches,
    );
    counters(
        &mut r,
        "consent_changes",
        "Consent ledger entries by purpose and change",
        &m.consent_changes,
    );
    gauges(
        &mut r,
        "open_alerts",
        "Alerts not yet resolved, by kind",
        &m.open_alerts,
    );
    gauge(
        &mut r,
        "messaging_limit_recipients",
        "Unique recipients of template messages outside a service window in the moving 24 h",
        m.messaging_recipients_24h,
    );
    if let Some(limit) = m.messaging_limit_reported {
        gauge(
            &mut r,
            "messaging_limit_reported",
            "The messaging limit as WhatsApp last stated it (Graph API or webhook)",
            limit,
        );
    }
    let ready: Vec<Sample> = checks
        .iter()
        .map(|c| Sample {
            labels: vec![("check", c.name.to_owned())],
            value: if c.ok { 1.0 } else { 0.0 },
        })
        .collect();
    gauges(
        &mut r,
        "ready",
        "1 when the readiness check passes (see /readyz)",
        &ready,
    );
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}
