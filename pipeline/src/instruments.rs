//! What only the running process sees, for `/metrics`: how long each MLLP message waited for its
//! ACK and each served HTTP request for its answer (the webhook, FHIR notifications), and the send
//! attempts by template and result (Prometheus's `rate()` over them is the send rate; the
//! configured throughput is exported next to it).
//!
//! Unlike [`crate::store::metrics`], these are per instance and start at zero with the process
//! (histograms and counters, as Prometheus expects of them). Labels are configured names, ACK
//! codes, HTTP status codes and results: never patient data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// 0.5 ms to about 8 s, doubling: an ACK after one fsync sits in the first buckets, a stalled
/// commit in the last.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The process's instruments; cheap to clone (every clone records into the same series).
#[derive(Clone)]
pub struct Instruments {
    mllp_ack: Histograms,
    http: Histograms,
    send_attempts: Family<Labels, Counter>,
    throughput_limit: Gauge,
}

impl Default for Instruments {
    fn default() -> Self {
        Instruments {
            mllp_ack: Family::new_with_constructor(latency as fn() -> Histogram),
            http: Family::new_with_constructor(latency as fn() -> Histogram),
            send_attempts: Family::default(),
            throughput_limit: Gauge::default(),
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Instruments {
    /// A new set, shared by everything in one process.
    pub fn new() -> Arc<Instruments> {
        Arc::new(Instruments::default())
    }

    /// An MLLP message of `feed` was answered with `code` (AA, AE, AR...) `elapsed` after its
    /// frame was complete (the ACK is written only after the message is durable).
    pub fn mllp_answered(&self, feed: &str, code: &str, elapsed: Duration) {
        self.mllp_ack
            .get_or_create(&labels(&[("connector", feed), ("code", code)]))
            .observe(elapsed.as_secs_f64());
    }

    /// A served HTTP request of `endpoint` got `status` after `elapsed`.
    pub fn http_answered(&self, endpoint: &str, status: u16, elapsed: Duration) {
        self.http
            .get_or_create(&labels(&[
                ("endpoint", endpoint),
                ("status", &status.to_string()),
            ]))
            .observe(elapsed.as_secs_f64());
    }

    /// One send attempt of `template` ended in `result` (`sent`, `retry`, `deferred`, `failed`,
    /// `skipped`, ...).
    pub fn send_attempt(&self, template: &str, result: &str) {
        self.send_attempts
            .get_or_create(&labels(&[("template", template), ("result", result)]))
            .inc();
    }

    /// The configured sending throughput (messages per second; 0: not paced).
    pub fn set_throughput_limit(&self, per_second: u32) {
        self.throughput_limit.set(i64::from(per_second));
    }

    /// Adds every instrument to a scrape's registry.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "mllp_ack_seconds",
            "From a complete MLLP frame to its ACK written, by connector and ACK code",
            self.mllp_ack.clone(),
        );
        r.register(
            "http_request_seconds",
            "Served HTTP requests (WhatsApp webhook, FHIR notifications) by endpoint and status",
            self.http.clone(),
        );
        r.register(
            "send_attempts",
            "Send attempts of this process by template and result (rate() of result=sent is the send rate)",
            self.send_attempts.clone(),
        );
        r.register(
            "send_throughput_limit_per_second",
            "The configured sending throughput (whatsapp.cloud.per_second; 0 when not paced)",
            self.throughput_limit.clone(),
        );
    }

    /// `router` with every request timed as `endpoint`.
    pub fn timed(self: &Arc<Self>, router: Router, endpoint: impl Into<String>) -> Router {
        let me = self.clone();
        let endpoint: Arc<str> = Arc::from(endpoint.into());
        router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let (me, endpoint) = (me.clone(), endpoint.clone());
                async move {
                    let started = Instant::now();
                    let response: Response = next.run(req).await;
                    me.http_answered(&endpoint, response.status().as_u16(), started.elapsed());
                    response
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_series_appear_in_the_exposition() {
        let i = Instruments::new();
        i.mllp_answered("clinic-hl7", "AA", Duration::from_millis(3));
        i.mllp_answered("clinic-hl7", "AA", Duration::from_millis(40));
        i.http_answered("whatsapp_webhook", 200, Duration::from_millis(1));
        i.send_attempt("reminder", "sent");
        i.set_throughput_limit(80);
        let mut r = Registry::with_prefix("medrelay");
        i.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains(r#"medrelay_mllp_ack_seconds_count{connector="clinic-hl7",code="AA"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"medrelay_http_request_seconds_count{endpoint="whatsapp_webhook",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"medrelay_send_attempts_total{template="reminder",result="sent"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("medrelay_send_throughput_limit_per_second 80"),
            "{text}"
        );
    }
}
