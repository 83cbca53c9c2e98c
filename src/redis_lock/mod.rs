//! [`RedisLock`]: a distributed lock whose ownership is a live Redis
//! pub/sub subscription, wire-compatible with Python portalocker 4.4.2.
//!
//! The module is split by concern:
//!
//! * `mod.rs` (here): [`RedisLock`], its options, `holders()`;
//! * `acquire.rs`: the acquisition loop (this process's turn, attempts,
//!   the waits between them) and validation;
//! * `attempt.rs`: one acquisition attempt — subscribe, count, probe,
//!   decide, confirm, fence — and the pause between attempts;
//! * `errors.rs`: which Redis errors cost an attempt and which end the
//!   acquisition, and the errors that say so;
//! * `fence.rs`: drawing fencing tokens across databases, and how many
//!   replicas must have one;
//! * `connect.rs`: the named subscription connection;
//! * `protocol/`: the pure decisions, the wire format and the reading of
//!   the server's `ROLE` and `CLIENT LIST` replies (no I/O);
//! * `keep_alive.rs`: the task that answers pings while the lock is held
//!   (and watches the replies to pings for foreign contenders);
//! * `waiting/`: quiet waiting across processes (`mod.rs`), one contender
//!   per process and the places of foreign contenders (`local.rs`), the
//!   server-side queue's keys and scripts (`keys.rs`);
//! * `command.rs`: the shared command connection and the topology check;
//! * `endpoint.rs`: where the server is (a client, or through Sentinel);
//! * `guard.rs`: [`RedisLockGuard`].

mod acquire;
mod attempt;
mod command;
mod connect;
mod endpoint;
mod errors;
mod fence;
mod guard;
mod keep_alive;
mod protocol;
mod waiting;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use self::command::CommandSlot;
use self::keep_alive::LossCallback;
use self::waiting::LocalQueue;
use crate::error::{Error, Result};
use crate::file::flags::LockFlags;
use crate::options::{acquire_variants, wait_setters, WaitOptions};

pub use self::guard::RedisLockGuard;

/// Python's `DEFAULT_UNAVAILABLE_TIMEOUT`: how long a live holder may take
/// to answer a ping before a contender reaps it (1 s).
pub const DEFAULT_UNAVAILABLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted channel name.
pub const MAX_CHANNEL_LEN: usize = 1024;

pub(crate) const OP: &str = "failed to acquire Redis lock";

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
/// acquire ─► this process's turn (tasks of one process queue first come, first served)
///          ─► connect, then CLIENT SETNAME <channel>-lock-<id> + SUBSCRIBE <channel> in one write
///          ─► NUMSUB = 1 ? ──yes──► exclusive (fast path) ─┐
///                 │ no                                     │
///                 ▼                                        ▼
///          ping all, collect replies ─► decide ─► confirm promotion ─► [INCR fence] ─► held
///                 │ busy / lost election
///                 ▼
///          close the subscription and wait quietly (below), then attempt again
/// ```
///
/// # Waiting
///
/// * **One contender per process.** Tasks of one process that want the
///   same channel of the same server (by address) queue first come, first
///   served, and only the first speaks the Redis protocol: Python sees one
///   ordinary contender per process. A writer keeps the turn while it
///   holds; its release (or loss) passes the turn on at once.
/// * **Quietly across processes.** A writer that has to wait does not stay
///   subscribed or resubscribe on a timer. It takes a place in a queue of
///   waiting writers kept on the server (the sorted set
///   `"<channel> portalocker-queue"`, with heartbeats so that a waiter
///   that died drops out after `max(1 s, 3 × unavailable_timeout)`), polls its place and the
///   subscriber count on the command connection (every 2–10 ms when first,
///   10–50 ms otherwise, scaled by `check_interval`), and attempts again
///   when it is first and the channel is free. A releasing holder of this
///   crate says so on the side channel `"<channel> portalocker-released"`,
///   so the first waiter moves at once. Both names contain a space and so
///   can never be a lock channel: nothing but pings and replies is ever
///   published on one. To reap a holder that went silent, the first
///   waiter also attempts after `check_interval × U[0.5, 1.5)` while the
///   channel stays busy, the pause doubling after each busy attempt up to
///   1 s (or `check_interval`, if longer).
/// * **Places for Python peers.** Python writers poll and do not queue.
///   Waiters and holders of this crate watch the replies to pings (the
///   pattern `<channel>-*`); a waiting writer whose reply does not say
///   `"queues": true` (this crate's replies do; Python ignores the key) gets
///   a place in the queue, kept while it is seen waiting at least every 2 s,
///   and gives it up when it is seen holding. This crate's waiters behind
///   such a place leave the channel free for it. The first of them, when it
///   meets a Python holder, stays subscribed as an elected writer (its
///   holder id begins with `fff`, so a holder that is still confirming its
///   promotion ignores it): the Python holder, which asks again the moment
///   it releases, then defers to it instead of taking the lock back. Python
///   peers do not queue among themselves: whichever polls first when a
///   Python place comes up takes it (and hands its own place on).
/// * A server that refuses scripts (an ACL without `@scripting`): there is
///   no queue, and every waiter watches the count and, when the channel is
///   free, attempts after a random delay that widens while it keeps losing.
/// * Readers share, so they do not queue behind each other across
///   processes; they watch the count in the same way.
///
/// While held, a keep-alive *task* (not a thread) owned by the guard reads
/// the subscription, answers pings with the current mode, and pings the
/// server so that a dead link is noticed; dropping the guard aborts it and
/// closes the socket, and [`release`](RedisLockGuard::release) first waits
/// for the server to confirm an `UNSUBSCRIBE`, so that the lock is free
/// when it returns.
///
/// # What a holder survives
///
/// * **Idle timeouts and killed command connections.** Answers go out on
///   the command connection, which the server may close when idle (`timeout`)
///   or someone may kill; the keep-alive task pings it every
///   `max(unavailable_timeout, 100 ms)` and replaces it when it broke, and
///   an answer that meets a broken connection is sent again on a new one.
///   (Subscribed connections are exempt from `timeout`.)
/// * **Server stalls.** A ping of the server that stays unanswered for
///   `unavailable_timeout` is not yet a loss: the task asks the server over
///   a fresh connection. If the server answers that, this holder's link is
///   dead, and after one more `unavailable_timeout` the lock counts as
///   lost. If it answers nobody, the server is stalled (a long script,
///   `DEBUG SLEEP`, a fork on a loaded host) and nobody can take the lock
///   from it meanwhile, so the holder waits up to 5 s more. A stall shorter
///   than `2 × unavailable_timeout + 5 s` never costs the lock; a link that
///   died is noticed within `4 × unavailable_timeout` (one ping period and
///   three waits; sooner with
///   [`self_check_interval`](Self::self_check_interval)).
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
/// * **One primary.** The lock talks to a standalone server or the primary
///   of a replicated set; a replica, a Sentinel or a Redis Cluster node is
///   refused with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
///   (`PUBSUB NUMSUB` counts one node's subscribers only). Fencing tokens
///   wait for the primary's replicas ([`fence_replicas`](Self::fence_replicas)).
///
/// # Permissions
///
/// The channels, keys and commands the lock uses, and an ACL user with
/// exactly those, are listed in the crate's `docs/redis-permissions.md`.
/// A refused channel is named in the error.
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
    cfg: Arc<Options>,
    /// The command connection (counts, pings, replies, fencing, reaping),
    /// shared by every acquisition and holder through this value and its
    /// clones, as Python shares the one it was given.
    cmd: Arc<CommandSlot>,
    /// This process's queue for the channel, kept while the value lives so
    /// that its side-channel subscription serves every wait of the value.
    local: Arc<LocalQueue>,
    /// The connection opened ahead for the next attempt's subscription.
    spare: Arc<connect::Spare>,
}

#[derive(Clone)]
struct Options {
    channel: String,
    endpoint: Arc<endpoint::Endpoint>,
    wait: WaitOptions,
    unavailable_timeout: Duration,
    flags: LockFlags,
    fencing: bool,
    fence_replicas: FenceReplicas,
    self_check: Option<Duration>,
    on_lost: Option<LossCallback>,
    preconnect: bool,
}

/// A fresh holder id: 32 lowercase hex digits, unguessable. A writer's
/// begins with `fff`, so that it sorts after (nearly) every Python id
/// (uuid4 hex): a writer of this crate that stands first in the queue
/// behind a Python holder is then a pending record with a higher id, which
/// the holder's confirmation ignores, while its election (which Python
/// writers defer to) keeps the others out. In an election between a fresh
/// writer of this crate and a Python writer the lower id wins, so Python's
/// writer; the queue gives this crate's writers their turns instead.
fn holder_id(writer: bool) -> String {
    let id = crate::util::unguessable_hex32();
    if writer {
        format!("fff{}", &id[3..])
    } else {
        id
    }
}

/// A holder of a Redis lock as the server lists it
/// ([`RedisLock::holders`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHolder {
    /// The holder id (32 hex digits; [`RedisLockGuard::holder_id`]).
    pub id: String,
    /// The client address of its subscription connection (`host:port`).
    pub addr: String,
}

impl std::fmt::Display for RedisHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "holder {} client {}", self.id, self.addr)
    }
}

/// How many replicas must have a fencing token before an exclusive grant
/// returns ([`RedisLock::fence_replicas`]).
///
/// A token is drawn on the primary; if the primary fails before a replica
/// has it, the promoted replica hands out the same token again. Waiting
/// (`WAIT`) for the replicas to acknowledge the draw closes that window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceReplicas {
    /// Every replica the primary lists when the token is drawn (the
    /// default; nothing to wait for on a server without replicas).
    #[default]
    Connected,
    /// At least this many (0: do not wait).
    AtLeast(u32),
}

/// The margin a self-check must keep below `unavailable_timeout`.
const SELF_CHECK_MARGIN: Duration = Duration::from_millis(50);

crate::options::impl_waiting!(RedisLock, cfg);

impl RedisLock {
    /// A lock on `channel` through `client`, with Python's defaults:
    /// timeout 5 s, check interval 250 ms, `fail_when_locked` false,
    /// `unavailable_timeout` 1 s, exclusive, no fencing. No I/O here.
    pub fn new(channel: impl Into<String>, client: redis::Client) -> Self {
        Self::with_endpoint(channel.into(), endpoint::Endpoint::fixed(client))
    }

    /// A lock on `channel` on the primary that Redis Sentinel names, asked
    /// again whenever the primary may have moved, so the lock follows a
    /// failover: waiters carry on against the promoted replica, and
    /// holders on the old primary learn that they lost the lock (their
    /// subscription dies with it). Otherwise as [`new`](Self::new).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use portalocker::redis::sentinel::{SentinelClient, SentinelServerType};
    /// use portalocker::RedisLock;
    /// let sentinels = SentinelClient::build(
    ///     vec!["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/"],
    ///     "mymaster".to_string(),
    ///     None,
    ///     SentinelServerType::Master,
    /// )
    /// .unwrap();
    /// let lock = RedisLock::with_sentinel("nightly", sentinels);
    /// # drop(lock);
    /// ```
    pub fn with_sentinel(
        channel: impl Into<String>,
        sentinel: redis::sentinel::SentinelClient,
    ) -> Self {
        Self::with_endpoint(
            channel.into(),
            // Each such value is its own server name: two of them for one
            // service contend on the server, as two processes do.
            endpoint::Endpoint::sentinel(sentinel, None, {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("Redis Sentinel client #{n}")
            }),
        )
    }

    /// A lock on `channel` on whatever server `factory` returns a client
    /// for: called when the lock first needs a server, and again whenever
    /// the server may have moved (a connection failed, it answered
    /// `READONLY`, it turned out to be a replica) — for setups that neither
    /// a URL nor Sentinel describes (a service registry, a managed Redis
    /// with its own endpoint discovery). Python portalocker 4.2+ offers
    /// the like as `subscription_connection_factory`. Otherwise as
    /// [`new`](Self::new); the lock still refuses a replica or a Cluster
    /// node at the start of an acquisition.
    ///
    /// An error from `factory` costs an attempt, as a failed connection
    /// does; at the start of an acquisition it is the error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use portalocker::RedisLock;
    /// let lock = RedisLock::with_client_factory("nightly", || {
    ///     Box::pin(async {
    ///         // e.g. look the primary up in a registry
    ///         portalocker::redis::Client::open("redis://10.0.0.1:6379/")
    ///     })
    /// });
    /// # drop(lock);
    /// ```
    pub fn with_client_factory<F>(channel: impl Into<String>, factory: F) -> Self
    where
        F: Fn() -> std::pin::Pin<
                Box<dyn std::future::Future<Output = redis::RedisResult<redis::Client>> + Send>,
            > + Send
            + Sync
            + 'static,
    {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::with_endpoint(
            channel.into(),
            endpoint::Endpoint::factory(Arc::new(factory), format!("client factory #{n}")),
        )
    }

    /// A lock on `channel` through `url`: `redis://`, `rediss://` and
    /// `unix://` as [`redis::Client::open`] reads them, or
    /// `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]`
    /// (`rediss+sentinel://` with TLS) for the primary of SERVICE that the
    /// sentinels name ([`with_sentinel`](Self::with_sentinel)). USER,
    /// PASSWORD and DB are for the data servers; the sentinels are asked
    /// without credentials.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a URL
    /// that does not parse, naming it and what is wrong;
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for TLS in
    /// a build without the `redis-tls` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalocker::RedisLock;
    /// let direct = RedisLock::from_url("jobs", "redis://127.0.0.1:6379/").unwrap();
    /// let followed = RedisLock::from_url(
    ///     "jobs",
    ///     "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
    /// )
    /// .unwrap();
    /// assert!(RedisLock::from_url("jobs", "redis+sentinel://10.0.0.1:26379").is_err());
    /// # drop((direct, followed));
    /// ```
    pub fn from_url(channel: impl Into<String>, url: &str) -> Result<Self> {
        if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
            let (client, service, name) = endpoint::parse_sentinel_url(url)?;
            return Ok(Self::with_endpoint(
                channel.into(),
                endpoint::Endpoint::sentinel(client, Some(service), name),
            ));
        }
        let client = redis::Client::open(url).map_err(|e| {
            Error::invalid(
                "invalid Redis URL",
                format!("{:?}: {e}", endpoint::redacted(url)),
            )
            .with_source(e)
        })?;
        Ok(Self::new(channel, client))
    }

    /// Who holds the lock now, as the server lists its clients (`CLIENT
    /// LIST`, by the names holders give their subscription connections,
    /// while those are subscribed):
    /// a passive look that pings nobody, so a holder that stopped answering
    /// is still listed until it is reaped. Python portalocker's holders are
    /// listed too (same names).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only reads.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis) if the server cannot
    /// be reached or refuses `CLIENT LIST`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// let lock = portalocker::RedisLock::from_url("nightly", "redis://127.0.0.1/")?;
    /// for h in lock.holders().await? {
    ///     println!("{h}"); // holder 5e5e… client 10.0.0.7:51234
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holders(&self) -> Result<Vec<RedisHolder>> {
        let fail = |e: redis::RedisError| {
            Error::new(crate::ErrorKind::Redis, "failed to list Redis lock holders")
                .with_channel(self.cfg.channel.clone())
                .with_reason(e.to_string())
                .with_source(e)
        };
        let mut c = self.cmd.get().await.map_err(fail)?;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut c.con)
            .await
            .map_err(fail)?;
        Ok(protocol::named_holders(&self.cfg.channel, &list)
            .into_iter()
            .map(|(id, addr)| RedisHolder { id, addr })
            .collect())
    }

    fn with_endpoint(channel: String, endpoint: endpoint::Endpoint) -> Self {
        Self::from_config(Options {
            channel,
            endpoint: Arc::new(endpoint),
            wait: WaitOptions::default(),
            unavailable_timeout: DEFAULT_UNAVAILABLE_TIMEOUT,
            flags: LockFlags::EXCLUSIVE,
            fencing: false,
            fence_replicas: FenceReplicas::default(),
            self_check: None,
            on_lost: None,
            preconnect: true,
        })
    }

    fn from_config(cfg: Options) -> Self {
        let cmd = Arc::new(CommandSlot::new(
            cfg.endpoint.clone(),
            cfg.unavailable_timeout,
        ));
        let local = LocalQueue::of(cfg.endpoint.name(), &cfg.channel);
        Self {
            cfg: Arc::new(cfg),
            cmd,
            local,
            spare: Arc::default(),
        }
    }

    /// A new value (see the setter rule) with changed options: it gets
    /// its own command connection; the client carries over.
    fn map(self, f: impl FnOnce(&mut Options)) -> Self {
        let mut cfg = (*self.cfg).clone();
        f(&mut cfg);
        Self::from_config(cfg)
    }

    wait_setters!("the lock", "false");

    /// How long a holder may take to answer a ping before it counts as
    /// dead and is reaped; also the budget of each probe and of the
    /// subscribe confirmation (default 1 s).
    pub fn unavailable_timeout(self, t: Duration) -> Self {
        self.map(|c| c.unavailable_timeout = t)
    }

    /// [`LockFlags::EXCLUSIVE`] (default) or [`LockFlags::SHARED`];
    /// `NON_BLOCKING` is implied and may be included, as for
    /// [`Lock::flags`](crate::Lock::flags): whether `acquire` waits is
    /// decided by [`timeout`](Self::timeout) and
    /// [`fail_when_locked`](Self::fail_when_locked). Any other value makes
    /// `acquire` fail with `InvalidInput`.
    pub fn flags(self, flags: LockFlags) -> Self {
        self.map(|c| c.flags = flags)
    }

    /// Draw a fencing token with `INCR <channel>-fence` on every exclusive
    /// grant (default false). See [`RedisLockGuard::fence_token`].
    ///
    /// The channel is the same for every database of a server, a key is
    /// not: tokens of this crate are drawn from database 0's
    /// `<channel>-fence` (the plain `INCR` of Python portalocker on
    /// database 0), and a client on another database also raises the token
    /// above that database's own counter and sets both to it (one script;
    /// without script permission there, fencing is refused with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)). So tokens
    /// of this crate never repeat across databases, and a Python peer's
    /// token is above every token drawn on its database; Python peers on
    /// different non-zero databases can still repeat each other's tokens.
    pub fn fencing(self, yes: bool) -> Self {
        self.map(|c| c.fencing = yes)
    }

    /// Keep a connection open ahead of the next attempt (default true).
    ///
    /// An attempt subscribes on a connection of its own. With this on, the
    /// lock opens the next one in the background, so the next attempt
    /// starts by naming and subscribing instead of connecting first: one
    /// round trip less, and three over TLS. It is opened when an attempt
    /// of a value that acquired before takes one (the next acquisition),
    /// after an attempt that lost, and when an acquisition starts by
    /// waiting (a waiter's move when the lock is released). A value's
    /// first attempt opens none, so a lock made for one acquisition costs
    /// no extra connection. The cost otherwise is one idle connection per
    /// lock value (and its clones) beside the ones it uses; a spare older
    /// than a minute, or one the server closed, is closed unused and the
    /// attempt connects itself. Turn it off where the server's
    /// `maxclients` is tight.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalocker::RedisLock;
    /// let client = portalocker::redis::Client::open("redis://127.0.0.1/").unwrap();
    /// let once = RedisLock::new("nightly-report", client).preconnect(false);
    /// # let _ = once;
    /// ```
    pub fn preconnect(self, yes: bool) -> Self {
        self.map(|c| c.preconnect = yes)
    }

    /// With [`fencing`](Self::fencing): how many replicas must acknowledge
    /// the token's draw before the grant returns (default
    /// [`FenceReplicas::Connected`]: all the primary lists).
    ///
    /// So a failover to a replica never hands out a token again. The cost,
    /// on a primary with replicas: one more round trip per exclusive grant
    /// (`ROLE` goes with the `INCR`), plus the time the replicas take to
    /// acknowledge it. `WAIT` is sent in slices of at most 100 ms, so the
    /// connection this lock shares with its holders' replies is never held
    /// up longer. If the replicas have not acknowledged the draw by the
    /// acquisition's deadline (at the earliest `unavailable_timeout` after
    /// the draw, so that a zero timeout still gives them that long), the
    /// lock is let go and `acquire` fails with
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis), saying how many did;
    /// [`FenceReplicas::AtLeast(0)`](FenceReplicas::AtLeast) turns the wait
    /// off. A user that may not run `ROLE` waits for nobody under
    /// `Connected` (and is warned once).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// use portalocker::{FenceReplicas, RedisLock};
    /// let client = portalocker::redis::Client::open("redis://127.0.0.1/").unwrap();
    /// // Grant only once at least one replica has the token.
    /// let lock = RedisLock::new("nightly", client)
    ///     .fencing(true)
    ///     .fence_replicas(FenceReplicas::AtLeast(1));
    /// let guard = lock.acquire().await?;
    /// println!("token {:?}", guard.fence_token());
    /// # Ok(()) }
    /// ```
    pub fn fence_replicas(self, replicas: FenceReplicas) -> Self {
        self.map(|c| c.fence_replicas = replicas)
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
    /// lost; it receives the [`ErrorKind::LockLost`](crate::ErrorKind::LockLost) error. Keep it short
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
    /// conclusive probe, or when another task of this process has the turn
    /// and the call may not wait); [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an empty channel,
    /// one longer than [`MAX_CHANNEL_LEN`] or with spaces or control
    /// characters, invalid flags, or an address this build cannot serve
    /// (`rediss://` without the `redis-tls` feature), all before anything
    /// connects; [`ErrorKind::Redis`](crate::ErrorKind::Redis) when the server cannot be reached, and
    /// at once, naming the cause, when it refuses in a way no retry fixes:
    /// its `maxclients` limit, a permission the user lacks (e.g.
    /// `CLIENT LIST`/`CLIENT KILL`, needed to reap a silent holder) or
    /// `BUSY`; [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for a
    /// replica, a Sentinel or a Cluster node. The answers of a failover or
    /// restart (`READONLY`, `MASTERDOWN`, `LOADING`) cost an attempt, not the
    /// acquisition: it goes on until its deadline. Nothing is left on the
    /// channel after an error.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, or on one without the I/O and
    /// time drivers (`enable_io` and `enable_time`, or `enable_all`): every
    /// Redis round trip is bounded by a timer.
    pub async fn acquire(&self) -> Result<RedisLockGuard> {
        self.acquire_with(self.cfg.wait).await
    }

    acquire_variants!(RedisLockGuard);
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cfg;
        f.debug_struct("RedisLock")
            .field("channel", &c.channel)
            .field("timeout", &c.wait.timeout)
            .field("check_interval", &c.wait.check_interval)
            .field("fail_when_locked", &c.wait.fail_when_locked)
            .field("unavailable_timeout", &c.unavailable_timeout)
            .field("flags", &c.flags)
            .field("fencing", &c.fencing)
            .field("self_check_interval", &c.self_check)
            .field("on_lost", &c.on_lost.is_some())
            .finish_non_exhaustive()
    }
}
