//! [`Lock`]: a cross-process file lock with a timeout.

use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::deadline::{deadline_after, Schedule};
use crate::error::{Error, Result};
use crate::file_lock::{self, FileId, Handle, OpenMode};
use crate::flags::{LockFlags, Mode, Operation};
use crate::gate::{self, Gate, Pass};
use crate::wake::{self, Armed, Watch};

/// Python portalocker's `DEFAULT_TIMEOUT`: 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Python portalocker's `DEFAULT_CHECK_INTERVAL`: 250 ms.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

const OP_LOCK: &str = "failed to lock";
const OP_OPEN: &str = "failed to open lock file";

/// The retry options every file-based lock shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    pub(crate) timeout: Duration,
    pub(crate) check_interval: Duration,
    pub(crate) fail_when_locked: bool,
    pub(crate) flags: LockFlags,
    pub(crate) truncate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            check_interval: DEFAULT_CHECK_INTERVAL,
            fail_when_locked: false,
            flags: LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING,
            truncate: false,
        }
    }
}

impl Options {
    fn mode(&self) -> Result<Mode> {
        match self.flags.operation()? {
            Operation::Lock { mode, .. } => Ok(mode),
            Operation::Unlock => Err(Error::invalid(
                "invalid lock flags",
                "UNBLOCK is not a lock mode; use SHARED or EXCLUSIVE",
            )),
        }
    }

    fn open_mode(&self) -> OpenMode {
        if self.truncate {
            OpenMode::Write
        } else if matches!(self.mode(), Ok(Mode::Shared)) {
            OpenMode::Read
        } else {
            OpenMode::Append
        }
    }
}

/// A cross-process lock on a file, with a timeout.
///
/// `Lock::new(path)` has Python portalocker's defaults: timeout 5 s, check
/// interval 250 ms, `fail_when_locked` false, an exclusive lock, the file
/// opened for append (and read) and created if missing. The path is made
/// absolute against the current directory when the `Lock` is created, so a
/// later `chdir` cannot redirect it.
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
/// A [`Lock`] is a cheap description (a path and options): nothing is
/// opened or locked until [`acquire`](Lock::acquire). Acquiring returns a
/// [`LockGuard`] that owns the locked file; dropping the guard or calling
/// [`release`](LockGuard::release) unlocks it.
///
/// # How waiting works
///
/// Acquisitions of one process pass a per-file FIFO gate first, so tasks
/// are served in the order they asked, and the next one wakes the moment a
/// guard is released; only the task at the head of the queue touches the
/// file. A waiter in another process is woken by inotify when the lock
/// file is closed or *handed over*: a waiting process sets the file's
/// access time to a sentinel (1970-01-01T00:00:01Z), and the holder, after
/// at most a 1 ms run of re-acquisitions, sets a fresh access time and
/// stays away for 2 ms so the waiter gets the lock. (This needs the
/// processes to own the file; otherwise waiters poll. The lock file's
/// access time is therefore not meaningful.)
///
/// Every attempt is a non-blocking `flock(LOCK_NB)`, which never blocks a
/// thread. Only opening the file can block (a slow disk, NFS), so the open
/// runs on Tokio's blocking pool with [`spawn_blocking`]; the attempts and
/// the waiting between them happen on the calling task with
/// [`tokio::time`]. A runtime thread is never blocked.
///
/// A `Lock` keeps the descriptor of its last released lock open (unlocked)
/// and reuses it for the next acquisition, so a steady-state
/// acquire/release pair costs two `flock` calls and two `stat`s, not an
/// `open` and a thread hop. Before a reused (or long-waited-on) descriptor
/// is trusted, its device and inode are compared with the file now at the
/// path: a lock on a file that was deleted or replaced in the meantime is
/// dropped and the path opened afresh, so two holders can never each
/// believe they hold the lock. Dropping every clone of the `Lock` and every
/// guard closes the cached descriptor.
///
/// [`spawn_blocking`]: tokio::task::spawn_blocking
#[derive(Clone)]
pub struct Lock {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    opts: Options,
    /// An open, unlocked descriptor of the lock file, kept for reuse.
    idle: Mutex<Option<Handle>>,
    reuse: bool,
    /// This process's FIFO gate for the file (see `gate`).
    gate: OnceLock<Arc<Gate>>,
}

impl Lock {
    /// A lock on `path` with portalocker's defaults. No I/O happens here.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self::with_options(absolute(path.as_ref()), Options::default(), true)
    }

    pub(crate) fn with_options(path: PathBuf, opts: Options, reuse: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                opts,
                idle: Mutex::new(None),
                reuse,
                gate: OnceLock::new(),
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Options)) -> Self {
        let mut opts = self.inner.opts;
        f(&mut opts);
        Self::with_options(self.inner.path.clone(), opts, self.inner.reuse)
    }

    /// How long [`acquire`](Self::acquire) waits for a busy lock
    /// (default 5 s). Zero makes exactly one attempt.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|o| o.timeout = timeout)
    }

    /// The longest pause between attempts while waiting (default 250 ms).
    /// Each pause is jittered to 0.5–1 × this value and is at least 1 ms, so
    /// a released lock is taken within one interval.
    pub fn check_interval(self, interval: Duration) -> Self {
        self.map(|o| o.check_interval = interval)
    }

    /// Fail at the first busy attempt instead of waiting (default false).
    pub fn fail_when_locked(self, yes: bool) -> Self {
        self.map(|o| o.fail_when_locked = yes)
    }

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

    /// The absolute path of the lock file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The configured timeout and `fail_when_locked`.
    pub(crate) fn wait_options(&self) -> (Duration, bool) {
        (self.inner.opts.timeout, self.inner.opts.fail_when_locked)
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
        let (timeout, fail_fast) = self.wait_options();
        self.acquire_with(timeout, fail_fast).await
    }

    /// Makes exactly one attempt and never waits for a busy lock.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`acquire`](Self::acquire).
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire); a busy lock is
    /// [`is_already_locked()`](Error::is_already_locked) at once.
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
    pub async fn try_acquire(&self) -> Result<LockGuard> {
        self.acquire_with(Duration::ZERO, true).await
    }

    /// The whole acquisition: validation, the in-process gate, the OS
    /// lock. `pub(crate)` so the other file locks share it.
    pub(crate) async fn acquire_with(
        &self,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<LockGuard> {
        self.acquire_since(tokio::time::Instant::now(), timeout, fail_fast)
            .await
    }

    /// As [`acquire_with`](Self::acquire_with), for a wait that started at
    /// `start` (the deadline is `start + timeout`).
    pub(crate) async fn acquire_since(
        &self,
        start: tokio::time::Instant,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<LockGuard> {
        file_lock::check_path(OP_LOCK, &self.inner.path)?;
        let mode = self.inner.opts.mode()?;
        let deadline = deadline_after(start, timeout);
        let shared = mode == Mode::Shared;
        let gate = self
            .inner
            .gate
            .get_or_init(|| Gate::of(&self.inner.path))
            .clone();
        // In-process FIFO first, then the OS lock.
        let pass = match gate.try_pass(shared) {
            Some(p) => Some(p),
            None if fail_fast => None,
            None => gate.pass(shared, deadline).await,
        };
        let Some(mut pass) = pass else {
            return Err(self.busy(timeout, fail_fast, true));
        };
        if !fail_fast {
            gate.wait_handoff(deadline).await;
        }
        let Handle { file, id } = self
            .acquire_handle(mode, start, deadline, timeout, fail_fast)
            .await?;
        gate.note_grant();
        pass.granted();
        Ok(LockGuard {
            file: Some(tokio::fs::File::from_std(file)),
            id,
            touched: false,
            keep: true,
            lock: self.inner.clone(),
            _pass: Some(pass),
        })
    }

    /// The OS-level retry loop: returns the locked, prepared file.
    async fn acquire_handle(
        &self,
        mode: Mode,
        start: tokio::time::Instant,
        deadline: tokio::time::Instant,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<Handle> {
        let inner = &self.inner;
        let mut schedule = Schedule::from(start, deadline, inner.opts.check_interval);
        let mut current = self.take_idle();
        let mut stale = 0u32;
        // Registered after the first busy attempt: wakes us early when the
        // holder releases (see `wake`).
        let mut watch: Option<Watch> = None;
        let mut notifier = Vec::new();
        loop {
            let handle = match current.take() {
                Some(h) => h,
                None => self.open().await?,
            };
            let armed = Armed::new(&notifier);
            let locked = file_lock::try_lock(&handle.file, mode)
                .map_err(|e| Error::io(OP_LOCK, Some(&inner.path), e))?;
            // Whatever the outcome, a descriptor whose file is no longer at
            // the path is worthless: drop it and open the path afresh.
            let same = handle
                .is_at(&inner.path)
                .map_err(|e| Error::io(OP_LOCK, Some(&inner.path), e))?;
            if !same {
                drop(handle); // closing also unlocks
                stale += 1;
                if stale <= 3 {
                    continue;
                }
            } else if locked {
                return self.prepare(handle);
            } else if fail_fast {
                self.put_idle(handle);
                return Err(self.busy(timeout, fail_fast, false));
            } else if watch.as_ref().map(Watch::id) != Some(handle.id) {
                // First contention on this file: register, announce
                // ourselves to the holder, then try once more at once so a
                // release in between is not missed.
                gate::announce(&handle.file);
                let w = Watch::new(&inner.path, handle.id);
                drop(armed);
                notifier = vec![w.notifier()];
                watch = Some(w);
                current = Some(handle);
                continue;
            } else {
                // Woken (or polled) and still busy: announce again, the
                // holder may have missed it.
                gate::announce(&handle.file);
                current = Some(handle);
            }
            let Some(target) = schedule.next_attempt() else {
                if let Some(h) = current.take() {
                    self.put_idle(h);
                }
                return Err(self.busy(timeout, fail_fast, false));
            };
            armed.until(target).await;
            stale = 0;
        }
    }

    /// The contention error. `here`: the holder (or the queue ahead) is in
    /// this process — another owner of the in-process gate — so the message
    /// never blames another process for it.
    pub(crate) fn busy(&self, timeout: Duration, fail_fast: bool, here: bool) -> Error {
        let who = if here {
            "already locked by another owner in this process"
        } else {
            "already locked by another process"
        };
        let e = Error::already_locked(OP_LOCK, Some(&self.inner.path));
        if fail_fast || timeout.is_zero() {
            e.with_reason(who)
        } else {
            e.with_reason(format!("{who} (waited {timeout:?})"))
        }
    }

    /// Truncates a freshly locked file if asked; unlocks on failure.
    /// (Reused descriptors were rewound when they were put back.)
    fn prepare(&self, handle: Handle) -> Result<Handle> {
        if !self.inner.opts.truncate {
            return Ok(handle);
        }
        if let Err(e) = file_lock::check_single_link(&handle.file) {
            let _ = handle.file.unlock();
            return Err(Error::io("refusing to truncate", Some(&self.inner.path), e));
        }
        match handle.file.set_len(0) {
            Ok(()) => Ok(handle),
            Err(e) => {
                let _ = handle.file.unlock();
                Err(Error::io(
                    "failed to prepare lock file",
                    Some(&self.inner.path),
                    e,
                ))
            }
        }
    }

    /// Keeps an unlocked descriptor for the next acquisition.
    fn put_idle(&self, handle: Handle) {
        if self.inner.reuse {
            if let Ok(mut idle) = self.inner.idle.lock() {
                if idle.is_none() {
                    *idle = Some(handle);
                }
            }
        }
    }

    /// Notified whenever a guard of this process on the file is released.
    pub(crate) fn gate_notifier(&self) -> Arc<tokio::sync::Notify> {
        self.inner
            .gate
            .get_or_init(|| Gate::of(&self.inner.path))
            .released_notifier()
    }

    /// The identity of the cached idle descriptor's file, if one is
    /// cached (then an attempt needs no open).
    pub(crate) fn idle_id(&self) -> Option<FileId> {
        self.inner.idle.lock().ok()?.as_ref().map(|h| h.id)
    }

    /// Opens the lock file and keeps the descriptor for the next attempt,
    /// unless one is kept already; locks nothing.
    pub(crate) async fn preopen(&self) -> Result<()> {
        if self.idle_id().is_none() {
            let handle = self.open().await?;
            self.put_idle(handle);
        }
        Ok(())
    }

    fn take_idle(&self) -> Option<Handle> {
        self.inner.idle.lock().ok().and_then(|mut g| g.take())
    }

    async fn open(&self) -> Result<Handle> {
        let inner = self.inner.clone();
        let mode = inner.opts.open_mode();
        let r =
            tokio::task::spawn_blocking(move || file_lock::open_lock_file(&inner.path, mode)).await;
        match r {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(Error::io(OP_OPEN, Some(&self.inner.path), e)),
            Err(join) => Err(Error::io(
                OP_OPEN,
                Some(&self.inner.path),
                io::Error::other(join),
            )),
        }
    }
}

impl Inner {
    /// Unlocks `file` and keeps it for the next acquisition (or closes
    /// it). A file that was read, written or sought through the guard is
    /// rewound first, so every guard starts at offset 0.
    fn recycle(&self, mut file: File, id: FileId, touched: bool, keep: bool) -> io::Result<()> {
        let gate = self.gate.get();
        let announced =
            gate.is_some_and(|g| g.burst_done() && g.should_check() && gate::announced(&file));
        let unlocked = file.unlock();
        if let (true, Some(g)) = (announced, gate) {
            gate::hand_over(&file, g);
        }
        wake::released(id);
        let reusable = unlocked.is_ok()
            && self.reuse
            && keep
            && (!touched || file.seek(SeekFrom::Start(0)).is_ok());
        if reusable {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.is_none() {
                    *idle = Some(Handle { file, id });
                }
            }
        }
        unlocked
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.inner.opts;
        f.debug_struct("Lock")
            .field("path", &self.inner.path)
            .field("timeout", &o.timeout)
            .field("check_interval", &o.check_interval)
            .field("fail_when_locked", &o.fail_when_locked)
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
    lock: Arc<Inner>,
    /// This process's gate for the file, passed; released after the lock.
    _pass: Option<Pass>,
}

impl LockGuard {
    /// The absolute path of the locked file.
    pub fn path(&self) -> &Path {
        &self.lock.path
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
    /// guard.write_all(b"pid 42").await.map_err(std::io::Error::from).unwrap();
    /// guard.release().await?; // the write is on disk before the unlock
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let flushed = file.flush().await;
        let std = file.into_std().await;
        let unlocked = self.lock.recycle(std, self.id, self.touched, self.keep);
        let path = &self.lock.path;
        flushed.map_err(|e| Error::io("failed to write lock file", Some(path), e))?;
        unlocked.map_err(|e| Error::io("failed to unlock", Some(path), e))
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
        if let Some(file) = self.file.take() {
            // With no operation in flight the std file comes back at once:
            // unlock it now. Otherwise the blocking pool still writes
            // through it; dropping our handle lets that write finish, and
            // the last close releases the lock after the data is written.
            if let Ok(std) = file.try_into_std() {
                let _ = self.lock.recycle(std, self.id, self.touched, self.keep);
            }
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.lock.path)
            .finish_non_exhaustive()
    }
}
