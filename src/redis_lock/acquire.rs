//! The acquisition of a [`RedisLock`]: this process's turn, then attempts
//! and the waits between them until the lock is granted or the deadline
//! passes; validation before anything connects.

use std::sync::Arc;
use std::time::Duration;

use super::attempt::{self, Attempt};
use super::keep_alive::HolderState;
use super::protocol::HolderMode;
use super::waiting::{LocalQueue, Waiter};
use super::{
    command, connect, holder_id, RedisLock, RedisLockGuard, MAX_CHANNEL_LEN, OP, SELF_CHECK_MARGIN,
};
use crate::error::{Error, Result};
use crate::file::flags::{Mode, Operation};
use crate::options::WaitOptions;

impl RedisLock {
    crate::trace::traced_acquire_with! {
        pub(super) fn(self, w) -> RedisLockGuard = acquire_untraced,
        span: [channel = %self.cfg.channel, mode = ?self.cfg.flags,],
        granted: |g| [fence_token = ?g.fence_token(),],
    }

    pub(super) async fn acquire_untraced(&self, w: WaitOptions) -> Result<RedisLockGuard> {
        self.validate()?;
        if self.cfg.endpoint.is_sentinel() {
            // Errors before waits: sentinels that cannot be reached, or do
            // not know the service (or a client factory that fails). A
            // known service without a primary right now (a failover) is
            // waited out like any passing state.
            let mut resolved = self.cfg.endpoint.resolve().await.map(drop);
            if resolved.is_err() && self.cfg.endpoint.knows_service().await == Some(true) {
                resolved = Ok(());
            }
            if let Err(e) = resolved {
                return Err(Error::new(crate::ErrorKind::Redis, OP)
                    .with_channel(self.cfg.channel.clone())
                    .with_reason(format!(
                        "{} could not name a primary: {e}{}",
                        self.cfg.endpoint.name(),
                        self.cfg.endpoint.hint()
                    ))
                    .with_source(e));
            }
        }
        self.cmd.check_topology(true).await?;
        let start = tokio::time::Instant::now();
        let writer = matches!(
            self.cfg.flags.operation(),
            Ok(Operation::Lock {
                mode: Mode::Exclusive,
                ..
            })
        );
        let id = holder_id(writer);
        let state = Arc::new(HolderState::new(
            self.cfg.channel.clone(),
            id,
            if writer {
                HolderMode::Pending
            } else {
                HolderMode::Shared
            },
            self.cfg.on_lost.clone(),
        ));
        // One contender per process and channel: wait for this process's
        // turn first (first come, first served).
        let deadline = crate::deadline::deadline_after(start, w.timeout);
        let local = self.local.clone();
        // With fail_when_locked or a zero timeout there is no waiting for it.
        let now_only = w.fail_when_locked || w.timeout.is_zero();
        let once = w.timeout.is_zero();
        let turn = if now_only {
            local.try_turn()
        } else {
            local.turn_until(deadline).await
        };
        let Some(turn) = turn else {
            return Err(self.busy_here(&local, (!now_only).then_some(w.timeout)));
        };
        // Python's schedule: an attempt at once, then one after each pause
        // of check_interval × U[0.5, 1.5) while time remains (a zero
        // interval falls back to Python's 100 ms poll); between them the
        // waiter watches the channel quietly and moves early when it is
        // free and this waiter is first in line.
        let interval = if w.check_interval.is_zero() {
            attempt::POLL
        } else {
            w.check_interval
        };
        let mut waiter = Waiter::new(self, &state.id, writer && !w.fail_when_locked, interval);
        let mut attempt = Attempt::new(self, state, writer, w, deadline);
        // A writer that would only queue up behind others (or meet a
        // holder) waits instead of subscribing; a reader may share. Where
        // the last acquisition met no contention, the first attempt goes at
        // once (one round trip less): it learns of waiters in its first
        // count, and then waits.
        let contended = writer && !w.fail_when_locked && local.contended();
        let mut go = !contended || waiter.free_now().await;
        if !go {
            // It waits without an attempt: its first attempt, when the
            // lock is released, finds its connection open.
            self.open_spare();
        }
        let mut first = true;
        loop {
            if go {
                let got = attempt.run().await?;
                if first {
                    local.set_contended(got.is_none());
                }
                if let Some(mut guard) = got {
                    // The queue entry and the side subscription go
                    // meanwhile: the grant does not wait for them.
                    waiter.leave_soon();
                    guard.set_waited(start.elapsed());
                    if writer {
                        turn.held_by(guard.holder_id());
                        guard.keep_turn(turn);
                    }
                    return Ok(guard);
                }
                waiter.lost_attempt();
                if !once {
                    // The next attempt finds its connection open.
                    self.open_spare();
                }
            }
            if !go {
                local.set_contended(true);
            }
            first = false;
            if once {
                break;
            }
            if !waiter.next(deadline, attempt.own_subscribers()).await {
                break;
            }
            attempt.waited();
            go = true;
        }
        waiter.leave().await;
        Err(attempt.timed_out().await)
    }

    /// The contention error when another task of this process has the
    /// turn (`waited`: the timeout that passed).
    pub(super) fn busy_here(&self, local: &LocalQueue, waited: Option<Duration>) -> Error {
        let mut why = match local.holder() {
            Some(id) => format!("already locked by holder {id}, a task of this process"),
            None => "another task of this process is acquiring the lock".to_string(),
        };
        if let Some(t) = waited {
            why.push_str(&format!(" (waited {})", crate::util::Rounded(t)));
        }
        Error::already_locked(OP, None)
            .with_reason(why)
            .with_channel(self.cfg.channel.clone())
            .with_holder_id(local.holder())
    }

    pub(super) fn validate(&self) -> Result<()> {
        let c = &self.cfg.channel;
        let bad = |why: String| Err(Error::invalid(OP, why).with_channel(c.clone()));
        if c.is_empty() {
            return bad("the channel is empty".into());
        }
        if c.len() > MAX_CHANNEL_LEN {
            return bad(format!(
                "the channel is longer than {MAX_CHANNEL_LEN} bytes"
            ));
        }
        if c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return bad(
                "the channel contains whitespace or control characters, which Redis refuses in \
                 the holder's client name"
                    .into(),
            );
        }
        if let Some(client) = self.cfg.endpoint.current() {
            if let Some(why) = connect::unsupported(client.get_connection_info().addr()) {
                return bad(why);
            }
        }
        if let Some(interval) = self.cfg.self_check {
            let u = self.cfg.unavailable_timeout;
            let needed = interval
                .checked_add(interval.min(u))
                .and_then(|t| t.checked_add(SELF_CHECK_MARGIN));
            if interval.is_zero() || needed.is_none_or(|t| t >= u) {
                return bad(format!(
                    "self_check_interval {interval:?} cannot detect a loss before a rival reaps \
                     the holder: interval + min(interval, unavailable_timeout) + 50ms must be \
                     below unavailable_timeout ({u:?})"
                ));
            }
        }
        if !matches!(self.cfg.flags.operation(), Ok(Operation::Lock { .. })) {
            return bad(format!(
                "{:?}: the flags must be exactly one of EXCLUSIVE or SHARED \
                 (NON_BLOCKING may be added; it is implied)",
                self.cfg.flags
            ));
        }
        Ok(())
    }

    /// Opens the connection for the next attempt in the background
    /// ([`preconnect`](Self::preconnect)), to the server as last known.
    fn open_spare(&self) {
        if !self.cfg.preconnect {
            return;
        }
        if let Some(client) = self.cfg.endpoint.current() {
            self.spare.refill(client.get_connection_info());
        }
    }

    /// The command connection, created once and re-created after it broke.
    pub(super) async fn command(&self) -> std::result::Result<command::Command, redis::RedisError> {
        self.cmd.get().await
    }

    pub(super) fn forget_command(&self) {
        self.cmd.forget_any();
    }
}
