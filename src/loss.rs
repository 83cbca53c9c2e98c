//! Losing a held lock without dropping its guard: the state a guard shares
//! with whatever notices the loss, and, for file locks, the monitor that
//! notices that the locked file is no longer the file at the lock's path.
//!
//! A file lock is lost when a third party removes the lock file or renames
//! another file over it while it is held: the lock still exists, on a file
//! that no path names any more, and the next process to open the path
//! locks a new file at once. Nothing in `flock(2)` can prevent that; the
//! guard can only tell. On Linux the monitor is woken by inotify (an
//! unlink or rename changes the file's link count, or moves it); elsewhere
//! it checks every [`POLL`]. Either way each check is one `lstat` of the
//! path compared with the identity of the locked file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::file_lock::FileId;

/// A callback run once when a held lock is lost (the `on_lost` option of
/// the distributed locks).
#[allow(dead_code)] // used by the Redis and etcd locks
pub(crate) type LossCallback = Arc<dyn Fn(&crate::Error) + Send + Sync + 'static>;

/// How often a monitor checks the path where no OS notification wakes it
/// (and, as a safety net, where one does).
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// Whether a held lock was lost, and why. Shared by a guard and what
/// watches for the loss; the first reason recorded wins.
#[derive(Debug)]
pub(crate) struct Loss {
    tx: watch::Sender<bool>,
    why: Mutex<Option<String>>,
}

impl Loss {
    pub(crate) fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
            why: Mutex::new(None),
        }
    }

    /// Records the loss (once) and tells every receiver.
    pub(crate) fn fail(&self, why: impl Into<String>) {
        self.fail_first(why);
    }

    /// As [`fail`](Self::fail); `true` for the call that recorded the loss.
    pub(crate) fn fail_first(&self, why: impl Into<String>) -> bool {
        let mut w = crate::util::lock(&self.why);
        if w.is_some() {
            return false;
        }
        *w = Some(why.into());
        drop(w);
        self.tx.send_replace(true);
        true
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.tx.borrow()
    }

    pub(crate) fn reason(&self) -> Option<String> {
        crate::util::lock(&self.why).clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Resolves once the lock is lost.
    pub(crate) async fn lost(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`: `wait_for` only ends on `true`.
        let _ = rx.wait_for(|lost| *lost).await;
    }
}

/// Watches a held lock file: once the path no longer names the file `id`,
/// `loss` is failed. Runs until then or until the returned task is aborted
/// (when the guard goes).
pub(crate) fn monitor_file(
    path: PathBuf,
    id: FileId,
    loss: Arc<Loss>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Closes, attribute changes (the link count), removals and renames
        // of the file wake this; so do releases in this process.
        let watch = crate::wake::Watch::new(&path, id);
        let notify = watch.notifier();
        loop {
            let mut notified = std::pin::pin!(notify.notified());
            notified.as_mut().enable();
            match crate::file_lock::Handle::id_is_at(id, &path) {
                Ok(true) => {}
                Ok(false) => {
                    loss.fail(format!(
                        "the lock file {} was removed or replaced while held, so another \
                         process can lock the file now at that path",
                        path.display()
                    ));
                    return;
                }
                // Not knowing is not a loss: look again later.
                Err(_) => {}
            }
            let sleep = std::pin::pin!(tokio::time::sleep(POLL));
            futures_util::future::select(notified, sleep).await;
        }
    })
}

/// What every guard that can lose its lock without being dropped can tell:
/// the one loss vocabulary of this crate, so that code which must stop when
/// its lock goes is written once for any backend.
///
/// A lock is *lost* when something outside the holder's control takes it
/// away while the guard lives: for a file lock, a third party removing or
/// replacing the lock file (see [`LockGuard::is_lost`](crate::LockGuard::is_lost));
/// for a Redis lock, the subscription dying (see
/// [`RedisLockGuard::is_lost`](crate::RedisLockGuard::is_lost)). A loss is
/// final, and noticed rather than prevented: where a stale holder's writes
/// must be refused, check [`fence_token`](Self::fence_token) at the
/// resource.
///
/// Implemented by [`LockGuard`](crate::LockGuard),
/// [`RLockGuard`](crate::RLockGuard),
/// [`TemporaryFileLockGuard`](crate::TemporaryFileLockGuard),
/// [`PidFileLockGuard`](crate::PidFileLockGuard),
/// [`BoundedSemaphorePermit`](crate::BoundedSemaphorePermit),
/// `RedisLockGuard` and `EtcdLockGuard`, each of which also has these methods of its own (with
/// the details of how it watches).
///
/// # Examples
///
/// ```
/// use portalocker::HeldLock;
///
/// /// A job that stops when its lock goes, whatever kind of lock it is.
/// async fn guarded_job(lock: &impl HeldLock) -> portalocker::Result<u32> {
///     lock.run_while_held(async { /* the work */ 42 }).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let guard = portalocker::Lock::new(dir.path().join("job.lock")).acquire().await?;
/// assert_eq!(guarded_job(&guard).await?, 42);
/// assert_eq!(guard.fence_token(), None); // file locks have no fencing token
/// # Ok(()) }
/// ```
pub trait HeldLock: Send + Sync {
    /// Whether the lock was lost.
    fn is_lost(&self) -> bool;

    /// `Ok(())` while held; once lost, an error of kind
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) saying why.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) once the lock is lost.
    fn ensure_held(&self) -> crate::Result<()>;

    /// A receiver that turns `true` when the lock is lost: hand it to tasks
    /// that must stop then, without giving them the guard.
    fn watch_lost(&self) -> watch::Receiver<bool>;

    /// The fencing token of this grant, strictly greater than every token
    /// of an earlier grant of the same lock, where the backend has one (a
    /// Redis lock with fencing). `None` for file locks.
    fn fence_token(&self) -> Option<u64> {
        None
    }

    /// Resolves when the lock is lost; pending while it is held.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    fn lost(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        let mut rx = self.watch_lost();
        async move {
            if rx.wait_for(|lost| *lost).await.is_err() {
                // Nothing can report a loss any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `work` only while the lock is held: its output, or an error of
    /// kind [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) as soon as
    /// the lock is lost first (then `work` is dropped at its current
    /// `.await`). A loss is noticed, not undone: effects `work` already had
    /// stay.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `work`: dropping this future drops `work`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) if the lock is
    /// lost before `work` completes (or was lost already).
    fn run_while_held<'a, F>(
        &'a self,
        work: F,
    ) -> impl std::future::Future<Output = crate::Result<F::Output>> + Send + 'a
    where
        F: std::future::Future + Send + 'a,
        F::Output: Send,
    {
        async move {
            self.ensure_held()?;
            let lost = std::pin::pin!(self.lost());
            match futures_util::future::select(lost, std::pin::pin!(work)).await {
                futures_util::future::Either::Left(((), _)) => Err(self
                    .ensure_held()
                    .err()
                    .unwrap_or_else(|| crate::Error::new(crate::ErrorKind::LockLost, "lock lost"))),
                futures_util::future::Either::Right((out, _)) => Ok(out),
            }
        }
    }
}

/// `HeldLock` for a guard whose inherent methods say it all.
macro_rules! impl_held_lock {
    ($guard:ty $(, fence = $fence:ident)?) => {
        impl $crate::HeldLock for $guard {
            fn is_lost(&self) -> bool {
                <$guard>::is_lost(self)
            }
            fn ensure_held(&self) -> $crate::Result<()> {
                <$guard>::ensure_held(self)
            }
            fn watch_lost(&self) -> ::tokio::sync::watch::Receiver<bool> {
                <$guard>::watch_lost(self)
            }
            $(
                fn fence_token(&self) -> Option<u64> {
                    <$guard>::$fence(self)
                }
            )?
        }
    };
}

impl_held_lock!(crate::LockGuard);
impl_held_lock!(crate::RLockGuard);
impl_held_lock!(crate::TemporaryFileLockGuard);
impl_held_lock!(crate::PidFileLockGuard);
impl_held_lock!(crate::BoundedSemaphorePermit);
#[cfg(feature = "redis")]
impl_held_lock!(crate::RedisLockGuard, fence = fence_token);
