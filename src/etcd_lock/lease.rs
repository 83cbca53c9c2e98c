//! The lease behind an etcd acquisition and its holder: renewed by a task
//! of its own, and counted lost once a renewal is overdue.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions};
use tokio::time::Instant;

pub(super) use crate::loss::{LeaseState, Task};

/// How long a revoke (on release, drop or a dropped acquisition) may take.
pub(super) const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lease granted to an acquisition that has not been handed to a guard:
/// renewed meanwhile, and revoked (on a task of its own) if the
/// acquisition goes away.
pub(super) struct PendingLease {
    client: Client,
    lease: i64,
    state: Arc<LeaseState>,
    renew: Option<Task>,
}

impl PendingLease {
    pub(super) fn start(client: Client, lease: i64, ttl: Duration, state: Arc<LeaseState>) -> Self {
        let renew = Task(tokio::spawn(renew(
            client.clone(),
            lease,
            ttl,
            state.clone(),
        )));
        Self {
            client,
            lease,
            state,
            renew: Some(renew),
        }
    }

    /// Hands the lease to a holder whose key is `key`, created at
    /// revision `rev`: the renewal goes on, and a watch reports the key's
    /// deletion by anyone else as a loss.
    pub(super) fn into_held(mut self, key: Vec<u8>, rev: i64) -> Vec<Task> {
        let renew = self.renew.take();
        let watch = Task(tokio::spawn(watch_key(
            self.client.clone(),
            key,
            rev,
            self.state.clone(),
        )));
        // Disarmed: the guard revokes from now on.
        self.lease = 0;
        renew.into_iter().chain([watch]).collect()
    }
}

impl Drop for PendingLease {
    fn drop(&mut self) {
        self.renew.take();
        if self.lease != 0 {
            revoke_in_background(self.client.clone(), self.lease);
        }
    }
}

/// Revokes `lease` on a task of its own (its keys go with it). Without a
/// runtime the lease is left to expire.
pub(super) fn revoke_in_background(client: Client, lease: i64) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(revoke(client, lease));
    }
}

/// Revokes `lease`, retrying what a failover or a dead member answers
/// (the client then tries another member) for up to [`REVOKE_TIMEOUT`].
/// A lease etcd no longer knows counts as revoked.
pub(super) async fn revoke(client: Client, lease: i64) -> Result<(), String> {
    let deadline = Instant::now() + REVOKE_TIMEOUT;
    let mut last = String::from("etcd did not answer within 5 s");
    loop {
        let attempt = deadline.min(Instant::now() + super::ATTEMPT_TIMEOUT);
        match tokio::time::timeout_at(attempt, client.clone().lease_revoke(lease)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if !super::transient(&e) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            // A member that is up but not serving yet: try another.
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Renews `lease` every third of its TTL until the task is aborted, or
/// the lease is lost: the server says it expired, or no renewal was
/// answered before the local expiry.
async fn renew(client: Client, lease: i64, ttl: Duration, state: Arc<LeaseState>) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut stream = None;
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = tokio::time::sleep_until(state.expires()) => {}
        }
        if state.is_lost() {
            return;
        }
        let sent = Instant::now();
        let attempt = state.expires().min(sent + super::ATTEMPT_TIMEOUT);
        match tokio::time::timeout_at(attempt, renew_once(&client, lease, &mut stream)).await {
            Ok(Ok(left)) if left > 0 => {
                if let Some(to) = sent.checked_add(Duration::from_secs(left.unsigned_abs())) {
                    state.extend(to);
                }
                next = Instant::now() + period;
            }
            Ok(Ok(_)) => {
                state.fail("etcd says the lease expired (it was not renewed in time)");
                return;
            }
            Ok(Err(e)) if !super::transient(&e) => {
                state.fail(format!("the lease could not be renewed: {e}"));
                return;
            }
            Ok(Err(_)) => {
                // A broken stream or a passing election: try again soon,
                // on a new stream.
                stream = None;
                next = Instant::now() + (period / 4).max(Duration::from_millis(50));
            }
            Err(_) => {
                if state.is_lost() {
                    return;
                }
                // No answer from the member the stream went to (stopped,
                // or restarting): a new stream may reach another.
                stream = None;
                next = Instant::now();
            }
        }
    }
}

type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// One renewal: the TTL left that the server answered.
async fn renew_once(
    client: &Client,
    lease: i64,
    stream: &mut Option<KeepAlive>,
) -> Result<i64, etcd_client::Error> {
    if stream.is_none() {
        *stream = Some(client.clone().lease_keep_alive(lease).await?);
    }
    let Some((keeper, answers)) = stream.as_mut() else {
        return Err(etcd_client::Error::LeaseKeepAliveError("no stream".into()));
    };
    keeper.keep_alive().await?;
    match answers.message().await? {
        Some(r) => Ok(r.ttl()),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "the keep-alive stream ended".into(),
        )),
    }
}

/// Reports the deletion of the holder's key `key` (created at `rev`) by
/// anyone but the holder as a loss. Runs until aborted (on release).
async fn watch_key(client: Client, key: Vec<u8>, rev: i64, state: Arc<LeaseState>) {
    let mut from = rev + 1;
    loop {
        let opts = WatchOptions::new()
            .with_start_revision(from)
            .with_filters([WatchFilterType::NoPut]);
        if let Ok(mut stream) = client.clone().watch(key.clone(), Some(opts)).await {
            while let Ok(Some(resp)) = stream.message().await {
                // Only deletions are sent (NoPut), and the first one ends
                // this task: a new stream starts again from `from`.
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    state.fail(
                        "the lock's key was deleted while held (by someone else, or its lease \
                         was revoked)",
                    );
                    return;
                }
                if resp.canceled() {
                    // Compacted past `from`: ask whether the key is still
                    // there, and watch from now on.
                    match client.clone().get(key.clone(), None).await {
                        Ok(r) if r.kvs().is_empty() => {
                            state.fail("the lock's key is gone");
                            return;
                        }
                        Ok(r) => {
                            if let Some(h) = r.header() {
                                from = h.revision() + 1;
                            }
                        }
                        Err(_) => {}
                    }
                    break;
                }
            }
        }
        if state.is_lost() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
