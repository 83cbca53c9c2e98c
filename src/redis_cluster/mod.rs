//! [`RedisClusterLock`]: a lock kept by a Redis Cluster (feature
//! `redis-cluster`); the protocol and what it assumes are on the type.

mod guard;
mod script;

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::time::Instant;

pub use guard::RedisClusterLockGuard;

use crate::deadline::{deadline_after, jittered};
use crate::error::{Error, ErrorKind, Result};
use crate::loss::{LeaseKind, LeaseState, LossCallback};
use crate::options::{acquire_variants, wait_setters, WaitOptions};

const OP: &str = "failed to acquire Redis Cluster lock";

/// The default lease TTL of [`RedisClusterLock`]: 10 s.
pub const DEFAULT_CLUSTER_LEASE_TTL: Duration = Duration::from_secs(10);

/// The shortest and the longest lease.
const MIN_TTL: Duration = Duration::from_millis(300);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest one request may take before it counts as unanswered (and
/// is retried while time is left).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A lock kept by a Redis Cluster: a lease record in the slot of the
/// lock's name, replicated before it is trusted (protocol and
/// assumptions below).
///
/// Built from a [`ClusterClient`] (redis-rs's cluster client, seeded with
/// one or more nodes); it follows `MOVED` and `ASK` redirections, slot
/// migrations and failovers. Same timeout, `check_interval`,
/// `fail_when_locked`, `try_acquire` and `acquire_timeout` as every lock
/// of this crate; the guard speaks the loss vocabulary of
/// [`RedisLockGuard`](crate::RedisLockGuard).
///
/// Only exclusive holds; Python portalocker has no cluster protocol, so a
/// Python process cannot contend for these locks (its `RedisLock` on the
/// same name is another lock).
///
/// # Why not the subscription protocol of `RedisLock`
///
/// The Python-compatible [`RedisLock`](crate::RedisLock) owns a lock by
/// being the only subscriber of its channel. On a cluster that cannot be
/// made sound, whatever the counting: measured on Redis 7.0 (the tests
/// start such a cluster), a shard channel's subscribers are counted per
/// node, a replica accepts `SSUBSCRIBE` and counts its own, a replica's
/// subscribers are carried over when it is promoted, the importing node of
/// a migrating slot accepts `ASKING` + `SSUBSCRIBE` beside the exporting
/// one, and the old owner of a slot (failover or migration) tells its
/// subscribers with a `sunsubscribe` push that arrives after the new owner
/// already counts without them. A holder would learn of its loss only
/// after a newcomer could be granted.
///
/// # The protocol
///
/// * **Keys.** One hash tag, the lock's name, so every key lives in one
///   slot and moves with it: `portalocker:{<name>}:owner` (the holder's
///   record: holder id, fencing token, host, pid; a lease: `PX` TTL) and
///   `portalocker:{<name>}:fence` (the token counter). Scripts read and
///   write both atomically; during a slot migration Redis answers
///   `TRYAGAIN`/`ASK` for them, which this lock follows.
/// * **Grant.** One script: if there is no record, `INCR` the counter and
///   `SET` the record with the lease TTL. Then `WAIT` until every replica
///   the slot's primary lists (`ROLE`) has both, before the grant is
///   handed out: a failover promotes a replica that has the record and the
///   token, so neither is lost nor repeated. A grant that vanishes while
///   its replication is awaited (a failover promoted a replica that had
///   not received it yet) is asked for again, under a new holder id, while
///   the timeout allows. `ROLE` lists the replicas connected *now*: a
///   primary that has lost all its replicas confirms at once, so set
///   `min-replicas-to-write` on the servers if that must refuse instead.
/// * **Liveness.** A task owned by the guard renews the record every third
///   of the TTL (a script that extends it only if it is still this
///   holder's) and waits for the replicas again. The holder counts itself
///   lost once the last *confirmed* renewal's send time plus the TTL has
///   passed on its monotonic clock (minus a margin for the nodes' clocks),
///   or at once when the record is gone or someone else's. A holder cut
///   off with a minority of the cluster cannot renew (its replicas do not
///   confirm), so it counts itself lost before its record can expire on a
///   new primary.
/// * **Release** deletes the record if it is still this holder's. A
///   holder that dies keeps the lock until its record expires (the TTL):
///   unlike `RedisLock`, a crash does not free the lock at once.
/// * **Waiting** polls every `check_interval` (jittered), or sooner when
///   the record's remaining TTL says it expires first. There is no queue:
///   contenders are served in no particular order.
///
/// What this assumes: the nodes' wall clocks agree to within the margin
/// (Redis propagates expiries as absolute times), and a replica promoted
/// by a failover is one that was connected to the primary (Redis refuses
/// to promote a replica that was cut off for long; see
/// `cluster-replica-validity-factor`). RELIABILITY.md says more.
///
/// # Permissions
///
/// Under an ACL, the user needs, on every node (ACLs are not shared by a
/// cluster): the keys `~portalocker:*` and the commands `EVAL`, `GET`,
/// `PTTL`, `INCR`, `SET`, `PEXPIRE`, `DEL` (run by the scripts), `ROLE`,
/// `WAIT` and `CLUSTER|SLOTS` (the slot map):
///
/// ```text
/// ACL SETUSER locker on >secret ~portalocker:* -@all +eval +get +pttl +incr +set +pexpire +del +role +wait +cluster|slots
/// ```
///
/// A refused command is an error at once that says so, not a wait.
///
/// # Examples
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn f() -> portalocker::Result<()> {
/// use std::time::Duration;
/// use portalocker::redis::cluster::ClusterClient;
/// use portalocker::RedisClusterLock;
///
/// let client = ClusterClient::new(vec!["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .map_err(|e| portalocker::Error::from(std::io::Error::other(e)))?;
/// let lock = RedisClusterLock::new("nightly-report", client).timeout(Duration::from_secs(30));
/// let guard = lock.acquire().await?;
/// println!("fencing token {}", guard.fence_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisClusterLock {
    cfg: Arc<Options>,
    client: ClusterClient,
    conn: Arc<tokio::sync::Mutex<Option<ClusterConnection>>>,
    /// How many replicas the slot's primary listed the last time.
    replicas: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
struct Options {
    name: String,
    wait: WaitOptions,
    ttl: Duration,
    on_lost: Option<LossCallback>,
}

crate::options::impl_waiting!(RedisClusterLock, cfg);

impl RedisClusterLock {
    /// The lock `name` on the cluster `client` talks to: timeout 5 s, check
    /// interval 250 ms, lease TTL 10 s. No I/O here.
    ///
    /// `name` must be 1 to 1,024 bytes without spaces, control characters,
    /// `{` or `}` (it is the keys' hash tag).
    pub fn new(name: impl Into<String>, client: ClusterClient) -> Self {
        Self {
            cfg: Arc::new(Options {
                name: name.into(),
                wait: WaitOptions::default(),
                ttl: DEFAULT_CLUSTER_LEASE_TTL,
                on_lost: None,
            }),
            client,
            conn: Arc::default(),
            replicas: Arc::default(),
        }
    }

    /// A new value with changed options and no shared connection.
    fn map(self, f: impl FnOnce(&mut Options)) -> Self {
        let mut cfg = (*self.cfg).clone();
        f(&mut cfg);
        Self {
            cfg: Arc::new(cfg),
            client: self.client,
            conn: Arc::default(),
            replicas: Arc::default(),
        }
    }

    wait_setters!("the lock", "false");

    /// The TTL of a holder's record (default 10 s; 300 ms to 24 h). A
    /// holder that dies, or is cut off with a minority of the cluster,
    /// keeps the lock for up to this long; a live holder renews every
    /// third of it, and counts itself lost once a confirmed renewal is
    /// overdue.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.map(|c| c.ttl = ttl)
    }

    crate::loss::on_lost_setter!(RedisClusterLockGuard);

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The key of the holder's record.
    fn owner_key(&self) -> String {
        format!("portalocker:{{{}}}:owner", self.cfg.name)
    }

    fn fence_key(&self) -> String {
        format!("portalocker:{{{}}}:fence", self.cfg.name)
    }

    fn validate(&self) -> Result<()> {
        let n = &self.cfg.name;
        let bad = |why: String| Err(Error::invalid(OP, why).with_lock_name(n.clone()));
        if n.is_empty() {
            return bad("the lock name is empty".into());
        }
        if n.len() > 1024 {
            return bad("the lock name is longer than 1024 bytes".into());
        }
        if let Some(c) = n
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '{' || *c == '}')
        {
            return bad(format!(
                "the lock name contains {c:?}: no spaces, control characters, '{{' or '}}' \
                 (the name is the keys' hash tag)"
            ));
        }
        let ttl = self.cfg.ttl;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return bad(format!(
                "lease_ttl {ttl:?}: a lease lasts from 300 ms to 24 h"
            ));
        }
        Ok(())
    }

    /// Acquires the lock, waiting up to the configured timeout.
    ///
    /// Each attempt is one script on the slot's primary; a grant then waits
    /// until the primary's replicas have the record and the token (bounded
    /// by the deadline). Busy attempts repeat every `check_interval`
    /// (jittered), or when the holder's record expires if sooner.
    /// Redirections, `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, broken
    /// connections and failovers cost an attempt, not the acquisition.
    /// Each request, connecting included, may take up to 2 s even when the
    /// timeout is shorter (a `try_acquire` meets the lock, not a half-made
    /// connection).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. A record written by an attempt whose
    /// future is dropped before the grant is handed out is deleted by a
    /// task of its own (or expires after its TTL without a runtime).
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) when the lock is
    /// still held at the deadline (naming the holder's id and host);
    /// [`ErrorKind::InvalidInput`] for a bad name or TTL;
    /// [`ErrorKind::Redis`] when the cluster could not be reached or
    /// answered with an error no retry fixes (a permission, no scripts),
    /// or when the replicas did not confirm a grant before the deadline
    /// (the record is then deleted).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime with the I/O and time drivers.
    pub async fn acquire(&self) -> Result<RedisClusterLockGuard> {
        self.acquire_with(self.cfg.wait).await
    }

    acquire_variants!(RedisClusterLockGuard);

    crate::trace::traced_acquire_with! {
        fn(self, w) -> RedisClusterLockGuard = acquire_untraced,
        span: [redis_cluster_lock = %self.cfg.name,],
        granted: |g| [fence_token = g.fence_token(),],
    }

    async fn acquire_untraced(&self, w: WaitOptions) -> Result<RedisClusterLockGuard> {
        self.validate()?;
        let start = Instant::now();
        let deadline = deadline_after(start, w.timeout);
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        // A holder id and its record ("<id> <host> <pid>"); a grant lost
        // before it was confirmed is asked for again under a new one.
        let fresh = || {
            let id = crate::util::unguessable_hex32();
            let record = format!("{id} {host} {}", std::process::id());
            (id, record)
        };
        let (mut holder_id, mut record) = fresh();
        let ttl_ms = u64::try_from(self.cfg.ttl.as_millis()).unwrap_or(u64::MAX);
        // What the last attempt met: the holder, or an error.
        let mut last_error: Option<String>;
        let mut holder: Option<script::Holder> = None;
        loop {
            let sent = Instant::now();
            let outcome = match self.connection().await {
                Ok(mut conn) => {
                    let keys = [self.owner_key(), self.fence_key()];
                    script::acquire(&mut conn, &keys, &holder_id, &record, ttl_ms).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(script::Acquired::Granted(token)) => {
                    // Armed: a dropped future deletes the record.
                    let pending = guard::Pending::new(self.clone(), holder_id.clone());
                    match self
                        .confirm(pending, token, sent, deadline, start, &holder_id, &host)
                        .await?
                    {
                        Some(g) => return Ok(g),
                        None => {
                            // The grant vanished before its replicas had it:
                            // a failover promoted a replica that never saw
                            // it, or someone deleted it. Nobody holds it on
                            // our behalf, so ask again while time is left,
                            // under a new holder id: the withdrawn grant's
                            // clean-up deletes by the old one and must not
                            // meet the new record.
                            (holder_id, record) = fresh();
                            holder = None;
                            last_error = Some(
                                "a grant was gone before the replicas confirmed it (a failover \
                                 lost it, or it was deleted)"
                                    .into(),
                            );
                        }
                    }
                }
                Ok(script::Acquired::Busy(h)) => {
                    if w.fail_when_locked {
                        return Err(self.busy(Some(&h), None));
                    }
                    holder = Some(h);
                    last_error = None;
                }
                Err(e) if script::transient(&e) => {
                    last_error = Some(e.to_string());
                }
                Err(e) => return Err(self.redis_error("lock", &e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match (last_error, &holder) {
                    (None, h) => self.busy(h.as_ref(), Some(w.timeout)),
                    (Some(e), h) => {
                        let seen = h.as_ref().map_or(String::new(), |h| {
                            format!("; earlier attempts found it held by {h}")
                        });
                        Error::new(ErrorKind::Redis, OP)
                            .with_lock_name(self.cfg.name.clone())
                            .with_reason(format!(
                                "the last attempt before the deadline failed ({e}){seen}"
                            ))
                    }
                });
            }
            let mut pause = jittered(w.check_interval.max(Duration::from_millis(1)));
            if let Some(t) = holder.as_ref().and_then(|h| h.expires_in) {
                // The record expires first: look again then.
                pause = pause.min(t + Duration::from_millis(1));
            }
            let wake = now.checked_add(pause).unwrap_or(deadline).min(deadline);
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Waits until the replicas have the record, then builds the guard;
    /// `None` when the record was gone meanwhile (the caller asks again).
    #[allow(clippy::too_many_arguments)]
    async fn confirm(
        &self,
        pending: guard::Pending,
        token: u64,
        sent: Instant,
        deadline: Instant,
        start: Instant,
        holder_id: &str,
        host: &str,
    ) -> Result<Option<RedisClusterLockGuard>> {
        // At least `REQUEST_TIMEOUT` even with a short timeout: the grant
        // is made, only its replication is awaited.
        let bound = deadline.max(Instant::now() + REQUEST_TIMEOUT);
        let ttl_ms = u64::try_from(self.cfg.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut last;
        loop {
            let wait = bound
                .saturating_duration_since(Instant::now())
                .min(REQUEST_TIMEOUT)
                .max(Duration::from_millis(1));
            let outcome = match self.connection().await {
                Ok(mut conn) => {
                    let key = self.owner_key();
                    script::renew(&mut conn, &key, holder_id, ttl_ms, wait, &self.replicas).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(script::Renewed::Confirmed) => break,
                Ok(script::Renewed::Unconfirmed) => {
                    last = "not every replica confirmed the grant".into();
                }
                Ok(script::Renewed::Gone) => {
                    // Lost in a failover, expired while its replication
                    // was awaited, or deleted by someone else.
                    return Ok(None);
                }
                Err(e) if script::transient(&e) => {
                    last = e.to_string();
                }
                Err(e) => return Err(self.redis_error("wait for the replicas", &e)),
            }
            if Instant::now() >= bound {
                // `pending` deletes the record when dropped.
                return Err(Error::new(ErrorKind::Redis, OP)
                    .with_lock_name(self.cfg.name.clone())
                    .with_reason(format!(
                        "the grant was not confirmed by the slot's replicas before the deadline \
                         ({last}); it was withdrawn"
                    )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = Arc::new(LeaseState::new(
            LeaseKind::RedisCluster,
            self.cfg.name.clone(),
            holder_id.to_string(),
            guard::local_expiry(sent, self.cfg.ttl),
            self.cfg.on_lost.clone(),
        ));
        Ok(Some(guard::RedisClusterLockGuard::start(
            pending,
            token,
            host.to_string(),
            state,
            start.elapsed(),
        )))
    }

    /// The shared cluster connection, opened on first use (within
    /// [`REQUEST_TIMEOUT`]).
    /// It is kept for good: redis-rs's cluster connection reconnects to
    /// nodes and refreshes its slot map by itself (a new one would need a
    /// live seed, and the seeds may be the nodes that died).
    async fn connection(&self) -> std::result::Result<ClusterConnection, redis::RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Connecting (the slot map, a connection to each node) gets a whole
        // request's time even when the deadline is nearer: a `try_acquire`
        // must meet the lock, not a half-made connection.
        let c = tokio::time::timeout(REQUEST_TIMEOUT, self.client.get_async_connection())
            .await
            .map_err(|_| script::timeout("connecting to the cluster"))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn busy(&self, holder: Option<&script::Holder>, waited: Option<Duration>) -> Error {
        let mut why = match holder {
            Some(h) => format!("already locked by {h}"),
            None => "already locked".to_string(),
        };
        if let Some(t) = waited {
            why.push_str(&format!(" (waited {})", crate::util::Rounded(t)));
        }
        Error::already_locked(OP, None)
            .with_lock_name(self.cfg.name.clone())
            .with_reason(why)
            .with_holder_id(holder.map(|h| h.holder_id.clone()))
    }

    fn redis_error(&self, what: &str, e: &redis::RedisError) -> Error {
        Error::new(ErrorKind::Redis, OP)
            .with_lock_name(self.cfg.name.clone())
            .with_reason(format!("could not {what}: {e}{}", script::acl_hint(e)))
    }
}

impl std::fmt::Debug for RedisClusterLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterLock")
            .field("name", &self.cfg.name)
            .field("wait", &self.cfg.wait)
            .field("lease_ttl", &self.cfg.ttl)
            .finish_non_exhaustive()
    }
}
