//! Conditions checked after each pass of the service, each an alert that fires once per incident
//! and resolves when the condition ends: a feed whose quarantine grows fast (an interface sending
//! garbage, a changed export layout), and an opt-out rate above the threshold clinic guides name
//! (2 %: patients find the messages unwelcome: wrong times, too many, wrong people).
//!
//! Both read the store, so every instance on one database sees the same incident.

use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

use crate::store::{Store, StoreResult};

/// Alert kind for a feed that quarantined more than the threshold in the last hour.
pub const QUARANTINE_GROWING_ALERT: &str = "quarantine_growing";
/// Alert kind for an opt-out rate above the threshold over the window.
pub const OPT_OUT_RATE_ALERT: &str = "opt_out_rate";
/// Alert kind for a write-back target whose batches keep failing on the way (the EHR interface is
/// down or unreachable); a refusal has its own alert, `writeback_rejected`.
pub const WRITEBACK_FAILING_ALERT: &str = "writeback_failing";

/// The thresholds (`[alerts]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Inputs quarantined by one feed in the last hour above which `quarantine_growing` fires
    /// (`None`: off).
    pub quarantine_per_hour: Option<u32>,
    /// Opt-outs / patients messaged over `opt_out_window` above which `opt_out_rate` fires.
    pub opt_out_rate: Option<f64>,
    pub opt_out_window: SignedDuration,
    /// Fewer patients messaged in the window than this: too few to judge a rate (no alert).
    pub opt_out_min_contacts: u32,
    /// A target whose oldest failing batch is older than this raises `writeback_failing`.
    pub writeback_failing_after: SignedDuration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            quarantine_per_hour: Some(50),
            opt_out_rate: Some(0.02),
            opt_out_window: SignedDuration::from_hours(7 * 24),
            opt_out_min_contacts: 50,
            writeback_failing_after: SignedDuration::from_mins(15),
        }
    }
}

/// Raises or resolves both alerts at `now`, the quarantine one for each of `feeds`.
pub async fn check(
    store: &Store,
    t: &Thresholds,
    feeds: &[String],
    now: Timestamp,
) -> StoreResult<()> {
    if let Some(limit) = t.quarantine_per_hour {
        let counts = store
            .quarantined_since(now - SignedDuration::from_hours(1))
            .await?;
        for feed in feeds {
            let n = counts.get(feed).copied().unwrap_or(0);
            let key = format!("feed {feed}:");
            if n > i64::from(limit) {
                if store
                    .raise_incident(
                        QUARANTINE_GROWING_ALERT,
                        &key,
                        &format!(
                            "{key} {n} inputs quarantined in the last hour (threshold {limit}); see `medrelay status`"
                        ),
                        now,
                    )
                    .await?
                {
                    warn!(%feed, quarantined = n, "quarantine growing");
                }
            } else if store
                .resolve_incident(QUARANTINE_GROWING_ALERT, &key, now)
                .await?
                > 0
            {
                info!(%feed, "quarantine no longer growing");
            }
        }
    }
    writeback_failing(store, t.writeback_failing_after, now).await?;
    if let Some(threshold) = t.opt_out_rate {
        let since = now - t.opt_out_window;
        let (stopped, messaged) = store.opt_outs_since(since).await?;
        let key = "opt-out rate:";
        let hours = t.opt_out_window.as_secs() / 3600;
        let window = if hours > 0 && hours % 24 == 0 {
            format!("{} days", hours / 24)
        } else {
            medrelay_mapping::plan::fmt_duration(t.opt_out_window)
        };
        let rate = if messaged > 0 {
            stopped as f64 / messaged as f64
        } else {
            0.0
        };
        if messaged >= i64::from(t.opt_out_min_contacts) && rate > threshold {
            if store
                .raise_incident(
                    OPT_OUT_RATE_ALERT,
                    key,
                    &format!(
                        "{key} {:.1} % of the {messaged} patients messaged in the last {window} opted out ({stopped}; threshold {:.1} %)",
                        rate * 100.0,
                        threshold * 100.0
                    ),
                    now,
                )
                .await?
            {
                warn!(stopped, messaged, "opt-out rate above the threshold");
            }
        } else if rate <= threshold
            && store.resolve_incident(OPT_OUT_RATE_ALERT, key, now).await? > 0
        {
            info!(stopped, messaged, "opt-out rate back under the threshold");
        }
    }
    Ok(())
}

/// Raises `writeback_failing` for each target with a batch failing for longer than `after`, and
/// resolves it for targets with none (written since, or refused: that has its own alert).
async fn writeback_failing(
    store: &Store,
    after: SignedDuration,
    now: Timestamp,
) -> StoreResult<()> {
    use crate::store::writeback::BatchState;
    use std::collections::BTreeMap;
    let open = store.writeback_batches(false, 0).await?;
    let mut failing: BTreeMap<String, (usize, Timestamp)> = BTreeMap::new();
    for b in open.iter().filter(|b| b.state == BatchState::Failing) {
        let e = failing.entry(b.target.clone()).or_insert((0, b.created_at));
        e.0 += 1;
        e.1 = e.1.min(b.created_at);
    }
    for (target, (n, oldest)) in &failing {
        let key = format!("target {target}:");
        let age = now.duration_since(*oldest);
        if age > after
            && store
                .raise_incident(
                    WRITEBACK_FAILING_ALERT,
                    &key,
                    &format!(
                        "{key} {n} write-back batch(es) failing, the oldest for {} (connection, timeout or 5xx; retried with backoff); see `medrelay writeback list`",
                        medrelay_mapping::plan::fmt_duration(age)
                    ),
                    now,
                )
                .await?
        {
            warn!(%target, batches = n, "write-back failing");
        }
    }
    for detail in store.open_alert_details(WRITEBACK_FAILING_ALERT).await? {
        let Some(target) = detail
            .strip_prefix("target ")
            .and_then(|d| d.split(':').next())
        else {
            continue;
        };
        if !failing.contains_key(target)
            && store
                .resolve_incident(WRITEBACK_FAILING_ALERT, &format!("target {target}:"), now)
                .await?
                > 0
        {
            info!(%target, "write-back works again");
        }
    }
    Ok(())
}
