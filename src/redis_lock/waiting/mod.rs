//! How a [`RedisLock`](super::RedisLock) waits: one contender per process
//! and channel, and quiet waiting across processes.
//!
//! * **In this process** the tasks that want a channel of one server queue
//!   first-in first-out ([`LocalQueue`]); only the head speaks the Redis
//!   protocol, so Python sees one ordinary contender per process. A writer
//!   keeps its turn while it holds the lock; a release passes it on at once.
//! * **Across processes** a contender that lost does not stay subscribed or
//!   resubscribe on a timer ([`Waiter`]). It joins a queue of waiting
//!   contenders kept on the server (a sorted set by arrival time, with
//!   heartbeats so a dead waiter is dropped), watches the subscriber count
//!   on the command connection, and subscribes again only when it is first
//!   in the queue and the channel is free — or, to reap a silent holder and
//!   to meet peers that do not queue (Python), once per `check_interval ×
//!   U[0.5, 1.5)`. A holder of this crate that releases says so on a side
//!   channel, so the first waiter moves at once instead of at its next look
//!   at the count. The side channel and the queue keys contain a space, so
//!   they can never be a lock channel or a fencing key (a lock channel
//!   cannot contain spaces): nothing foreign is ever published on a lock
//!   channel.
//! * **Foreign contenders** (Python peers) poll and do not queue. Their
//!   replies to pings, watched with a pattern subscription, give each
//!   waiting one a place in the queue ([`LocalQueue::note_reply`]); this
//!   crate's waiters behind it leave the channel free for it, and the
//!   first of ours stands behind a foreign holder (see `attempt.rs`).
//! * Where the server refuses scripts (an ACL without `@scripting`), the
//!   queue is skipped: every waiter watches the count and, when the channel
//!   is free, subscribes after a random delay that grows while it keeps
//!   losing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

mod keys;
mod local;

pub(crate) use keys::MAX_BACKOFF;
use keys::{foreign_key, seen_key, seq_key, served_key, turn_key, POLL_SCRIPT};
pub(super) use keys::{queue_key, side_channel, RELEASED};
use local::Side;
pub(super) use local::{LocalQueue, Turn};

use super::command::CommandSlot;
use super::protocol;
use crate::deadline::{around, deadline_after, scale};
use crate::util::unit;

/// One acquisition waiting between attempts.
pub(super) struct Waiter {
    cmd: Arc<CommandSlot>,
    endpoint: Arc<super::endpoint::Endpoint>,
    channel: String,
    id: String,
    local: Arc<LocalQueue>,
    /// Whether this waiter takes part in the server-side queue (writers).
    queued: bool,
    /// Whether this waiter may have an entry in the server-side queue.
    joined: bool,
    /// When the next attempt is due even though the channel is busy.
    next_try: Instant,
    interval: Duration,
    /// The pause before the next attempt on a busy channel: starts at
    /// `interval`, doubles after each one that found the lock busy, up to
    /// [`MAX_BACKOFF`] (or `interval`, if longer), and starts over when
    /// the channel is seen free.
    backoff: Duration,
    /// How often the first waiter looks at the count.
    head_step: Duration,
    /// How often the others refresh their place.
    idle_step: Duration,
    /// After this long without a heartbeat a waiter leaves the queue.
    stale: Duration,
    /// Attempts lost in a row (widens the random delay without a queue).
    lost: u32,
    /// Whether this waiter subscribed the side connection.
    used_side: bool,
    /// A reply named a foreign holder: when first, attempt at once (and
    /// stand behind it).
    foreign_turn: bool,
    /// This waiter asked who holds since it last saw the channel free.
    looked: bool,
    /// The last poll found this waiter first in the queue.
    first: bool,
}

/// What the count poll found.
struct Poll {
    /// This waiter's place: 0 is first (always 0 without the queue).
    rank: u64,
    subscribers: usize,
    /// 1 if a waiter of this crate is ahead, 0 when only foreign
    /// contenders (or nobody) are.
    ours_ahead: u64,
}

impl Waiter {
    /// A waiter for the acquisition `id` of `lock`; `queued`: whether it
    /// takes a place in the server-side queue (writers that may wait).
    pub(super) fn new(lock: &super::RedisLock, id: &str, queued: bool, interval: Duration) -> Self {
        let unavailable = lock.cfg.unavailable_timeout;
        let head_step = (interval / 25).clamp(Duration::from_millis(2), Duration::from_millis(10));
        let idle_step = (interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(50));
        Self {
            cmd: lock.cmd.clone(),
            endpoint: lock.cfg.endpoint.clone(),
            channel: lock.cfg.channel.clone(),
            id: id.to_string(),
            local: lock.local.clone(),
            queued,
            joined: false,
            next_try: deadline_after(Instant::now(), around(interval)),
            interval,
            backoff: interval,
            head_step,
            idle_step,
            // Longer than an attempt may take (a probe and a confirm, each
            // up to `unavailable_timeout`), so that a waiter busy attempting
            // does not lose its place.
            // At most an hour: the server refuses expiry times near
            // `u64::MAX` ms, and `unavailable_timeout` may be `MAX`.
            stale: (idle_step * 20)
                .max(unavailable.saturating_mul(3))
                .clamp(Duration::from_secs(1), Duration::from_secs(3600)),
            lost: 0,
            used_side: false,
            foreign_turn: false,
            looked: false,
            first: false,
        }
    }

    /// Whether a first attempt may go ahead at once: nobody is subscribed
    /// and nobody of this crate waits. Errors say yes (the attempt reports
    /// them). Where nobody waits, this waiter will be first in the queue
    /// (as far as it can know before its first look), so a release
    /// announced during that look already moves it.
    pub(super) async fn free_now(&mut self) -> bool {
        let Ok(mut c) = self.cmd.get().await else {
            return true;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&self.channel)
            .cmd("ZCARD")
            .arg(queue_key(&self.channel));
        match pipe
            .query_async::<(Vec<(String, usize)>, usize)>(&mut c.con)
            .await
        {
            Ok((n, waiting)) => {
                self.first = waiting == 0;
                n.first().is_none_or(|(_, n)| *n == 0) && waiting == 0
            }
            Err(_) => true,
        }
    }

    /// Notes that an attempt was made and lost.
    pub(super) fn lost_attempt(&mut self) {
        self.lost = self.lost.saturating_add(1);
    }

    /// Waits until the next attempt is due: `true` to attempt, `false` at
    /// the deadline. `own`: subscribers of the channel that are this
    /// acquisition's (1 while it stays subscribed between attempts).
    pub(super) async fn next(&mut self, deadline: Instant, own: usize) -> bool {
        let local = self.local.clone();
        let mut side = local.side.lock().await;
        self.used_side = true;
        self.subscribe_side(&mut side).await;
        // Notices from before this wait are stale; replies seen meanwhile
        // (those of this waiter's own last attempt among them) are read.
        while let Some(s) = side.as_mut() {
            match s.stream.next().now_or_never() {
                Some(Some(m)) => {
                    self.read(&m);
                }
                Some(None) => *side = None,
                None => break,
            }
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // A release announced while the count is being read: the first
            // in the queue (as of its last look) goes at once rather than
            // after the answer. Replies seen meanwhile are read after it.
            let mut heard = None;
            let mut replies = Vec::new();
            let poll = match side.as_mut() {
                Some(s) if self.first && self.watching() => {
                    let notice = async {
                        loop {
                            match s.stream.next().await {
                                Some(m) if m.from_pattern() => replies.push(m),
                                other => return other,
                            }
                        }
                    };
                    tokio::select! {
                        biased;
                        p = self.poll() => p,
                        m = notice => {
                            heard = Some(m);
                            None
                        }
                    }
                }
                _ => self.poll().await,
            };
            for m in &replies {
                self.read(m);
            }
            match heard {
                Some(Some(_)) => {
                    self.backoff = self.interval;
                    self.looked = false;
                    return true;
                }
                Some(None) => {
                    *side = None;
                    continue;
                }
                None => {}
            }
            let free = poll.as_ref().is_some_and(|p| p.subscribers <= own);
            let first = poll.as_ref().is_none_or(|p| p.rank == 0);
            self.first = first;
            // The first of this crate's waiters: only foreign contenders
            // (or nobody) ahead. It attempts on a busy channel now and then
            // (to reap a holder that went silent, and to see who holds).
            let ours_first = poll.as_ref().is_none_or(|p| p.ours_ahead == 0);
            if free {
                self.backoff = self.interval;
            }
            // Busy attempts now and then when first of ours (to reap a
            // holder that went silent, and to stand behind a foreign one).
            let busy_try = first && !free && (now >= self.next_try || self.foreign_turn);
            if free {
                self.looked = false;
            } else if ours_first && !first && !self.looked && self.watching() {
                // Someone took the channel while a foreign contender was
                // ahead: ask who holds (a ping, answered on a reply channel
                // this waiter's pattern subscription reads), so that the
                // queue settles that contender's turn.
                self.looked = true;
                self.look().await;
            }
            if (first && free) || busy_try {
                if !free {
                    self.foreign_turn = false;
                    self.next_try = deadline_after(now, around(self.backoff));
                    self.backoff = self
                        .backoff
                        .saturating_mul(2)
                        .min(MAX_BACKOFF.max(self.interval));
                } else if !self.queued || self.local.no_script.load(Ordering::Relaxed) {
                    // No queue to order the waiters: spread them, more
                    // widely the more often this one lost.
                    let widen = self.lost.clamp(1, 8);
                    let spread = scale(self.head_step * widen, unit());
                    tokio::time::sleep_until((now + spread).min(deadline)).await;
                }
                return true;
            }
            let step = if ours_first {
                self.head_step
            } else {
                self.idle_step
            };
            let mut until = (now + step).min(deadline);
            if first {
                until = until.min(self.next_try.max(now));
            }
            // Wait for the step to pass or a release to be announced;
            // replies seen meanwhile are read on the way.
            loop {
                let Some(s) = side.as_mut() else {
                    tokio::time::sleep_until(until).await;
                    break;
                };
                tokio::select! {
                    m = s.stream.next() => match m {
                        Some(m) if m.from_pattern() => {
                            // A foreign holder: attempt now (and stand).
                            if self.read(&m) && ours_first && own == 0 {
                                break;
                            }
                        }
                        // A release: the first in the queue attempts at
                        // once (its attempt counts the subscribers anyway);
                        // the others look at the count again.
                        Some(_) if first && self.watching() => {
                            self.backoff = self.interval;
                            self.looked = false;
                            return true;
                        }
                        Some(_) => break,
                        None => {
                            *side = None;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
        }
    }

    /// Whether this waiter watches the replies to pings (a writer that
    /// queues, where the server runs the scripts).
    fn watching(&self) -> bool {
        self.queued && self.local.queues()
    }

    /// Pings the lock channel on a fresh reply channel, which nobody
    /// subscribes to: the replies reach the waiters' pattern subscriptions.
    async fn look(&self) {
        let Ok(mut c) = self.cmd.get().await else {
            return;
        };
        let response = format!("{}-{}", self.channel, crate::util::unguessable_hex32());
        let _ = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(protocol::ping(&response))
            .query_async::<i64>(&mut c.con)
            .await;
    }

    /// Reads a message of the side connection: a reply on one of the
    /// lock's reply channels may name a foreign contender. `true` when it
    /// names a foreign holder: the next attempt is due at once, so that
    /// this waiter stands behind it.
    fn read(&mut self, m: &redis::Msg) -> bool {
        if !m.from_pattern() {
            return false;
        }
        let named = self.local.note_reply(
            &self.cmd,
            &self.channel,
            m.get_channel_name(),
            m.get_payload_bytes(),
        );
        let holds = named.is_some_and(|f| !f.waiting);
        if holds {
            self.foreign_turn = true;
        }
        holds
    }

    /// Leaves the server-side queue, giving up, and unsubscribes the side
    /// connection (a grant leaves through [`leave_soon`](Self::leave_soon)).
    ///
    /// Each flag is cleared only once its clean-up has run, so an
    /// acquisition cancelled in the middle of this still leaves the queue
    /// through [`Drop`].
    pub(super) async fn leave(&mut self) {
        if self.joined {
            if let Ok(mut c) = self.cmd.get().await {
                let _ = remove(&self.channel, &self.id, false)
                    .query_async::<()>(&mut c.con)
                    .await;
            }
            self.joined = false;
        }
        if self.used_side {
            unsubscribe_side(&self.local.side, &self.channel).await;
            self.used_side = false;
        }
    }

    /// Subscribes the side connection, opening it if there is none (or
    /// the old one broke). Without one the waiter just polls. Writers that
    /// queue also watch the replies to pings, for foreign contenders.
    async fn subscribe_side(&self, side: &mut Option<Side>) {
        let within = Duration::from_secs(1);
        let channel = side_channel(&self.channel);
        let watch = self.watching();
        if let Some(s) = side.as_mut() {
            if s.subscribed {
                return;
            }
            let again = async {
                s.sink
                    .subscribe(&channel)
                    .await
                    .inspect_err(|e| side_refused(&channel, e))?;
                if watch {
                    let pattern = protocol::reply_pattern(&self.channel);
                    if let Err(e) = s.sink.psubscribe(&pattern).await {
                        watch_refused(&self.channel, &e);
                    }
                }
                Ok::<_, redis::RedisError>(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(within, again).await {
                s.subscribed = true;
                return;
            }
            *side = None;
        }
        let open = async {
            let client = self.endpoint.resolve().await.ok()?;
            let ps = client.get_async_pubsub().await.ok()?;
            let (mut sink, stream) = ps.split();
            if let Err(e) = sink.subscribe(&channel).await {
                side_refused(&channel, &e);
                return None;
            }
            if watch {
                let pattern = protocol::reply_pattern(&self.channel);
                if let Err(e) = sink.psubscribe(&pattern).await {
                    watch_refused(&self.channel, &e);
                }
            }
            Some(Side {
                sink,
                stream,
                subscribed: true,
            })
        };
        *side = tokio::time::timeout(within, open).await.ok().flatten();
    }

    /// Polls the count (and, queued, the place). `None`: no answer.
    async fn poll(&mut self) -> Option<Poll> {
        let mut c = self.cmd.get().await.ok()?;
        let script = self.queued && !self.local.no_script.load(Ordering::Relaxed);
        if script {
            static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
            let s = SCRIPT.get_or_init(|| redis::Script::new(POLL_SCRIPT));
            let stale = u64::try_from(self.stale.as_millis()).unwrap_or(u64::MAX);
            self.joined = true;
            match s
                .key(queue_key(&self.channel))
                .key(seen_key(&self.channel))
                .key(seq_key(&self.channel))
                .key(foreign_key(&self.channel))
                .key(turn_key(&self.channel))
                .key(served_key(&self.channel))
                .arg(&self.id)
                .arg(stale)
                .arg(&self.channel)
                .invoke_async::<(u64, usize, u64, String)>(&mut c.con)
                .await
            {
                Ok((rank, subscribers, ours_ahead, served)) => {
                    self.local.note_served(&served);
                    return Some(Poll {
                        rank,
                        subscribers,
                        ours_ahead,
                    });
                }
                Err(e) if super::command::connection_failed(&e) => {
                    self.cmd.failed(&c, &e).await;
                    return None;
                }
                // Only a refusal of scripts turns the queue off; anything
                // else (a failover's READONLY or MASTERDOWN, BUSY, LOADING,
                // OOM) is a passing state of the server.
                Err(e) if !scripts_refused(&e) => return None,
                Err(e) => {
                    static SAID: AtomicBool = AtomicBool::new(false);
                    if !SAID.swap(true, Ordering::Relaxed) {
                        let keys = [
                            queue_key(&self.channel),
                            seen_key(&self.channel),
                            seq_key(&self.channel),
                            foreign_key(&self.channel),
                            turn_key(&self.channel),
                            served_key(&self.channel),
                        ];
                        diag!(
                            warn,
                            "portalocker: the server refused the Redis lock's queue script \
                             ({e}), so this process's waiters wait without a queue (the first \
                             to come is no longer the first served); it needs EVALSHA/EVAL and \
                             the keys {keys:?} (allow ~{}*)",
                            self.channel
                        );
                    }
                    self.local.no_script.store(true, Ordering::Relaxed);
                }
            }
        }
        let v: Vec<(String, usize)> = match redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&self.channel)
            .query_async(&mut c.con)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.cmd.failed(&c, &e).await;
                return None;
            }
        };
        Some(Poll {
            rank: 0,
            subscribers: v.first().map_or(0, |(_, n)| *n),
            ours_ahead: 0,
        })
    }
}

impl Waiter {
    /// After a grant: leaves the queue and unsubscribes the side connection
    /// in a task of its own, so that the grant does not wait for that
    /// clean-up (three round trips).
    pub(super) fn leave_soon(mut self) {
        // The foreign turn is over (the served key goes too).
        self.local.note_served("");
        self.detach(true);
    }

    fn detach(&mut self, granted: bool) {
        if !self.joined && !self.used_side {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cmd, channel, id) = (self.cmd.clone(), self.channel.clone(), self.id.clone());
        let (joined, used_side, side) = (self.joined, self.used_side, self.local.side.clone());
        (self.joined, self.used_side) = (false, false);
        // The queue entry goes first: the side connection's mutex may be
        // held by another waiter of this process for the whole of its wait.
        // The removal goes over the command connection that carried this
        // waiter's polls, after any poll still in flight on it.
        rt.spawn(async move {
            if joined {
                if let Ok(mut c) = cmd.get().await {
                    let _ = remove(&channel, &id, granted)
                        .query_async::<()>(&mut c.con)
                        .await;
                }
            }
            if used_side {
                unsubscribe_side(&side, &channel).await;
            }
        });
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Cancelled while waiting: leave the queue now rather than when the
        // heartbeat goes stale, and stop the side notices.
        self.detach(false);
    }
}

/// Says once if the side channel is refused to this Redis user: waiters
/// then poll instead of being told of releases.
fn side_refused(channel: &str, e: &redis::RedisError) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if e.code() == Some("NOPERM") && !SAID.swap(true, Ordering::Relaxed) {
        diag!(
            warn,
            "portalocker: the Redis user may not subscribe to the channel {channel:?} ({e}), so \
             waiters poll every check_interval instead of being told of releases (allow \
             &{channel})"
        );
    }
}

/// Says once that watching the replies to the lock's pings (a pattern
/// subscription, which `PUBSUB NUMSUB` does not count) was refused: foreign
/// contenders then get no place in the queue.
pub(super) fn watch_refused(channel: &str, e: &redis::RedisError) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        let pattern = protocol::reply_pattern(channel);
        diag!(
            warn,
            "portalocker: the Redis user may not watch the lock's reply channels with \
             PSUBSCRIBE {pattern:?} ({e}), so Python peers on {channel:?} get no place in \
             the queue and may wait long (allow +psubscribe and &{pattern})"
        );
    }
}

/// Whether the server refused to run the queue script as such (an ACL
/// without `@scripting`, a renamed or disabled `EVALSHA`/`EVAL`), rather
/// than being in a passing state.
fn scripts_refused(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM") || e.to_string().contains("unknown command")
}

/// Unsubscribes the side connection (bounded); a connection that does not
/// confirm is dropped.
async fn unsubscribe_side(side: &tokio::sync::Mutex<Option<Side>>, channel: &str) {
    let mut side = side.lock().await;
    let Some(s) = side.as_mut() else {
        return;
    };
    if !s.subscribed {
        return;
    }
    let done = tokio::time::timeout(Duration::from_secs(1), async {
        s.sink.unsubscribe(side_channel(channel)).await?;
        s.sink.punsubscribe(protocol::reply_pattern(channel)).await
    })
    .await;
    match done {
        Ok(Ok(())) => s.subscribed = false,
        _ => *side = None,
    }
}

/// Leaves the queue; `granted`: this waiter holds the lock now, so the
/// last foreign holder's turn is over.
fn remove(channel: &str, id: &str, granted: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("ZREM")
        .arg(queue_key(channel))
        .arg(id)
        .ignore()
        .cmd("ZREM")
        .arg(seen_key(channel))
        .arg(id)
        .ignore();
    if granted {
        pipe.cmd("DEL").arg(served_key(channel)).ignore();
    }
    pipe
}

/// Announces a release on the side channel (best effort, bounded).
pub(super) async fn announce_release(cmd: &CommandSlot, channel: &str) {
    let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(1), cmd.get()).await else {
        return;
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        redis::cmd("PUBLISH")
            .arg(side_channel(channel))
            .arg(RELEASED)
            .query_async::<i64>(&mut c.con),
    )
    .await;
}
