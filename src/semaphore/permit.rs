//! [`BoundedSemaphorePermit`] and [`NamedBoundedSemaphore`].

use super::*;

/// A held slot of a [`BoundedSemaphore`]; dropping it frees the slot.
///
/// Named so that it does not clash with [`tokio::sync::SemaphorePermit`]
/// in a file that uses both; [`SemaphorePermit`] is the same type under
/// the name of the API contract.
#[must_use = "if unused the slot is freed at once"]
#[clippy::has_significant_drop]
pub struct BoundedSemaphorePermit {
    slot: usize,
    guard: LockGuard,
    pub(super) waited: Duration,
    /// Declared after `guard`: rings once the slot is free.
    _ring: RingOnDrop,
}

/// [`BoundedSemaphorePermit`] under the name of the API contract (and of
/// the porting notes). Prefer `BoundedSemaphorePermit` in code that also
/// uses [`tokio::sync::SemaphorePermit`].
pub type SemaphorePermit = BoundedSemaphorePermit;

impl BoundedSemaphorePermit {
    crate::lock::loss_vocabulary!();

    fn with_lock_guard<R>(&self, f: impl FnOnce(&LockGuard) -> R) -> Option<R> {
        Some(f(&self.guard))
    }

    pub(super) fn new(slot: usize, mut guard: LockGuard, ring: RingOnDrop) -> Self {
        guard.close_on_release();
        Self {
            slot,
            guard,
            waited: Duration::ZERO,
            _ring: ring,
        }
    }

    /// How long the acquisition waited, from the call until a slot was
    /// granted (the sweep over the slots included).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = portalocker::BoundedSemaphore::new(2).name("jobs").directory(dir.path());
    /// let permit = sem.acquire().await?;
    /// println!("slot {} after {:?}", permit.slot(), permit.waited());
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The slot number, from 0.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The slot file.
    pub fn path(&self) -> &Path {
        self.guard.path()
    }

    /// Frees the slot, reporting errors.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: a dropped future frees the slot as
    /// dropping the permit does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the OS refused to unlock;
    /// the slot is freed anyway when the descriptor closes.
    pub async fn release(self) -> Result<()> {
        self.guard.release().await
    }
}

impl fmt::Debug for BoundedSemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphorePermit")
            .field("slot", &self.slot)
            .field("path", &self.path())
            .finish()
    }
}

/// A [`BoundedSemaphore`] whose default name is random
/// (`bounded_semaphore.<0..1000000>`), as Python's `NamedBoundedSemaphore`.
///
/// A random name is only useful when the very same value (or a clone) is
/// used by every cooperating task; across processes give a name.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let sem = portalocker::NamedBoundedSemaphore::new(3).directory(dir.path());
/// let permit = sem.acquire().await?;
/// assert!(permit.path().file_name().unwrap().to_str().unwrap().starts_with("bounded_semaphore."));
/// # drop(permit);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NamedBoundedSemaphore(pub(super) BoundedSemaphore);

impl NamedBoundedSemaphore {
    /// A semaphore with `maximum` slots and a random name.
    pub fn new(maximum: usize) -> Self {
        let n = crate::util::fast_u64() % 1_000_001;
        // A generated name is private: no warning about a shared default.
        Self(BoundedSemaphore::new(maximum).name(format!("{DEFAULT_NAME}.{n}")))
    }

    /// See [`BoundedSemaphore::name`].
    pub fn name(self, name: impl Into<String>) -> Self {
        Self(self.0.name(name))
    }
    /// See [`BoundedSemaphore::directory`].
    pub fn directory(self, dir: impl AsRef<Path>) -> Self {
        Self(self.0.directory(dir))
    }
    /// See [`BoundedSemaphore::filename_pattern`].
    pub fn filename_pattern(self, pattern: impl Into<String>) -> Self {
        Self(self.0.filename_pattern(pattern))
    }
    wait_setters!("a free slot", "false");

    /// See [`BoundedSemaphore::get_filenames`].
    pub fn get_filenames(&self) -> Vec<PathBuf> {
        self.0.get_filenames()
    }
    /// See [`BoundedSemaphore::get_random_filenames`].
    pub fn get_random_filenames(&self) -> Vec<PathBuf> {
        self.0.get_random_filenames()
    }
    /// See [`BoundedSemaphore::acquire`].
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`BoundedSemaphore::acquire`].
    ///
    /// # Errors
    ///
    /// As [`BoundedSemaphore::acquire`].
    ///
    /// # Panics
    ///
    /// As [`BoundedSemaphore::acquire`].
    pub async fn acquire(&self) -> Result<BoundedSemaphorePermit> {
        self.0.acquire().await
    }

    acquire_variants!(BoundedSemaphorePermit);

    async fn acquire_with(&self, w: WaitOptions) -> Result<BoundedSemaphorePermit> {
        self.0.acquire_with(w).await
    }
}

impl From<NamedBoundedSemaphore> for BoundedSemaphore {
    fn from(s: NamedBoundedSemaphore) -> Self {
        s.0
    }
}
