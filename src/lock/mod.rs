//! [`Lock`]: a cross-process file lock with a timeout.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::file::engine::{Engine, FileOptions, Granted};
use crate::file::flags::LockFlags;
use crate::file::gate::Pass;
use crate::file::raw::{FileId, Handle};
use crate::loss::Loss;
use crate::options::{acquire_variants, wait_setters, WaitOptions};

pub use crate::options::{DEFAULT_CHECK_INTERVAL, DEFAULT_TIMEOUT};

mod guard;

pub(crate) use guard::loss_vocabulary;
pub use guard::LockGuard;

/// A cross-process lock on a file, with a timeout.
///
/// `Lock::new(path)` has Python portalocker's defaults: timeout 5 s, check
/// interval 250 ms, `fail_when_locked` false, an exclusive lock, the file
/// opened for append (and read) and created if missing. The path is made
/// absolute against the current directory when the `Lock` is created, so a
/// later `chdir` cannot redirect it.
///
/// A `Lock` is a cheap description (a path and options): nothing is
/// opened or locked until [`acquire`](Lock::acquire). Acquiring returns a
/// [`LockGuard`] that owns the locked file; dropping the guard or calling
/// [`release`](LockGuard::release) unlocks it.
///
/// Clones are cheap and equivalent; each [`acquire`](Self::acquire) is a
/// separate owner, so two acquisitions contend even when they use the same
/// `Lock`, as two processes would.
///
/// # Differences from portalocker
///
/// * The lock file is opened with `O_NOFOLLOW` and `O_NONBLOCK`: a symlink
///   at the path is refused (never followed, never truncated through) and a
///   FIFO never hangs the open; anything but a regular file is an error.
/// * Created lock files get mode `0o664` (minus the umask), never
///   world-writable.
/// * After waiting, a last attempt is made at the deadline itself, and the
///   pauses are jittered (0.5–1 × `check_interval`), so contenders drift
///   apart yet a release is seen within one interval.
/// * Re-acquiring through the same `Lock` while a guard is alive contends
///   instead of returning the same handle: guards, not the `Lock`, own
///   locks. Use [`RLock`](crate::RLock) for re-entrancy.
///
/// # A lock this task already holds
///
/// Acquiring a `Lock` whose conflicting guard this same task holds waits
/// like any other contention, and at the timeout fails with
/// [`ErrorKind::AlreadyLocked`](crate::ErrorKind::AlreadyLocked) ("already
/// locked by another owner in this process"); it is not refused at once.
/// The guard may have been handed to another task, or be held by another
/// branch of a `join!` in this very task, and then the wait ends as soon as
/// it is released: nothing the crate can observe tells those cases from a
/// guard that stays in the waiting task. Use [`RLock`](crate::RLock) to
/// re-enter a lock, and [`try_acquire`](Self::try_acquire) to fail at once.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use portalocker::Lock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("app.lock");
/// let lock = Lock::new(&path).timeout(Duration::from_secs(1));
/// let guard = lock.acquire().await?;
///
/// // A second owner cannot get it while the guard lives.
/// assert!(lock.try_acquire().await.unwrap_err().is_already_locked());
///
/// guard.release().await?;
/// # Ok(()) }
/// ```
///
/// # How waiting works
///
/// Acquisitions of one process pass a per-file FIFO gate first, so tasks
/// are served in the order they asked, and the next one wakes the moment a
/// guard is released; only the task at the head of the queue touches the
/// file.
///
/// Across processes (Linux, local filesystems), a waiter *announces*
/// itself to the holder with an open-file-description byte lock far beyond
/// the file's data (`F_OFD_SETLK`): it needs only read access to the file,
/// changes nothing on disk — not the access time, no sidecar file — is
/// independent of the `flock` lock, and vanishes with the waiter's
/// descriptor, even if the waiter is killed. A holder that has had a 1 ms
/// run of re-acquisitions checks for announcements on release (at most
/// once per millisecond); if there is one it *hands over*: it stays away
/// for 2 ms and wakes the longest-waiting waiter alone, through that
/// waiter's process's doorbell (an abstract Unix datagram socket), keeping
/// its own descriptor. Where it cannot ring — the waiter's process has no
/// doorbell, or the waiter did not take the last handover — it closes its
/// descriptor instead, which inotify reports to every waiter, and among
/// them the longest-waiting one goes first. Reads and writes of the lock
/// file, by the holder or anyone else, wake nobody.
///
/// Where `flock` may be emulated with byte-range locks (NFS, SMB, FUSE and
/// other network or cluster filesystems), and off Linux, nobody announces:
/// waiters poll every `check_interval` (on Linux a close of the file still
/// wakes them). Python portalocker processes poll as they always do and
/// are excluded exactly as before. The one interaction to know: a process
/// that takes POSIX byte-range locks (`fcntl.lockf`) on the *whole* lock
/// file would see a waiting process's announcement as a conflicting read
/// lock — mixing `lockf` and `flock` on one file never excluded anything
/// anyway.
///
/// An exclusive lock needs only read access: a lock file another user owns
/// and this user may only read is opened read-only (writes through the
/// guard then fail with the OS's error).
///
/// Every attempt is a non-blocking `flock(LOCK_NB)`, which never blocks a
/// thread. Only opening the file can block (a slow disk, NFS), so the open
/// runs on Tokio's blocking pool with [`spawn_blocking`]; the attempts and
/// the waiting between them happen on the calling task with
/// [`tokio::time`]. A runtime thread is never blocked.
///
/// A `Lock` keeps the descriptor of its last released lock open (unlocked)
/// and reuses it for the next acquisition, so a steady-state
/// acquire/release pair costs two `flock` calls and one `stat`, not an
/// `open` and a thread hop. Before a reused (or long-waited-on) descriptor
/// is trusted, its device and inode are compared with the file now at the
/// path: a lock on a file that was deleted or replaced in the meantime is
/// dropped and the path opened afresh, so a waiter never locks a file that
/// is gone. A third party that removes or replaces the file *while it is
/// held* does make two owners (the holder keeps a lock on a file no path
/// names); the guard then reports it: [`LockGuard::is_lost`],
/// [`LockGuard::lost`], and `release()` returning
/// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost). Dropping every
/// clone of the `Lock` and every guard closes the cached descriptor.
///
/// [`spawn_blocking`]: tokio::task::spawn_blocking
#[derive(Clone)]
pub struct Lock {
    pub(crate) engine: Arc<Engine>,
}

crate::options::impl_waiting!(Lock, engine.opts);

impl Lock {
    /// A lock on `path` with portalocker's defaults. No I/O happens here.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self::with_options(absolute(path.as_ref()), FileOptions::default(), true)
    }

    pub(crate) fn with_options(path: PathBuf, opts: FileOptions, reuse: bool) -> Self {
        Self {
            engine: Arc::new(Engine::new(path, opts, reuse)),
        }
    }

    /// A semaphore slot (see [`Engine::slot`]).
    pub(crate) fn slot(path: PathBuf, opts: FileOptions, keep_open: bool) -> Self {
        Self {
            engine: Arc::new(Engine::slot(path, opts, keep_open)),
        }
    }

    /// A new `Lock` (see the setter rule) with changed options.
    fn map(self, f: impl FnOnce(&mut FileOptions)) -> Self {
        let mut opts = self.engine.opts;
        f(&mut opts);
        Self::with_options(self.engine.path.clone(), opts, self.engine.reuse())
    }

    wait_setters!("the lock", "false");

    /// [`LockFlags::SHARED`] or [`LockFlags::EXCLUSIVE`] (the default);
    /// `NON_BLOCKING` is implied and may be included. Any other set makes
    /// `acquire` fail with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
    ///
    /// A shared lock needs only read access: an existing lock file is
    /// opened **read-only** (so readers can share a lock on a read-only
    /// mount or on another user's `0o644` file, as `flock(LOCK_SH)`
    /// allows), and the guard's file then refuses writes. A missing file is
    /// created as for an exclusive lock. With [`truncate`](Self::truncate)
    /// the file is opened for writing whatever the mode.
    pub fn flags(self, flags: LockFlags) -> Self {
        self.map(|o| o.flags = flags)
    }

    /// Empty the file once the lock is held (portalocker's `'w'` mode). The
    /// file is never truncated before the lock is ours, and the guard then
    /// writes at its position rather than appending.
    pub fn truncate(self, yes: bool) -> Self {
        self.map(|o| o.truncate = yes)
    }

    /// Refuse to lock a file on a filesystem where `flock(2)` may not
    /// exclude other hosts — network, FUSE or unrecognised filesystems
    /// (see [`filesystem_of`](crate::filesystem_of)) — instead of locking
    /// it (default `false`: lock wherever the OS lets us, as Python
    /// portalocker does). A refused `acquire` fails with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), naming
    /// the filesystem and pointing at [`LeaseLock`](crate::LeaseLock).
    /// The filesystem is examined on every acquisition (one `statfs`), so
    /// a mount that appears under the path later is seen.
    ///
    /// Like every setter, this returns a new, independent value: see
    /// [the setter rule](crate#configuring-a-lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("job.lock")).local_filesystem_only(true);
    /// match lock.acquire().await {
    ///     Ok(guard) => drop(guard),
    ///     Err(e) if e.kind() == portalocker::ErrorKind::Unsupported => {
    ///         eprintln!("{e}"); // e.g. "... nfs4 is a network filesystem ...: use LeaseLock"
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn local_filesystem_only(self, yes: bool) -> Self {
        self.map(|o| o.local_only = yes)
    }

    /// The absolute path of the lock file.
    pub fn path(&self) -> &Path {
        &self.engine.path
    }

    /// Who holds this lock file now, without acquiring it: the processes
    /// other than this one that the OS lists for it (on Linux from
    /// `/proc/locks`, with their command lines; empty elsewhere, and when
    /// the file does not exist or nobody holds it). Best effort, see
    /// [`Holder`](crate::Holder); holders in this process are not listed.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("job.lock"));
    /// for h in lock.holders().await {
    ///     println!("held by {h}"); // e.g. "held by pid 4242 (python3 worker.py)"
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holders(&self) -> Vec<crate::Holder> {
        let engine = self.engine.clone();
        crate::util::run_blocking(move || engine.holders())
            .await
            .unwrap_or_default()
    }

    /// Acquires the lock, waiting up to the configured timeout.
    ///
    /// The first attempt is made at once. While the lock is busy the
    /// attempts repeat every `check_interval` (jittered), with a last one at
    /// the deadline; with `fail_when_locked` the first busy attempt ends the
    /// call. Only contention is retried: any other failure (a missing
    /// directory, permission denied, a directory or symlink at the path)
    /// returns at once.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. A lock is only ever taken by a
    /// non-blocking attempt on this task, immediately followed by the
    /// return of the guard, so dropping the future at any `.await` leaves no
    /// lock held. A descriptor it opened is closed on drop; one still being
    /// opened on the blocking pool is closed as soon as that open finishes.
    ///
    /// Tasks of this process wait for one lock file in a FIFO queue:
    /// cancelling the future gives up its place in that queue, and a new
    /// call joins at the back.
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) when the lock is
    /// still busy at the deadline (or at once with `fail_when_locked`);
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for
    /// invalid flags, an empty path, a NUL byte, or a path that is not a
    /// regular file; [`ErrorKind::Io`](crate::ErrorKind::Io) for any other
    /// OS error, with the OS error as [`Error::io_error`].
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as
    /// [`spawn_blocking`](tokio::task::spawn_blocking) does, and when it has
    /// to *wait* — the lock is busy and the timeout is not zero — on a
    /// runtime built without the time driver (`enable_time`), as
    /// [`tokio::time::sleep`] does. An uncontended acquisition, or one with
    /// a zero timeout, needs no timer.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("job.lock"));
    /// let guard = lock.acquire().await?;
    /// // ... exclusive work ...
    /// drop(guard); // or guard.release().await? to see errors
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<LockGuard> {
        self.acquire_with(self.engine.opts.wait).await
    }

    acquire_variants!(LockGuard);

    /// Takes the lock **shared**, as a reader, whatever the configured
    /// [`flags`](Self::flags): many readers hold it at once, and no writer
    /// while they do (the vocabulary of [`tokio::sync::RwLock`] and
    /// `fd-lock`). Waits as [`acquire`](Self::acquire) does.
    ///
    /// A `Lock` configured exclusive keeps a second, shared view of its
    /// file for this (built on first use, with its own kept descriptor),
    /// so alternating `read` and `write` reuses descriptors too. A reader
    /// and a writer of this process queue in one FIFO, in arrival order.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as `acquire`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("config.lock"));
    /// let a = lock.read().await?;
    /// let b = lock.read().await?; // readers share
    /// assert!(lock.try_write().await.unwrap_err().is_already_locked());
    /// drop((a, b));
    /// let w = lock.write().await?;
    /// # drop(w); Ok(()) }
    /// ```
    pub async fn read(&self) -> Result<LockGuard> {
        self.in_mode(LockFlags::SHARED).acquire().await
    }

    /// Takes the lock **exclusive**, as a writer, whatever the configured
    /// [`flags`](Self::flags). Waits as [`acquire`](Self::acquire) does;
    /// see [`read`](Self::read).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as `acquire`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn write(&self) -> Result<LockGuard> {
        self.in_mode(LockFlags::EXCLUSIVE).acquire().await
    }

    /// [`read`](Self::read) with one attempt and no waiting, as
    /// [`try_acquire`](Self::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as `acquire`.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub async fn try_read(&self) -> Result<LockGuard> {
        self.in_mode(LockFlags::SHARED).try_acquire().await
    }

    /// [`write`](Self::write) with one attempt and no waiting, as
    /// [`try_acquire`](Self::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as `acquire`.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub async fn try_write(&self) -> Result<LockGuard> {
        self.in_mode(LockFlags::EXCLUSIVE).try_acquire().await
    }

    /// This lock in `mode`: itself if that is its configured mode, else
    /// its kept view of the file in the other mode.
    fn in_mode(&self, mode: LockFlags) -> std::borrow::Cow<'_, Self> {
        // Invalid configured flags are `acquire`'s error to report.
        let wanted_shared = mode == LockFlags::SHARED;
        match self.engine.opts.mode() {
            Ok(crate::file::flags::Mode::Shared) if wanted_shared => {
                return std::borrow::Cow::Borrowed(self)
            }
            Ok(crate::file::flags::Mode::Exclusive) if !wanted_shared => {
                return std::borrow::Cow::Borrowed(self)
            }
            Err(_) => return std::borrow::Cow::Borrowed(self),
            Ok(_) => {}
        }
        let engine = self
            .engine
            .other_mode
            .get_or_init(|| {
                let mut opts = self.engine.opts;
                opts.flags = mode | LockFlags::NON_BLOCKING;
                Arc::new(Engine::new(
                    self.engine.path.clone(),
                    opts,
                    self.engine.reuse(),
                ))
            })
            .clone();
        std::borrow::Cow::Owned(Self { engine })
    }

    /// `acquire` with the given waiting options.
    ///
    /// The common case — the kept descriptor locks at once, nobody of this
    /// process holds or waits — is decided before the wait's state machine
    /// exists; only the rest (a first open, contention) is boxed, so the
    /// future of an uncontended acquisition is small and moves little.
    pub(crate) async fn acquire_with(&self, w: WaitOptions) -> Result<LockGuard> {
        // With tracing, every acquisition goes through the traced path.
        #[cfg(not(feature = "tracing"))]
        if !self.engine.opts.local_only {
            if let Some(granted) = self.engine.acquire_now()? {
                return Ok(self.guard(granted));
            }
        }
        Box::pin(self.acquire_since(None, w.timeout, w.fail_when_locked)).await
    }

    /// The whole acquisition, for a wait that started at `start` (the
    /// deadline is `start + timeout`; `None`: now). `pub(crate)` so the
    /// other file locks share it.
    pub(crate) async fn acquire_since(
        &self,
        start: Option<Instant>,
        timeout: std::time::Duration,
        fail_fast: bool,
    ) -> Result<LockGuard> {
        if self.engine.opts.local_only {
            let path = self.engine.path.clone();
            let fs = crate::util::run_blocking(move || crate::filesystem_of(&path))
                .await
                .map_err(|e| crate::Error::io("failed to lock", Some(&self.engine.path), e))??;
            fs.ensure_local("failed to lock", &self.engine.path)?;
        }
        let granted = self.engine.acquire(start, timeout, fail_fast).await?;
        Ok(self.guard(granted))
    }

    /// The guard of a grant of this lock's engine.
    pub(crate) fn guard(&self, granted: Granted) -> LockGuard {
        let Granted {
            file,
            id,
            pass,
            waited,
        } = granted;
        LockGuard {
            waited,
            file: guard::GuardFile::new(file),
            id,
            touched: false,
            keep: true,
            lock: self.engine.clone(),
            _pass: Some(pass),
            loss: OnceLock::new(),
            monitor: OnceLock::new(),
        }
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.engine.opts;
        f.debug_struct("Lock")
            .field("path", &self.engine.path)
            .field("timeout", &o.wait.timeout)
            .field("check_interval", &o.wait.check_interval)
            .field("fail_when_locked", &o.wait.fail_when_locked)
            .field("flags", &o.flags)
            .field("truncate", &o.truncate)
            .finish()
    }
}

/// Makes `path` absolute against the current directory; leaves it as is
/// when that is impossible (an empty path is rejected on acquire).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
