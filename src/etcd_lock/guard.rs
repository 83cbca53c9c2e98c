//! [`EtcdLockGuard`]: a held [`EtcdLock`](super::EtcdLock).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;

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

    crate::loss::lease_guard_loss_methods!("etcd said it expired, or the key was deleted");

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

crate::loss::impl_held_lock!(EtcdLockGuard, always_fenced);

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
