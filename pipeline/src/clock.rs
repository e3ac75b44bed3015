//! Time as a dependency, so tests and the demo can control it (no sleeping in tests).

use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

/// A source of "now".
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The system clock shifted to start at a chosen instant: `medrelay --now` (rehearsals, tests with a
/// fixed date) runs as if it were that moment, and time still passes from there.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    offset: SignedDuration,
}

impl OffsetClock {
    /// A clock that reads `at` now and advances with the system clock.
    pub fn starting_at(at: Timestamp) -> Self {
        OffsetClock {
            offset: at.duration_since(Timestamp::now()),
        }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        Timestamp::now() + self.offset
    }
}

/// A clock that only moves when told to: for tests and for `medrelay demo`'s time travel.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: Timestamp) -> Self {
        ManualClock(Mutex::new(at))
    }

    /// Moves to `at` (never backwards).
    pub fn set(&self, at: Timestamp) {
        let mut now = self.0.lock().expect("clock lock");
        if at > *now {
            *now = at;
        }
    }

    /// Moves forward by `by`.
    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_starts_at_the_given_moment_and_keeps_running() {
        let at: Timestamp = "2026-11-29T13:30:00Z".parse().unwrap();
        let clock = OffsetClock::starting_at(at);
        let first = clock.now();
        assert!(first >= at && first.duration_since(at) < SignedDuration::from_secs(5));
        assert!(clock.now() >= first);
    }
}
