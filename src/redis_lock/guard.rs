//! [`RedisLockGuard`]: a held [`RedisLock`](super::RedisLock).

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::command::CommandSlot;
use super::keep_alive::{HolderState, Subscription};
use super::waiting::{announce_release, Turn};
use crate::error::{Error, Result};

/// A held [`RedisLock`](super::RedisLock). Owns the subscription connection and its
/// keep-alive task. Dropping it releases as [`release`](Self::release)
/// does, on a task of its own (without a runtime: by closing the socket at
/// once); a writer's guard also holds this process's turn on the channel,
/// which passes to the next waiting task of the process once the server
/// let go.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RedisLockGuard {
    sub: Option<Subscription>,
    state: Arc<HolderState>,
    fence: Option<u64>,
    waited: std::time::Duration,
    /// For the release notice on the side channel.
    cmd: Arc<CommandSlot>,
}

impl RedisLockGuard {
    pub(super) fn new(
        sub: Subscription,
        state: Arc<HolderState>,
        fence: Option<u64>,
        cmd: Arc<CommandSlot>,
    ) -> Self {
        Self {
            sub: Some(sub),
            state,
            fence,
            waited: std::time::Duration::ZERO,
            cmd,
        }
    }

    pub(super) fn keep_turn(&mut self, turn: Turn) {
        self.state.keep_turn(turn);
    }

    pub(super) fn set_waited(&mut self, waited: std::time::Duration) {
        self.waited = waited;
    }

    /// How long the acquisition took, from the call until the lock was
    /// confirmed (connections, attempts and waiting included).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// let client = portalocker::redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let guard = portalocker::RedisLock::new("jobs", client).acquire().await?;
    /// println!("holder {} after {:?}", guard.holder_id(), guard.waited());
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> std::time::Duration {
        self.waited
    }

    /// This holder's id: 32 lowercase hex characters, also the suffix of
    /// its connection name `<channel>-lock-<id>`.
    pub fn holder_id(&self) -> &str {
        &self.state.id
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.state.channel
    }

    /// The fencing token drawn for this grant (with
    /// [`RedisLock::fencing`](super::RedisLock::fencing) on an exclusive lock), strictly greater than
    /// every token drawn before from the same (durable) counter.
    pub fn fence_token(&self) -> Option<u64> {
        self.fence
    }

    /// Whether the lock was lost: the subscription connection died (killed,
    /// server gone, ping unanswered) while held. Local and cheap.
    pub fn is_lost(&self) -> bool {
        self.state.is_lost()
    }

    /// `Err` of kind [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) once the lock is lost; cheap,
    /// no network traffic. Sprinkle it through long critical sections.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost), naming the channel, the holder id and why.
    pub fn ensure_held(&self) -> Result<()> {
        match self.state.lost_reason() {
            Some(why) => Err(self.lost_error(why)),
            None => Ok(()),
        }
    }

    fn lost_error(&self, why: String) -> Error {
        self.state.lost_error(&why)
    }

    /// A `watch` receiver that turns `true` when the lock is lost: hand it
    /// to tasks that must stop working then (`changed().await`,
    /// `borrow()`), without giving them the guard.
    pub fn watch_lost(&self) -> watch::Receiver<bool> {
        self.state.watch_lost()
    }

    /// Runs `work` only while the lock is held: its output, or an error of
    /// kind [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) as soon as the lock is lost first (then
    /// `work` is dropped, i.e. cancelled, at its current `.await`).
    ///
    /// It is `tokio::select!` over [`lost`](Self::lost) and `work`, with
    /// the loss checked first; write that `select!` yourself when the work
    /// needs its own cleanup branch. As with any cancellation, effects
    /// `work` already had stay: a loss is noticed, not undone. Use fencing
    /// tokens where a stale holder's writes must be refused.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe exactly when `work` is.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) if the lock is lost before `work` completes
    /// (or was lost already).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn dox(guard: portalocker::RedisLockGuard) -> portalocker::Result<()> {
    /// let rows = guard
    ///     .run_while_held(async { /* a long job */ 42 })
    ///     .await?; // Err(LockLost) if the lock went first
    /// # let _ = rows; Ok(()) }
    /// ```
    pub async fn run_while_held<F: std::future::Future>(&self, work: F) -> Result<F::Output> {
        self.ensure_held()?;
        tokio::select! {
            biased;
            () = self.lost() => Err(self.lost_error(self.state.lost_reason().unwrap_or_default())),
            out = work => Ok(out),
        }
    }

    /// Resolves when the lock is lost. Pending forever while it is held.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only watches; use it as a branch of
    /// `tokio::select!` beside the work the lock protects.
    pub async fn lost(&self) {
        let mut rx = self.state.watch_lost();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Releases the lock: unsubscribes, waits until the server confirmed
    /// it (from then on `PUBSUB NUMSUB` no longer counts this holder, and a
    /// contender may take the lock at once), then closes the subscription
    /// connection. The release is announced to waiting processes; where
    /// this process's acquisition met contention, the call returns only
    /// once the announcement is published, so that asking again at once
    /// does not get ahead of waiters that have not heard of it.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it releases as dropping the
    /// guard does (the socket closes; the server drops the subscriber when
    /// it sees the close, without waiting for a confirmation).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) if the lock had been lost before the
    /// release: work done under it may not have been exclusive.
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis) if the server did not confirm the
    /// unsubscription within `max(unavailable_timeout, 100 ms)`: the
    /// connection is closed all the same, and the lock is free once the
    /// server notices.
    pub async fn release(mut self) -> Result<()> {
        let turn = self.state.take_turn();
        let unsubscribed = match self.sub.take() {
            Some(sub) => {
                let r = sub.stop().await;
                // The lock is free once the server confirmed. The notice
                // to waiting processes is sent by a task of its own (a
                // dropped call still sends it). Where this process met
                // contention on its way in, the call also waits for it, so
                // that asking again at once cannot hide the free channel
                // from waiters not yet told (they slept to their next poll:
                // up to 0.77 s at 16 processes, 61 ms with the wait);
                // otherwise it does not (one round trip less).
                let (cmd, channel) = (self.cmd.clone(), self.state.channel.clone());
                let contended = turn.as_ref().is_some_and(Turn::contended);
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let notice =
                            rt.spawn(async move { announce_release(&cmd, &channel).await });
                        if contended {
                            let _ = notice.await;
                        }
                    }
                    Err(_) => announce_release(&cmd, &channel).await,
                }
                r
            }
            None => Ok(()),
        };
        drop(turn);
        if let Some(why) = self.state.lost_reason() {
            return Err(self.lost_error(why));
        }
        unsubscribed.map_err(|why| {
            Error::new(crate::ErrorKind::Redis, "failed to release Redis lock")
                .with_channel(self.state.channel.clone())
                .with_reason(format!(
                    "{why}; the connection is closed, and the server drops the subscriber when \
                     it notices"
                ))
        })
    }
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        let Some(sub) = self.sub.take() else {
            return;
        };
        // Release in the background: unsubscribe, announce, then pass the
        // turn on. Without a runtime, dropping the subscription aborts its
        // task, which closes the socket.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cmd, channel, turn) = (
            self.cmd.clone(),
            self.state.channel.clone(),
            self.state.take_turn(),
        );
        rt.spawn(async move {
            let _ = sub.stop().await;
            announce_release(&cmd, &channel).await;
            drop(turn);
        });
    }
}

impl fmt::Debug for RedisLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockGuard")
            .field("channel", &self.state.channel)
            .field("holder_id", &self.state.id)
            .field("fence_token", &self.fence)
            .field("lost", &self.is_lost())
            .finish()
    }
}
