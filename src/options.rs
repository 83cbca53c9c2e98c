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

/// [`Waiting`] for a type whose options (a struct with a `wait` field) are
/// at `self.<path>` and that has a `map(self, f)` returning a new value with
/// `f` applied to a copy of them.
macro_rules! impl_waiting {
    ($t:ty, $($path:ident).+) => {
        impl $crate::options::Waiting for $t {
            fn wait_options(&self) -> $crate::options::WaitOptions {
                self.$($path).+.wait
            }

            fn with_wait(self, wait: $crate::options::WaitOptions) -> Self {
                self.map(|o| o.wait = wait)
            }
        }
    };
}
pub(crate) use impl_waiting;

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

/// `try_acquire` and `acquire_timeout` for a type with an
/// `acquire_with(&self, WaitOptions)`, the same on every lock type.
macro_rules! acquire_variants {
    ($guard:ty) => {
        /// Makes exactly one attempt and never waits: a busy lock is
        /// [`is_already_locked()`](crate::Error::is_already_locked) at once.
        /// The same as `acquire` with a zero timeout and `fail_when_locked`,
        /// without building a new value: cached state and the owner are kept.
        ///
        /// # Cancel safety
        ///
        /// This method is cancel safe, as `acquire`.
        ///
        /// # Errors
        ///
        /// As `acquire`.
        ///
        /// # Examples
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> portalocker::Result<()> {
        /// # let dir = tempfile::tempdir().unwrap();
        /// let lock = portalocker::Lock::new(dir.path().join("job.lock"));
        /// match lock.try_acquire().await {
        ///     Ok(guard) => { /* ours */ drop(guard) }
        ///     Err(e) if e.is_already_locked() => { /* someone else has it */ }
        ///     Err(e) => return Err(e),
        /// }
        /// # Ok(()) }
        /// ```
        pub async fn try_acquire(&self) -> $crate::Result<$guard> {
            let w = $crate::options::WaitOptions {
                timeout: ::std::time::Duration::ZERO,
                fail_when_locked: true,
                ..$crate::options::Waiting::wait_options(self)
            };
            self.acquire_with(w).await
        }

        /// As `acquire`, waiting up to `timeout` for this call instead of
        /// the configured timeout. Unlike the `timeout` setter it builds no
        /// new value: cached state (a kept descriptor, a connection) and
        /// the owner are kept.
        ///
        /// # Cancel safety
        ///
        /// This method is cancel safe, as `acquire`.
        ///
        /// # Errors
        ///
        /// As `acquire`.
        ///
        /// # Examples
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> portalocker::Result<()> {
        /// # let dir = tempfile::tempdir().unwrap();
        /// use std::time::Duration;
        /// let lock = portalocker::Lock::new(dir.path().join("job.lock"));
        /// let guard = lock.acquire_timeout(Duration::from_millis(100)).await?;
        /// # drop(guard); Ok(()) }
        /// ```
        pub async fn acquire_timeout(
            &self,
            timeout: ::std::time::Duration,
        ) -> $crate::Result<$guard> {
            let w = $crate::options::WaitOptions {
                timeout,
                ..$crate::options::Waiting::wait_options(self)
            };
            self.acquire_with(w).await
        }
    };
}
pub(crate) use acquire_variants;
