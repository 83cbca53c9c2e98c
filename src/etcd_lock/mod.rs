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

mod guard;
mod lease;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use tokio::time::Instant;

pub use guard::EtcdLockGuard;
use lease::{LeaseState, PendingLease};

use crate::deadline::deadline_after;
use crate::error::{Error, ErrorKind, Result};
use crate::file::flags::{LockFlags, Operation};
use crate::loss::LossCallback;
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};

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

/// A contender of an [`EtcdLock`] as etcd lists it
/// ([`EtcdLock::holders`]): the holders first, then the waiters, in the
/// order they will be served.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdHolder {
    /// The key (`<name>/<lease>` or `<name>/read/<lease>`).
    pub key: String,
    /// The key's create revision: the fencing token it holds or will hold.
    pub revision: u64,
    /// Whether it is a reader.
    pub shared: bool,
    /// The holder id it recorded (`None` for a key written by another
    /// program, e.g. `etcdctl lock`).
    pub holder_id: Option<String>,
    /// The host it recorded.
    pub host: Option<String>,
    /// The process id it recorded (on its host).
    pub pid: Option<u32>,
}

impl std::fmt::Display for EtcdHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.holder_id {
            Some(id) => write!(f, "holder {id}")?,
            None => write!(f, "key {}", self.key)?,
        }
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        write!(f, " (revision {})", self.revision)
    }
}

impl Waiting for EtcdLock {
    fn wait_options(&self) -> WaitOptions {
        self.cfg.wait
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        self.map(|c| c.wait = wait)
    }
}

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

    /// Runs `callback` once, on the guard's task, when a lock acquired
    /// through this value is lost (with the error
    /// [`ensure_held`](EtcdLockGuard::ensure_held) returns from then on).
    pub fn on_lost(self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        let cb: LossCallback = Arc::new(callback);
        self.map(|c| c.on_lost = Some(cb))
    }

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
    /// [`ErrorKind::InvalidInput`] for an empty name, invalid flags or a
    /// lease TTL etcd cannot grant; [`ErrorKind::Etcd`] when etcd refuses
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

    async fn acquire_with(&self, w: WaitOptions) -> Result<EtcdLockGuard> {
        #[cfg(feature = "tracing")]
        {
            let span = tracing::debug_span!(
                "acquire",
                etcd_lock = %self.cfg.name,
                mode = ?self.cfg.flags,
                timeout = ?w.timeout,
                fail_when_locked = w.fail_when_locked,
            );
            let traced = async {
                let r = self.acquire_untraced(w).await;
                match &r {
                    Ok(g) => tracing::debug!(
                        holder_id = g.holder_id(),
                        key = g.key(),
                        fence_token = g.fence_token(),
                        waited = ?g.waited(),
                        "granted"
                    ),
                    Err(e) => tracing::debug!(error = %e, "not acquired"),
                }
                r
            };
            tracing::Instrument::instrument(traced, span).await
        }
        #[cfg(not(feature = "tracing"))]
        self.acquire_untraced(w).await
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

    /// The bound for one request: the deadline, but at least
    /// [`REQUEST_FLOOR`] after the acquisition began.
    fn request_bound(start: Instant, deadline: Instant) -> Instant {
        deadline.max(start + REQUEST_FLOOR)
    }

    async fn attempt(
        &self,
        w: &WaitOptions,
        fail_fast: bool,
        start: Instant,
        deadline: Instant,
    ) -> Result<Option<EtcdLockGuard>> {
        let bound = Self::request_bound(start, deadline);
        let ttl = self.ttl_secs().unwrap_or(10);
        let sent = Instant::now();
        let grant = self
            .retry(
                bound,
                w.check_interval,
                "grant a lease",
                |mut c| async move { c.lease_grant(ttl, None).await },
            )
            .await?;
        let lease_id = grant.id();
        let granted = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0).max(1));
        let holder_id = crate::util::unguessable_hex32();
        let state = Arc::new(LeaseState::new(
            crate::loss::LeaseKind::Etcd,
            self.cfg.name.clone(),
            holder_id.clone(),
            sent.checked_add(granted)
                .unwrap_or(sent + DEFAULT_LEASE_TTL),
            self.cfg.on_lost.clone(),
        ));
        let pending = PendingLease::start(self.client.clone(), lease_id, granted, state.clone());
        let key = self.key_for(lease_id);
        let value = serde_json::json!({
            "holder_id": holder_id,
            "host": gethostname::gethostname().to_string_lossy(),
            "pid": std::process::id(),
            "mode": if self.shared() { "shared" } else { "exclusive" },
        })
        .to_string();
        let page = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(PAGE);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::get(self.prefix(), Some(page.clone())),
            ])
            .or_else([
                TxnOp::get(key.clone(), None),
                TxnOp::get(self.prefix(), Some(page)),
            ]);
        let put = self
            .retry(bound, w.check_interval, "create the lock's key", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let put = match put {
            Ok(r) => r,
            // The lease ran out before the key was written (a pause).
            Err(e) if state.is_lost() && Instant::now() < deadline => {
                drop(e);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let ops = put.op_responses();
        let (my_rev, first) = if put.succeeded() {
            let rev = put
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            let first = match ops.get(1) {
                Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
                _ => Vec::new(),
            };
            (rev, first)
        } else {
            // A retried transaction whose first try was applied.
            let rev = match ops.first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map(KeyValue::create_revision),
                _ => None,
            };
            let Some(rev) = rev else {
                return Ok(None);
            };
            let first = match ops.get(1) {
                Some(TxnOpResponse::Get(g)) => g.kvs().to_vec(),
                _ => Vec::new(),
            };
            (rev, first)
        };
        if my_rev <= 0 {
            return Err(self.etcd_error("create the lock's key", "etcd sent no revision"));
        }
        // Most acquisitions are decided by the first page.
        let seen_mine = first.iter().any(|kv| kv.create_revision() == my_rev);
        let blocked = first
            .iter()
            .filter(|kv| kv.create_revision() < my_rev)
            .any(|kv| !self.shared() || !self.is_reader_key(kv.key()));
        let free = !blocked && (seen_mine || first.len() < PAGE as usize);
        if !free {
            loop {
                let (blocker, at) = self
                    .last_blocker(my_rev, bound.max(deadline), w.check_interval)
                    .await?;
                let Some(b) = blocker else { break };
                if fail_fast || Instant::now() >= deadline {
                    return Err(self.busy().await);
                }
                if !self
                    .wait_gone(&b, at, deadline, w.check_interval, &state)
                    .await
                {
                    if state.is_lost() {
                        return Ok(None);
                    }
                    if Instant::now() >= deadline {
                        return Err(self.busy().await);
                    }
                }
            }
        }
        if state.is_lost() {
            return Ok(None);
        }
        let fence = u64::try_from(my_rev).unwrap_or(0);
        let tasks = pending.into_held(key.clone().into_bytes(), my_rev);
        let mut g = EtcdLockGuard::new(
            self.cfg.name.clone(),
            key,
            fence,
            lease_id,
            state,
            tasks,
            self.client.clone(),
            self.shared(),
        );
        g.set_waited(start.elapsed());
        Ok(Some(g))
    }

    /// The newest key older than `my_rev` that blocks this contender (any
    /// key for a writer, a writer's key for a reader), and the revision
    /// the answer was read at.
    async fn last_blocker(
        &self,
        my_rev: i64,
        bound: Instant,
        pause: Duration,
    ) -> Result<(Option<Vec<u8>>, i64)> {
        let mut below = my_rev - 1;
        let mut at = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(below)
                .with_limit(PAGE);
            if at != 0 {
                // Later pages are read at the first one's revision, so that
                // the whole scan is one consistent view.
                opts = opts.with_revision(at);
            }
            let prefix = self.prefix();
            let r = self
                .retry(bound, pause, "read the lock's queue", |mut c| {
                    let (prefix, opts) = (prefix.clone(), opts.clone());
                    async move { c.get(prefix, Some(opts)).await }
                })
                .await?;
            if at == 0 {
                at = r.header().map_or(0, etcd_client::ResponseHeader::revision);
            }
            let kvs = r.kvs();
            for kv in kvs {
                if !self.shared() || !self.is_reader_key(kv.key()) {
                    return Ok((Some(kv.key().to_vec()), at));
                }
            }
            match kvs.last() {
                Some(last) if kvs.len() == PAGE as usize => {
                    below = last.create_revision() - 1;
                    if below <= 0 {
                        return Ok((None, at));
                    }
                }
                _ => return Ok((None, at)),
            }
        }
    }

    /// Waits until `key` is deleted (watching from revision `at + 1`), the
    /// lease is lost, or the deadline: `true` when the key went. A watch
    /// that ends or is cancelled (compaction) also returns `true`, so the
    /// caller looks again.
    async fn wait_gone(
        &self,
        key: &[u8],
        at: i64,
        deadline: Instant,
        pause: Duration,
        state: &LeaseState,
    ) -> bool {
        let watch = async {
            let opts = WatchOptions::new()
                .with_start_revision(at + 1)
                .with_filters([WatchFilterType::NoPut]);
            let mut c = self.client.clone();
            let Ok(mut stream) = c.watch(key.to_vec(), Some(opts)).await else {
                // The cluster is unreachable: pause, then look again.
                tokio::time::sleep(pause).await;
                return;
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled()
                            || resp
                                .events()
                                .iter()
                                .any(|e| e.event_type() == EventType::Delete)
                        {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(pause).await;
                        return;
                    }
                }
            }
        };
        // A safety net against a watch stream that died without a word.
        let net = self.cfg.lease_ttl.max(Duration::from_secs(1));
        tokio::select! {
            () = watch => true,
            () = tokio::time::sleep(net) => true,
            () = state.lost() => false,
            () = tokio::time::sleep_until(deadline) => false,
        }
    }

    /// The error for a busy lock, naming its first holder when etcd says.
    async fn busy(&self) -> Error {
        let holder = tokio::time::timeout(Duration::from_secs(1), self.first_holder())
            .await
            .ok()
            .flatten();
        let e = Error::new(ErrorKind::AlreadyLocked, OP).with_lock_name(self.cfg.name.clone());
        match holder {
            Some(h) => e
                .with_reason(format!("already locked by {h}"))
                .with_holder_id(h.holder_id),
            None => e.with_reason("already locked"),
        }
    }

    async fn first_holder(&self) -> Option<EtcdHolder> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let r = self
            .client
            .clone()
            .get(self.prefix(), Some(opts))
            .await
            .ok()?;
        r.kvs().first().map(|kv| self.describe(kv))
    }

    fn describe(&self, kv: &KeyValue) -> EtcdHolder {
        let record: Option<serde_json::Value> = serde_json::from_slice(kv.value()).ok();
        let field = |k: &str| {
            record
                .as_ref()
                .and_then(|r| r.get(k))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        EtcdHolder {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            revision: u64::try_from(kv.create_revision()).unwrap_or(0),
            shared: self.is_reader_key(kv.key()),
            holder_id: field("holder_id"),
            host: field("host"),
            pid: record
                .as_ref()
                .and_then(|r| r.get("pid"))
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
        }
    }

    /// The lock's contenders in the order they are served: the holders
    /// first (the first key, and for readers every reader before the first
    /// writer), then the waiters.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Etcd`] when etcd cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn f(client: portalocker::etcd_client::Client) -> portalocker::Result<()> {
    /// for h in portalocker::EtcdLock::new("jobs", client).holders().await? {
    ///     println!("{h}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holders(&self) -> Result<Vec<EtcdHolder>> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let r = self
            .client
            .clone()
            .get(self.prefix(), Some(opts))
            .await
            .map_err(|e| self.etcd_error("list the lock's keys", &e.to_string()))?;
        Ok(r.kvs().iter().map(|kv| self.describe(kv)).collect())
    }

    fn etcd_error(&self, what: &str, why: &str) -> Error {
        Error::new(ErrorKind::Etcd, OP)
            .with_lock_name(self.cfg.name.clone())
            .with_reason(format!("could not {what}: {why}"))
    }

    /// Runs `f` until it succeeds, fails for good, or `bound` passes;
    /// answers that a failover or a lost quorum gives are retried after
    /// `pause` (jittered).
    async fn retry<T, F, Fut>(
        &self,
        bound: Instant,
        pause: Duration,
        what: &str,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last: Option<String>;
        loop {
            let attempt = bound.min(Instant::now() + ATTEMPT_TIMEOUT);
            match tokio::time::timeout_at(attempt, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !transient(&e) => {
                    return Err(self.etcd_error(what, &e.to_string()));
                }
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("no answer within 1 s".into()),
            }
            let now = Instant::now();
            if now >= bound {
                let why = match last {
                    Some(e) => format!("etcd did not answer before the deadline (last error: {e})"),
                    None => "etcd did not answer before the deadline".to_string(),
                };
                return Err(self.etcd_error(what, &why));
            }
            let nap = crate::deadline::jittered(pause.max(Duration::from_millis(1)));
            tokio::time::sleep_until(now.checked_add(nap).unwrap_or(bound).min(bound)).await;
        }
    }
}

/// Whether an etcd error is one a later try may not get: a failover, a
/// lost quorum, a member restarting, a connection that broke.
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    use tonic_code::*;
    match e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code() as i32,
            INVALID_ARGUMENT
                | NOT_FOUND
                | PERMISSION_DENIED
                | UNAUTHENTICATED
                | UNIMPLEMENTED
                | OUT_OF_RANGE
        ),
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::Utf8Error(_)
        | etcd_client::Error::InvalidMetadataValue(_)
        | etcd_client::Error::EndpointsNotManaged => false,
        _ => true,
    }
}

/// The gRPC status codes this module tells apart (`tonic::Code` as
/// numbers, so that `tonic` need not be a direct dependency).
mod tonic_code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const OUT_OF_RANGE: i32 = 11;
    pub(super) const UNIMPLEMENTED: i32 = 12;
    pub(super) const UNAUTHENTICATED: i32 = 16;
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
