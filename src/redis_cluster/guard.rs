//! [`RedisClusterLockGuard`]: a held
//! [`RedisClusterLock`](super::RedisClusterLock), and its renewal task.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::script::{self, Renewed};
use super::RedisClusterLock;
use crate::error::{Error, ErrorKind, Result};
use crate::loss::{LeaseState, Task};

/// How long a release (or the deletion of a withdrawn grant) may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Until when a record renewed (and replicated) at `sent` is surely this
/// holder's: its TTL from the send time, less a tenth (at least 20 ms)
/// for the nodes' clocks, which expire a promoted replica's copy by their
/// own wall time.
pub(super) fn local_expiry(sent: Instant, ttl: Duration) -> Instant {
    let margin = (ttl / 10).max(Duration::from_millis(20));
    sent + ttl.saturating_sub(margin)
}

/// A written record not yet handed to a guard: deleted (on a task of its
/// own) if the acquisition goes away.
pub(super) struct Pending {
    lock: RedisClusterLock,
    holder_id: String,
    armed: bool,
}

impl Pending {
    pub(super) fn new(lock: RedisClusterLock, holder_id: String) -> Self {
        Self {
            lock,
            holder_id,
            armed: true,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            delete_in_background(self.lock.clone(), self.holder_id.clone());
        }
    }
}

fn delete_in_background(lock: RedisClusterLock, holder_id: String) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = delete(&lock, &holder_id).await;
        });
    }
}

/// Deletes `holder_id`'s record, retrying what a failover or a migration
/// answers for up to [`RELEASE_TIMEOUT`]. `Ok(false)`: it was not there
/// (expired, or taken over).
async fn delete(lock: &RedisClusterLock, holder_id: &str) -> std::result::Result<bool, String> {
    let bound = Instant::now() + RELEASE_TIMEOUT;
    let key = lock.owner_key();
    let mut last = String::from("no answer");
    while Instant::now() < bound {
        match lock.connection().await {
            Ok(mut c) => match script::release(&mut c, &key, holder_id).await {
                Ok(ours) => return Ok(ours),
                Err(e) if script::transient(&e) => {
                    last = e.to_string();
                }
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the cluster did not confirm within 5 s (last error: {last})"
    ))
}

/// A held [`RedisClusterLock`](super::RedisClusterLock). Owns the task
/// that renews the record. Dropping it releases as
/// [`release`](Self::release) does, on a task of its own (without a
/// runtime the record expires after its TTL).
///
/// It speaks the loss vocabulary of [`RedisLockGuard`](crate::RedisLockGuard)
/// and implements [`HeldLock`](crate::HeldLock): the fencing token is
/// always there, and a loss comes from the lease (no confirmed renewal in
/// time, judged on this host's monotonic clock) or from the record being
/// gone or someone else's.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RedisClusterLockGuard {
    /// `None` once released.
    pending: Option<Pending>,
    token: u64,
    host: String,
    state: Arc<LeaseState>,
    task: Option<Task>,
    waited: Duration,
}

impl RedisClusterLockGuard {
    pub(super) fn start(
        mut pending: Pending,
        token: u64,
        host: String,
        state: Arc<LeaseState>,
        waited: Duration,
    ) -> Self {
        let task = Task(tokio::spawn(renew(
            pending.lock.clone(),
            pending.holder_id.clone(),
            state.clone(),
        )));
        // The guard deletes the record from now on.
        pending.armed = false;
        Self {
            pending: Some(pending),
            token,
            host,
            state,
            task: Some(task),
            waited,
        }
    }

    /// The fencing token of this grant: the lock's counter, incremented by
    /// every grant (in the slot of the lock's name, replicated before the
    /// grant is handed out, so a failover neither repeats nor reverses it).
    pub fn fence_token(&self) -> u64 {
        self.token
    }

    /// This holder's id (32 lowercase hex characters), in its record.
    pub fn holder_id(&self) -> &str {
        &self.state.holder_id
    }

    /// The host name in this holder's record.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// How long the acquisition took, from the call until the grant.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    crate::loss::lease_guard_loss_methods!("or the record was gone or someone else's");

    /// Releases the lock: stops renewing and deletes the record if it is
    /// still this holder's.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it leaves the deletion to a
    /// task of its own, as dropping the guard does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`] if the lock had been lost before the
    /// release; [`ErrorKind::Redis`] if the cluster did not confirm the
    /// deletion within 5 s (the record then expires after its TTL).
    pub async fn release(mut self) -> Result<()> {
        self.task.take();
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let lost = self.state.reason().map(|_| self.state.lost_error());
        let (lock, id) = (pending.lock.clone(), pending.holder_id.clone());
        // Delete in a task of its own: cancelling this call still deletes.
        let answer = tokio::spawn(async move { delete(&lock, &id).await }).await;
        if let Some(e) = lost {
            return Err(e);
        }
        let why = match answer {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(why)) => why,
            Err(e) => e.to_string(),
        };
        Err(
            Error::new(ErrorKind::Redis, "failed to release Redis Cluster lock")
                .with_lock_name(self.state.name.clone())
                .with_reason(format!(
                    "{why}; the record expires after its TTL, and the lock with it"
                )),
        )
    }
}

impl Drop for RedisClusterLockGuard {
    fn drop(&mut self) {
        self.task.take();
        if let Some(mut p) = self.pending.take() {
            p.armed = true;
        }
    }
}

crate::loss::impl_held_lock!(RedisClusterLockGuard, always_fenced);

impl fmt::Debug for RedisClusterLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterLockGuard")
            .field("name", &self.state.name)
            .field("holder_id", &self.state.holder_id)
            .field("fence_token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// Renews the record every third of the TTL (sooner after a failed try)
/// until the task is aborted or the lock is lost.
async fn renew(lock: RedisClusterLock, holder_id: String, state: Arc<LeaseState>) {
    let ttl = lock.cfg.ttl;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let key = lock.owner_key();
    let mut next = Instant::now() + ttl / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = state.lost() => return,
        }
        let sent = Instant::now();
        // A renewal may wait for the replicas until the lease would run out.
        let room = state.expires().saturating_duration_since(sent);
        let wait = (ttl / 3).min(room).max(Duration::from_millis(1));
        let outcome = match lock.connection().await {
            Ok(mut c) => {
                script::renew(&mut c, &key, &holder_id, ttl_ms, wait, &lock.replicas).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Renewed::Confirmed) => {
                state.extend(local_expiry(sent, ttl));
                next = sent + ttl / 3;
            }
            Ok(Renewed::Gone) => {
                state.fail("the record was gone or someone else's (it expired, or was deleted)");
                return;
            }
            Ok(Renewed::Unconfirmed) | Err(_) => {
                // Not trusted (the replicas did not confirm, or no
                // answer): try again soon, until the lease runs out.
                next = Instant::now() + (ttl / 20).max(Duration::from_millis(10));
            }
        }
        // A lease past its expiry is reported by `is_lost` itself.
        if state.is_lost() {
            return;
        }
    }
}
