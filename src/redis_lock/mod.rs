//! [`RedisLock`]: a distributed lock whose ownership is a live Redis
//! pub/sub subscription, wire-compatible with Python portalocker 4.4.2.

mod keep_alive;
mod protocol;

use std::fmt;
use std::sync::Arc;

use crate::util::lock;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, ConnectionAddr, RedisError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use self::keep_alive::Shared;
use self::protocol::{Me, Mode, Replies, Resolution, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::flags::LockFlags;
use crate::lock::{DEFAULT_CHECK_INTERVAL, DEFAULT_TIMEOUT};

/// Python's `DEFAULT_UNAVAILABLE_TIMEOUT`: how long a live holder may take
/// to answer a ping before a contender reaps it (1 s).
pub const DEFAULT_UNAVAILABLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Python's `thread_sleep_time`: the probe poll cap (100 ms).
const POLL: Duration = Duration::from_millis(100);
/// The probe's grace read for replies still in flight (5 ms).
const GRACE: Duration = Duration::from_millis(5);
/// Longest accepted channel name.
pub const MAX_CHANNEL_LEN: usize = 1024;

const OP: &str = "failed to acquire Redis lock";

/// A distributed lock on a Redis channel (Python portalocker's
/// `RedisLock`, protocol 1).
///
/// # The model
///
/// Holding the lock *is* being subscribed to the channel on a dedicated
/// connection named `<channel>-lock-<holder id>`. There is no key and no
/// TTL: when the connection goes away — released, crashed, partitioned,
/// killed with `CLIENT KILL` — Redis drops the subscriber, and the lock is
/// free. To find out who holds a channel, a contender subscribes, counts
/// subscribers (`PUBSUB NUMSUB`), and if it is not alone pings them on the
/// channel; every holder answers on a private response channel with its
/// id and mode. Holders that stay silent past `unavailable_timeout` are
/// reaped with `CLIENT KILL ID`.
///
/// ```text
/// acquire ─► connect, CLIENT SETNAME <channel>-lock-<id>, SUBSCRIBE <channel>
///          ─► NUMSUB = 1 ? ──yes──► exclusive (fast path) ─┐
///                 │ no                                     │
///                 ▼                                        ▼
///          ping all, collect replies ─► decide ─► confirm promotion ─► [INCR fence] ─► held
///                 │ busy / lost election
///                 ▼
///          close the connection, sleep check_interval × U[0.5, 1.5), retry until timeout
/// ```
///
/// While held, a keep-alive *task* (not a thread) owned by the guard reads
/// the subscription, answers pings with the current mode, and pings the
/// server so that a dead link is noticed; dropping the guard aborts it and
/// closes the socket.
///
/// # What it does not promise
///
/// * **Pauses and partitions.** A holder that is paused (GC, SIGSTOP, a
///   long blocking call) or cut off can be reaped, and someone else gets
///   the lock while the paused holder still believes it holds it. The
///   holder learns of the loss ([`RedisLockGuard::is_lost`],
///   [`RedisLockGuard::lost`]) only once it runs again. Use
///   [`fencing`](Self::fencing) tokens and have the protected resource
///   reject stale ones: that is the only protection against a holder that
///   acts after its lock is gone.
/// * **Fencing is monotonic only while the counter is durable**: a Redis
///   restart without persistence starts `<channel>-fence` again at 1.
/// * **One standalone server.** Redis Cluster and replicas are not
///   supported: `PUBSUB NUMSUB` only counts the local node.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use portalocker::{redis, RedisLock};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let lock = RedisLock::new("jobs", client).timeout(Duration::from_secs(10)).fencing(true);
/// let guard = lock.acquire().await?;
/// println!("held as {} with token {:?}", guard.holder_id(), guard.fence_token());
/// tokio::select! {
///     _ = guard.lost() => eprintln!("lock lost: stop working"),
///     _ = tokio::time::sleep(Duration::from_secs(1)) => { /* work done */ }
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLock {
    cfg: Arc<Config>,
    /// The command connection, kept across acquisitions (spec §3.3).
    cmd: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

#[derive(Clone)]
struct Config {
    channel: String,
    client: redis::Client,
    timeout: Duration,
    check_interval: Duration,
    fail_when_locked: bool,
    unavailable_timeout: Duration,
    flags: LockFlags,
    fencing: bool,
    self_check: Option<Duration>,
    on_lost: Option<LossCallback>,
}

/// A callback run once when a held lock is lost.
pub(crate) type LossCallback = Arc<dyn Fn(&Error) + Send + Sync + 'static>;

/// The margin a self-check must keep below `unavailable_timeout`.
const SELF_CHECK_MARGIN: Duration = Duration::from_millis(50);

impl RedisLock {
    /// A lock on `channel` through `client`, with Python's defaults:
    /// timeout 5 s, check interval 250 ms, `fail_when_locked` false,
    /// `unavailable_timeout` 1 s, exclusive, no fencing. No I/O here.
    pub fn new(channel: impl Into<String>, client: redis::Client) -> Self {
        Self::from_config(Config {
            channel: channel.into(),
            client,
            timeout: DEFAULT_TIMEOUT,
            check_interval: DEFAULT_CHECK_INTERVAL,
            fail_when_locked: false,
            unavailable_timeout: DEFAULT_UNAVAILABLE_TIMEOUT,
            flags: LockFlags::EXCLUSIVE,
            fencing: false,
            self_check: None,
            on_lost: None,
        })
    }

    fn from_config(cfg: Config) -> Self {
        Self {
            cfg: Arc::new(cfg),
            cmd: Arc::default(),
        }
    }

    fn map(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = (*self.cfg).clone();
        f(&mut cfg);
        Self {
            cfg: Arc::new(cfg),
            cmd: self.cmd,
        }
    }

    /// The acquisition budget (default 5 s). Zero makes one attempt.
    pub fn timeout(self, t: Duration) -> Self {
        self.map(|c| c.timeout = t)
    }

    /// The base pause between attempts (default 250 ms), jittered by
    /// U\[0.5, 1.5) as Python does; zero falls back to 100 ms.
    pub fn check_interval(self, t: Duration) -> Self {
        self.map(|c| c.check_interval = t)
    }

    /// Do not wait for a channel that is demonstrably held: a conclusive
    /// probe that finds it busy fails at once (default false).
    /// Inconclusive probes are still retried within the timeout.
    pub fn fail_when_locked(self, yes: bool) -> Self {
        self.map(|c| c.fail_when_locked = yes)
    }

    /// How long a holder may take to answer a ping before it counts as
    /// dead and is reaped; also the budget of each probe and of the
    /// subscribe confirmation (default 1 s).
    pub fn unavailable_timeout(self, t: Duration) -> Self {
        self.map(|c| c.unavailable_timeout = t)
    }

    /// [`LockFlags::EXCLUSIVE`] (default) or [`LockFlags::SHARED`]; any
    /// other value makes `acquire` fail with `InvalidInput`.
    pub fn flags(self, flags: LockFlags) -> Self {
        self.map(|c| c.flags = flags)
    }

    /// Draw a fencing token with `INCR <channel>-fence` on every exclusive
    /// grant (default false). See [`RedisLockGuard::fence_token`].
    pub fn fencing(self, yes: bool) -> Self {
        self.map(|c| c.fencing = yes)
    }

    /// Opt in to an end-to-end self-check every `interval` while held: the
    /// holder pings its own channel through a fresh response subscription
    /// and expects its own reply, which only comes if its subscription
    /// still receives the channel. A missed deadline (`min(interval,
    /// unavailable_timeout)`) marks the lock lost. This detects half-open
    /// links, where nothing arrives and no error is raised, before a rival
    /// can reap the holder: `acquire` rejects an `interval` for which
    /// `interval + min(interval, unavailable_timeout) + 50 ms` is not below
    /// `unavailable_timeout`.
    ///
    /// Each check costs one short subscription, one publish and one reply
    /// from every holder of the channel.
    pub fn self_check_interval(self, interval: Duration) -> Self {
        self.map(|c| c.self_check = Some(interval))
    }

    /// Run `callback` once, on the keep-alive task, when a held lock is
    /// lost; it receives the [`ErrorKind::LockLost`] error. Keep it short
    /// and non-blocking (signal a task, flip a flag); a panic in it is
    /// caught and logged. See also [`RedisLockGuard::lost`] and
    /// [`RedisLockGuard::watch_lost`].
    pub fn on_lost(self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        let cb: LossCallback = Arc::new(callback);
        self.map(|c| c.on_lost = Some(cb))
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.cfg.channel
    }

    /// Acquires the lock, waiting up to the timeout.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Everything an attempt opens — the
    /// subscription connection, its keep-alive task, the probe connection —
    /// is owned by the future; dropping it aborts the task and closes the
    /// sockets, so Redis drops the subscriber and no phantom holder stays
    /// on the channel. (A `SUBSCRIBE` in flight dies with its connection.)
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) when the lock is
    /// still held at the deadline (or at once with `fail_when_locked` and a
    /// conclusive probe); [`ErrorKind::InvalidInput`] for an empty channel,
    /// one longer than [`MAX_CHANNEL_LEN`] or with spaces or control
    /// characters, invalid flags, or a TLS address (not supported for the
    /// named subscription connection); [`ErrorKind::Redis`] when the server
    /// cannot be reached or refuses a command (e.g. `CLIENT KILL` denied by
    /// an ACL). Nothing is left on the channel after an error.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, or on one without the I/O and
    /// time drivers (`enable_io` and `enable_time`, or `enable_all`): every
    /// Redis round trip is bounded by a timer.
    pub async fn acquire(&self) -> Result<RedisLockGuard> {
        self.validate()?;
        let writer = self.cfg.flags == LockFlags::EXCLUSIVE;
        let id = crate::util::unguessable_hex32();
        let shared = Arc::new(Shared::new(
            self.cfg.channel.clone(),
            id,
            if writer { Mode::Pending } else { Mode::Shared },
            self.cfg.on_lost.clone(),
        ));
        let mut attempt = Attempt {
            lock: self,
            shared,
            writer,
            sub: None,
            reached_server: false,
            last_error: None,
            crowd: 1,
        };
        let mut schedule = RedisSchedule::new(self.cfg.timeout, self.cfg.check_interval);
        while schedule.next_watching(self, attempt.crowd).await {
            match attempt.run().await? {
                Some(guard) => return Ok(guard),
                None => continue,
            }
        }
        Err(attempt.timed_out())
    }

    fn validate(&self) -> Result<()> {
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
        if self.cfg.flags != LockFlags::EXCLUSIVE && self.cfg.flags != LockFlags::SHARED {
            return bad(format!(
                "{:?}: the flags must be exactly one of EXCLUSIVE or SHARED",
                self.cfg.flags
            ));
        }
        Ok(())
    }

    /// The command connection, created once and re-created after it broke.
    async fn command(&self) -> std::result::Result<MultiplexedConnection, RedisError> {
        let mut slot = self.cmd.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let con = tokio::time::timeout(
            self.cfg.unavailable_timeout.max(Duration::from_secs(1)),
            self.cfg.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| timeout_error("connecting to Redis"))??;
        *slot = Some(con.clone());
        Ok(con)
    }

    async fn forget_command(&self) {
        *self.cmd.lock().await = None;
    }
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cfg;
        f.debug_struct("RedisLock")
            .field("channel", &c.channel)
            .field("timeout", &c.timeout)
            .field("check_interval", &c.check_interval)
            .field("fail_when_locked", &c.fail_when_locked)
            .field("unavailable_timeout", &c.unavailable_timeout)
            .field("flags", &c.flags)
            .field("fencing", &c.fencing)
            .field("self_check_interval", &c.self_check)
            .field("on_lost", &c.on_lost.is_some())
            .finish_non_exhaustive()
    }
}

/// One acquisition: its identity, its subscription, its errors.
struct Attempt<'a> {
    lock: &'a RedisLock,
    shared: Arc<Shared>,
    writer: bool,
    sub: Option<keep_alive::Subscription>,
    /// Whether any probe got as far as a decision (so a timeout means
    /// contention, not an unreachable server).
    reached_server: bool,
    last_error: Option<RedisError>,
    /// Other subscribers seen by the last attempt: how many wait with us.
    crowd: usize,
}

impl Attempt<'_> {
    fn cfg(&self) -> &Config {
        &self.lock.cfg
    }

    fn me(&self) -> (String, bool) {
        (self.shared.id.clone(), self.shared.elected())
    }

    /// Runs one attempt. `Ok(None)`: not this time.
    async fn run(&mut self) -> Result<Option<RedisLockGuard>> {
        match self.try_once().await {
            Ok(Some(g)) => Ok(Some(g)),
            Ok(None) => Ok(None),
            Err(AttemptError::Transient(e)) => {
                log::debug!(
                    "portalocker: Redis lock attempt on {:?} failed: {e}",
                    self.cfg().channel
                );
                self.abandon();
                if e.is_connection_dropped() || e.is_io_error() || e.is_timeout() {
                    self.lock.forget_command().await;
                }
                self.last_error = Some(e);
                Ok(None)
            }
            Err(AttemptError::Fatal(e)) => {
                self.abandon();
                Err(e)
            }
        }
    }

    fn abandon(&mut self) {
        self.shared.set_mode(self.pending_mode(), false);
        self.sub = None;
    }

    fn pending_mode(&self) -> Mode {
        if self.writer {
            Mode::Pending
        } else {
            Mode::Shared
        }
    }

    fn busy(&self) -> Error {
        Error::already_locked(OP, None)
            .with_reason("already locked by another holder")
            .with_channel(self.cfg().channel.clone())
    }

    fn timed_out(&mut self) -> Error {
        self.abandon();
        match self.last_error.take() {
            Some(e) if !self.reached_server => redis_error(&self.cfg().channel, e),
            _ => {
                let t = self.cfg().timeout;
                let e = self.busy();
                if t.is_zero() {
                    e
                } else {
                    e.with_reason(format!("held by another holder (waited {t:?})"))
                }
            }
        }
    }

    async fn try_once(&mut self) -> std::result::Result<Option<RedisLockGuard>, AttemptError> {
        // A. A subscription that died while we waited is abandoned.
        if self.sub.as_ref().is_some_and(|s| !s.alive()) {
            self.abandon();
        }
        // B. Subscribe (named connection, confirmed) if needed.
        if self.sub.is_none() {
            self.sub = Some(self.subscribe().await?);
        }
        let mut cmd = self.lock.command().await.map_err(AttemptError::classify)?;
        let channel = self.cfg().channel.clone();
        let fwl = self.cfg().fail_when_locked;
        // C. Count, then probe and decide.
        let n = numsub(&mut cmd, &channel).await?;
        self.crowd = n.saturating_sub(1).max(1);
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
                let elected = elect || self.shared.elected();
                self.shared.set_mode(Mode::Exclusive, elected);
                // D. Confirm every writer promotion.
                if !self.confirm(&mut cmd).await? {
                    self.shared.set_mode(Mode::Pending, false);
                    self.sub = None;
                    if fwl {
                        return Err(AttemptError::Fatal(self.busy()));
                    }
                    return Ok(None);
                }
            }
            Resolution::Retry { elect } => {
                if elect {
                    self.shared.set_mode(Mode::Pending, true);
                }
                return Ok(None);
            }
            Resolution::GiveUp { conclusive } => {
                self.abandon();
                if fwl && conclusive {
                    return Err(AttemptError::Fatal(self.busy()));
                }
                return Ok(None);
            }
            Resolution::FailFast => {
                self.abandon();
                return Err(AttemptError::Fatal(self.busy()));
            }
        }
        // E. Fencing token, writers only.
        let fence = if self.writer && self.cfg().fencing {
            let key = format!("{channel}-fence");
            let t: u64 = cmd.incr(&key, 1u64).await.map_err(AttemptError::classify)?;
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
        Ok(Some(RedisLockGuard {
            sub: Some(sub),
            shared: self.shared.clone(),
            fence,
        }))
    }

    async fn subscribe(&mut self) -> std::result::Result<keep_alive::Subscription, AttemptError> {
        let cfg = self.cfg();
        let cmd = self.lock.command().await.map_err(AttemptError::classify)?;
        let name = protocol::client_name(&cfg.channel, &self.shared.id);
        let info = cfg.client.get_connection_info();
        let wait = cfg.unavailable_timeout.max(Duration::from_millis(100));
        let stream = tokio::time::timeout(wait, connect_named(info, &name))
            .await
            .map_err(|_| AttemptError::Transient(timeout_error("connecting the subscription")))??;
        let mut pubsub = redis::aio::PubSub::new(info.redis_settings(), stream)
            .await
            .map_err(AttemptError::classify)?;
        match tokio::time::timeout(wait, pubsub.subscribe(&cfg.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(AttemptError::classify(e)),
            Err(_) => {
                return Err(AttemptError::Fatal(
                    Error::new(ErrorKind::Redis, OP)
                        .with_channel(cfg.channel.clone())
                        .with_reason(format!(
                            "Redis did not confirm the lock channel subscription within {wait:?}"
                        )),
                ))
            }
        }
        Ok(keep_alive::Subscription::start(
            self.shared.clone(),
            pubsub,
            keep_alive::Settings {
                cmd,
                client: cfg.client.clone(),
                unavailable: cfg.unavailable_timeout,
                self_check: cfg.self_check,
            },
        ))
    }

    /// Collects the holders (spec §3.7). `None`: inconclusive.
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
        let mut ps = tokio::time::timeout(setup, cfg.client.get_async_pubsub())
            .await
            .map_err(|_| AttemptError::Transient(timeout_error("opening the probe connection")))?
            .map_err(AttemptError::classify)?;
        // Without a confirmation we carry on: missing replies then make the
        // probe inconclusive.
        match tokio::time::timeout(setup, ps.subscribe(&response)).await {
            Ok(r) => r.map_err(AttemptError::classify)?,
            Err(_) => return Ok(None),
        }
        let mut stream = ps.into_on_message();
        if numsub(cmd, &cfg.channel).await? != expected {
            return Ok(None);
        }
        let _: i64 = cmd
            .publish(&cfg.channel, protocol::ping(&response))
            .await
            .map_err(AttemptError::classify)?;
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

    /// Kills subscribers of this channel that did not answer (spec §3.9).
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
            .map_err(AttemptError::classify)?;
        for id in protocol::unavailable_clients(channel, &list, replies) {
            log::warn!("portalocker: killing unresponsive holder (client id {id}) of Redis lock {channel:?}");
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(cmd)
                .await
                .map_err(AttemptError::classify)?;
        }
        Ok(())
    }

    /// Confirms a writer's promotion (spec §3.8.5): `false` to demote.
    async fn confirm(
        &self,
        cmd: &mut MultiplexedConnection,
    ) -> std::result::Result<bool, AttemptError> {
        let cfg = self.cfg();
        let mut schedule = RedisSchedule::new(cfg.unavailable_timeout, POLL);
        while schedule.next().await {
            let n = numsub(cmd, &cfg.channel).await?;
            if n <= 1 {
                return Ok(true);
            }
            let Some(replies) = self.probe(cmd, n, true).await? else {
                continue;
            };
            match protocol::confirm_verdict(&self.shared.id, &replies.holders) {
                Verdict::Confirmed => return Ok(true),
                Verdict::Demote => return Ok(false),
                Verdict::Retry => {}
            }
        }
        Ok(false)
    }
}

enum AttemptError {
    /// A connection or timeout error: costs this attempt only.
    Transient(RedisError),
    /// Anything else ends `acquire`.
    Fatal(Error),
}

impl AttemptError {
    fn classify(e: RedisError) -> Self {
        let auth = matches!(
            e.kind(),
            redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::Server(_)
        );
        if !auth
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal())
        {
            Self::Transient(e)
        } else {
            Self::Fatal(redis_error_any(e))
        }
    }
}

impl From<AttemptError> for Error {
    fn from(e: AttemptError) -> Self {
        match e {
            AttemptError::Transient(e) => redis_error_any(e),
            AttemptError::Fatal(e) => e,
        }
    }
}

fn redis_error(channel: &str, e: RedisError) -> Error {
    Error::new(ErrorKind::Redis, OP)
        .with_channel(channel)
        .with_reason(e.to_string())
        .with_source(e)
}

fn redis_error_any(e: RedisError) -> Error {
    Error::new(ErrorKind::Redis, OP)
        .with_reason(e.to_string())
        .with_source(e)
}

fn timeout_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
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

/// A socket for the subscription connection.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens the subscription socket and names it before anything else:
/// `AUTH` (if configured), then `CLIENT SETNAME <name>`. redis-rs's
/// `PubSub` cannot send `CLIENT SETNAME`, so the handshake is done here on
/// the raw socket, which is then handed to `PubSub::new`.
async fn connect_named(
    info: &redis::ConnectionInfo,
    name: &str,
) -> std::result::Result<Box<dyn Io>, AttemptError> {
    let mut sock: Box<dyn Io> = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| AttemptError::Transient(e.into()))?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| AttemptError::Transient(e.into()))?,
        ),
        #[allow(unreachable_patterns)]
        other => {
            return Err(AttemptError::Fatal(Error::invalid(
                OP,
                format!("{other:?}: only TCP and Unix-socket servers are supported (the subscription connection must be named before it subscribes)"),
            )))
        }
    };
    let settings = info.redis_settings();
    let mut packed = Vec::new();
    let mut replies = 1;
    if let Some(pw) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            auth.arg(user);
        }
        packed.extend(auth.arg(pw).get_packed_command());
        replies += 1;
    }
    packed.extend(
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .get_packed_command(),
    );
    sock.write_all(&packed)
        .await
        .map_err(|e| AttemptError::Transient(e.into()))?;
    // Each command answers one line: `+OK` or `-ERR ...`.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.iter().filter(|&&b| b == b'\n').count() < replies {
        let n = sock
            .read(&mut byte)
            .await
            .map_err(|e| AttemptError::Transient(e.into()))?;
        if n == 0 {
            return Err(AttemptError::Transient(
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
            ));
        }
        buf.push(byte[0]);
        if buf.len() > 4096 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    if let Some(err) = text.lines().find(|l| l.starts_with('-')) {
        return Err(AttemptError::Fatal(
            Error::new(ErrorKind::Redis, OP).with_reason(format!(
                "naming the subscription connection {name:?} failed: {}",
                err.trim_start_matches('-')
            )),
        ));
    }
    Ok(sock)
}

/// Python's Redis timeout generator: an attempt at once, then after each
/// pause of `interval × U[0.5, 1.5)` (capped at the time left) while time
/// remains.
struct RedisSchedule {
    deadline: Instant,
    interval: Duration,
    first: bool,
}

impl RedisSchedule {
    fn new(timeout: Duration, interval: Duration) -> Self {
        let interval = if interval.is_zero() { POLL } else { interval };
        let now = Instant::now();
        Self {
            deadline: crate::deadline::deadline_after(now, timeout),
            interval,
            first: true,
        }
    }

    async fn next(&mut self) -> bool {
        match self.pause() {
            Pause::Now => true,
            Pause::Done => false,
            Pause::Sleep(until) => {
                tokio::time::sleep_until(until).await;
                Instant::now() < self.deadline
            }
        }
    }

    /// As [`next`](Self::next), but while pausing, watches the channel's
    /// subscriber count every few milliseconds and ends the pause early
    /// (after a random delay of up to one poll, so waiters do not all
    /// arrive at once) when it
    /// drops to zero: the holder left (released, crashed, was reaped), so
    /// the next attempt should not wait out the jittered interval. Python
    /// peers see nothing of this (it is `PUBSUB NUMSUB` on our command
    /// connection).
    async fn next_watching(&mut self, lock: &RedisLock, crowd: usize) -> bool {
        let until = match self.pause() {
            Pause::Now => return true,
            Pause::Done => return false,
            Pause::Sleep(until) => until,
        };
        // Watch closely when alone (a lone waiter gets a freed lock within a
        // few ms); in a crowd (the subscriber count of the last attempt),
        // watch and spread out more slowly, up to half the interval, so the
        // waiters do not all pile onto the channel at once.
        let base = (self.interval / 50).clamp(Duration::from_millis(2), Duration::from_millis(10));
        let crowd = u32::try_from(crowd.clamp(1, 64)).unwrap_or(64);
        let step = (base * crowd).min((self.interval / 2).max(base));
        let mut cmd = lock.command().await.ok();
        let channel = &lock.cfg.channel;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if let Some(c) = cmd.as_mut() {
                match tokio::time::timeout(step.max(Duration::from_millis(50)), numsub(c, channel))
                    .await
                {
                    Ok(Ok(0)) => {
                        // Spread the waiters that all saw the channel free.
                        let spread = crate::deadline::scale(step, crate::util::unit());
                        tokio::time::sleep_until((Instant::now() + spread).min(until)).await;
                        break;
                    }
                    Ok(Ok(_)) => {}
                    _ => cmd = None, // fall back to plain sleeping
                }
            }
            tokio::time::sleep_until((Instant::now() + step).min(until)).await;
        }
        Instant::now() < self.deadline
    }

    fn pause(&mut self) -> Pause {
        if std::mem::take(&mut self.first) {
            return Pause::Now;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Pause::Done;
        }
        let pause = crate::deadline::scale(self.interval, 0.5 + crate::util::unit());
        Pause::Sleep(Instant::now() + pause.min(left))
    }
}

enum Pause {
    Now,
    Done,
    Sleep(Instant),
}

/// A held [`RedisLock`]. Owns the subscription connection and its
/// keep-alive task; dropping it aborts the task and closes the socket, so
/// Redis drops the subscriber and the lock is free.
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct RedisLockGuard {
    sub: Option<keep_alive::Subscription>,
    shared: Arc<Shared>,
    fence: Option<u64>,
}

impl RedisLockGuard {
    /// This holder's id: 32 lowercase hex characters, also the suffix of
    /// its connection name `<channel>-lock-<id>`.
    pub fn holder_id(&self) -> &str {
        &self.shared.id
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The fencing token drawn for this grant (with
    /// [`RedisLock::fencing`] on an exclusive lock), strictly greater than
    /// every token drawn before from the same (durable) counter.
    pub fn fence_token(&self) -> Option<u64> {
        self.fence
    }

    /// Whether the lock was lost: the subscription connection died (killed,
    /// server gone, ping unanswered) while held. Local and cheap.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// `Err` of kind [`ErrorKind::LockLost`] once the lock is lost; cheap,
    /// no network traffic. Sprinkle it through long critical sections.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`], naming the channel, the holder id and why.
    pub fn ensure_held(&self) -> Result<()> {
        match self.shared.lost_reason() {
            Some(why) => Err(self.lost_error(why)),
            None => Ok(()),
        }
    }

    fn lost_error(&self, why: String) -> Error {
        self.shared.lost_error(&why)
    }

    /// A `watch` receiver that turns `true` when the lock is lost: hand it
    /// to tasks that must stop working then (`changed().await`,
    /// `borrow()`), without giving them the guard.
    pub fn watch_lost(&self) -> watch::Receiver<bool> {
        self.shared.watch_lost()
    }

    /// Runs `work` only while the lock is held: its output, or an error of
    /// kind [`ErrorKind::LockLost`] as soon as the lock is lost first (then
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
    /// [`ErrorKind::LockLost`] if the lock is lost before `work` completes
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
            () = self.lost() => Err(self.lost_error(self.shared.lost_reason().unwrap_or_default())),
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
        let mut rx = self.shared.watch_lost();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Releases the lock: stops the keep-alive task and closes the
    /// subscription connection, so Redis drops the subscriber.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it releases as dropping the
    /// guard does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LockLost`] if the lock had been lost before the
    /// release: work done under it may not have been exclusive.
    pub async fn release(mut self) -> Result<()> {
        if let Some(sub) = self.sub.take() {
            sub.stop().await;
        }
        match self.shared.lost_reason() {
            Some(why) => Err(self.lost_error(why)),
            None => Ok(()),
        }
    }
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        // Dropping the subscription aborts the task, which drops the
        // pub/sub stream and closes the socket.
        self.sub.take();
    }
}

impl fmt::Debug for RedisLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockGuard")
            .field("channel", &self.shared.channel)
            .field("holder_id", &self.shared.id)
            .field("fence_token", &self.fence)
            .field("lost", &self.is_lost())
            .finish()
    }
}
