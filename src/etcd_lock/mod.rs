//! [`EtcdLock`]: a lock kept by an etcd cluster, so that it survives the
//! loss of any minority of its members.
//!
//! * **Keys.** An acquisition grants itself a lease and puts one key under
//!   the lease: `<name>/<lease id in hex>` for a writer — the layout of
//!   etcd's own `concurrency.Mutex` (and so of `etcdctl lock <name>`),
//!   which therefore excludes and is excluded by this lock — and
//!   `<name>/read/<lease id in hex>` for a reader. The value records who
//!   holds it (holder id, host, pid, mode) as JSON.
//! * **Order.** Keys are served in the order etcd created them (their
//!   create revision): a writer holds the lock once no key older than its
//!   own is left, a reader once no older writer key is left. Each waiter
//!   watches only the one key that blocks it, the one just before its own
//!   (no herd), and looks again when that key goes.
//! * **Fencing.** The create revision of the holder's key is its fencing
//!   token: etcd's revision only grows, and conflicting grants are served
//!   in revision order.
//! * **Liveness.** A task owned by the acquisition, then by the guard,
//!   renews the lease every third of its TTL (`lease.rs`). A holder whose
//!   lease was not renewed before it would have expired, measured on this
//!   host's monotonic clock from when each renewal was sent, is lost; so
//!   is one whose key was deleted by someone else.

mod attempt;
mod guard;
mod holders;
mod lease;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::time::Instant;

pub(crate) use attempt::transient;
pub use guard::EtcdLockGuard;
pub use holders::EtcdHolder;

use crate::deadline::deadline_after;
use crate::error::{Error, Result};
use crate::file::flags::{LockFlags, Operation};
use crate::loss::LossCallback;
use crate::options::{acquire_variants, wait_setters, WaitOptions};

const OP: &str = "failed to lock";

/// The lease TTL of [`EtcdLock::new`]: 10 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// What an acquisition may take to learn an answer even with a zero (or
/// spent) timeout: a single attempt still needs its round trips.
const REQUEST_FLOOR: Duration = Duration::from_secs(2);

/// The longest one request may take before it is tried again (the client
/// may then pick another member: one that restarts accepts connections
/// before it serves).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many keys one range read returns.
const PAGE: i64 = 64;

/// A lock kept by etcd (feature `etcd`).
///
/// Waiting is first come, first served by the order in which etcd
/// created the contenders' keys, and driven by watches: a waiter is told
/// when the key before it goes, so `check_interval` is only the pause
/// between retries while the cluster cannot answer (a leader election, a
/// lost quorum, a member being restarted). Every acquisition and holder
/// keeps its own lease alive; [`lease_ttl`](Self::lease_ttl) bounds how
/// long a dead or partitioned holder keeps the lock (default
/// [`DEFAULT_LEASE_TTL`]).
///
/// Writers exclude `etcdctl lock <name>` and Go's `concurrency.Mutex` on
/// the same name, both ways (same key layout).
///
/// Clones share the client; every acquisition is an owner of its own.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use portalocker::{etcd_client, EtcdLock};
/// use std::time::Duration;
///
/// let client = etcd_client::Client::connect(["127.0.0.1:2379"], None).await?;
/// let lock = EtcdLock::new("jobs/nightly", client).timeout(Duration::from_secs(30));
/// let guard = lock.acquire().await?;
/// println!("fencing token {}", guard.fence_token());
/// guard
///     .run_while_held(async { /* the work, stopped if the lease is lost */ })
///     .await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdLock {
    cfg: Arc<Options>,
    client: Client,
}

#[derive(Clone)]
struct Options {
    name: String,
    wait: WaitOptions,
    lease_ttl: Duration,
    flags: LockFlags,
    on_lost: Option<LossCallback>,
}

crate::options::impl_waiting!(EtcdLock, cfg);

impl EtcdLock {
    /// A lock called `name` in the cluster `client` talks to: exclusive,
    /// timeout 5 s, retry pause 250 ms, lease TTL 10 s. No I/O here.
    ///
    /// The name is a key prefix: the lock's keys are `<name>/…`. Names
    /// that are prefixes of one another at a `/` (`jobs` and `jobs/a`)
    /// stay distinct locks, but the shorter one also waits for the longer
    /// one's holders (etcd's own `concurrency.Mutex` behaves the same).
    pub fn new(name: impl Into<String>, client: Client) -> Self {
        Self {
            cfg: Arc::new(Options {
                name: name.into(),
                wait: WaitOptions::default(),
                lease_ttl: DEFAULT_LEASE_TTL,
                flags: LockFlags::EXCLUSIVE,
                on_lost: None,
            }),
            client,
        }
    }

    fn map(self, f: impl FnOnce(&mut Options)) -> Self {
        let mut cfg = (*self.cfg).clone();
        f(&mut cfg);
        Self {
            cfg: Arc::new(cfg),
            client: self.client,
        }
    }

    wait_setters!("the lock", "false");

    /// The TTL of each acquisition's lease (default 10 s, whole seconds,
    /// rounded up; etcd may raise a very short one to its minimum). A
    /// holder that dies, or is cut off from the cluster, keeps the lock
    /// for up to this long; a live holder renews every third of it, and
    /// counts itself lost once a renewal is overdue.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn f(client: portalocker::etcd_client::Client) {
    /// use std::time::Duration;
    /// let lock = portalocker::EtcdLock::new("jobs", client).lease_ttl(Duration::from_secs(30));
    /// # drop(lock);
    /// # }
    /// ```
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.map(|c| c.lease_ttl = ttl)
    }

    /// `EXCLUSIVE` (a writer, the default) or `SHARED` (a reader: readers
    /// hold together while no writer that came before them waits or holds).
    /// `NON_BLOCKING` may be added; it means [`fail_when_locked`](Self::fail_when_locked).
    pub fn flags(self, flags: LockFlags) -> Self {
        self.map(|c| c.flags = flags)
    }

    crate::loss::on_lost_setter!(EtcdLockGuard);

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn shared(&self) -> bool {
        self.cfg.flags.contains(LockFlags::SHARED)
    }

    fn prefix(&self) -> String {
        format!("{}/", self.cfg.name)
    }

    fn key_for(&self, lease: i64) -> String {
        if self.shared() {
            format!("{}/read/{lease:x}", self.cfg.name)
        } else {
            format!("{}/{lease:x}", self.cfg.name)
        }
    }

    /// Whether `key` (a key under this lock's prefix) is a reader's.
    fn is_reader_key(&self, key: &[u8]) -> bool {
        key.strip_prefix(self.prefix().as_bytes())
            .is_some_and(|rest| rest.starts_with(b"read/"))
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid(OP, why).with_lock_name(self.cfg.name.clone()));
        if self.cfg.name.is_empty() {
            return bad("the lock name is empty".into());
        }
        if !matches!(self.cfg.flags.operation(), Ok(Operation::Lock { .. })) {
            return bad(format!(
                "{:?}: the flags must be exactly one of EXCLUSIVE or SHARED (NON_BLOCKING may be \
                 added)",
                self.cfg.flags
            ));
        }
        if self.cfg.lease_ttl.is_zero() || self.ttl_secs().is_none() {
            return bad(format!(
                "lease_ttl {:?}: etcd leases last from 1 s to 9,000,000,000 s",
                self.cfg.lease_ttl
            ));
        }
        Ok(())
    }

    /// The lease TTL in whole seconds, rounded up.
    fn ttl_secs(&self) -> Option<i64> {
        let t = self.cfg.lease_ttl;
        let secs = t.as_secs().checked_add(u64::from(t.subsec_nanos() > 0))?;
        i64::try_from(secs)
            .ok()
            .filter(|s| (1..=9_000_000_000).contains(s))
    }

    /// Acquires the lock: waits (up to `timeout`) until no conflicting
    /// contender that came first is left, then returns the guard, whose
    /// task keeps the lease alive.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future revokes the lease
    /// it was granted (on a task of its own), which deletes its key at
    /// once; if etcd cannot be reached then, the lease expires after its
    /// TTL. Nothing is granted to a dropped acquisition.
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) when the lock is
    /// still held at the deadline (or at once with `fail_when_locked`),
    /// naming the holder etcd lists first;
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an empty name, invalid flags or a
    /// lease TTL etcd cannot grant; [`ErrorKind::Etcd`](crate::ErrorKind::Etcd) when etcd refuses
    /// (permissions, authentication) or cannot answer (no quorum, no
    /// member reachable) until the deadline — each request may take up to
    /// 2 s even when the timeout is shorter. Nothing is left in etcd after
    /// an error: the acquisition's lease is revoked.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime with the time driver.
    pub async fn acquire(&self) -> Result<EtcdLockGuard> {
        self.acquire_with(self.cfg.wait).await
    }

    acquire_variants!(EtcdLockGuard);

    crate::trace::traced_acquire_with! {
        fn(self, w) -> EtcdLockGuard = acquire_untraced,
        span: [etcd_lock = %self.cfg.name, mode = ?self.cfg.flags,],
        granted: |g| [key = g.key(), fence_token = g.fence_token(),],
    }

    async fn acquire_untraced(&self, w: WaitOptions) -> Result<EtcdLockGuard> {
        self.validate()?;
        let start = Instant::now();
        let deadline = deadline_after(start, w.timeout);
        let fail_fast = w.fail_when_locked || self.cfg.flags.contains(LockFlags::NON_BLOCKING);
        loop {
            // `None`: the lease ran out while waiting (this process was
            // paused, or etcd was away for a whole TTL): start over.
            if let Some(g) = self.attempt(&w, fail_fast, start, deadline).await? {
                return Ok(g);
            }
            if Instant::now() >= deadline {
                return Err(self.etcd_error(
                    "keep a lease while waiting",
                    "the lease expired before the deadline (this process was paused, or etcd was \
                     unreachable, for longer than the lease TTL)",
                ));
            }
        }
    }
}

impl std::fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLock")
            .field("name", &self.cfg.name)
            .field("wait", &self.cfg.wait)
            .field("lease_ttl", &self.cfg.lease_ttl)
            .field("flags", &self.cfg.flags)
            .finish_non_exhaustive()
    }
}
