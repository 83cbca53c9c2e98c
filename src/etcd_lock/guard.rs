//! [`EtcdLockGuard`]: a held [`EtcdLock`](super::EtcdLock).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;

use super::lease::{revoke, revoke_in_background, LeaseState, Task};
use crate::error::{Error, ErrorKind, Result};

/// A held [`EtcdLock`](super::EtcdLock). Owns the lease's renewal task and
/// a watch on its key. Dropping it releases as [`release`](Self::release)
/// does, on a task of its own (without a runtime the lease is left to
/// expire after its TTL).
///
/// It speaks the loss vocabulary of [`RedisLockGuard`](crate::RedisLockGuard)
/// and implements [`HeldLock`](crate::HeldLock). The differences: the
/// fencing token is always there (a `u64`, the key's create revision),
/// and a loss comes from the lease (not renewed in time, or revoked) or
/// from the key being deleted by someone else.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct EtcdLockGuard {
    name: String,
    key: String,
    fence: u64,
    lease: i64,
    shared: bool,
    state: Arc<LeaseState>,
    tasks: Vec<Task>,
    /// `None` once released.
    client: Option<Client>,
    waited: Duration,
}

impl EtcdLockGuard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: String,
        key: String,
        fence: u64,
        lease: i64,
        state: Arc<LeaseState>,
        tasks: Vec<Task>,
        client: Client,
        shared: bool,
    ) -> Self {
        Self {
            name,
            key,
            fence,
            lease,
            shared,
            state,
            tasks,
            client: Some(client),
            waited: Duration::ZERO,
        }
    }

    pub(super) fn set_waited(&mut self, waited: Duration) {
        self.waited = waited;
    }

    /// How long the acquisition took, from the call until the grant.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn f(client: portalocker::etcd_client::Client) -> portalocker::Result<()> {
    /// let guard = portalocker::EtcdLock::new("jobs", client).acquire().await?;
    /// println!("holder {} after {:?}", guard.holder_id(), guard.waited());
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// This holder's id (32 lowercase hex characters), recorded in its key.
    pub fn holder_id(&self) -> &str {
        &self.state.holder_id
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder's key in etcd (`<name>/<lease>`, or `<name>/read/<lease>`
    /// for a reader).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the lease the key lives under.
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// Whether this is a reader's (shared) hold.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The fencing token of this grant: the create revision of the
    /// holder's key. Strictly greater than the token of every conflicting
    /// grant of the same lock before it (etcd's revision only grows, and
    /// conflicting contenders are served in revision order). Unlike
    /// [`RedisLockGuard::fence_token`](crate::RedisLockGuard::fence_token)
    /// it is always there.
    pub fn fence_token(&self) -> u64 {
        self.fence
    }

    /// Whether the lock was lost: the lease was not renewed in time (also
    /// judged here, from the local clock, so a process that was paused
    /// past its TTL learns it on its first look), etcd said it expired,
    /// or the key was deleted. Local and cheap.
    pub fn is_lost(&self) -> bool {
        self.state.is_lost()
    }

    /// `Err` of kind [`ErrorKind::LockLost`] once the lock is lost; cheap,
    /// no network traffic.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`], naming the lock, the holder id and why.
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
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn f(guard: portalocker::EtcdLockGuard) -> portalocker::Result<()> {
    /// let n = guard.run_while_held(async { /* the job */ 42 }).await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn run_while_held<F: std::future::Future>(&self, work: F) -> Result<F::Output> {
        self.ensure_held()?;
        tokio::select! {
            biased;
            () = self.lost() => Err(self.state.lost_error()),
            out = work => Ok(out),
        }
    }

    /// Releases the lock: stops renewing and revokes the lease, which
    /// deletes the key; the next contender is told by its watch.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it leaves the revoke to a task
    /// of its own, as dropping the guard does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`] if the lock had been lost before the
    /// release; [`ErrorKind::Etcd`] if etcd did not confirm the revoke
    /// within 5 s (the lease then expires after its TTL).
    pub async fn release(mut self) -> Result<()> {
        self.tasks.clear();
        let Some(client) = self.client.take() else {
            return Ok(());
        };
        let lost = self.state.reason().map(|_| self.state.lost_error());
        // Revoke in a task of its own: cancelling this call still revokes.
        let answer = tokio::spawn(revoke(client, self.lease)).await;
        if let Some(e) = lost {
            return Err(e);
        }
        let why = match answer {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => why,
            Err(e) => e.to_string(),
        };
        Err(Error::new(ErrorKind::Etcd, "failed to release etcd lock")
            .with_lock_name(self.name.clone())
            .with_reason(format!(
                "{why}; the lease expires after its TTL, and the lock with it"
            )))
    }
}

impl Drop for EtcdLockGuard {
    fn drop(&mut self) {
        self.tasks.clear();
        if let Some(client) = self.client.take() {
            revoke_in_background(client, self.lease);
        }
    }
}

impl crate::HeldLock for EtcdLockGuard {
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
        Some(self.fence)
    }
}

impl fmt::Debug for EtcdLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLockGuard")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("holder_id", &self.state.holder_id)
            .field("fence_token", &self.fence)
            .field("lost", &self.is_lost())
            .finish()
    }
}
