//! [`LeaseLockGuard`]: a held [`LeaseLock`](super::LeaseLock), and its
//! heartbeat task.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

    crate::loss::lease_guard_loss_methods!("or the claim was taken over or removed");

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

crate::loss::impl_held_lock!(LeaseLockGuard, always_fenced);

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
