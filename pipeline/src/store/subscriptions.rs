//! FHIR Subscription progress: the last event number each Subscription delivered, and the
//! events a counter jump shows missing (see migration 0019).

use jiff::Timestamp;

use super::ingest::FEED_ACTIVITY_SQL;
use super::on_tx;
use super::{Store, StoreResult, secs};

/// Alert kind for events a FHIR Subscription's counter shows were sent but never arrived.
pub const FHIR_GAP_ALERT: &str = "fhir_subscription_gap";

/// Events a Subscription's counter shows were sent but never arrived: `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventGap {
    pub first: u64,
    pub last: u64,
}

impl Store {
    /// Records that `feed`'s `subscription` was heard from at `now` (a handshake, heartbeat or
    /// notification: the feed is alive), with its event counter: the notification's event numbers
    /// and the server's count of events since the Subscription started. Returns the events that
    /// the counter shows missing, if any. The first time a Subscription is heard, its counter is
    /// the baseline (events before it are not judged).
    pub async fn subscription_heard(
        &self,
        feed: &str,
        subscription: &str,
        event_numbers: &[u64],
        events_since_start: Option<u64>,
        now: Timestamp,
    ) -> StoreResult<Option<EventGap>> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c, pg| sqlx::query(if pg {
            super::ingest_pg::FEED_ACTIVITY_SQL
        } else {
            FEED_ACTIVITY_SQL
        })
        .bind(feed)
        .bind(secs(now))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        let seen = event_numbers.iter().copied().max();
        let newest = seen.max(events_since_start);
        let previous: Option<i64> = on_tx!(tx, |c| {
            sqlx::query_scalar(
            "SELECT last_event FROM subscription_progress WHERE feed = $1 AND subscription = $2",
        )
        .bind(feed)
        .bind(subscription)
        .fetch_optional(&mut *c).await
        })?;
        let previous = previous.and_then(|p| u64::try_from(p).ok());
        let gap = previous.and_then(|p| {
            // The first event this notification carries should follow the last one seen; a
            // heartbeat's counter should not be ahead of it.
            let expected_next = p + 1;
            let arrived_from = event_numbers.iter().copied().min();
            match arrived_from {
                Some(first) if first > expected_next => Some(EventGap {
                    first: expected_next,
                    last: first - 1,
                }),
                None => events_since_start.filter(|n| *n > p).map(|n| EventGap {
                    first: expected_next,
                    last: n,
                }),
                _ => None,
            }
        });
        if let Some(n) = newest {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            on_tx!(tx, |c| {
                sqlx::query(
                "INSERT INTO subscription_progress (feed, subscription, last_event, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (feed, subscription) DO UPDATE SET last_event = CASE WHEN excluded.last_event > subscription_progress.last_event \
                 THEN excluded.last_event ELSE subscription_progress.last_event END, \
                 updated_at = excluded.updated_at",
            )
            .bind(feed)
            .bind(subscription)
            .bind(n)
            .bind(secs(now))
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
        }
        tx.commit().await?;
        Ok(gap)
    }
}
