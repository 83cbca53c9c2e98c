//! [`LeaseLockGuard`]: a held [`LeaseLock`](super::LeaseLock), and its
//! heartbeat task.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::dir::{Claim, LeaseDir};
use super::record::{Record, State};
use crate::error::{Error, ErrorKind, Result};
use crate::loss::{LeaseState, Task};

/// A held [`LeaseLock`](super::LeaseLock). Owns the task that renews the
/// claim. Dropping it releases as [`release`](Self::release) does, on the
/// blocking pool (without a runtime, at once on the dropping thread).
///
/// It speaks the loss vocabulary of [`RedisLockGuard`](crate::RedisLockGuard)
/// and [`EtcdLockGuard`](crate::EtcdLockGuard) and implements
/// [`HeldLock`](crate::HeldLock): the fencing token is always there (the
/// claim's generation), and a loss comes from the lease (a renewal overdue,
/// judged on this host's monotonic clock) or from the claim being taken
/// over or removed.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct LeaseLockGuard {
    dir: LeaseDir,
    generation: u64,
    record: Record,
    serial: u64,
    state: Arc<LeaseState>,
    task: Option<Task>,
    /// `None` once released.
    claim: Option<Arc<Claim>>,
    waited: Duration,
}

impl LeaseLockGuard {
    pub(super) fn start(
        dir: LeaseDir,
        claim: Claim,
        record: Record,
        state: Arc<LeaseState>,
        serial: u64,
    ) -> Self {
        let claim = Arc::new(claim);
        let task = Task(tokio::spawn(renew(
            dir.clone(),
            claim.clone(),
            record.clone(),
            state.clone(),
        )));
        Self {
            dir,
            generation: record.generation,
            record,
            serial,
            state,
            task: Some(task),
            claim: Some(claim),
            waited: Duration::ZERO,
        }
    }

    pub(super) fn set_waited(&mut self, waited: Duration) {
        self.waited = waited;
    }

    /// How long the acquisition took, from the call until the grant.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// This holder's id (32 lowercase hex characters), recorded in its
    /// claim.
    pub fn holder_id(&self) -> &str {
        &self.state.holder_id
    }

    /// The lease directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The claim file this guard holds.
    pub fn claim_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(super::dir::claim_name(self.generation))
    }

    /// The fencing token of this grant: the claim's generation. Strictly
    /// greater than the token of every grant of the same lock before it
    /// (each claim is made only after the one before it was read). Always
    /// there, as on [`EtcdLockGuard`](crate::EtcdLockGuard).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let shared = tempfile::tempdir().unwrap();
    /// let lock = portalocker::LeaseLock::new(shared.path().join("job.lease"));
    /// let first = lock.acquire().await?.fence_token();
    /// let second = lock.acquire().await?.fence_token();
    /// assert!(second > first);
    /// # Ok(()) }
    /// ```
    pub fn fence_token(&self) -> u64 {
        self.generation
    }

    /// Whether the lock was lost: no renewal succeeded for the TTL since it
    /// was sent (also judged here, from the local clock, so a process that
    /// was paused past its TTL learns it on its first look), or the claim
    /// was taken over or removed. Local and cheap.
    pub fn is_lost(&self) -> bool {
        self.state.is_lost()
    }

    /// `Err` of kind [`ErrorKind::LockLost`] once the lock is lost; cheap,
    /// no I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`], naming the lease directory, the holder id
    /// and why.
    pub fn ensure_held(&self) -> Result<()> {
        match self.state.reason() {
            Some(_) => Err(self.state.lost_error()),
            None => Ok(()),
        }
    }

    /// A `watch` receiver that turns `true` when the lock is lost.
    pub fn watch_lost(&self) -> watch::Receiver<bool> {
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

    /// Runs `work` only while the lock is held: its output, or an error of
    /// kind [`ErrorKind::LockLost`] as soon as the lock is lost first (then
    /// `work` is dropped at its current `.await`). A loss is noticed, not
    /// undone: use [`fence_token`](Self::fence_token) where a stale
    /// holder's writes must be refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe exactly when `work` is.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`] if the lock is lost before `work` completes.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let shared = tempfile::tempdir().unwrap();
    /// let guard = portalocker::LeaseLock::new(shared.path().join("job.lease")).acquire().await?;
    /// let n = guard.run_while_held(async { /* the job */ 42 }).await?;
    /// assert_eq!(n, 42);
    /// # Ok(()) }
    /// ```
    pub async fn run_while_held<F: std::future::Future>(&self, work: F) -> Result<F::Output> {
        self.ensure_held()?;
        let lost = std::pin::pin!(self.lost());
        match futures_util::future::select(lost, std::pin::pin!(work)).await {
            futures_util::future::Either::Left(_) => Err(self.state.lost_error()),
            futures_util::future::Either::Right((out, _)) => Ok(out),
        }
    }

    /// Releases the lock: stops renewing and marks the claim free, so the
    /// next contender takes it at its next look.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the release runs on the blocking pool
    /// and completes if this future is dropped.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`] if the lock had been lost before the
    /// release (nothing is written then); [`ErrorKind::Io`] if the claim
    /// could not be marked free (it then goes stale after its TTL).
    pub async fn release(mut self) -> Result<()> {
        self.task.take();
        let Some(claim) = self.claim.take() else {
            return Ok(());
        };
        if self.state.reason().is_some() {
            return Err(self.state.lost_error());
        }
        let (dir, free, serial) = self.free_record();
        let done = tokio::task::spawn_blocking(move || {
            // Closed first: Windows cannot rename over an open file.
            drop(claim);
            dir.release(&free, serial)
        })
        .await;
        match done {
            Ok(r) => r.map_err(super::dir_error),
            Err(e) => Err(Error::new(ErrorKind::Io, "failed to release")
                .with_path(self.dir.path().to_path_buf())
                .with_reason(format!("the blocking pool: {e}"))),
        }
    }

    fn free_record(&mut self) -> (LeaseDir, Record, u64) {
        self.serial += 1;
        let free = Record {
            state: State::Free,
            ..self.record.clone()
        };
        (self.dir.clone(), free, self.serial)
    }
}

impl Drop for LeaseLockGuard {
    fn drop(&mut self) {
        self.task.take();
        let Some(claim) = self.claim.take() else {
            return;
        };
        if self.state.is_lost() {
            return;
        }
        let (dir, free, serial) = self.free_record();
        let release = move || {
            drop(claim);
            let _ = dir.release(&free, serial);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

impl crate::HeldLock for LeaseLockGuard {
    fn is_lost(&self) -> bool {
        Self::is_lost(self)
    }

    fn ensure_held(&self) -> Result<()> {
        Self::ensure_held(self)
    }

    fn watch_lost(&self) -> watch::Receiver<bool> {
        Self::watch_lost(self)
    }

    fn fence_token(&self) -> Option<u64> {
        Some(self.generation)
    }
}

impl fmt::Debug for LeaseLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseLockGuard")
            .field("path", &self.dir.path())
            .field("holder_id", &self.state.holder_id)
            .field("fence_token", &self.generation)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// Renews the claim every third of its TTL until the task is aborted
/// (release) or the lease is lost: a renewal overdue, or the claim taken
/// over or removed. One renewal at a time: a hung filesystem call holds
/// the next one back, and the lease runs out meanwhile.
async fn renew(dir: LeaseDir, claim: Arc<Claim>, mut record: Record, state: Arc<LeaseState>) {
    let ttl = record.ttl;
    let period = ttl / 3;
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next.min(state.expires())).await;
        if state.is_lost() {
            return;
        }
        record.beat = record.beat.wrapping_add(1);
        let sent = Instant::now();
        let (d, c, r) = (dir.clone(), claim.clone(), record.clone());
        match tokio::task::spawn_blocking(move || d.beat(&c, &r)).await {
            Ok(Ok(None)) => {
                state.extend(crate::deadline::deadline_after(sent, ttl));
                next = Instant::now() + period;
            }
            Ok(Ok(Some(why))) => {
                state.fail(why);
                return;
            }
            // A failed write (a network filesystem's hiccup): again soon;
            // the lease runs out if it keeps failing.
            Ok(Err(_)) | Err(_) => {
                next = Instant::now() + (period / 4).max(Duration::from_millis(10));
            }
        }
    }
}
