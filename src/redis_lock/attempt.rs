//! One acquisition attempt of a [`RedisLock`]: subscribe (on a named
//! connection), count the subscribers, probe them, decide with
//! [`protocol::resolve`], confirm a promotion, draw a fencing token — and
//! the pause between two attempts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisError};
use tokio::time::Instant;

use super::errors::{diagnose_refused, reap_refused, redis_error, timeout_error, AttemptError};
use super::fence::{fence_elsewhere, replicas_of, role_refused_warning};
use super::keep_alive::{self, HolderState};
use super::protocol::{self, HolderMode, Me, Replies, Resolution, Verdict};
use super::{connect, RedisLock, RedisLockGuard, OP};
use crate::deadline::{Jitter, Schedule};
use crate::error::{Error, ErrorKind, Result};
use crate::options::WaitOptions;

/// Python's `thread_sleep_time`: the probe poll cap (100 ms), and the
/// check interval used when the configured one is zero.
pub(super) const POLL: Duration = Duration::from_millis(100);
/// The longest pause between two confirm rounds (20 ms; Python uses
/// 100 ms).
const CONFIRM_STEP: Duration = Duration::from_millis(20);
/// The longest one `WAIT` for replicas blocks the command connection.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// The probe's grace read for replies still in flight (5 ms).
const GRACE: Duration = Duration::from_millis(5);

/// One acquisition: its identity, its subscription, its errors.
pub(super) struct Attempt<'a> {
    lock: &'a RedisLock,
    state: Arc<HolderState>,
    writer: bool,
    sub: Option<keep_alive::Subscription>,
    /// A subscription given up by this attempt, to close before the next.
    closing: Option<keep_alive::Subscription>,
    /// Whether any probe got as far as a decision (so a timeout means
    /// contention, not an unreachable server).
    reached_server: bool,
    last_error: Option<RedisError>,
    /// Other subscribers seen by the last attempt: how many wait with us.
    crowd: usize,
    /// The id of another holder the last conclusive probe found.
    seen_holder: Option<String>,
    /// This call's waiting options.
    wait: WaitOptions,
    /// This call's deadline (bounds the wait for replicas to acknowledge
    /// a fencing token).
    deadline: Instant,
    /// Whether this acquisition keeps a place in the server-side queue (a
    /// writer that may wait): then, when it finds a foreign holder, it
    /// stands (below) instead of leaving.
    queued: bool,
    /// The first attempt of a writer that may wait, made before it has
    /// waited: it counts the server-side queue with the subscribers (one
    /// round trip) and, if anyone waits there, leaves the lock to them and
    /// waits its turn. Once it has waited it has a place of its own in
    /// that queue, so the count would always find someone (itself).
    defer_to_queue: bool,
}

impl<'a> Attempt<'a> {
    pub(super) fn new(
        lock: &'a RedisLock,
        state: Arc<HolderState>,
        writer: bool,
        wait: WaitOptions,
        deadline: Instant,
    ) -> Self {
        Self {
            lock,
            wait,
            deadline,
            state,
            writer,
            sub: None,
            closing: None,
            reached_server: false,
            last_error: None,
            crowd: 1,
            seen_holder: None,
            queued: writer && !wait.fail_when_locked,
            defer_to_queue: writer && !wait.fail_when_locked,
        }
    }

    /// Notes that this acquisition waited (and so joined the server-side
    /// queue): its next attempt no longer defers to that queue; the wait
    /// already gave it its turn.
    pub(super) fn waited(&mut self) {
        self.defer_to_queue = false;
    }

    /// Subscribers of the channel that are this acquisition's: 1 while it
    /// keeps a live subscription between attempts (an elected writer
    /// waiting for readers to leave, or first in the queue standing behind
    /// a foreign holder), else 0.
    pub(super) fn own_subscribers(&self) -> usize {
        usize::from(
            self.sub
                .as_ref()
                .is_some_and(keep_alive::Subscription::alive),
        )
    }

    fn cfg(&self) -> &super::Options {
        &self.lock.cfg
    }

    fn me(&self) -> (String, bool) {
        (self.state.id.clone(), self.state.elected())
    }

    /// Runs one attempt. `Ok(None)`: not this time; then a subscription
    /// the attempt gave up has been unsubscribed (confirmed), so that
    /// counts taken next do not see it.
    pub(super) async fn run(&mut self) -> Result<Option<RedisLockGuard>> {
        let r = self.run_once().await;
        if let Some(sub) = self.closing.take() {
            if matches!(r, Ok(None)) {
                let _ = sub.stop().await;
            }
        }
        r
    }

    async fn run_once(&mut self) -> Result<Option<RedisLockGuard>> {
        match self.try_once().await {
            Ok(Some(g)) => Ok(Some(g)),
            Ok(None) => Ok(None),
            Err(AttemptError::Transient(e)) if e.is_io_error() || e.is_connection_dropped() => {
                self.cfg().endpoint.moved();
                if let Some(client) = self.cfg().endpoint.current() {
                    if let Some(limit) = diagnose_refused(client.get_connection_info()).await {
                        self.abandon();
                        return Err(limit.with_channel(self.cfg().channel.clone()));
                    }
                }
                self.transient(e).await
            }
            Err(AttemptError::Transient(e)) => {
                if matches!(e.code(), Some("READONLY" | "MASTERDOWN")) {
                    // Demoted under us: check the server again, and
                    // through Sentinel ask where the primary went.
                    self.cfg().endpoint.moved();
                    self.lock.cmd.recheck();
                }
                self.transient(e).await
            }
            Err(AttemptError::Fatal(e)) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// A connection or timeout error costs this attempt only.
    async fn transient(&mut self, e: RedisError) -> Result<Option<RedisLockGuard>> {
        diag!(
            debug,
            "portalocker: Redis lock attempt on {:?} failed: {e}",
            self.cfg().channel
        );
        self.abandon();
        if e.is_timeout() {
            // Late, not gone: a holder of this lock value may still answer
            // pings through it while its successor is opened.
            self.lock.cmd.replace_current().await;
        } else if e.is_connection_dropped() || e.is_io_error() {
            self.lock.forget_command();
        }
        self.last_error = Some(e);
        Ok(None)
    }

    fn abandon(&mut self) {
        self.state.set_mode(self.pending_mode(), false);
        self.closing = self.sub.take().or(self.closing.take());
    }

    fn pending_mode(&self) -> HolderMode {
        if self.writer {
            HolderMode::Pending
        } else {
            HolderMode::Shared
        }
    }

    fn busy(&self) -> Error {
        Error::already_locked(OP, None)
            .with_reason("already locked by another holder")
            .with_channel(self.cfg().channel.clone())
    }

    pub(super) async fn timed_out(&mut self) -> Error {
        self.abandon();
        match self.last_error.take() {
            Some(e) if !self.reached_server => redis_error(&self.cfg().channel, e),
            _ => {
                let t = self.wait.timeout;
                self.busy_named((!t.is_zero()).then_some(t)).await
            }
        }
    }

    /// The contention error, naming the holder the last probe found and,
    /// best effort within a second, its client address from `CLIENT LIST`
    /// (never an error of its own: without the permission or an answer the
    /// address is left out). `waited`: the timeout that passed.
    async fn busy_named(&mut self, waited: Option<Duration>) -> Error {
        let mut who = "already locked by another holder".to_string();
        let id = self.seen_holder.clone();
        if let Some(id) = &id {
            let name = protocol::client_name(&self.cfg().channel, id);
            let list = match self.lock.command().await {
                Ok(mut cmd) => tokio::time::timeout(
                    Duration::from_secs(1),
                    redis::cmd("CLIENT")
                        .arg("LIST")
                        .query_async::<String>(&mut cmd.con),
                )
                .await
                .ok()
                .and_then(std::result::Result::ok),
                Err(_) => None,
            };
            who = match list.and_then(|l| protocol::client_addr(&l, &name)) {
                Some(addr) => format!("already locked by holder {id} (client {addr})"),
                None => format!("already locked by holder {id}"),
            };
        }
        if let Some(t) = waited {
            who.push_str(&format!(" (waited {})", crate::util::Rounded(t)));
        }
        self.busy().with_reason(who).with_holder_id(id)
    }

    async fn try_once(&mut self) -> std::result::Result<Option<RedisLockGuard>, AttemptError> {
        // A server demoted since the last check (a failover) is waited
        // out: nothing is granted through a replica.
        if !self
            .lock
            .cmd
            .check_topology(false)
            .await
            .map_err(AttemptError::Fatal)?
        {
            return Ok(None);
        }
        // A. A subscription that died while we waited is abandoned.
        if self.sub.as_ref().is_some_and(|s| !s.alive()) {
            self.abandon();
        }
        // B. Subscribe (named connection, confirmed) if needed.
        if self.sub.is_none() {
            self.sub = Some(self.subscribe().await?);
        }
        let mut cmd = self
            .lock
            .command()
            .await
            .map_err(AttemptError::classify)?
            .con;
        let channel = self.cfg().channel.clone();
        let fwl = self.wait.fail_when_locked;
        // C. Count, then probe and decide. A fresh writer that may wait
        // counts the waiters of the server-side queue in the same round
        // trip: if there are any, the lock is theirs first.
        let n = if std::mem::take(&mut self.defer_to_queue) && self.lock.local.queues() {
            let (n, waiting) = numsub_and_queue(&mut cmd, &channel).await?;
            if waiting > 0 {
                self.reached_server = true;
                self.abandon();
                return Ok(None);
            }
            n
        } else {
            numsub(&mut cmd, &channel).await?
        };
        self.crowd = n.saturating_sub(1).max(1);
        // A foreign exclusive holder (one that does not queue: a Python
        // peer) seen by this attempt's probe.
        let mut foreign_holder = false;
        let resolution = if n == 1 {
            self.reached_server = true;
            if self.writer {
                Resolution::Promote { elect: false }
            } else {
                Resolution::Held
            }
        } else {
            let probe = self.probe(&mut cmd, n, true).await?;
            self.reached_server |= probe.is_some();
            let (id, elected) = self.me();
            if let Some(p) = &probe {
                let other = p.holders.iter().find(|h| h.id != id && !h.id.is_empty());
                self.seen_holder = other.map(|h| h.id.clone());
                foreign_holder = p
                    .holders
                    .iter()
                    .any(|h| h.id != id && h.mode == HolderMode::Exclusive && !h.queues);
                if self.queued && !elected && self.lock.local.defers_to_served(&p.holders) {
                    // The queue gave this turn to a foreign contender
                    // that is still deciding: leave the channel to it.
                    self.abandon();
                    return Ok(None);
                }
            }
            let me = Me {
                id: &id,
                writer: self.writer,
                elected,
            };
            protocol::resolve(&me, probe.as_ref().map(|r| r.holders.as_slice()), fwl)
        };
        match resolution {
            Resolution::Held => {}
            Resolution::Promote { elect } => {
                let elected = elect || self.state.elected();
                self.state.set_mode(HolderMode::Exclusive, elected);
                // D. Confirm every writer promotion.
                if !self.confirm(&mut cmd).await? {
                    self.state.set_mode(HolderMode::Pending, false);
                    self.closing = self.sub.take();
                    if fwl {
                        return Err(AttemptError::Fatal(self.busy_named(None).await));
                    }
                    return Ok(None);
                }
            }
            Resolution::Retry { elect } => {
                if elect {
                    self.state.set_mode(HolderMode::Pending, true);
                }
                return Ok(None);
            }
            Resolution::GiveUp { conclusive: true }
                if foreign_holder && self.queued && self.lock.local.queues() =>
            {
                // Stand: stay subscribed as a writer that won an election
                // (Python's record for one waiting for readers to leave),
                // so that a foreign holder that releases and at once asks
                // again (Python asks again without a pause) defers to this
                // waiter, which is first in the queue, instead of taking
                // the lock back; Python peers that poll defer too. This
                // waiter takes the lock the moment the channel frees.
                self.state.set_mode(HolderMode::Pending, true);
                return Ok(None);
            }
            Resolution::GiveUp { conclusive } => {
                self.abandon();
                if fwl && conclusive {
                    return Err(AttemptError::Fatal(self.busy_named(None).await));
                }
                return Ok(None);
            }
            Resolution::FailFast => {
                self.abandon();
                return Err(AttemptError::Fatal(self.busy_named(None).await));
            }
        }
        // E. Fencing token, writers only.
        let fence = if self.writer && self.cfg().fencing {
            let key = format!("{channel}-fence");
            let db = self
                .cfg()
                .endpoint
                .current()
                .map_or(0, |c| c.get_connection_info().redis_settings().db());
            let want = self.cfg().fence_replicas;
            let (t, replicas): (u64, Option<usize>) = if db == 0 {
                if want == super::FenceReplicas::Connected {
                    // `ROLE` rides with the `INCR`: no extra round trip.
                    let (t, role): (u64, redis::Value) = redis::pipe()
                        .incr(&key, 1u64)
                        .cmd("ROLE")
                        .query_async(&mut cmd)
                        .await
                        .or_else(|e| match e.code() {
                            // ROLE refused: draw alone, wait for nobody.
                            Some("NOPERM") => Ok((u64::MAX, redis::Value::Nil)),
                            _ => Err(e),
                        })
                        .map_err(AttemptError::classify)?;
                    if t == u64::MAX {
                        let t = cmd.incr(&key, 1u64).await.map_err(AttemptError::classify)?;
                        (t, None)
                    } else {
                        (t, Some(replicas_of(&role)))
                    }
                } else {
                    (
                        cmd.incr(&key, 1u64).await.map_err(AttemptError::classify)?,
                        None,
                    )
                }
            } else {
                let t = fence_elsewhere(&mut cmd, &key, db).await?;
                let role = match want {
                    super::FenceReplicas::Connected => redis::cmd("ROLE")
                        .query_async::<redis::Value>(&mut cmd)
                        .await
                        .ok(),
                    super::FenceReplicas::AtLeast(_) => None,
                };
                (t, role.as_ref().map(replicas_of))
            };
            let need = match want {
                super::FenceReplicas::AtLeast(n) => n as usize,
                super::FenceReplicas::Connected => replicas.unwrap_or_else(|| {
                    role_refused_warning();
                    0
                }),
            };
            if need > 0 {
                let acked = self.wait_replicas(&mut cmd, need).await?;
                if acked < need {
                    self.abandon();
                    return Err(AttemptError::Fatal(
                        Error::new(ErrorKind::Redis, OP)
                            .with_channel(channel.to_string())
                            .with_reason(format!(
                                "fencing token {t} was acknowledged by {acked} of the {need} \
                                 replicas required before the deadline, so a failover now could \
                                 hand it out again; the lock was let go (check the replicas, or \
                                 lower fence_replicas)"
                            )),
                    ));
                }
            }
            Some(t)
        } else {
            None
        };
        // F. Held only if the subscription is still alive right now.
        let Some(sub) = self.sub.take() else {
            return Ok(None);
        };
        if !sub.mark_held() {
            self.abandon();
            return Ok(None);
        }
        Ok(Some(RedisLockGuard::new(
            sub,
            self.state.clone(),
            fence,
            self.lock.cmd.clone(),
        )))
    }

    /// `WAIT`s until `need` replicas have acknowledged this connection's
    /// writes or the deadline passes (at the earliest `unavailable_timeout`
    /// from now); returns how many did. In slices of
    /// at most [`WAIT_SLICE`]: the connection is shared with holders'
    /// replies to pings, which must not wait behind it long.
    async fn wait_replicas(
        &self,
        cmd: &mut MultiplexedConnection,
        need: usize,
    ) -> std::result::Result<usize, AttemptError> {
        // However short the acquisition's timeout, the replicas get at
        // least `unavailable_timeout` (a zero timeout would otherwise fail
        // every fenced grant on a server with replicas).
        let floor = self.cfg().unavailable_timeout.max(WAIT_SLICE);
        let until = Instant::now()
            .checked_add(floor)
            .map_or(self.deadline, |t| t.max(self.deadline));
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let slice = left.min(WAIT_SLICE).max(Duration::from_millis(1));
            let acked: usize = redis::cmd("WAIT")
                .arg(need)
                .arg(slice.as_millis() as u64)
                .query_async(cmd)
                .await
                .map_err(AttemptError::classify)?;
            if acked >= need || Instant::now() >= until {
                return Ok(acked);
            }
        }
    }

    async fn subscribe(&mut self) -> std::result::Result<keep_alive::Subscription, AttemptError> {
        let cfg = self.cfg();
        let name = protocol::client_name(&cfg.channel, &self.state.id);
        let client = cfg
            .endpoint
            .resolve()
            .await
            .map_err(AttemptError::classify)?;
        let info = client.get_connection_info();
        let wait = cfg.unavailable_timeout.max(Duration::from_millis(100));
        // A slow connection or confirmation costs this attempt only: the
        // connection is dropped here, so the subscription cannot linger.
        // A value's first attempt opens no spare (a lock made for one
        // acquisition would only throw it away); from its second on, the
        // next one is opened while this one is used.
        let spare = self.lock.spare.take(info);
        if cfg.preconnect && self.lock.spare.used_before() {
            self.lock.spare.refill(info);
        }
        let pubsub = match tokio::time::timeout(
            wait,
            connect::named_subscription(info, &name, &cfg.channel, spare),
        )
        .await
        {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(Err(e))) => return Err(e),
            Ok(Err(Ok(refused))) => {
                return Err(AttemptError::on_channel(
                    refused,
                    &cfg.channel,
                    &format!("the lock channel: allow &{}", cfg.channel),
                ))
            }
            Err(_) => {
                return Err(AttemptError::Transient(timeout_error(
                    "connecting and subscribing the lock channel's connection",
                )))
            }
        };
        Ok(keep_alive::Subscription::start(
            self.state.clone(),
            pubsub,
            keep_alive::Options {
                cmd: self.lock.cmd.clone(),
                client: client.clone(),
                unavailable: cfg.unavailable_timeout,
                self_check: cfg.self_check,
                local: self.lock.local.clone(),
            },
        ))
    }

    /// Collects the holders: subscribes to a fresh response channel, pings
    /// the lock channel, and reads replies until every subscriber answered
    /// or `unavailable_timeout` passed; the subscriber count must not
    /// change meanwhile. `None`: inconclusive (churn, or silent holders,
    /// which are then reaped if `reap`).
    async fn probe(
        &self,
        cmd: &mut MultiplexedConnection,
        expected: usize,
        reap: bool,
    ) -> std::result::Result<Option<Replies>, AttemptError> {
        let cfg = self.cfg();
        let budget = cfg.unavailable_timeout;
        let poll = POLL.min(budget / 10).max(Duration::from_millis(1));
        let response = format!("{}-{}", cfg.channel, crate::util::unguessable_hex32());
        // Setting the connection up is bounded as for the command
        // connection; only the wait for replies is `unavailable_timeout`
        // (which may be zero).
        let setup = budget.max(Duration::from_secs(1));
        let client = cfg
            .endpoint
            .resolve()
            .await
            .map_err(AttemptError::classify)?;
        let mut ps = tokio::time::timeout(setup, client.get_async_pubsub())
            .await
            .map_err(|_| AttemptError::Transient(timeout_error("opening the probe connection")))?
            .map_err(AttemptError::classify)?;
        // Without a confirmation we carry on: missing replies then make the
        // probe inconclusive.
        match tokio::time::timeout(setup, ps.subscribe(&response)).await {
            Ok(r) => r.map_err(|e| {
                AttemptError::on_channel(
                    e,
                    &response,
                    &format!(
                        "the reply channel of a ping to the holders: allow &{}-*",
                        cfg.channel
                    ),
                )
            })?,
            Err(_) => return Ok(None),
        }
        let mut stream = ps.into_on_message();
        if numsub(cmd, &cfg.channel).await? != expected {
            return Ok(None);
        }
        let _: i64 = cmd
            .publish(&cfg.channel, protocol::ping(&response))
            .await
            .map_err(|e| {
                AttemptError::on_channel(
                    e,
                    &cfg.channel,
                    &format!("the lock channel: allow &{}", cfg.channel),
                )
            })?;
        let deadline = crate::deadline::deadline_after(Instant::now(), budget);
        let mut replies = Replies::default();
        loop {
            let mut wait = poll;
            while replies.len() < expected {
                match tokio::time::timeout(wait, stream.next()).await {
                    Ok(Some(msg)) => replies.add(msg.get_payload_bytes()),
                    Ok(None) => return Ok(None),
                    Err(_) => break,
                }
                wait = GRACE.min(poll);
            }
            if replies.len() >= expected {
                break;
            }
            if numsub(cmd, &cfg.channel).await? != expected {
                return Ok(None); // churn: no reaping
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if numsub(cmd, &cfg.channel).await? != expected {
            return Ok(None);
        }
        if replies.len() < expected {
            if reap {
                self.reap(cmd, &replies).await?;
            }
            return Ok(None);
        }
        Ok(Some(replies))
    }

    /// Kills the subscribers of this channel that did not answer the
    /// probe (`CLIENT LIST` by their holder names, then `CLIENT KILL ID`).
    async fn reap(
        &self,
        cmd: &mut MultiplexedConnection,
        replies: &Replies,
    ) -> std::result::Result<(), AttemptError> {
        let channel = &self.cfg().channel;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(cmd)
            .await
            .map_err(reap_refused)?;
        for id in protocol::unavailable_clients(channel, &list, replies) {
            diag!(warn, "portalocker: killing unresponsive holder (client id {id}) of Redis lock {channel:?}");
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(cmd)
                .await
                .map_err(reap_refused)?;
        }
        Ok(())
    }

    /// Confirms a writer's promotion: counts again (now that we answer
    /// pings as exclusive) and, while others are subscribed, probes them
    /// until they all defer to us, within `unavailable_timeout`. `false`
    /// to demote. On the uncontended path this is the second count of the
    /// attempt, and it is needed: a contender that pinged us between the
    /// first count and the promotion saw us as pending.
    async fn confirm(
        &self,
        cmd: &mut MultiplexedConnection,
    ) -> std::result::Result<bool, AttemptError> {
        let cfg = self.cfg();
        // Rounds a few ms apart (jittered): a collision is resolved in a
        // round or two, so confirming never dominates a handover.
        let step = (cfg.unavailable_timeout / 50).clamp(Duration::from_millis(5), CONFIRM_STEP);
        let mut schedule = Schedule::new(cfg.unavailable_timeout, step).jitter(Jitter::Around);
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                let Some(until) = schedule.next_attempt() else {
                    break;
                };
                tokio::time::sleep_until(until).await;
                if schedule.expired() {
                    break;
                }
            }
            let n = numsub(cmd, &cfg.channel).await?;
            if n <= 1 {
                return Ok(true);
            }
            let Some(replies) = self.probe(cmd, n, true).await? else {
                continue;
            };
            match protocol::confirm_verdict(&self.state.id, &replies.holders) {
                Verdict::Confirmed => return Ok(true),
                Verdict::Demote => return Ok(false),
                Verdict::Retry => {}
            }
        }
        Ok(false)
    }
}

/// The subscriber count of `channel` and the length of its server-side
/// queue, in one round trip.
async fn numsub_and_queue(
    cmd: &mut MultiplexedConnection,
    channel: &str,
) -> std::result::Result<(usize, usize), AttemptError> {
    let mut pipe = redis::pipe();
    pipe.cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .cmd("ZCARD")
        .arg(super::waiting::queue_key(channel));
    let (v, waiting): (Vec<(String, usize)>, usize) = pipe
        .query_async(cmd)
        .await
        .map_err(AttemptError::classify)?;
    Ok((v.first().map_or(0, |(_, n)| *n), waiting))
}

async fn numsub(
    cmd: &mut MultiplexedConnection,
    channel: &str,
) -> std::result::Result<usize, AttemptError> {
    let v: Vec<(String, usize)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(cmd)
        .await
        .map_err(AttemptError::classify)?;
    Ok(v.first().map_or(0, |(_, n)| *n))
}
