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
//! * Where the server refuses scripts (an ACL without `@scripting`), the
//!   queue is skipped: every waiter watches the count and, when the channel
//!   is free, subscribes after a random delay that grows while it keeps
//!   losing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::command::CommandSlot;
use crate::deadline::{around, deadline_after, scale};
use crate::util::{lock, unit, PerKey};

/// The message a releasing holder publishes on the side channel.
pub(super) const RELEASED: &str = "released";

/// The side channel on which holders of this crate announce releases.
pub(super) fn side_channel(channel: &str) -> String {
    format!("{channel} portalocker-released")
}

fn queue_key(channel: &str) -> String {
    format!("{channel} portalocker-queue")
}

fn seen_key(channel: &str) -> String {
    format!("{channel} portalocker-seen")
}

fn seq_key(channel: &str) -> String {
    format!("{channel} portalocker-seq")
}

/// The longest pause between two attempts on a channel that stays busy
/// (unless `check_interval` is longer): a silent holder is reaped within
/// `1.5 × max(MAX_BACKOFF, check_interval) + unavailable_timeout`.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Joins (or stays in) the queue — in arrival order: the score is a counter,
/// so two waiters that join in the same millisecond are never tied —
/// refreshes this waiter's heartbeat, drops
/// waiters whose heartbeat is stale, and answers this waiter's rank and the
/// channel's subscriber count, atomically and in one round trip.
const POLL_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - stale)
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[1], stale * 4)
redis.call('PEXPIRE', KEYS[2], stale * 4)
redis.call('PEXPIRE', KEYS[3], stale * 4)
local rank = redis.call('ZRANK', KEYS[1], ARGV[1]) or 0
local n = redis.call('PUBSUB', 'NUMSUB', ARGV[3])[2]
return {rank, n}
";

/// The tasks of this process that want one channel of one server.
pub(super) struct LocalQueue {
    /// One permit: the turn to speak the protocol (tokio's semaphore is
    /// fair, so tasks get it in the order they asked).
    turn: Arc<Semaphore>,
    /// The holder id of the task that holds the lock, for error messages.
    holder: Mutex<Option<String>>,
    /// The side-channel connection, kept while a lock value lives so that
    /// successive waits of this process reuse it; subscribed only while a
    /// task waits (so notices do not pile up unread in between).
    side: Arc<tokio::sync::Mutex<Option<Side>>>,
    /// Set once the server refused the queue script.
    no_script: AtomicBool,
}

impl Default for LocalQueue {
    fn default() -> Self {
        Self {
            turn: Arc::new(Semaphore::new(1)),
            holder: Mutex::new(None),
            side: Arc::default(),
            no_script: AtomicBool::new(false),
        }
    }
}

/// The side-channel connection of a [`LocalQueue`].
struct Side {
    sink: PubSubSink,
    stream: PubSubStream,
    subscribed: bool,
}

/// This process's turn on a channel, held by an acquisition and, for a
/// writer, by its guard.
pub(super) struct Turn {
    queue: Arc<LocalQueue>,
    _permit: OwnedSemaphorePermit,
}

impl Turn {
    /// Records the holder (for other tasks' error messages).
    pub(super) fn held_by(&self, id: &str) {
        *lock(&self.queue.holder) = Some(id.to_string());
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        lock(&self.queue.holder).take();
    }
}

impl LocalQueue {
    /// The queue of `channel` on the server `client` talks to. Keyed by
    /// the server's address and the channel only: pub/sub channels are
    /// the same for every database and user of a server.
    pub(super) fn of(server: &str, channel: &str) -> Arc<Self> {
        static QUEUES: PerKey<String, LocalQueue> = PerKey::new();
        // The server's name: host and port (or path, or the sentinels),
        // without TLS parameters.
        let key = format!("{server}\u{0}{channel}");
        QUEUES.get(key.as_str())
    }

    /// The turn now, if no other task of this process has it.
    pub(super) fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let permit = self.turn.clone().try_acquire_owned().ok()?;
        Some(Turn {
            queue: self.clone(),
            _permit: permit,
        })
    }

    /// The turn, waiting behind the tasks that asked first, until
    /// `deadline`.
    pub(super) async fn turn_until(self: &Arc<Self>, deadline: Instant) -> Option<Turn> {
        let permit = tokio::time::timeout_at(deadline, self.turn.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Turn {
            queue: self.clone(),
            _permit: permit,
        })
    }

    /// The holder id of the task of this process that holds the lock.
    pub(super) fn holder(&self) -> Option<String> {
        lock(&self.holder).clone()
    }
}

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
}

/// What the count poll found.
struct Poll {
    /// This waiter's place: 0 is first (always 0 without the queue).
    rank: u64,
    subscribers: usize,
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
        }
    }

    /// Whether a first attempt may go ahead at once: nobody is subscribed
    /// and nobody of this crate waits. Errors say yes (the attempt reports
    /// them).
    pub(super) async fn free_now(&self) -> bool {
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
            Ok((n, waiting)) => n.first().is_none_or(|(_, n)| *n == 0) && waiting == 0,
            Err(_) => true,
        }
    }

    /// Notes that an attempt was made and lost.
    pub(super) fn lost_attempt(&mut self) {
        self.lost = self.lost.saturating_add(1);
    }

    /// Waits until the next attempt is due: `true` to attempt, `false` at
    /// the deadline. `own`: subscribers of the channel that are this
    /// acquisition's (1 while an elected writer stays subscribed).
    pub(super) async fn next(&mut self, deadline: Instant, own: usize) -> bool {
        let local = self.local.clone();
        let mut side = local.side.lock().await;
        self.used_side = true;
        self.subscribe_side(&mut side).await;
        // Notices from before this wait are stale.
        while let Some(s) = side.as_mut() {
            match s.stream.next().now_or_never() {
                Some(Some(_)) => {}
                Some(None) => *side = None,
                None => break,
            }
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let poll = self.poll().await;
            let free = poll.as_ref().is_some_and(|p| p.subscribers <= own);
            let first = poll.as_ref().is_none_or(|p| p.rank == 0);
            if free {
                self.backoff = self.interval;
            }
            if first && (free || now >= self.next_try) {
                if !free {
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
            let step = if first {
                self.head_step
            } else {
                self.idle_step
            };
            let mut until = (now + step).min(deadline);
            if first {
                until = until.min(self.next_try.max(now));
            }
            match side.as_mut() {
                Some(s) => {
                    tokio::select! {
                        m = s.stream.next() => match m {
                            Some(_) => {}
                            None => *side = None,
                        },
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                None => tokio::time::sleep_until(until).await,
            }
        }
    }

    /// Leaves the server-side queue (after a grant, or giving up) and
    /// unsubscribes the side connection.
    ///
    /// Each flag is cleared only once its clean-up has run, so an
    /// acquisition cancelled in the middle of this (right after a grant,
    /// say) still leaves the queue through [`Drop`].
    pub(super) async fn leave(&mut self) {
        if self.joined {
            if let Ok(mut c) = self.cmd.get().await {
                let _ = remove(&self.channel, &self.id)
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
    /// the old one broke). Without one the waiter just polls.
    async fn subscribe_side(&self, side: &mut Option<Side>) {
        let within = Duration::from_secs(1);
        let channel = side_channel(&self.channel);
        if let Some(s) = side.as_mut() {
            if s.subscribed {
                return;
            }
            match tokio::time::timeout(within, s.sink.subscribe(&channel)).await {
                Ok(Ok(())) => {
                    s.subscribed = true;
                    return;
                }
                Ok(Err(e)) => side_refused(&channel, &e),
                Err(_) => {}
            }
            *side = None;
        }
        let open = async {
            let client = self.endpoint.resolve().await.ok()?;
            let mut ps = client.get_async_pubsub().await.ok()?;
            if let Err(e) = ps.subscribe(&channel).await {
                side_refused(&channel, &e);
                return None;
            }
            let (sink, stream) = ps.split();
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
                .arg(&self.id)
                .arg(stale)
                .arg(&self.channel)
                .invoke_async::<(u64, usize)>(&mut c.con)
                .await
            {
                Ok((rank, subscribers)) => return Some(Poll { rank, subscribers }),
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
        })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Cancelled while waiting: leave the queue now rather than when the
        // heartbeat goes stale, and stop the side notices.
        if !self.joined && !self.used_side {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cmd, channel, id) = (self.cmd.clone(), self.channel.clone(), self.id.clone());
        let (joined, used_side, side) = (self.joined, self.used_side, self.local.side.clone());
        // The queue entry goes first: the side connection's mutex may be
        // held by another waiter of this process for the whole of its wait.
        // The removal goes over the command connection that carried this
        // waiter's polls, after any poll still in flight on it.
        rt.spawn(async move {
            if joined {
                if let Ok(mut c) = cmd.get().await {
                    let _ = remove(&channel, &id).query_async::<()>(&mut c.con).await;
                }
            }
            if used_side {
                unsubscribe_side(&side, &channel).await;
            }
        });
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
    let done = tokio::time::timeout(
        Duration::from_secs(1),
        s.sink.unsubscribe(side_channel(channel)),
    )
    .await;
    match done {
        Ok(Ok(())) => s.subscribed = false,
        _ => *side = None,
    }
}

fn remove(channel: &str, id: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("ZREM")
        .arg(queue_key(channel))
        .arg(id)
        .ignore()
        .cmd("ZREM")
        .arg(seen_key(channel))
        .arg(id)
        .ignore();
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
