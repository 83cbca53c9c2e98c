//! The one retry schedule: an attempt at once, then one after each
//! jittered pause until the deadline. How the pauses are jittered is a
//! policy ([`Jitter`]): the file locks' (never longer than the interval, a
//! last attempt at the deadline) or Python's Redis lock's.

use std::time::Duration;

use tokio::time::Instant;

use crate::util::{unit, NEVER};

/// The shortest pause between attempts, so a zero interval never spins.
pub(crate) const MIN_PAUSE: Duration = Duration::from_millis(1);

/// How a [`Schedule`] spreads its attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Jitter {
    /// Targets at jittered multiples of the interval from the start, each
    /// pause 0.5–1 × the interval, the last target the deadline itself: a
    /// release is seen within one interval and the time an attempt takes
    /// does not stretch the schedule.
    Below,
    /// Python's Redis timeout generator: each pause is the interval ×
    /// U\[0.5, 1.5) from now, capped at the time left; once the deadline
    /// has passed no attempt is left (see [`Schedule::expired`]).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Around,
}

/// Paces the attempts of one acquisition.
#[derive(Debug)]
pub(crate) struct Schedule {
    deadline: Instant,
    interval: Duration,
    next: Instant,
    jitter: Jitter,
}

impl Schedule {
    /// Starts the clock now.
    pub(crate) fn new(timeout: Duration, interval: Duration) -> Self {
        let now = Instant::now();
        Self::from(now, deadline_after(now, timeout), interval)
    }

    /// A schedule that started at `start` and ends at `deadline`.
    pub(crate) fn from(start: Instant, deadline: Instant, interval: Duration) -> Self {
        Self {
            deadline,
            interval,
            next: start,
            jitter: Jitter::Below,
        }
    }

    /// The same schedule with another jitter policy.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis lock's
    pub(crate) fn jitter(self, jitter: Jitter) -> Self {
        Self { jitter, ..self }
    }

    /// Whether the deadline has passed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the Redis lock's
    pub(crate) fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Sleeps until the next attempt is due. Returns `false`, without
    /// sleeping, once the deadline has passed: no attempt is left.
    #[cfg(test)]
    pub(crate) async fn wait(&mut self) -> bool {
        match self.next_attempt() {
            Some(t) => {
                tokio::time::sleep_until(t).await;
                true
            }
            None => false,
        }
    }

    /// When the next attempt is due, or `None` once the deadline has
    /// passed: no attempt is left.
    ///
    /// Targets are fixed (start + jittered multiples of the interval), so
    /// the time an attempt takes does not stretch the schedule; each pause
    /// is at least [`MIN_PAUSE`] and the last target is the deadline.
    pub(crate) fn next_attempt(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        self.next = self.next_target(now);
        Some(self.next)
    }

    fn next_target(&self, now: Instant) -> Instant {
        if self.jitter == Jitter::Around {
            let left = self.deadline.saturating_duration_since(now);
            return now + around(self.interval).min(left);
        }
        // Woken before the target (a release elsewhere that another waiter
        // won): keep it, so early wake-ups never push the polling back.
        if self.next > now {
            return self.next;
        }
        let step = jittered(self.interval);
        let target = deadline_after(self.next, step).max(now + MIN_PAUSE);
        target.min(self.deadline.max(now + MIN_PAUSE))
    }
}

/// `start + timeout`, saturating at about 30 years ahead (tokio's "never"),
/// so no `Duration` up to `Duration::MAX` can overflow an `Instant`.
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout.min(NEVER))
        .unwrap_or_else(|| start + NEVER)
}

/// `d × factor` for a factor in [0, 2), saturating instead of panicking
/// when the product does not fit a `Duration` (e.g. `Duration::MAX`).
pub(crate) fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// `interval × U[0.5, 1.5)`: Python's pause between two Redis lock
/// attempts.
pub(crate) fn around(interval: Duration) -> Duration {
    scale(interval, 0.5 + unit())
}

/// `interval` scaled by a random factor in [0.5, 1], so contenders that
/// started together drift apart (upstream #101) while no pause is longer
/// than `interval`: a released lock is noticed within one interval.
pub(crate) fn jittered(interval: Duration) -> Duration {
    scale(interval, 0.5 + unit() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_one_interval() {
        let i = Duration::from_millis(100);
        let mut lo = Duration::MAX;
        let mut hi = Duration::ZERO;
        for _ in 0..10_000 {
            let j = jittered(i);
            lo = lo.min(j);
            hi = hi.max(j);
        }
        assert!(lo >= Duration::from_millis(50), "{lo:?}");
        assert!(hi <= Duration::from_millis(100), "{hi:?}");
        // Really random: the spread covers most of the range.
        assert!(hi - lo > Duration::from_millis(40), "{lo:?}..{hi:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_timeout_allows_no_wait() {
        let mut s = Schedule::new(Duration::ZERO, Duration::from_millis(250));
        assert!(!s.wait().await);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_until_and_at_the_deadline() {
        let start = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), Duration::from_millis(250));
        let mut times = vec![Duration::ZERO];
        while s.wait().await {
            times.push(start.elapsed());
        }
        // 4 to 8 pauses of 125-250 ms, the last ending at the deadline.
        assert!((5..=9).contains(&times.len()), "{times:?}");
        assert_eq!(*times.last().unwrap(), Duration::from_secs(1), "{times:?}");
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= MIN_PAUSE, "{times:?}");
            assert!(gap <= Duration::from_millis(250), "{times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_never_spins() {
        let start = Instant::now();
        let mut s = Schedule::new(Duration::from_millis(10), Duration::ZERO);
        let mut n = 0;
        while s.wait().await {
            n += 1;
        }
        assert!(n <= 10, "{n} attempts in 10 ms");
        assert_eq!(start.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn python_jitter_spreads_around_the_interval_and_stops_at_the_deadline() {
        let start = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(10), Duration::from_millis(100))
            .jitter(Jitter::Around);
        let deadline = start + Duration::from_secs(10);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        loop {
            // Each pause is measured from when it was computed: the timer
            // may wake up to 1 ms late, which is not the schedule's doing.
            let now = Instant::now();
            let Some(t) = s.next_attempt() else { break };
            if t < deadline {
                (lo, hi) = (lo.min(t - now), hi.max(t - now));
            }
            tokio::time::sleep_until(t).await;
            if s.expired() {
                break;
            }
        }
        assert!(lo >= Duration::from_millis(50), "{lo:?}");
        assert!(hi < Duration::from_millis(150), "{hi:?}");
        assert!(
            hi > Duration::from_millis(100),
            "never above the interval: {hi:?}"
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "the last pause is capped"
        );
        assert!(s.next_attempt().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn huge_timeout_does_not_overflow() {
        let mut s = Schedule::new(Duration::MAX, Duration::from_millis(1));
        assert!(s.wait().await);
    }

    #[tokio::test(start_paused = true)]
    async fn every_duration_saturates() {
        let all = [Duration::ZERO, Duration::from_millis(7), Duration::MAX];
        for timeout in all {
            for interval in all {
                let mut s = Schedule::new(timeout, interval);
                // Two targets: the second is computed from the first.
                for _ in 0..2 {
                    if let Some(t) = s.next_attempt() {
                        assert!(t > Instant::now(), "{timeout:?} {interval:?}");
                    }
                }
                let _ = jittered(interval);
                let _ = scale(interval, 1.999);
            }
        }
    }
}
