//! The alert sink: every alert is pushed to a webhook once when it fires and once when it is
//! resolved, as generic JSON or as a Slack / Microsoft Teams incoming-webhook body (`{"text": ...}`).
//! Delivery is durable (the alert rows say what was sent) and retried with backoff, so a receiver
//! that is down loses nothing. Alert details are written without patient data where alerts are
//! raised; the body adds only the kind, times and the alert id.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::store::alerts::AlertNotice;
use crate::store::{Store, StoreResult};

/// The body shape the receiver expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// `{"source": "medrelay", "id", "kind", "state": "firing" | "recovered", "detail", "at",
    /// "recovered_at"}`.
    #[default]
    Json,
    /// Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// Microsoft Teams incoming webhook (and Power Automate's "post to a channel"): `{"text": ...}`.
    Teams,
}

/// Where alerts go.
#[derive(Clone, Debug)]
pub struct AlertSink {
    client: reqwest::Client,
    url: String,
    format: SinkFormat,
}

/// What one delivery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: u64,
    pub failed: u64,
}

/// The body of one notice.
pub fn body(notice: &AlertNotice, format: SinkFormat) -> Value {
    let state = if notice.is_recovery() {
        "recovered"
    } else {
        "firing"
    };
    match format {
        SinkFormat::Json => json!({
            "source": "medrelay",
            "id": notice.id,
            "kind": notice.kind,
            "state": state,
            "detail": notice.detail,
            "at": notice.at.to_string(),
            "recovered_at": notice.resolved_at.map(|t| t.to_string()),
        }),
        SinkFormat::Slack | SinkFormat::Teams => {
            let text = match notice.resolved_at {
                Some(at) => format!(
                    "medrelay alert {} `{}` recovered at {at} (fired {}): {}",
                    notice.id, notice.kind, notice.at, notice.detail
                ),
                None => format!(
                    "medrelay alert {} `{}` at {}: {}",
                    notice.id, notice.kind, notice.at, notice.detail
                ),
            };
            json!({ "text": text })
        }
    }
}

impl AlertSink {
    /// A sink posting to `url` (the whole URL is a secret for Slack and Teams: it comes from the
    /// environment, never from the configuration file).
    pub fn new(url: &str, format: SinkFormat, timeout: Duration) -> Result<Self, String> {
        reqwest::Url::parse(url).map_err(|_| "the alert webhook URL is not a URL".to_owned())?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the alert client: {}", e.without_url()))?;
        Ok(AlertSink {
            client,
            url: url.to_owned(),
            format,
        })
    }

    /// Posts every due notice, oldest first; a failure leaves it due after its backoff and stops
    /// the pass (the receiver is probably down).
    pub async fn deliver(&self, store: &Store, now: Timestamp) -> StoreResult<DeliveryReport> {
        let mut report = DeliveryReport::default();
        for notice in store.due_alert_notices(now, 50).await? {
            let sent = self
                .client
                .post(&self.url)
                .json(&body(&notice, self.format))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    store.alert_notified(&notice, now).await?;
                    info!(alert = notice.id, kind = %notice.kind, recovery = notice.is_recovery(), "alert notified");
                    report.delivered += 1;
                }
                other => {
                    let why = match other {
                        Ok(r) => format!("answered {}", r.status()),
                        Err(e) => e.without_url().to_string(),
                    };
                    // The URL is a secret: never in a log line.
                    warn!(alert = notice.id, error = %why, "alert notification failed; will retry");
                    store.alert_notify_failed(&notice, now).await?;
                    report.failed += 1;
                    break;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(resolved: Option<&str>) -> AlertNotice {
        AlertNotice {
            id: 7,
            kind: "template_halted".into(),
            detail: "template `appointment_reminder` halted: 132001".into(),
            at: "2026-12-08T17:05:00Z".parse().unwrap(),
            resolved_at: resolved.map(|t| t.parse().unwrap()),
        }
    }

    #[test]
    fn slack_and_teams_get_a_text_body_json_gets_the_fields() {
        for format in [SinkFormat::Slack, SinkFormat::Teams] {
            assert_eq!(
                body(&notice(None), format),
                json!({"text": "medrelay alert 7 `template_halted` at 2026-12-08T17:05:00Z: template `appointment_reminder` halted: 132001"})
            );
            assert_eq!(
                body(&notice(Some("2026-12-08T18:00:00Z")), format)["text"],
                "medrelay alert 7 `template_halted` recovered at 2026-12-08T18:00:00Z (fired 2026-12-08T17:05:00Z): template `appointment_reminder` halted: 132001"
            );
        }
        let j = body(&notice(Some("2026-12-08T18:00:00Z")), SinkFormat::Json);
        assert_eq!(j["state"], "recovered");
        assert_eq!(j["source"], "medrelay");
        assert_eq!(j["recovered_at"], "2026-12-08T18:00:00Z");
    }

    #[test]
    fn notification_backoff_doubles_to_15_minutes() {
        let waits: Vec<i64> = (1..=7)
            .map(crate::store::alerts::notify_backoff_secs)
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900]);
    }
}
