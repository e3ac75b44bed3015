//! The quarantine quota: a hostile sender cannot fill the disk with rejected input.
//!
//! Every rejected message is normally kept whole in quarantine. Per feed, and per source address
//! within it (an MLLP peer), at most `max_messages` / `max_bytes` are kept in any moving window of
//! `window`; beyond that the raw input is not stored, only counted. The sender still gets its
//! answer (AE / AR). Each run of drops (an incident: drops with less than a window between them)
//! raises one `quarantine_quota` alert and has one `quarantine_dropped` row with its counts,
//! which `medrelay status` shows.
//!
//! The window is kept in memory (admitting a message costs no write); at start the feed's window
//! is seeded from the quarantine table, so a restart does not reset the feed's quota. Per-source
//! windows start empty after a restart (the quarantine table does not record addresses). Drop
//! counts are written at most once a second per incident and by [`QuarantineQuota::flush`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::{Store, StoreResult, secs};
use super::{on_db, on_tx};

/// The alert kind of a quota incident.
pub const QUOTA_ALERT: &str = "quarantine_quota";

/// The incident key of the feed-wide quota (no single source exceeded its own).
pub const WHOLE_FEED: &str = "*";

/// How much rejected input one feed, and one source of it, may keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// The moving window.
    pub window: Duration,
    /// Messages the feed keeps per window, all sources together.
    pub max_messages: u64,
    /// Raw bytes the feed keeps per window.
    pub max_bytes: u64,
    /// Messages one source address keeps per window.
    pub max_messages_per_source: u64,
    /// Raw bytes one source address keeps per window.
    pub max_bytes_per_source: u64,
}

impl QuotaLimits {
    /// A day; 2,000 messages / 128 MiB per feed, 500 / 32 MiB per source address. A feed whose
    /// every message is bad for a day still keeps a sample; an attack keeps at most 128 MiB a day
    /// (times `raw_days` of retention).
    pub const DEFAULT: QuotaLimits = QuotaLimits {
        window: Duration::from_secs(86_400),
        max_messages: 2_000,
        max_bytes: 128 * 1024 * 1024,
        max_messages_per_source: 500,
        max_bytes_per_source: 32 * 1024 * 1024,
    };
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Whether a rejected message's raw bytes may be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Keep it in quarantine as usual.
    Keep,
    /// Over the quota: answer it, do not store it (it has been counted).
    Drop,
}

/// What was kept in the window: (second, bytes) per message, oldest first.
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<(i64, u64)>,
    bytes: u64,
}

impl Window {
    /// Forgets what was kept at or before `cutoff`.
    fn expire(&mut self, cutoff: i64) {
        while let Some(&(at, b)) = self.entries.front() {
            if at > cutoff {
                break;
            }
            self.entries.pop_front();
            self.bytes -= b;
        }
    }

    fn fits(&self, bytes: u64, max_messages: u64, max_bytes: u64) -> bool {
        (self.entries.len() as u64) < max_messages && self.bytes.saturating_add(bytes) <= max_bytes
    }

    fn add(&mut self, at: i64, bytes: u64) {
        self.entries.push_back((at, bytes));
        self.bytes += bytes;
    }
}

/// One run of drops for a source (or the whole feed).
#[derive(Debug)]
struct Incident {
    id: i64,
    last_at: i64,
    messages: u64,
    bytes: u64,
    /// Counts as last written.
    written: (u64, u64, i64),
    written_when: Instant,
}

#[derive(Debug, Default)]
struct State {
    feed: Window,
    sources: HashMap<String, Window>,
    incidents: HashMap<String, Incident>,
}

/// The quota of one feed. Share it (`Arc`) between the feed's connections.
#[derive(Debug)]
pub struct QuarantineQuota {
    store: Store,
    feed: String,
    limits: QuotaLimits,
    state: tokio::sync::Mutex<State>,
}

/// How often an incident's counts are written while drops continue.
const WRITE_EVERY: Duration = Duration::from_secs(1);

fn fmt_bytes(b: u64) -> String {
    if b >= 1024 * 1024 {
        format!("{} MiB", b / (1024 * 1024))
    } else {
        format!("{b} bytes")
    }
}

impl QuarantineQuota {
    /// The quota of `feed`, its window seeded from what the feed quarantined in the last
    /// `limits.window`.
    pub async fn open(
        store: Store,
        feed: &str,
        limits: QuotaLimits,
        now: Timestamp,
    ) -> StoreResult<QuarantineQuota> {
        let cutoff = secs(now) - limits.window.as_secs() as i64;
        let rows = on_db!(store, |db| sqlx::query(
            "SELECT received_at, CAST(COALESCE(LENGTH(raw), 0) AS BIGINT) AS n FROM quarantine \
             WHERE source = $1 AND received_at > $2 ORDER BY received_at DESC, id DESC LIMIT $3",
        )
        .bind(feed)
        .bind(cutoff)
        .bind(limits.max_messages as i64)
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?;
        let mut state = State::default();
        for r in rows.iter().rev() {
            state
                .feed
                .add(r.get::<i64, _>("received_at"), r.get::<i64, _>("n") as u64);
        }
        Ok(QuarantineQuota {
            store,
            feed: feed.to_owned(),
            limits,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// Whether the raw bytes (`bytes` long) of a message rejected from `source` may be kept. Keep
    /// is counted against the source's and the feed's windows; Drop is counted in the incident
    /// (and the first drop of an incident raises the alert).
    pub async fn admit(&self, source: &str, bytes: u64, now: Timestamp) -> StoreResult<Admission> {
        let at = secs(now);
        let cutoff = at - self.limits.window.as_secs() as i64;
        let l = &self.limits;
        let mut state = self.state.lock().await;
        let state = &mut *state;
        state.feed.expire(cutoff);
        if state.sources.len() > 64 {
            state.sources.retain(|_, w| {
                w.expire(cutoff);
                !w.entries.is_empty()
            });
        }
        let window = state.sources.entry(source.to_owned()).or_default();
        window.expire(cutoff);
        let source_fits = window.fits(bytes, l.max_messages_per_source, l.max_bytes_per_source);
        if source_fits && state.feed.fits(bytes, l.max_messages, l.max_bytes) {
            window.add(at, bytes);
            state.feed.add(at, bytes);
            return Ok(Admission::Keep);
        }
        if window.entries.is_empty() {
            state.sources.remove(source);
        }
        let key = if source_fits { WHOLE_FEED } else { source };
        if state
            .incidents
            .get(key)
            .is_some_and(|i| i.last_at <= cutoff)
            && let Some(mut over) = state.incidents.remove(key)
        {
            self.write(&mut over).await?;
        }
        match state.incidents.get_mut(key) {
            Some(i) => {
                i.messages += 1;
                i.bytes += bytes;
                i.last_at = at;
                if i.written_when.elapsed() >= WRITE_EVERY {
                    self.write(i).await?;
                }
            }
            None => {
                let i = self.start_incident(key, bytes, at, cutoff).await?;
                state.incidents.insert(key.to_owned(), i);
            }
        }
        // Incidents over for a window are written a last time and forgotten (their row stays).
        let over: Vec<String> = state
            .incidents
            .iter()
            .filter(|(_, i)| i.last_at <= cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in over {
            if let Some(mut i) = state.incidents.remove(&k) {
                self.write(&mut i).await?;
            }
        }
        Ok(Admission::Drop)
    }

    /// The first drop for `key` since a window: continues the incident stored by a previous run
    /// if it is still open, else stores a new one and raises its alert.
    async fn start_incident(
        &self,
        key: &str,
        bytes: u64,
        at: i64,
        cutoff: i64,
    ) -> StoreResult<Incident> {
        let open = on_db!(self.store, |db| sqlx::query(
            "SELECT id, messages, bytes FROM quarantine_dropped \
             WHERE feed = $1 AND source = $2 AND last_at > $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(&self.feed)
        .bind(key)
        .bind(cutoff)
        .fetch_optional(db)
        .await
        .map(|v| v.map(super::StoredRow::from)))?;
        let (id, messages, total) = match open {
            Some(r) => (
                r.get::<i64, _>("id"),
                r.get::<i64, _>("messages") as u64 + 1,
                r.get::<i64, _>("bytes") as u64 + bytes,
            ),
            None => {
                let l = &self.limits;
                let who = if key == WHOLE_FEED {
                    "all sources together".to_string()
                } else {
                    format!("source {key}")
                };
                let (m, b) = if key == WHOLE_FEED {
                    (l.max_messages, l.max_bytes)
                } else {
                    (l.max_messages_per_source, l.max_bytes_per_source)
                };
                // The alert first: a crash before the row only means a second alert.
                self.store
                    .raise_alert(
                        QUOTA_ALERT,
                        &format!(
                            "feed `{}`: {who} reached the quarantine quota ({m} messages or {} per {} s); \
                             further rejected messages are answered but not kept (counted in status)",
                            self.feed,
                            fmt_bytes(b),
                            l.window.as_secs()
                        ),
                        crate::store::ts(at),
                    )
                    .await?;
                let mut tx = self.store.write_tx().await?;
                let id: i64 = on_tx!(tx, |c| {
                    sqlx::query_scalar(
                    "INSERT INTO quarantine_dropped (feed, source, started_at, last_at, messages, bytes) \
                     VALUES ($1, $2, $3, $4, 1, $5) RETURNING id",
                )
                .bind(&self.feed)
                .bind(key)
                .bind(at)
                .bind(at)
                .bind(bytes as i64)
                .fetch_one(&mut *c).await
                })?;
                tx.commit().await?;
                tracing::warn!(feed = %self.feed, source = key, "quarantine quota reached; rejected input is no longer kept");
                return Ok(Incident {
                    id,
                    last_at: at,
                    messages: 1,
                    bytes,
                    written: (1, bytes, at),
                    written_when: Instant::now(),
                });
            }
        };
        let mut i = Incident {
            id,
            last_at: at,
            messages,
            bytes: total,
            written: (0, 0, 0),
            written_when: Instant::now(),
        };
        self.write(&mut i).await?;
        Ok(i)
    }

    /// Writes an incident's counts if they changed.
    async fn write(&self, i: &mut Incident) -> StoreResult<()> {
        let now = (i.messages, i.bytes, i.last_at);
        if i.written != now {
            let mut tx = self.store.write_tx().await?;
            on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE quarantine_dropped SET messages = $1, bytes = $2, last_at = $3 WHERE id = $4",
            )
            .bind(i.messages as i64)
            .bind(i.bytes as i64)
            .bind(i.last_at)
            .bind(i.id)
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
            tx.commit().await?;
            i.written = now;
        }
        i.written_when = Instant::now();
        Ok(())
    }

    /// Writes the counts of every incident that changed since it was last written.
    pub async fn flush(&self) -> StoreResult<()> {
        let mut state = self.state.lock().await;
        for i in state.incidents.values_mut() {
            self.write(i).await?;
        }
        Ok(())
    }

    /// Flushes every `every` on the current runtime until the quota is dropped (a stopped
    /// listener), so that `medrelay status` lags the drops by at most about that much.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(quota) = weak.upgrade() else { return };
                if let Err(e) = quota.flush().await {
                    tracing::warn!(feed = %quota.feed, error = %e, "quarantine quota counts not written; retrying");
                }
            }
        })
    }
}

/// What the quota kept out of quarantine, for `medrelay status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DroppedSummary {
    /// Messages answered but not kept, over all incidents.
    pub messages: i64,
    /// Their raw bytes.
    pub bytes: i64,
    /// The incidents of the last day: (feed, source or `*`, messages, bytes).
    pub recent: Vec<(String, String, i64, i64)>,
}

impl Store {
    /// What the quarantine quota dropped: totals, and the incidents active since `since`.
    pub async fn quarantine_dropped(&self, since: Timestamp) -> StoreResult<DroppedSummary> {
        let (messages, bytes): (i64, i64) = on_db!(self, |db| {
            sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(messages), 0) AS BIGINT), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM quarantine_dropped",
        )
        .fetch_one(db).await
        })?;
        let recent = on_db!(self, |db| sqlx::query_as(
            "SELECT feed, source, messages, bytes FROM quarantine_dropped WHERE last_at >= $1 \
             ORDER BY id DESC LIMIT 20",
        )
        .bind(secs(since))
        .fetch_all(db)
        .await)?;
        Ok(DroppedSummary {
            messages,
            bytes,
            recent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::keys::Keys::from_secret(b"quarantine quota test secret");
        let store = super::super::testing::open(&dir.path().join("q.db"), keys)
            .await
            .unwrap();
        (store, dir)
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn limits() -> QuotaLimits {
        QuotaLimits {
            window: Duration::from_secs(3600),
            max_messages: 5,
            max_bytes: 1_000_000,
            max_messages_per_source: 3,
            max_bytes_per_source: 1_000,
        }
    }

    async fn alerts(store: &Store) -> Vec<String> {
        on_db!(store, |db| sqlx::query_scalar(
            "SELECT detail FROM alerts WHERE kind = $1 ORDER BY id"
        )
        .bind(QUOTA_ALERT)
        .fetch_all(db)
        .await)
        .unwrap()
    }

    #[tokio::test]
    async fn quarantine_without_a_quota_is_capped_per_source_counted_and_alerted_once() {
        let (store, _dir) = store().await;
        let q = QuarantineQuota::open(store.clone(), "feed", limits(), at(0))
            .await
            .unwrap();
        let mut kept = 0;
        for i in 0..50 {
            if q.admit("10.0.0.9", 10, at(i)).await.unwrap() == Admission::Keep {
                kept += 1;
            }
        }
        assert_eq!(kept, 3, "the per-source cap");
        q.flush().await.unwrap();
        let d = store.quarantine_dropped(at(0)).await.unwrap();
        assert_eq!((d.messages, d.bytes), (47, 470));
        assert_eq!(d.recent, [("feed".into(), "10.0.0.9".into(), 47, 470)]);
        let a = alerts(&store).await;
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].contains("source 10.0.0.9") && a[0].contains("`feed`"),
            "{}",
            a[0]
        );
        // Another source still has its own quota; together they hit the feed's.
        assert_eq!(
            q.admit("10.0.0.8", 10, at(60)).await.unwrap(),
            Admission::Keep
        );
        assert_eq!(
            q.admit("10.0.0.8", 10, at(61)).await.unwrap(),
            Admission::Keep
        );
        assert_eq!(
            q.admit("10.0.0.7", 10, at(62)).await.unwrap(),
            Admission::Drop
        );
        assert_eq!(alerts(&store).await.len(), 2, "the feed-wide incident");
        // Bytes count too.
        assert_eq!(
            q.admit("10.0.0.6", 2_000, at(63)).await.unwrap(),
            Admission::Drop
        );
    }

    #[tokio::test]
    async fn the_window_moves_and_a_later_incident_alerts_again() {
        let (store, _dir) = store().await;
        let q = QuarantineQuota::open(store.clone(), "feed", limits(), at(0))
            .await
            .unwrap();
        let admit = |t: i64| {
            let q = &q;
            async move { q.admit("10.0.0.9", 10, at(t)).await.unwrap() }
        };
        for t in 0..3 {
            assert_eq!(admit(t).await, Admission::Keep);
        }
        assert_eq!(admit(3).await, Admission::Drop);
        assert_eq!(admit(10).await, Admission::Drop);
        assert_eq!(alerts(&store).await.len(), 1);
        // An hour after each kept message, its place in the window is free again.
        for t in 3600..3603 {
            assert_eq!(admit(t).await, Admission::Keep, "{t}");
        }
        assert_eq!(admit(3603).await, Admission::Drop);
        assert_eq!(
            alerts(&store).await.len(),
            1,
            "within a window of the last drop: the same incident"
        );
        for t in 9000..9003 {
            assert_eq!(admit(t).await, Admission::Keep);
        }
        assert_eq!(admit(9003).await, Admission::Drop);
        assert_eq!(
            alerts(&store).await.len(),
            2,
            "a new incident after a quiet window"
        );
        q.flush().await.unwrap();
        assert_eq!(store.quarantine_dropped(at(0)).await.unwrap().messages, 4);
    }

    #[tokio::test]
    async fn a_restart_keeps_the_feed_window_and_continues_the_open_incident() {
        let (store, _dir) = store().await;
        // What the feed quarantined before the restart counts against its quota.
        for i in 0..5 {
            let mut tx = store.write_tx().await.unwrap();
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO quarantine (source, location, reason, raw, received_at) VALUES ('feed', 'x', 'y', $1, $2)",
            )
            .bind(vec![0u8; 10])
            .bind(secs(at(i)))
            .execute(&mut *c).await.map(|r| r.rows_affected()))
            .unwrap();
            tx.commit().await.unwrap();
        }
        let q = QuarantineQuota::open(store.clone(), "feed", limits(), at(10))
            .await
            .unwrap();
        assert_eq!(
            q.admit("10.0.0.1", 10, at(11)).await.unwrap(),
            Admission::Drop
        );
        q.flush().await.unwrap();
        drop(q);
        let q = QuarantineQuota::open(store.clone(), "feed", limits(), at(20))
            .await
            .unwrap();
        assert_eq!(
            q.admit("10.0.0.2", 10, at(21)).await.unwrap(),
            Admission::Drop
        );
        q.flush().await.unwrap();
        assert_eq!(alerts(&store).await.len(), 1, "the same incident");
        let d = store.quarantine_dropped(at(0)).await.unwrap();
        assert_eq!((d.messages, d.bytes), (2, 20));
    }
}
