//! The waiting options every lock shares, and the one set of setters
//! every lock type gets from [`wait_setters!`].
//!
//! # What a setter does
//!
//! The rule is the same on every type: a setter consumes the value and
//! returns a **new, independent** one with the option changed. The new
//! value shares no cached state with the old one (no kept descriptor, no
//! connection it opened, no [`RLock`](crate::RLock) hold count) and is a
//! new owner: it contends with guards of the value it was made from, as
//! another `Lock::new` of the same path would. What the caller handed in
//! (a path, a Redis connection or URL) carries over unchanged. Configure
//! first, then acquire.

use std::time::Duration;

/// Python portalocker's `DEFAULT_TIMEOUT`: 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Python portalocker's `DEFAULT_CHECK_INTERVAL`: 250 ms.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How an acquisition waits: for how long, how often it retries, and
/// whether it gives up at the first busy attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitOptions {
    pub(crate) timeout: Duration,
    pub(crate) check_interval: Duration,
    pub(crate) fail_when_locked: bool,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            check_interval: DEFAULT_CHECK_INTERVAL,
            fail_when_locked: false,
        }
    }
}

/// A lock type whose waiting can be configured: the hook behind
/// [`wait_setters!`]. `with_wait` builds the new value the setter rule
/// (module docs) describes.
pub(crate) trait Waiting: Sized {
    fn wait_options(&self) -> WaitOptions;
    fn with_wait(self, wait: WaitOptions) -> Self;
}

/// The `timeout`, `check_interval` and `fail_when_locked` setters, with
/// the same docs and behaviour on every type that implements
/// [`Waiting`]. `$what` names what is waited for ("the lock", "a free
/// slot"); `$fail_default` is the type's `fail_when_locked` default.
macro_rules! wait_setters {
    ($what:literal, $fail_default:literal) => {
        #[doc = concat!(
                            "How long `acquire` waits for ", $what, " (default 5 s). Zero makes ",
                            "exactly one attempt; any `Duration` up to `Duration::MAX` is valid ",
                            "(deadlines saturate at about 30 years).\n\n",
                            "Like every setter, this returns a new, independent value: see ",
                            "[the setter rule](crate#configuring-a-lock)."
                        )]
        pub fn timeout(self, timeout: ::std::time::Duration) -> Self {
            let mut w = $crate::options::Waiting::wait_options(&self);
            w.timeout = timeout;
            $crate::options::Waiting::with_wait(self, w)
        }

        #[doc = concat!(
                            "The longest pause between attempts while waiting for ", $what,
                            " (default 250 ms). Each pause is jittered to 0.5–1 × this value ",
                            "and lasts at least 1 ms, so a release is noticed within one ",
                            "interval even when no wake-up arrives.\n\n",
                            "Like every setter, this returns a new, independent value: see ",
                            "[the setter rule](crate#configuring-a-lock)."
                        )]
        pub fn check_interval(self, interval: ::std::time::Duration) -> Self {
            let mut w = $crate::options::Waiting::wait_options(&self);
            w.check_interval = interval;
            $crate::options::Waiting::with_wait(self, w)
        }

        #[doc = concat!(
                            "Fail at the first busy attempt instead of waiting for ", $what,
                            " (default ", $fail_default, ").\n\n",
                            "Like every setter, this returns a new, independent value: see ",
                            "[the setter rule](crate#configuring-a-lock)."
                        )]
        pub fn fail_when_locked(self, yes: bool) -> Self {
            let mut w = $crate::options::Waiting::wait_options(&self);
            w.fail_when_locked = yes;
            $crate::options::Waiting::with_wait(self, w)
        }
    };
}
pub(crate) use wait_setters;
