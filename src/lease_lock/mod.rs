//! [`LeaseLock`]: a lock kept in a directory on a shared filesystem (NFS,
//! SMB, FUSE, an HPC scratch filesystem), where `flock(2)` does not
//! exclude across hosts. It needs nothing from the filesystem but an
//! atomic `link(2)` (or `O_CREAT|O_EXCL`), an atomic `rename(2)`, and
//! reads that see the last write once a file is opened again (NFS's
//! close-to-open consistency).
//!
//! How it works is on [`LeaseLock`] itself (users need to know it).

mod dir;
mod guard;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use guard::LeaseLockGuard;

use self::dir::{Claim, DirError, LeaseDir, Newest, CLAIM_WINDOW};
use self::record::{Record, State, MAX_TTL, MIN_TTL};
use crate::deadline::{deadline_after, jittered, MIN_PAUSE};
use crate::error::{Error, ErrorKind, Result};
use crate::loss::{LeaseKind, LeaseState, LossCallback};
use crate::options::{acquire_variants, wait_setters, WaitOptions};

const OP: &str = "failed to lock";

/// How long a claim must stand still before a contender takes over:
/// `ttl × 5/4`.
fn stale_after(ttl: Duration) -> Duration {
    ttl + ttl / 4
}

/// A lock kept by lease files in a directory, for filesystems shared
/// between hosts (NFS, SMB, FUSE, cluster scratch), where `flock(2)` —
/// and so [`Lock`](crate::Lock) — may not exclude across hosts.
///
/// The path names a directory the lock keeps its claims in (created if
/// missing). Every acquisition writes a claim naming its holder (holder
/// id, host, pid); a task owned by the guard renews it every `ttl / 3`.
/// A holder that dies, hangs or is cut off keeps the lock for at most
/// about `ttl × 5/4` after its last renewal; then exactly one waiter takes
/// it over, with a larger [fencing token](LeaseLockGuard::fence_token).
/// How it works, and why it holds: [below](#how-it-works).
///
/// Waiting polls every `check_interval` (a network filesystem sends no
/// change notifications across hosts); there is no queue, so the order
/// among waiters is not fair. Exclusive only. Clones are the same
/// configuration; every acquisition is an owner of its own.
///
/// Guarantees assume the filesystem's `link` is atomic and that a file
/// opened again shows the last synced write (NFS: the default
/// close-to-open consistency; not the `nocto` mount option).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let shared = tempfile::tempdir().unwrap();
/// use portalocker::LeaseLock;
/// use std::time::Duration;
///
/// let lock = LeaseLock::new(shared.path().join("nightly.lease"))
///     .lease_ttl(Duration::from_secs(30))
///     .timeout(Duration::from_secs(60));
/// let guard = lock.acquire().await?;
/// println!("fencing token {}", guard.fence_token());
/// guard
///     .run_while_held(async { /* the work, stopped if the lease is lost */ })
///     .await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
///
/// # How it works
///
/// * **Claims form a chain.** The lock's path is a directory of claim
///   files named by generation (`00000000000000000001`, `…2`, …). Holding
///   the lock means having created the newest claim and keeping it beating.
///   A contender that reads claim *g* as the newest and finds it free
///   (released) or stale creates claim *g + 1* by `link(2)` of a fully
///   written record; `link` fails if the name exists, so for each
///   generation exactly one contender wins: breaking a stale claim and
///   taking the lock are the same single atomic step, and nothing is ever
///   deleted or overwritten to break a claim (the ABA race of "remove the
///   stale file, then create mine" cannot happen).
/// * **Fencing.** The generation is the fencing token: each claim is made
///   only after the one before it was read, so tokens strictly increase.
/// * **Liveness without anyone's clock.** The holder rewrites its record
///   every `ttl / 3` with a beat counter bumped (same length, in place,
///   synced). A contender judges a claim stale when its bytes have not
///   changed for `ttl × 5/4`, measured on the contender's own monotonic
///   clock while it watches: no wall clock, no modification time and no
///   clock of another host is compared with another, so skewed or stepped
///   clocks cannot break exclusion (only clock *rates* must roughly agree,
///   as for every lease).
/// * **The holder's view.** A holder counts itself lost once no heartbeat
///   has succeeded for `ttl` since it was *sent* (local monotonic clock),
///   which is always before any contender can have watched the record
///   stand still for `ttl × 5/4`; also when its claim file is no longer
///   at its name, or the next claim exists.
/// * **Tidying.** Old claims are removed, oldest first, once their last
///   write is more than 5 minutes old by the filesystem's own clock (the
///   modification time of a file written just then). A contender must
///   create its claim within 10 s of reading the claim before it, or give
///   it up, so a removed name can never be created again.
#[derive(Clone)]
pub struct LeaseLock {
    cfg: Arc<Options>,
}

#[derive(Clone)]
struct Options {
    path: PathBuf,
    wait: WaitOptions,
    ttl: Duration,
    on_lost: Option<LossCallback>,
}

/// The newest claim of a [`LeaseLock`] ([`LeaseLock::holder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseHolder {
    /// The claim's generation: the fencing token it holds.
    pub generation: u64,
    /// The holder id it recorded.
    pub holder_id: String,
    /// The host it recorded.
    pub host: String,
    /// The process id it recorded (on its host).
    pub pid: u32,
    /// Its lease TTL.
    pub ttl: Duration,
    /// When its process started, where the OS says (Linux: clock ticks
    /// since boot): with `host` and `pid` it names one process.
    pub started: Option<u64>,
}

impl LeaseHolder {
    /// Whether the holder's process still runs, where this host can tell:
    /// `Some(false)` if it recorded this host and its pid is gone or now
    /// names a process that started at another time; `None` for another
    /// host, or where the OS does not say (then only the lease tells).
    pub fn runs_here(&self) -> Option<bool> {
        let here = gethostname::gethostname().to_string_lossy().into_owned();
        if self.host != here {
            return None;
        }
        let recorded = self.started?;
        match crate::sys::process_start(self.pid) {
            Some(now) => Some(now == recorded),
            // Linux says "no such process"; elsewhere nothing is known.
            None if crate::sys::process_start(std::process::id()).is_some() => Some(false),
            None => None,
        }
    }
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "holder {} on {} pid {} (generation {})",
            self.holder_id, self.host, self.pid, self.generation
        )
    }
}

crate::options::impl_waiting!(LeaseLock, cfg);

impl LeaseLock {
    /// The lease TTL of [`LeaseLock::new`]: 10 s.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

    /// A lease lock kept in the directory `path`: timeout 5 s, check
    /// interval 250 ms, lease TTL 10 s. No I/O here.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            cfg: Arc::new(Options {
                path: path.into(),
                wait: WaitOptions::default(),
                ttl: Self::DEFAULT_LEASE_TTL,
                on_lost: None,
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Options)) -> Self {
        let mut cfg = (*self.cfg).clone();
        f(&mut cfg);
        Self { cfg: Arc::new(cfg) }
    }

    wait_setters!("the lock", "false");

    /// The lease TTL (default 10 s; from 100 ms to 7 days). A holder that
    /// dies or is cut off keeps the lock for up to `ttl × 5/4` after its
    /// last renewal; a live holder renews every third of it, and counts
    /// itself lost once a renewal is overdue. Waiters use the TTL the
    /// holder recorded, so processes with different TTLs can share a lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let lock = portalocker::LeaseLock::new("/shared/job.lease").lease_ttl(Duration::from_secs(30));
    /// # drop(lock);
    /// ```
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.map(|c| c.ttl = ttl)
    }

    crate::loss::on_lost_setter!(LeaseLockGuard);

    /// The lease directory.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    fn dir(&self) -> LeaseDir {
        LeaseDir::new(self.cfg.path.clone())
    }

    /// Acquires the lock: waits (up to `timeout`) until the newest claim
    /// is released or stale, then makes the next claim and returns the
    /// guard, whose task keeps it beating.
    ///
    /// A stale claim (its holder died, hangs, or lost the filesystem) is
    /// only known to be stale once it has been watched standing still for
    /// `ttl × 5/4`, so a waiter that arrives after a holder died waits up to
    /// that long (with a shorter `timeout` it fails busy first).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: a claim made by a dropped acquisition
    /// is marked free at once (on the blocking pool), so nothing is held
    /// and nothing waits for it.
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) when the lock is
    /// still held at the deadline (or at once with `fail_when_locked`),
    /// naming the holder; [`ErrorKind::InvalidInput`] for a TTL out of
    /// range, a lease path that is a symbolic link or not a directory, or
    /// a claim file this lock did not write (never broken, never granted
    /// over: remove it if nothing uses it); [`ErrorKind::Io`] when the
    /// directory cannot be read or written (permissions, a read-only or
    /// full filesystem).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime with the time driver.
    pub async fn acquire(&self) -> Result<LeaseLockGuard> {
        self.acquire_with(self.cfg.wait).await
    }

    acquire_variants!(LeaseLockGuard);

    /// The newest claim if it is held (by a live holder or one whose lease
    /// has not been seen to lapse yet), `None` if the lock is free.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), for the directory and its newest
    /// claim.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let shared = tempfile::tempdir().unwrap();
    /// let lock = portalocker::LeaseLock::new(shared.path().join("job.lease"));
    /// assert!(lock.holder().await?.is_none());
    /// let guard = lock.acquire().await?;
    /// let holder = lock.holder().await?.expect("held");
    /// assert_eq!(holder.holder_id, guard.holder_id());
    /// # Ok(()) }
    /// ```
    pub async fn holder(&self) -> Result<Option<LeaseHolder>> {
        let dir = self.dir();
        let newest = blocking(move || dir.newest(0)).await?;
        Ok(match newest {
            Newest::Claim { record, .. } if record.state == State::Held => Some(LeaseHolder {
                generation: record.generation,
                holder_id: record.holder_id,
                host: record.host,
                pid: record.pid,
                ttl: record.ttl,
                started: (record.started != 0).then_some(record.started),
            }),
            _ => None,
        })
    }

    fn validate(&self) -> Result<()> {
        let ttl = self.cfg.ttl;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(Error::invalid(
                OP,
                format!("lease_ttl {ttl:?}: a lease lasts from 100 ms to 7 days"),
            )
            .with_path(self.cfg.path.clone()));
        }
        Ok(())
    }

    crate::trace::traced_acquire_with! {
        fn(self, w) -> LeaseLockGuard = acquire_inner,
        span: [lease_lock = %self.cfg.path.display(),],
        granted: |g| [fence_token = g.fence_token(),],
    }

    async fn acquire_inner(&self, w: WaitOptions) -> Result<LeaseLockGuard> {
        self.validate()?;
        let start = Instant::now();
        let deadline = deadline_after(start, w.timeout);
        let holder_id = crate::util::unguessable_hex32();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let ttl = self.cfg.ttl;
        // A generation known to exist (a listing may lag behind).
        let mut known = 0u64;
        // The newest claim as first seen unchanged: generation, bytes, when.
        let mut watched: Option<(u64, Vec<u8>, Instant)> = None;
        let mut serial = 0u64;
        loop {
            let read_at = Instant::now();
            let dir = self.dir();
            let newest = blocking(move || dir.newest(known)).await?;
            // What is watched for staleness: generation, bytes, TTL.
            let (generation, bytes, stale_ttl, record) = match newest {
                Newest::None => (0, Vec::new(), ttl, None),
                Newest::Vanished { generation } => (generation, b"\0gone".to_vec(), ttl, None),
                Newest::Writing { generation } => (generation, Vec::new(), ttl, None),
                Newest::Claim {
                    generation,
                    record,
                    bytes,
                } => (generation, bytes, record.ttl, Some(record)),
            };
            known = known.max(generation);
            let free = generation == 0 || record.as_ref().is_some_and(|r| r.state == State::Free);
            let stale = match &watched {
                Some((g, b, since)) if *g == generation && *b == bytes => {
                    read_at.saturating_duration_since(*since) >= stale_after(stale_ttl)
                }
                _ => {
                    watched = Some((generation, bytes, read_at));
                    false
                }
            };
            let Some(next) = generation.checked_add(1) else {
                return Err(Error::invalid(
                    OP,
                    format!("claim {generation} is the last generation there can be"),
                )
                .with_path(self.cfg.path.clone()));
            };
            let busy = if free || stale {
                None
            } else {
                let since = watched.as_ref().map_or(read_at, |w| w.2);
                Some((record, since + stale_after(stale_ttl)))
            };
            if let Some((record, stale_at)) = busy {
                let now = Instant::now();
                if w.fail_when_locked || now >= deadline {
                    let waited = now.saturating_duration_since(start);
                    return Err(match record {
                        Some(r) => self.busy(&r, &host, waited),
                        None => {
                            Error::already_locked(OP, Some(&self.cfg.path)).with_reason(format!(
                                "claim {generation} is being written (no hard links here), or \
                                 was removed from outside and its holder's lease has not run \
                                 out yet"
                            ))
                        }
                    });
                }
                let pause = jittered(w.check_interval).max(MIN_PAUSE);
                let wake = (now + pause)
                    .min(deadline)
                    .min(stale_at.max(now + MIN_PAUSE));
                tokio::time::sleep_until(wake).await;
                continue;
            }
            serial += 1;
            let record = Record {
                generation: next,
                state: State::Held,
                beat: 0,
                ttl,
                holder_id: holder_id.clone(),
                host: host.clone(),
                pid: std::process::id(),
                started: crate::sys::process_start(std::process::id()).unwrap_or(0),
            };
            let sent = Instant::now();
            match self.claim(record.clone(), serial, read_at).await? {
                Some(claim) => {
                    let state = Arc::new(LeaseState::new(
                        LeaseKind::LeaseFile,
                        self.cfg.path.display().to_string(),
                        holder_id,
                        deadline_after(sent, ttl),
                        self.cfg.on_lost.clone(),
                    ));
                    let mut g = LeaseLockGuard::start(self.dir(), claim, record, state, serial);
                    g.set_waited(start.elapsed());
                    return Ok(g);
                }
                // Someone else made it first: look again at once.
                None => known = known.max(next),
            }
        }
    }

    /// Makes claim `record.generation` on the blocking pool; `None` if it
    /// exists already, or could not be made within [`CLAIM_WINDOW`] of
    /// `read_at` (then it is given up, marked free). If this future is
    /// dropped, a claim made meanwhile is marked free at once.
    async fn claim(&self, record: Record, serial: u64, read_at: Instant) -> Result<Option<Claim>> {
        let dir = self.dir();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let read_at = read_at.into_std();
        tokio::task::spawn_blocking(move || {
            let made = dir.create(&record, serial);
            let free = Record {
                state: State::Free,
                ..record
            };
            let answer = match made {
                Ok(Some(claim)) if read_at.elapsed() > CLAIM_WINDOW => {
                    drop(claim);
                    let _ = dir.release(&free, serial);
                    Ok(None)
                }
                other => other,
            };
            match tx.send(answer) {
                // The acquisition was dropped: nothing may stay held.
                Err(Ok(Some(claim))) => {
                    drop(claim);
                    let _ = dir.release(&free, serial);
                }
                // Granted: old claims are tidied away after every 32nd
                // grant (a listing of the directory).
                Ok(()) if free.generation.is_multiple_of(32) => {
                    dir.tidy(free.generation, &free.holder_id);
                }
                Ok(()) => {}
                Err(_) => {}
            }
        });
        match rx.await {
            Ok(r) => r.map_err(dir_error),
            Err(_) => Err(Error::new(ErrorKind::Io, OP)
                .with_path(self.cfg.path.clone())
                .with_reason("the blocking pool dropped the claim")),
        }
    }

    fn busy(&self, record: &Record, host: &str, waited: Duration) -> Error {
        let local = record.host == host;
        Error::already_locked(OP, Some(&self.cfg.path))
            .with_holder_pid(local.then_some(record.pid))
            .with_holder_id(Some(record.holder_id.clone()))
            .with_reason(format!(
                "held by holder {} on {} pid {} (generation {}, waited {})",
                record.holder_id,
                record.host,
                record.pid,
                record.generation,
                crate::util::Rounded(waited)
            ))
    }
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("path", &self.cfg.path)
            .field("ttl", &self.cfg.ttl)
            .field("wait", &self.cfg.wait)
            .finish()
    }
}

/// Runs a lease directory call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DirError> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(dir_error),
        Err(e) => Err(Error::new(ErrorKind::Io, OP).with_reason(format!("the blocking pool: {e}"))),
    }
}

fn dir_error(e: DirError) -> Error {
    match e {
        DirError::Io(path, e) => Error::io(OP, Some(&path), e),
        DirError::BadRecord(path, why) => Error::invalid(
            OP,
            format!(
                "{why}: not a claim of this lock (never broken, never granted over; remove it if \
                 nothing uses it)"
            ),
        )
        .with_path(path),
        DirError::NotADirectory(path, why) => Error::invalid(OP, why).with_path(path),
    }
}
