//! [`LockGuard`]: a held [`Lock`](super::Lock), and the loss vocabulary
//! the file guards share.

use super::*;

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
    pub(super) file: GuardFile,
    pub(super) id: FileId,
    /// Whether the file was used mutably (read, written, sought), so its
    /// offset may have moved.
    pub(super) touched: bool,
    /// Keep the descriptor for reuse on release (else close it, which
    /// wakes other processes' waiters through inotify).
    pub(super) keep: bool,
    pub(super) lock: Arc<Engine>,
    /// This process's gate for the file, passed; released after the lock.
    pub(super) _pass: Option<Pass>,
    pub(super) waited: std::time::Duration,
    /// Whether the lock was lost (the file removed or replaced from
    /// outside), created on first use so an acquisition allocates nothing.
    pub(super) loss: OnceLock<Arc<Loss>>,
    /// The task that watches for the loss, started by `lost()` or
    /// `watch_lost()`; aborted with the guard.
    pub(super) monitor: OnceLock<tokio::task::AbortHandle>,
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
        let (std, flushed) = match self.file.take() {
            None => return Ok(()),
            Some(Taken::Std(std)) => (std, Ok(())),
            Some(Taken::Tokio(mut file)) => {
                let flushed = file.flush().await;
                (file.into_std().await, flushed)
            }
        };
        let unlocked = self.lock.release(std, self.id, self.touched, self.keep);
        let path = &self.lock.path;
        flushed.map_err(|e| Error::io("failed to write lock file", Some(path), e))?;
        unlocked.map_err(|e| Error::io("failed to unlock", Some(path), e))?;
        if lost {
            return Err(self.lost_error());
        }
        Ok(())
    }

    /// Turns this exclusive lock into a shared one without letting go of
    /// it: no writer can take the lock in between, and readers may join —
    /// those of this process at once, those of other processes at their
    /// next attempt (within their `check_interval`). Data written through
    /// the guard is flushed first, so readers see it. A shared lock stays
    /// as it is. (The reverse, a `try_upgrade`, is not offered: `flock(2)`
    /// drops a shared lock before it finds that it cannot be made
    /// exclusive, so a failed upgrade would leave nothing held.)
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: its only wait is the flush, and a
    /// downgrade cancelled there leaves the lock exclusive.
    ///
    /// # Errors
    ///
    /// The flush's error (the lock stays exclusive). An error of kind
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) if the OS
    /// refused the shared lock (no supported OS does for a holder of the
    /// exclusive one, but the conversion is the OS's): the guard holds
    /// nothing then and reports itself lost.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio::io::AsyncWriteExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::Lock::new(dir.path().join("config.lock"));
    /// let mut guard = lock.write().await?;
    /// guard.write_all(b"v2").await?;
    /// guard.downgrade().await?;
    /// // Readers get in now; writers still wait for this guard.
    /// let reader = lock.try_read().await?;
    /// assert!(lock.try_write().await.unwrap_err().is_already_locked());
    /// drop((reader, guard));
    /// # Ok(()) }
    /// ```
    pub async fn downgrade(&mut self) -> Result<()> {
        let path = &self.lock.path;
        if let Some(file) = self.file.made_mut() {
            file.flush()
                .await
                .map_err(|e| Error::io("failed to write lock file", Some(path), e))?;
        }
        let std = match self.file.take() {
            None => return Ok(()),
            Some(Taken::Std(std)) => std,
            // Flushed: no operation is in flight, so the std file comes
            // back at once.
            Some(Taken::Tokio(file)) => match file.try_into_std() {
                Ok(std) => std,
                Err(file) => {
                    self.file = GuardFile::made(file);
                    return Err(Error::io(
                        "failed to downgrade",
                        Some(path),
                        io::Error::other("an operation on the file is still in flight"),
                    ));
                }
            },
        };
        let converted = crate::file::raw::downgrade(&std);
        self.file = GuardFile::new(std);
        match converted {
            Ok(true) => {
                if let Some(pass) = self._pass.as_mut() {
                    pass.downgrade();
                }
                Ok(())
            }
            Ok(false) => {
                self.loss().fail(format!(
                    "the OS refused to turn the exclusive lock on {} into a shared one",
                    path.display()
                ));
                Err(self.lost_error())
            }
            Err(e) => Err(Error::io("failed to downgrade", Some(path), e)),
        }
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
            .get()
            .expect("a LockGuard holds its file until it is released")
    }
}

impl DerefMut for LockGuard {
    fn deref_mut(&mut self) -> &mut tokio::fs::File {
        self.touched = true;
        self.file
            .get_mut()
            .expect("a LockGuard holds its file until it is released")
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(task) = self.monitor.get() {
            task.abort();
        }
        let file = match self.file.take() {
            None => return,
            Some(Taken::Std(std)) => {
                let _ = self.lock.release(std, self.id, self.touched, self.keep);
                return;
            }
            Some(Taken::Tokio(file)) => file,
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

/// A guard's locked file: the std `File` until the guard is first
/// dereferenced, then the Tokio file made from it. A guard that is never
/// dereferenced (most lock files only exclude) makes no Tokio file, which
/// would cost an allocation on each grant and taking it apart on release.
#[derive(Debug, Default)]
pub(super) struct GuardFile {
    std: std::sync::Mutex<Option<std::fs::File>>,
    /// Boxed: the guard stays small, so grants move little.
    tokio: OnceLock<Box<tokio::fs::File>>,
}

/// A guard's file, taken out of it for the release.
pub(super) enum Taken {
    /// Never dereferenced: nothing can be in flight.
    Std(std::fs::File),
    Tokio(tokio::fs::File),
}

impl GuardFile {
    pub(super) fn new(file: std::fs::File) -> Self {
        Self {
            std: std::sync::Mutex::new(Some(file)),
            tokio: OnceLock::new(),
        }
    }

    fn made(file: tokio::fs::File) -> Self {
        Self {
            std: std::sync::Mutex::default(),
            tokio: OnceLock::from(Box::new(file)),
        }
    }

    /// The Tokio file, made on first use; `None` once taken.
    fn get(&self) -> Option<&tokio::fs::File> {
        if let Some(f) = self.tokio.get() {
            return Some(&**f);
        }
        let mut std = crate::util::lock(&self.std);
        // Another thread may have made it while this one waited.
        if let Some(f) = self.tokio.get() {
            return Some(&**f);
        }
        let file = std.take()?;
        Some(
            self.tokio
                .get_or_init(|| Box::new(tokio::fs::File::from_std(file))),
        )
    }

    fn get_mut(&mut self) -> Option<&mut tokio::fs::File> {
        if self.tokio.get().is_none() {
            let file = self
                .std
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()?;
            self.tokio = OnceLock::from(Box::new(tokio::fs::File::from_std(file)));
        }
        self.tokio.get_mut().map(|f| &mut **f)
    }

    /// The Tokio file if one was made.
    fn made_mut(&mut self) -> Option<&mut tokio::fs::File> {
        self.tokio.get_mut().map(|f| &mut **f)
    }

    fn take(&mut self) -> Option<Taken> {
        if let Some(f) = self.tokio.take() {
            return Some(Taken::Tokio(*f));
        }
        self.std
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .map(Taken::Std)
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
