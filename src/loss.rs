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
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::file::raw::FileId;
use crate::util::lock;

/// A callback run once when a held lock is lost (the `on_lost` option of
/// the distributed locks).
#[allow(dead_code)] // used by the Redis and etcd locks
pub(crate) type LossCallback = Arc<dyn Fn(&crate::Error) + Send + Sync + 'static>;

/// Runs an `on_lost` callback for the lock `name`; a panic in it is
/// reported, not passed on (it runs inside the task that noticed the loss,
/// which must go on to tell the guard's watchers).
pub(crate) fn run_loss_callback(cb: &LossCallback, err: &Error, name: &str) {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(err)));
    if run.is_err() {
        diag!(
            error,
            "portalocker: the on_lost callback of {name:?} panicked"
        );
    }
}

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
        self.fail_first_then(why, || {})
    }

    /// As [`fail_first`](Self::fail_first), running `before` (once, for the
    /// call that records the loss) after the reason is recorded and before
    /// anyone watching is told: whoever wakes on the loss sees what
    /// `before` did (an `on_lost` callback).
    pub(crate) fn fail_first_then(&self, why: impl Into<String>, before: impl FnOnce()) -> bool {
        let mut w = crate::util::lock(&self.why);
        if w.is_some() {
            return false;
        }
        *w = Some(why.into());
        drop(w);
        before();
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

/// Which lease-based lock a [`LeaseState`] belongs to: the words of its
/// messages and the field of its trace events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // `Etcd` and `RedisCluster` with their features only
pub(crate) enum LeaseKind {
    Etcd,
    LeaseFile,
    RedisCluster,
}

impl LeaseKind {
    fn lock(self) -> &'static str {
        match self {
            Self::Etcd => "etcd lock",
            Self::LeaseFile => "lease lock",
            Self::RedisCluster => "Redis Cluster lock",
        }
    }

    fn unreachable(self) -> &'static str {
        match self {
            Self::Etcd => "etcd could not be reached",
            Self::LeaseFile => "the lease directory could not be written",
            Self::RedisCluster => "the slot's primary and replicas could not confirm a renewal",
        }
    }
}

/// What a lease-based acquisition, its guard and its renewal task share
/// (the etcd lock and the lease lock file): the loss, and the lease's
/// expiry on this host's monotonic clock.
pub(crate) struct LeaseState {
    kind: LeaseKind,
    pub(crate) name: String,
    pub(crate) holder_id: String,
    loss: Loss,
    /// When the lease runs out unless renewed, on this host's monotonic
    /// clock: the send time of the last answered renewal plus the TTL the
    /// server gave. The server counts from when it received it, so this
    /// is never later than the server's own expiry.
    expires: Mutex<Instant>,
    on_lost: Option<LossCallback>,
}

impl LeaseState {
    pub(crate) fn new(
        kind: LeaseKind,
        name: String,
        holder_id: String,
        expires: Instant,
        on_lost: Option<LossCallback>,
    ) -> Self {
        Self {
            kind,
            name,
            holder_id,
            loss: Loss::new(),
            expires: Mutex::new(expires),
            on_lost,
        }
    }

    /// Whether the lease is lost; a lease past its expiry is lost now,
    /// whether or not the renewal task has run since (a process paused
    /// past its TTL learns it here, on its first look).
    pub(crate) fn is_lost(&self) -> bool {
        if self.loss.is_lost() {
            return true;
        }
        if Instant::now() >= *lock(&self.expires) {
            self.fail(format!(
                "the lease was not renewed before it expired (this process was paused, or {}, \
                 for longer than the lease TTL)",
                self.kind.unreachable()
            ));
            return true;
        }
        false
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.is_lost();
        self.loss.reason()
    }

    pub(crate) fn fail(&self, why: impl Into<String>) {
        // The callback runs before watchers are told, so a task woken by
        // the loss sees what the callback did.
        self.loss.fail_first_then(why, || {
            #[cfg(feature = "tracing")]
            match self.kind {
                LeaseKind::Etcd => tracing::error!(
                    etcd_lock = %self.name,
                    holder_id = %self.holder_id,
                    reason = %self.loss.reason().unwrap_or_default(),
                    "lost"
                ),
                LeaseKind::LeaseFile => tracing::error!(
                    lease_lock = %self.name,
                    holder_id = %self.holder_id,
                    reason = %self.loss.reason().unwrap_or_default(),
                    "lost"
                ),
                LeaseKind::RedisCluster => tracing::error!(
                    redis_cluster_lock = %self.name,
                    holder_id = %self.holder_id,
                    reason = %self.loss.reason().unwrap_or_default(),
                    "lost"
                ),
            }
            if let Some(cb) = &self.on_lost {
                run_loss_callback(cb, &self.lost_error(), &self.name);
            }
        });
    }

    pub(crate) fn lost_error(&self) -> Error {
        Error::new(
            ErrorKind::LockLost,
            format!("lost the {}", self.kind.lock()),
        )
        .with_lock_name(self.name.clone())
        .with_holder_id(Some(self.holder_id.clone()))
        .with_reason(self.loss.reason().unwrap_or_default())
    }

    pub(crate) fn watch_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        // A lease past its expiry is reported before the receiver is made.
        self.is_lost();
        self.loss.subscribe()
    }

    pub(crate) async fn lost(&self) {
        // Until the loss is recorded, or the expiry passes unrenewed.
        while !self.is_lost() {
            let expires = self.expires();
            let lost = std::pin::pin!(self.loss.lost());
            let expiry = std::pin::pin!(tokio::time::sleep_until(expires));
            if let futures_util::future::Either::Left(_) =
                futures_util::future::select(lost, expiry).await
            {
                return;
            }
        }
    }

    pub(crate) fn extend(&self, to: Instant) {
        let mut e = lock(&self.expires);
        if to > *e {
            *e = to;
        }
    }

    pub(crate) fn expires(&self) -> Instant {
        *lock(&self.expires)
    }
}

/// The loss methods of a guard of a lease-based lock (a `state:
/// Arc<LeaseState>` field): `is_lost`, `ensure_held`, `watch_lost`,
/// `lost`, `run_while_held`. `$how` says how such a lock is lost.
macro_rules! lease_guard_loss_methods {
    ($how:literal) => {
        #[doc = concat!(
                    "Whether the lock was lost: the lease was not renewed in time (also judged ",
                    "here, from the local clock, so a process that was paused past its TTL ",
                    "learns it on its first look), ", $how, ". Local and cheap."
                )]
        pub fn is_lost(&self) -> bool {
            self.state.is_lost()
        }

        /// `Err` of kind [`ErrorKind::LockLost`](crate::ErrorKind::LockLost)
        /// once the lock is lost; cheap, no I/O.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost), naming the
        /// lock, the holder id and why.
        pub fn ensure_held(&self) -> $crate::Result<()> {
            match self.state.reason() {
                Some(_) => Err(self.state.lost_error()),
                None => Ok(()),
            }
        }

        /// A `watch` receiver that turns `true` when the lock is lost.
        pub fn watch_lost(&self) -> ::tokio::sync::watch::Receiver<bool> {
            self.state.watch_lost()
        }

        /// Resolves when the lock is lost. Pending while it is held.
        ///
        /// # Cancel safety
        ///
        /// This method is cancel safe: it only watches.
        pub async fn lost(&self) {
            self.state.lost().await;
        }

        /// Runs `work` only while the lock is held: its output, or an error
        /// of kind [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) as
        /// soon as the lock is lost first (then `work` is dropped at its
        /// current `.await`). A loss is noticed, not undone: use
        /// `fence_token` where a stale holder's writes must be refused.
        ///
        /// # Cancel safety
        ///
        /// Cancel safe exactly when `work` is.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) if the lock
        /// is lost before `work` completes.
        pub async fn run_while_held<F: ::std::future::Future>(
            &self,
            work: F,
        ) -> $crate::Result<F::Output> {
            self.ensure_held()?;
            let lost = ::std::pin::pin!(self.lost());
            match ::futures_util::future::select(lost, ::std::pin::pin!(work)).await {
                ::futures_util::future::Either::Left(_) => Err(self.state.lost_error()),
                ::futures_util::future::Either::Right((out, _)) => Ok(out),
            }
        }
    };
}
pub(crate) use lease_guard_loss_methods;

/// Aborts a task when dropped.
pub(crate) struct Task(pub(crate) JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
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
        let watch = crate::file::wake::Watch::new(&path, id);
        let notify = watch.notifier();
        loop {
            let mut notified = std::pin::pin!(notify.notified());
            notified.as_mut().enable();
            match crate::file::raw::Handle::id_is_at(id, &path) {
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

/// The `on_lost` setter of a lease-based lock whose options (behind
/// `map`) have an `on_lost` field; `$guard` is its guard type.
macro_rules! on_lost_setter {
    ($guard:ident) => {
        #[doc = concat!(
                    "Runs `callback` once, on the guard's task, when a lock acquired through this ",
                    "value is lost (with the error [`ensure_held`](", stringify!($guard),
                    "::ensure_held) returns from then on)."
                )]
        pub fn on_lost(self, callback: impl Fn(&$crate::Error) + Send + Sync + 'static) -> Self {
            let cb: $crate::loss::LossCallback = ::std::sync::Arc::new(callback);
            self.map(|c| c.on_lost = Some(cb))
        }
    };
}
pub(crate) use on_lost_setter;

/// `HeldLock` for a guard whose inherent methods say it all: its fencing
/// token is `fence = method` (an `Option<u64>`) or, for a lease-based
/// lock whose token is always there, `always_fenced`.
macro_rules! impl_held_lock {
    ($guard:ty, always_fenced) => {
        $crate::loss::impl_held_lock!($guard, fence = always_some_fence_token);
        impl $guard {
            fn always_some_fence_token(&self) -> Option<u64> {
                Some(<$guard>::fence_token(self))
            }
        }
    };
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

pub(crate) use impl_held_lock;

impl_held_lock!(crate::LockGuard);
impl_held_lock!(crate::RLockGuard);
impl_held_lock!(crate::TemporaryFileLockGuard);
impl_held_lock!(crate::PidFileLockGuard);
impl_held_lock!(crate::BoundedSemaphorePermit);
#[cfg(feature = "redis")]
impl_held_lock!(crate::RedisLockGuard, fence = fence_token);

/// What every holder state's tests check alike.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::LossCallback;

    /// A task woken by a loss sees what the `on_lost` callback did: the
    /// callback (slow on purpose, so the opposite order fails every time)
    /// runs before watchers are told, and one that panics does not keep
    /// them from being told. `start(cb)` builds a held state with the
    /// callback; `watch` subscribes to it; `fail` fails it from another
    /// thread; `after` checks it once the watcher woke.
    pub(crate) fn callback_runs_before_watchers_wake<S: Send + Sync + 'static>(
        start: impl Fn(LossCallback) -> Arc<S>,
        watch: impl Fn(&S) -> watch::Receiver<bool>,
        fail: fn(&S),
        after: impl Fn(&S),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for panics in [false, true] {
            let done = Arc::new(AtomicBool::new(false));
            let flag = done.clone();
            let cb: LossCallback = Arc::new(move |e: &crate::Error| {
                assert!(e.is_lock_lost(), "{e}");
                std::thread::sleep(Duration::from_millis(100));
                flag.store(true, Ordering::SeqCst);
                assert!(!panics, "a callback that panics");
            });
            rt.block_on(async {
                let state = start(cb);
                let mut rx = watch(&state);
                let failer = state.clone();
                let t = std::thread::spawn(move || fail(&failer));
                rx.wait_for(|l| *l).await.unwrap();
                assert!(done.load(Ordering::SeqCst), "woken before the callback ran");
                after(&state);
                t.join().unwrap();
            });
        }
    }
}

#[cfg(test)]
mod lease_state_tests {
    use super::*;

    /// The lease-based guards' state calls `on_lost` before it tells
    /// watchers. (Before, watchers were told first, and the etcd test of
    /// `on_lost` failed now and then on a busy machine.)
    #[test]
    fn the_on_lost_callback_runs_before_watchers_wake() {
        testing::callback_runs_before_watchers_wake(
            |cb| {
                Arc::new(LeaseState::new(
                    LeaseKind::LeaseFile,
                    "l".into(),
                    "h".into(),
                    Instant::now() + Duration::from_secs(3600),
                    Some(cb),
                ))
            },
            LeaseState::watch_lost,
            |s| s.fail("gone"),
            |_| {},
        );
    }
}
