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
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};

pub use crate::options::{DEFAULT_CHECK_INTERVAL, DEFAULT_TIMEOUT};

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
/// once per millisecond); if there is one it *hands over*: it closes its
/// descriptor, which inotify reports to the waiters, and stays away for
/// 2 ms. Among the waiters the longest-waiting one goes first. Reads and
/// writes of the lock file, by the holder or anyone else, wake nobody.
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

impl Waiting for Lock {
    fn wait_options(&self) -> WaitOptions {
        self.engine.opts.wait
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        self.map(|o| o.wait = wait)
    }
}

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
    pub(crate) async fn acquire_with(&self, w: WaitOptions) -> Result<LockGuard> {
        self.acquire_since(None, w.timeout, w.fail_when_locked)
            .await
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
            file: Some(tokio::fs::File::from_std(file)),
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

/// A held [`Lock`]. Dereferences to the locked [`tokio::fs::File`].
///
/// The lock is released by [`release`](Self::release), which reports
/// errors, or by dropping the guard. Drop never releases before data
/// written through the guard reached the file: if a write is still in
/// flight on the blocking pool, the descriptor (and with it the lock) is
/// closed when that write completes.
///
/// The guard can be held across `.await` points: it is `Send + Sync +
/// 'static`, and dropping it outside a runtime releases synchronously.
///
/// Do not keep clones of the file handle (`try_clone`) past the guard:
/// they share the lock's open file description.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    file: Option<tokio::fs::File>,
    id: FileId,
    /// Whether the file was used mutably (read, written, sought), so its
    /// offset may have moved.
    touched: bool,
    /// Keep the descriptor for reuse on release (else close it, which
    /// wakes other processes' waiters through inotify).
    keep: bool,
    lock: Arc<Engine>,
    /// This process's gate for the file, passed; released after the lock.
    _pass: Option<Pass>,
    waited: std::time::Duration,
    /// Whether the lock was lost (the file removed or replaced from
    /// outside), created on first use so an acquisition allocates nothing.
    loss: OnceLock<Arc<Loss>>,
    /// The task that watches for the loss, started by `lost()` or
    /// `watch_lost()`; aborted with the guard.
    monitor: OnceLock<tokio::task::AbortHandle>,
}

impl LockGuard {
    /// The absolute path of the locked file.
    pub fn path(&self) -> &Path {
        &self.lock.path
    }

    /// How long the acquisition took: from the call (for an
    /// [`RLock`](crate::RLock), from its call, including time behind this
    /// owner's other tasks) until the grant, opening the file and waiting
    /// included. [`Duration::ZERO`](std::time::Duration::ZERO) when the lock
    /// was free and the descriptor kept from the last release got it at
    /// once (that path reads no clock).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("job.lock"));
    /// let guard = lock.acquire().await?;
    /// if guard.waited() > std::time::Duration::from_secs(1) {
    ///     eprintln!("waited {:?} for {}", guard.waited(), guard.path().display());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> std::time::Duration {
        self.waited
    }

    /// Close the descriptor on release instead of keeping it for reuse.
    pub(crate) fn close_on_release(&mut self) {
        self.keep = false;
    }

    /// Whether the locked file is still the file at [`path`](Self::path).
    pub(crate) fn is_at_path(&self) -> io::Result<bool> {
        Handle::id_is_at(self.id, &self.lock.path)
    }

    /// Flushes what was written through the guard, unlocks and keeps or
    /// closes the file, reporting the first error.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe in the sense that matters: dropping the
    /// future releases the lock exactly as dropping the guard would (after
    /// any in-flight write completes). Only the error report is lost.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if a write through the guard
    /// failed or the OS refused to unlock. The lock is released either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio::io::AsyncWriteExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("owner.lock")).truncate(true);
    /// let mut guard = lock.acquire().await?;
    /// guard.write_all(b"pid 42").await?;
    /// guard.release().await?; // the write is on disk before the unlock
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<()> {
        self.release_checked(true).await
    }

    /// [`release`](Self::release); `check`: report a lost lock (a guard
    /// that removes its own file first checks for itself).
    pub(crate) async fn release_checked(mut self, check: bool) -> Result<()> {
        let lost = check && self.is_lost();
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let flushed = file.flush().await;
        let std = file.into_std().await;
        let unlocked = self.lock.release(std, self.id, self.touched, self.keep);
        let path = &self.lock.path;
        flushed.map_err(|e| Error::io("failed to write lock file", Some(path), e))?;
        unlocked.map_err(|e| Error::io("failed to unlock", Some(path), e))?;
        if lost {
            return Err(self.lost_error());
        }
        Ok(())
    }

    fn loss(&self) -> &Arc<Loss> {
        self.loss.get_or_init(|| Arc::new(Loss::new()))
    }

    /// Whether the lock was lost: a third party removed the lock file or
    /// renamed another file over it while it was held. The lock then
    /// protects a file no path names, and a process that opens the path
    /// locks a new file at once, so two owners each believe they hold
    /// "the" lock. `flock(2)` cannot prevent this (the lock is on the open
    /// file, not on the name); this tells you it happened.
    ///
    /// Checks now (one `lstat` of the path, compared with the identity of
    /// the locked file), and remembers a loss seen before. A loss is
    /// final: a file put back at the path later is another file.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("job.lock");
    /// let guard = portalocker::Lock::new(&path).acquire().await?;
    /// assert!(!guard.is_lost());
    /// std::fs::remove_file(&path)?; // a careless cleanup script
    /// assert!(guard.is_lost());
    /// assert!(guard.release().await.unwrap_err().is_lock_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        if self.loss.get().is_some_and(|l| l.is_lost()) {
            return true;
        }
        if matches!(self.is_at_path(), Ok(false)) {
            self.loss().fail(format!(
                "the lock file {} was removed or replaced while held, so another process can \
                 lock the file now at that path",
                self.lock.path.display()
            ));
            return true;
        }
        false
    }

    /// `Ok(())` while the lock is held; once it is lost (see
    /// [`is_lost`](Self::is_lost)) an error of kind
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) naming the path
    /// and why.
    pub fn ensure_held(&self) -> Result<()> {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        Ok(())
    }

    fn lost_error(&self) -> Error {
        let why = self
            .loss()
            .reason()
            .unwrap_or_else(|| "the lock file was removed or replaced while held".into());
        Error::new(crate::ErrorKind::LockLost, "lock lost")
            .with_path(&self.lock.path)
            .with_reason(why)
    }

    /// Starts the task that watches for the loss, once per guard.
    fn watch_for_loss(&self) {
        self.monitor.get_or_init(|| {
            crate::loss::monitor_file(self.lock.path.clone(), self.id, self.loss().clone())
                .abort_handle()
        });
    }

    /// Resolves when the lock is lost (see [`is_lost`](Self::is_lost)).
    /// The first call starts a task owned by the guard that watches the
    /// path: on Linux it is woken by inotify when the file is removed,
    /// renamed or replaced (and checks every 250 ms as a safety net); on
    /// other platforms it checks every 250 ms.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future changes nothing;
    /// the watching task lives as long as the guard.
    ///
    /// # Panics
    ///
    /// Panics outside a Tokio runtime (it spawns the watching task).
    pub async fn lost(&self) {
        self.watch_for_loss();
        self.loss().lost().await;
    }

    /// A `watch` receiver that turns `true` when the lock is lost (see
    /// [`lost`](Self::lost), which starts the same watching task): hand it
    /// to tasks that must stop working then, without giving them the guard.
    ///
    /// # Panics
    ///
    /// Panics outside a Tokio runtime (it spawns the watching task).
    pub fn watch_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.watch_for_loss();
        self.loss().subscribe()
    }

    /// Runs `work` only while the lock is held: its output, or an error of
    /// kind [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) as soon as
    /// the lock is lost first (then `work` is dropped, i.e. cancelled, at
    /// its current `.await`). As with `RedisLockGuard::run_while_held`, a
    /// loss is noticed, not undone: effects `work` already had stay.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `work`: dropping this future drops `work`.
    ///
    /// # Panics
    ///
    /// Panics outside a Tokio runtime (it spawns the watching task).
    pub async fn run_while_held<F: std::future::Future>(&self, work: F) -> Result<F::Output> {
        self.ensure_held()?;
        // The loss is polled first.
        let lost = std::pin::pin!(self.lost());
        match futures_util::future::select(lost, std::pin::pin!(work)).await {
            futures_util::future::Either::Left(((), _)) => Err(self.lost_error()),
            futures_util::future::Either::Right((out, _)) => Ok(out),
        }
    }
}

impl Deref for LockGuard {
    type Target = tokio::fs::File;

    fn deref(&self) -> &tokio::fs::File {
        self.file
            .as_ref()
            .expect("a LockGuard holds its file until it is released")
    }
}

impl DerefMut for LockGuard {
    fn deref_mut(&mut self) -> &mut tokio::fs::File {
        self.touched = true;
        self.file
            .as_mut()
            .expect("a LockGuard holds its file until it is released")
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(task) = self.monitor.get() {
            task.abort();
        }
        let Some(file) = self.file.take() else {
            return;
        };
        // With no operation in flight the std file comes back at once:
        // unlock it now.
        let file = match file.try_into_std() {
            Ok(std) => {
                let _ = self.lock.release(std, self.id, self.touched, self.keep);
                return;
            }
            Err(file) => file,
        };
        // The blocking pool still writes through it. A task waits for that
        // write, then releases as `release()` does (wake-ups and handover
        // included), and only then lets the next task of this process
        // through the gate: the data is written before the unlock, and no
        // waiter of this process misses the release.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (engine, id, touched, keep) = (self.lock.clone(), self.id, self.touched, self.keep);
            let pass = self._pass.take();
            rt.spawn(async move {
                let std = file.into_std().await;
                let _ = engine.release(std, id, touched, keep);
                drop(pass);
            });
            return;
        }
        // No runtime to wait on: dropping our handle lets the write finish,
        // and the last close releases the lock after the data is written.
        drop(file);
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.lock.path)
            .finish_non_exhaustive()
    }
}

/// The loss vocabulary of [`LockGuard`] (`is_lost`, `ensure_held`,
/// `watch_lost`, `lost`) for a guard that holds one, reached through its
/// `fn with_lock_guard<R>(&self, f: impl FnOnce(&LockGuard) -> R) -> Option<R>`
/// (`None`: it holds none any more, which is not a loss).
macro_rules! loss_vocabulary {
    () => {
        /// Whether the lock was lost: its file was removed or replaced by
        /// a third party while held. See
        /// [`LockGuard::is_lost`](crate::LockGuard::is_lost).
        pub fn is_lost(&self) -> bool {
            self.with_lock_guard(|g| g.is_lost()).unwrap_or(false)
        }

        /// `Ok(())` while held; an error of kind
        /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) once lost.
        /// See [`LockGuard::ensure_held`](crate::LockGuard::ensure_held).
        pub fn ensure_held(&self) -> $crate::Result<()> {
            self.with_lock_guard(|g| g.ensure_held()).unwrap_or(Ok(()))
        }

        /// A receiver that turns `true` when the lock is lost. See
        /// [`LockGuard::watch_lost`](crate::LockGuard::watch_lost).
        ///
        /// # Panics
        ///
        /// Panics outside a Tokio runtime (it starts the watching task).
        pub fn watch_lost(&self) -> ::tokio::sync::watch::Receiver<bool> {
            self.with_lock_guard(|g| g.watch_lost())
                .unwrap_or_else(|| ::tokio::sync::watch::channel(false).1)
        }

        /// Resolves when the lock is lost. See
        /// [`LockGuard::lost`](crate::LockGuard::lost).
        ///
        /// # Cancel safety
        ///
        /// This method is cancel safe: dropping the future changes nothing.
        ///
        /// # Panics
        ///
        /// Panics outside a Tokio runtime (it starts the watching task).
        pub async fn lost(&self) {
            let mut rx = self.watch_lost();
            if rx.wait_for(|lost| *lost).await.is_err() {
                // No lock is held through this guard any more.
                ::std::future::pending::<()>().await;
            }
        }
    };
}
pub(crate) use loss_vocabulary;
