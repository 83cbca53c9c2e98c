//! [`TemporaryFileLock`]: a lock whose file exists only while it is held.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::file::engine::FileOptions;
use crate::lock::{absolute, Lock, LockGuard};
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};

/// A file lock that creates its file on acquire and removes it on release
/// (Python's `TemporaryFileLock`).
///
/// Defaults as in Python: timeout 5 s, check interval 250 ms and
/// **`fail_when_locked` true**. The file is emptied once locked.
///
/// # Differences from portalocker
///
/// * Only a guard removes the file, and only the file it holds: dropping
///   the `TemporaryFileLock` itself never removes anything, and there is no
///   exit hook (guards release on drop, including during unwinding).
/// * Symlinks at the path are refused, and a file with other hard links is
///   never truncated.
///
/// # Examples
///
/// ```
/// use portalocker::TemporaryFileLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("job.lock");
/// let lock = TemporaryFileLock::new(&path);
/// let guard = lock.acquire().await?;
/// assert!(path.exists());
/// guard.release().await?;
/// assert!(!path.exists());
/// # Ok(()) }
/// ```
///
/// # No split brain
///
/// Deleting a lock file on release is dangerous on POSIX: a waiter that
/// already opened the old file can lock the now nameless inode while a
/// newcomer creates and locks a fresh file at the path, and both believe
/// they hold the lock (portalocker #115, filelock #574). Two rules close
/// the race, and this crate keeps both:
///
/// 1. Release removes the file *before* it unlocks it.
/// 2. Every successful lock is checked against the file now at the path
///    (same device and inode); a lock on a file that is no longer there is
///    dropped and the path opened again.
///
/// A guard only ever removes the file it locked: if the file at the path is
/// no longer the one it holds (someone removed or replaced it while held),
/// it removes nothing and `release` reports the lock as lost.
///
/// # Resource leaking
///
/// A process that dies while holding the lock leaves the file behind. That
/// is harmless: the kernel released the lock with the process, and the next
/// holder reuses the file (and removes it on release).
#[derive(Clone, Debug)]
pub struct TemporaryFileLock {
    lock: Lock,
}

impl Waiting for TemporaryFileLock {
    fn wait_options(&self) -> WaitOptions {
        self.lock.wait_options()
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        Self {
            lock: self.lock.with_wait(wait),
        }
    }
}

impl TemporaryFileLock {
    /// A temporary-file lock on `path`. No I/O happens here.
    pub fn new(path: impl AsRef<Path>) -> Self {
        let opts = FileOptions {
            wait: WaitOptions {
                fail_when_locked: true,
                ..WaitOptions::default()
            },
            truncate: true,
            ..FileOptions::default()
        };
        Self {
            lock: Lock::with_options(absolute(path.as_ref()), opts, false),
        }
    }

    wait_setters!("the lock", "**true**, as in Python");

    /// The absolute path of the lock file.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }

    /// Creates (or opens) and locks the file.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`Lock::acquire`]: a dropped future
    /// holds no lock and removes nothing. If it was dropped after creating
    /// the file but before locking it, an empty, unlocked file stays behind;
    /// the next holder reuses it and removes it on release.
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire`].
    ///
    /// # Panics
    ///
    /// As [`Lock::acquire`](crate::Lock::acquire): outside a Tokio runtime, and when it has to wait
    /// on a runtime without the time driver (`enable_time`).
    pub async fn acquire(&self) -> Result<TemporaryFileLockGuard> {
        self.acquire_with(self.wait_options()).await
    }

    acquire_variants!(TemporaryFileLockGuard);

    async fn acquire_with(&self, w: WaitOptions) -> Result<TemporaryFileLockGuard> {
        let guard = self.lock.acquire_with(w).await?;
        Ok(TemporaryFileLockGuard {
            inner: DeleteOnRelease::new(guard),
        })
    }
}

/// A held [`TemporaryFileLock`]; dereferences to the locked
/// [`tokio::fs::File`]. Dropping it or calling
/// [`release`](Self::release) removes the file, then unlocks it.
#[must_use = "if unused the lock is released (and its file removed) at once"]
#[clippy::has_significant_drop]
pub struct TemporaryFileLockGuard {
    inner: DeleteOnRelease,
}

impl TemporaryFileLockGuard {
    crate::lock::loss_vocabulary!();

    fn with_lock_guard<R>(&self, f: impl FnOnce(&LockGuard) -> R) -> Option<R> {
        self.inner.lock_guard().map(f)
    }

    /// The absolute path of the lock file.
    pub fn path(&self) -> &Path {
        self.inner.lock_path()
    }

    /// How long the acquisition waited (see [`LockGuard::waited`](crate::LockGuard::waited)).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::TemporaryFileLock::new(dir.path().join("t.lock"));
    /// let guard = lock.acquire().await?;
    /// println!("got {} after {:?}", guard.path().display(), guard.waited());
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> std::time::Duration {
        self.inner.waited()
    }

    /// Removes the file (if it is still the one held), then unlocks it.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the file is removed before the first
    /// `.await`, and a dropped future unlocks as dropping the guard would.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`] if the file at the path is no longer the one
    /// held (it was removed or replaced by someone else; nothing is
    /// removed), [`ErrorKind::Io`] if removing or unlocking failed. The
    /// lock is released in every case.
    pub async fn release(self) -> Result<()> {
        self.inner.release().await
    }
}

impl Deref for TemporaryFileLockGuard {
    type Target = tokio::fs::File;
    fn deref(&self) -> &tokio::fs::File {
        self.inner.guard()
    }
}

impl DerefMut for TemporaryFileLockGuard {
    fn deref_mut(&mut self) -> &mut tokio::fs::File {
        self.inner.guard_mut()
    }
}

impl fmt::Debug for TemporaryFileLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemporaryFileLockGuard")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

/// A held lock whose file (and an optional companion file, removed first)
/// is removed while still locked, on release or drop.
pub(crate) struct DeleteOnRelease {
    guard: Option<LockGuard>,
    companion: Option<PathBuf>,
}

impl DeleteOnRelease {
    pub(crate) fn new(guard: LockGuard) -> Self {
        Self {
            guard: Some(guard),
            companion: None,
        }
    }

    /// Also remove `path` (first) on release.
    pub(crate) fn set_companion(&mut self, path: PathBuf) {
        self.companion = Some(path);
    }

    pub(crate) fn lock_guard(&self) -> Option<&LockGuard> {
        self.guard.as_ref()
    }

    fn guard(&self) -> &LockGuard {
        self.guard
            .as_ref()
            .expect("the guard is present until release")
    }

    fn guard_mut(&mut self) -> &mut LockGuard {
        self.guard
            .as_mut()
            .expect("the guard is present until release")
    }

    pub(crate) fn lock_path(&self) -> &Path {
        self.guard().path()
    }

    pub(crate) fn waited(&self) -> std::time::Duration {
        self.guard().waited()
    }

    /// Removes the companion and the lock file if the held file is still
    /// the one at the lock path. Synchronous: two `unlink`s and an `lstat`.
    fn remove_files(&mut self) -> Result<()> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let path = guard.path();
        let ours = guard
            .is_at_path()
            .map_err(|e| Error::io("failed to check lock file", Some(path), e))?;
        if !ours {
            self.companion = None;
            return Err(Error::new(ErrorKind::LockLost, "lock compromised")
                .with_path(path)
                .with_reason(
                    "the lock file was removed or replaced while held; nothing was removed",
                ));
        }
        let mut first = None;
        for p in self
            .companion
            .take()
            .iter()
            .map(PathBuf::as_path)
            .chain([path])
        {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != io::ErrorKind::NotFound && first.is_none() {
                    first = Some(Error::io("failed to remove", Some(p), e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub(crate) async fn release(mut self) -> Result<()> {
        let removed = self.remove_files();
        let released = match self.guard.take() {
            // Checked by `remove_files` (before removing, which would
            // look like a loss).
            Some(g) => g.release_checked(false).await,
            None => Ok(()),
        };
        removed.and(released)
    }
}

impl Drop for DeleteOnRelease {
    fn drop(&mut self) {
        let _ = self.remove_files();
        // Dropping the guard unlocks (after any in-flight write).
        self.guard.take();
    }
}
