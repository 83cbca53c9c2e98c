//! [`RLock`]: a re-entrant file lock.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Result;
use crate::file::flags::LockFlags;
use crate::lock::{Lock, LockGuard};
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};

/// A re-entrant cross-process file lock (Python's `RLock`).
///
/// The first [`acquire`](Self::acquire) takes the file lock exactly as
/// [`Lock::acquire`] does; while any [`RLockGuard`] of this owner is alive,
/// further acquisitions succeed at once and only count. The file is
/// unlocked when the last guard is dropped or released.
///
/// # Owner identity
///
/// The owner is the `RLock` value: every clone of one `RLock` is the same
/// owner and shares one count; a separately created `RLock` on the same
/// path is a different owner and contends like another process would.
/// Ownership is not tied to a thread or a task, so guards can move freely
/// between tasks and threads.
///
/// Clones share the count. The setters return a *new* owner with a count
/// of its own: configure first, then clone.
///
/// # Differences from portalocker
///
/// Releasing is done by guards, so "released more often than acquired"
/// cannot happen; [`count`](Self::count) is the number of live guards.
///
/// # Examples
///
/// ```
/// use portalocker::RLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("state.lock");
/// let rlock = RLock::new(&path);
/// let outer = rlock.acquire().await?;
/// let inner = rlock.clone().acquire().await?; // same owner: no waiting
/// assert_eq!(rlock.count(), 2);
///
/// // A different owner contends.
/// let other = RLock::new(&path).fail_when_locked(true);
/// assert!(other.acquire().await.unwrap_err().is_already_locked());
///
/// drop(inner);
/// outer.release().await?; // last guard: the file is unlocked
/// assert_eq!(rlock.count(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RLock {
    inner: Arc<Owner>,
}

struct Owner {
    lock: Lock,
    /// Serialises the first acquisition so that concurrent first acquirers
    /// of one owner take the file lock once.
    first: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    count: usize,
    guard: Option<LockGuard>,
}

impl Waiting for RLock {
    fn wait_options(&self) -> WaitOptions {
        self.inner.lock.wait_options()
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        self.map(|l| l.with_wait(wait))
    }
}

impl RLock {
    /// A re-entrant lock on `path`, with [`Lock::new`]'s defaults.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self::from_lock(Lock::new(path))
    }

    fn from_lock(lock: Lock) -> Self {
        Self {
            inner: Arc::new(Owner {
                lock,
                first: tokio::sync::Mutex::new(()),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn map(self, f: impl FnOnce(Lock) -> Lock) -> Self {
        Self::from_lock(f(self.inner.lock.clone()))
    }

    wait_setters!("the lock", "false");

    /// See [`Lock::flags`]. Returns a new owner.
    pub fn flags(self, flags: LockFlags) -> Self {
        self.map(|l| l.flags(flags))
    }

    /// The absolute path of the lock file.
    pub fn path(&self) -> &Path {
        self.inner.lock.path()
    }

    /// The number of guards of this owner alive now.
    pub fn count(&self) -> usize {
        self.inner.state().count
    }

    /// Acquires the lock, or re-enters it if this owner already holds it.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Re-entry does not wait. A first
    /// acquisition that is dropped leaves no lock held and the count
    /// unchanged, exactly as [`Lock::acquire`].
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire`], for the first acquisition only.
    ///
    /// # Panics
    ///
    /// As [`Lock::acquire`](crate::Lock::acquire): outside a Tokio runtime, and when it has to wait
    /// on a runtime without the time driver (`enable_time`).
    pub async fn acquire(&self) -> Result<RLockGuard> {
        self.acquire_with(self.wait_options()).await
    }

    acquire_variants!(RLockGuard);

    async fn acquire_with(&self, w: WaitOptions) -> Result<RLockGuard> {
        if let Some(g) = self.reenter() {
            return Ok(g);
        }
        // One clock for the whole call: time spent behind a concurrent
        // first acquisition of this owner counts against the timeout.
        let start = tokio::time::Instant::now();
        let lock = &self.inner.lock;
        let (timeout, fail_fast) = (w.timeout, w.fail_when_locked);
        let _first = match self.inner.first.try_lock() {
            Ok(g) => g,
            Err(_) => {
                let deadline = crate::deadline::deadline_after(start, timeout);
                match tokio::time::timeout_at(deadline, self.inner.first.lock()).await {
                    Ok(g) => g,
                    // Another first acquisition of this owner is still waiting.
                    Err(_) => return Err(lock.engine.busy(timeout, fail_fast, true)),
                }
            }
        };
        if let Some(g) = self.reenter() {
            return Ok(g);
        }
        let guard = lock.acquire_since(Some(start), timeout, fail_fast).await?;
        let mut state = self.inner.state();
        state.guard = Some(guard);
        state.count = 1;
        Ok(RLockGuard {
            shared: Some(self.inner.clone()),
            waited: state
                .guard
                .as_ref()
                .map_or(Duration::ZERO, LockGuard::waited),
        })
    }

    fn reenter(&self) -> Option<RLockGuard> {
        let mut state = self.inner.state();
        (state.count > 0).then(|| {
            state.count += 1;
            RLockGuard {
                shared: Some(self.inner.clone()),
                waited: Duration::ZERO,
            }
        })
    }
}

impl Owner {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    /// Counts one guard down; hands back the file lock when it was the last.
    fn leave(&self) -> Option<LockGuard> {
        let mut state = self.state();
        state.count = state.count.saturating_sub(1);
        if state.count == 0 {
            state.guard.take()
        } else {
            None
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("lock", &self.inner.lock)
            .field("count", &self.count())
            .finish()
    }
}

/// One level of a held [`RLock`]. The file is unlocked when the last guard
/// of the owner is dropped or released.
#[must_use = "if unused the RLock level is released at once"]
#[clippy::has_significant_drop]
pub struct RLockGuard {
    shared: Option<Arc<Owner>>,
    waited: std::time::Duration,
}

impl RLockGuard {
    crate::lock::loss_vocabulary!();

    /// The file lock this owner holds (shared by its guards).
    fn with_lock_guard<R>(&self, f: impl FnOnce(&LockGuard) -> R) -> Option<R> {
        let shared = self.shared.as_ref()?;
        let state = crate::util::lock(&shared.state);
        state.guard.as_ref().map(f)
    }

    /// The absolute path of the lock file.
    pub fn path(&self) -> &Path {
        match &self.shared {
            Some(s) => s.lock.path(),
            None => Path::new(""),
        }
    }

    /// How long this level's acquisition waited (see
    /// [`LockGuard::waited`]); zero for a re-entry by the owner, which never
    /// waits.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::RLock::new(dir.path().join("r.lock"));
    /// let outer = lock.acquire().await?;
    /// let inner = lock.acquire().await?;
    /// assert_eq!(inner.waited(), std::time::Duration::ZERO);
    /// # drop((inner, outer)); Ok(()) }
    /// ```
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Releases this level; when it is the last, unlocks the file and
    /// reports errors as [`LockGuard::release`].
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the level is counted down before the
    /// first `.await`, and a dropped future releases the file as dropping
    /// a [`LockGuard`] does.
    ///
    /// # Errors
    ///
    /// As [`LockGuard::release`], only when this was the last level.
    pub async fn release(mut self) -> Result<()> {
        match self.shared.take().and_then(|s| s.leave()) {
            Some(guard) => guard.release().await,
            None => Ok(()),
        }
    }
}

impl Drop for RLockGuard {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            drop(s.leave());
        }
    }
}

impl fmt::Debug for RLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}
