//! Pacing: keep sends under the Cloud API's throughput limit (per business number) and the pair limit
//! (per recipient), so that 130429 and 131056 are the exception rather than the feedback loop.
//!
//! Two governor limiters (GCRA, per process):
//! - a direct limiter per business number. Its quota is chosen so that **no window of one second ever
//!   holds more than `per_second` sends** (a GCRA with burst `b` and rate `r` admits at most `b + r` cells
//!   in any closed 1 s window), with about 2 % left over for arrival jitter at Meta's side. A burst of at
//!   least 2 lets a late timer wake-up (tokio's timer has 1 ms granularity) use a slot instead of losing
//!   it, so the sustained rate stays close to `r`.
//! - a keyed limiter per recipient (by contact hash, never the number): one message per
//!   `pair_interval`. A recipient that is not ready is **not waited for**: [`Pacing::recipient_ready`]
//!   says when it will be, and the sender returns that job to the outbox for then.
//!
//! The governor clock is injectable ([`FakeRelativeClock`] in tests). Waits use `tokio::time::sleep`
//! against that clock's verdict; `tokio::time::pause` does not move governor's clock.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock as GovClock, DefaultClock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde_json::Value;

use super::{Accepted, SendError, WhatsAppTransport};

/// The two numbers that drive pacing; [`super::cloud::CloudApiConfig`] carries them from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacingLimits {
    /// Cloud API throughput of the business number (80 by default, 1,000 after the upgrade, 20 for
    /// coexistence numbers).
    pub per_second: u32,
    /// Minimum time between two messages to the same recipient (about 6 s per Meta's pair limit).
    pub pair_interval: Duration,
}

impl Default for PacingLimits {
    fn default() -> Self {
        PacingLimits {
            per_second: 80,
            pair_interval: Duration::from_secs(6),
        }
    }
}

/// The GCRA parameters for a per-second limit: `(burst, sustained rate per second)`.
///
/// The period is a hair over `1 s / rate`, so a closed 1 s window holds at most `burst + rate - 1`
/// cells, which is kept at or below `per_second - headroom`. The burst stays at least 2: with a burst of
/// 1, every late sender loses its slot for good (measured: 71 msg/s sustained at 80/s, BENCHMARKS.md).
/// Headroom for arrival jitter at Meta's side: 2 % of the limit, at least one message (80/s: rate 78,
/// at most 79 in any window; 1000/s: rate 971, at most 980). A request that still lands in a full
/// window at Meta's side gets 130429 and is retried with backoff like any other.
pub fn global_quota_parameters(per_second: u32) -> (u32, u32) {
    let n = per_second.max(1);
    if n <= 2 {
        return (1, n);
    }
    let burst = (n / 100).clamp(2, n - 1);
    let headroom = (n / 50).max(1);
    let rate = (n + 1).saturating_sub(burst + headroom).max(1);
    (burst, rate)
}

fn global_quota(per_second: u32) -> Quota {
    let (burst, rate) = global_quota_parameters(per_second);
    let period = Duration::from_nanos(1_000_000_000 / u64::from(rate) + 1);
    Quota::with_period(period)
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"))
}

fn pair_quota(interval: Duration) -> Quota {
    Quota::with_period(interval.max(Duration::from_millis(1))).expect("a non-zero period")
}

/// What the sender asks of a pacer. A trait so the sender does not carry governor's clock type.
#[async_trait]
pub trait Pacing: Send + Sync {
    /// Takes the recipient's turn if it is ready; otherwise says how long until it is (the caller
    /// defers that job and moves on to other recipients).
    fn recipient_ready(&self, contact_hash: &str) -> Result<(), Duration>;
    /// Waits until the business number may send one more message, and takes that slot.
    async fn until_ready(&self);
    /// Forgets recipients whose pair limit has fully recovered (keyed limiters never shrink).
    fn housekeeping(&self);
}

/// The governor-backed pacer for one business number.
pub struct Pacer<C: GovClock = DefaultClock> {
    limits: PacingLimits,
    clock: C,
    global: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    pair: RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
}

impl Pacer<DefaultClock> {
    /// A pacer on the monotonic system clock (the production one).
    pub fn new(limits: PacingLimits) -> Self {
        Pacer::with_clock(limits, DefaultClock::default())
    }
}

impl Pacer<FakeRelativeClock> {
    /// A pacer on a clock the test moves (`clock.advance(..)`); see [`Pacer::clock`]. Its
    /// [`Pacing::until_ready`] only returns once the test has advanced the clock far enough.
    pub fn fake(limits: PacingLimits) -> Self {
        Pacer::with_clock(limits, FakeRelativeClock::default())
    }
}

impl<C: GovClock + Clone> Pacer<C> {
    /// A pacer on any governor clock.
    pub fn with_clock(limits: PacingLimits, clock: C) -> Self {
        Pacer {
            limits,
            global: RateLimiter::direct_with_clock(global_quota(limits.per_second), clock.clone()),
            pair: RateLimiter::dashmap_with_clock(pair_quota(limits.pair_interval), clock.clone()),
            clock,
        }
    }

    /// The limits this pacer enforces.
    pub fn limits(&self) -> PacingLimits {
        self.limits
    }

    /// The governor clock (for tests driving a [`FakeRelativeClock`]).
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Takes a global slot now if there is one; otherwise how long until there is.
    pub fn try_global(&self) -> Result<(), Duration> {
        self.global
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn try_recipient(&self, contact_hash: &str) -> Result<(), Duration> {
        self.pair
            .check_key(&contact_hash.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Number of recipients currently tracked by the pair limiter.
    pub fn tracked_recipients(&self) -> usize {
        self.pair.len()
    }
}

#[async_trait]
impl<C> Pacing for Pacer<C>
where
    C: GovClock + Clone + Send + Sync,
    C::Instant: Send + Sync,
{
    fn recipient_ready(&self, contact_hash: &str) -> Result<(), Duration> {
        self.try_recipient(contact_hash)
    }

    async fn until_ready(&self) {
        loop {
            match self.try_global() {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait.max(Duration::from_micros(50))).await,
            }
        }
    }

    fn housekeeping(&self) {
        self.pair.retain_recent();
        self.pair.shrink_to_fit();
    }
}

/// A transport that waits for the global pacer before each send: for traffic that is not an outbox
/// job (service replies to patients), so it still counts against the business number's throughput.
pub struct PacedTransport {
    inner: Arc<dyn WhatsAppTransport>,
    pacer: Arc<dyn Pacing>,
}

impl PacedTransport {
    /// Wraps `inner` so every send first takes a global slot from `pacer`.
    pub fn new(inner: Arc<dyn WhatsAppTransport>, pacer: Arc<dyn Pacing>) -> Self {
        PacedTransport { inner, pacer }
    }
}

#[async_trait]
impl WhatsAppTransport for PacedTransport {
    async fn send(&self, body: &Value) -> Result<Accepted, SendError> {
        self.pacer.until_ready().await;
        self.inner.send(body).await
    }

    /// Media downloads are not messages: not paced.
    async fn fetch_media(&self, media_id: &str) -> Result<super::MediaFile, SendError> {
        self.inner.fetch_media(media_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Greedy sender on a fake clock: take a slot whenever one is free, else jump to when it is.
    fn greedy_times(per_second: u32, n: usize) -> Vec<u64> {
        let p = Pacer::fake(PacingLimits {
            per_second,
            pair_interval: Duration::from_secs(6),
        });
        let mut times = Vec::with_capacity(n);
        let mut now: u64 = 0;
        while times.len() < n {
            match p.try_global() {
                Ok(()) => times.push(now),
                Err(wait) => {
                    let step = wait.as_nanos().max(1) as u64;
                    p.clock().advance(Duration::from_nanos(step));
                    now += step;
                }
            }
        }
        times
    }

    /// The largest number of sends in any closed window `[t, t + 1 s]`.
    fn max_in_closed_second(times: &[u64]) -> usize {
        let mut window = VecDeque::new();
        let mut best = 0;
        for &t in times {
            window.push_back(t);
            while let Some(&first) = window.front() {
                if t - first > 1_000_000_000 {
                    window.pop_front();
                } else {
                    break;
                }
            }
            best = best.max(window.len());
        }
        best
    }

    #[test]
    fn no_one_second_window_exceeds_the_limit_and_the_rate_stays_close() {
        for per_second in [1, 2, 3, 20, 80, 250, 1000] {
            let n = (per_second as usize * 10).max(50);
            let times = greedy_times(per_second, n);
            let max = max_in_closed_second(&times);
            assert!(
                max <= per_second as usize,
                "{per_second}/s: {max} in one window"
            );
            let (burst, rate) = global_quota_parameters(per_second);
            assert!(
                burst + rate - 1 <= per_second.max(1),
                "{per_second}: {burst}+{rate}"
            );
            // Sustained: after the first burst, the n-th send happens near n / rate seconds.
            let span = (times[n - 1] - times[0]) as f64 / 1e9;
            let sustained = (n - burst as usize) as f64 / span;
            assert!(
                sustained >= f64::from(rate) * 0.99,
                "{per_second}/s sustained only {sustained:.1}"
            );
            if per_second >= 80 {
                assert!(
                    f64::from(rate) >= f64::from(per_second) * 0.9,
                    "{per_second}: {rate}"
                );
            }
        }
    }

    #[test]
    fn a_busy_recipient_says_when_it_is_ready_and_does_not_block_others() {
        let p = Pacer::fake(PacingLimits {
            per_second: 80,
            pair_interval: Duration::from_secs(6),
        });
        assert!(p.recipient_ready("c_a").is_ok());
        let wait = p.recipient_ready("c_a").unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        assert!(
            p.recipient_ready("c_b").is_ok(),
            "another recipient is free"
        );
        p.clock().advance(Duration::from_secs(5));
        assert_eq!(
            p.recipient_ready("c_a").unwrap_err(),
            Duration::from_secs(1)
        );
        p.clock().advance(Duration::from_secs(1));
        assert!(p.recipient_ready("c_a").is_ok());
        assert_eq!(p.tracked_recipients(), 2);
        p.clock().advance(Duration::from_secs(60));
        p.housekeeping();
        assert_eq!(
            p.tracked_recipients(),
            0,
            "recovered recipients are forgotten"
        );
    }

    #[test]
    fn quota_parameters_are_sane() {
        assert_eq!(global_quota_parameters(80), (2, 78));
        assert_eq!(global_quota_parameters(1000), (10, 971));
        assert_eq!(global_quota_parameters(20), (2, 18));
        assert_eq!(global_quota_parameters(0), (1, 1));
    }
}
