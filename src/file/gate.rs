//! Fair handoff: the per-file FIFO gate of this process, and the holder's
//! half of the cross-process handoff.
//!
//! How waiting works is told once, for users, in [`Lock`](crate::Lock)'s
//! docs (*How waiting works*); this module implements it. The pieces:
//!
//! * [`Gate::enter`]: a Tokio `RwLock` per lock file (exclusive
//!   acquisitions take it for writing, shared ones for reading), kept by
//!   the guard while held ([`Pass`]).
//! * [`Gate::on_release`]: after a burst of grants ([`BURST`]) the holder
//!   tests for announcements (at most once per [`CHECK_EVERY`]) and, if
//!   there is one, hands over: rings the doorbell of the longest-waiting
//!   waiter (only that one wakes; the holder keeps its descriptor) and
//!   stays away for [`HANDOFF_WINDOW`]. Where it cannot ring, or the
//!   waiter did not take the last handover, it closes its descriptor
//!   instead: the inotify event wakes every waiter. An announcement that
//!   did not take three handovers in a row (a stopped waiter) is not
//!   honoured for a back-off.
//! * The waiter's half — announcing with an open-file-description byte
//!   lock whose offset is its key (start time and doorbell), listening to
//!   its doorbell, and the [`DEFER`] head start it gives an older
//!   announcement — is `wait.rs`'s `FileContender`, through `sys`
//!   (`wait_key`, `announce`, `Bell`, `announced_before`, `withdraw`).
//! * [`Gate::capable`]: only local filesystems announce (`sys::handoff_capable`).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tokio::time::Instant;

use crate::file::raw::FileId;
use crate::util::PerPath;

/// How long a releasing holder that was asked to hand over stays away.
pub(crate) const HANDOFF_WINDOW: Duration = Duration::from_millis(2);

fn now_micros() -> u64 {
    u64::try_from(base().elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn base() -> std::time::Instant {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

/// The head start a waiter gives an older announced waiter before its own
/// attempt.
pub(crate) const DEFER: Duration = Duration::from_millis(1);

/// How often a releasing holder looks for an announced waiter. Checking
/// costs an `fstat`; in a tight acquire/release loop once per interval is
/// enough, and adds at most this much to another process's wait.
const CHECK_EVERY: Duration = Duration::from_millis(1);

/// How long this process may keep re-taking the lock after a waiter of
/// another process announced itself, before it hands over: long enough to
/// amortise a handoff, short enough to bound everybody's wait.
const BURST: Duration = Duration::from_millis(1);

/// The in-process state of one lock file.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// When this process's current run of grants began (µs since `base()`,
    /// 0: none).
    burst_start: AtomicU64,
    /// When a release last looked for an announcement (µs since `base()`).
    last_check: AtomicU64,
    rw: Arc<RwLock<()>>,
    /// Until when this process stays away after handing the lock over
    /// (µs since `base()`; 0: never).
    handoff_until: AtomicU64,
    /// Notified whenever a pass is given back, for waiters that only try
    /// the gate (a semaphore's sweeps), once one asked for it.
    released: Arc<Released>,
    /// Whether announcements are safe on the file's filesystem (0: not
    /// known yet, 1: yes, 2: no).
    capable: AtomicU8,
    /// Whom releases handed over to, to stop honouring a waiter that does
    /// not take what it is handed.
    handovers: Mutex<Handovers>,
}

/// The memory of handovers that tells a waiter that cannot take the lock
/// (stopped by `SIGSTOP` or a debugger, a frozen cgroup) from one that
/// does. A waiter that takes the lock withdraws its announcement, and its
/// next wait announces a new time; so an announcement still there at the
/// next release, after this process handed over to it [`MISSES`] times in a
/// row, was not taken. It is then left out for a back-off (doubling from
/// [`IGNORE_MIN`] to [`IGNORE_MAX`] while it stays), during which other
/// announced waiters are still handed the lock. Each miss costs the live
/// processes one handoff window, so a stopped waiter costs them a few
/// milliseconds per back-off instead of every release.
#[derive(Debug, Default)]
struct Handovers {
    /// The announcement the last handover went to.
    last: Option<u64>,
    /// Handovers in a row that the announcement at `last` did not take.
    misses: u32,
    /// An announcement left out until `ignored_until` (µs since `base()`).
    ignored: Option<u64>,
    ignored_until: u64,
    /// The current back-off for `ignored`, in µs.
    backoff: u64,
}

/// Handovers in a row that an announcement may leave untaken before it is
/// left out.
const MISSES: u32 = 3;
/// The first and the longest time an untaken announcement is left out.
const IGNORE_MIN: Duration = Duration::from_secs(1);
const IGNORE_MAX: Duration = Duration::from_secs(30);

/// The gate's release notification and whether anyone listens to it.
#[derive(Debug, Default)]
struct Released {
    notify: Arc<Notify>,
    listened: AtomicBool,
}

/// A passed gate, held for as long as the lock; giving it back notifies
/// [`Gate::released_notifier`].
#[derive(Debug)]
pub(crate) struct Pass {
    guard: Option<PassGuard>,
    released: Arc<Released>,
    /// Whether a lock was granted under this pass: only then does giving
    /// it back release anything worth waking waiters for. (A failed
    /// attempt that woke them would wake its own sweep: a busy loop.)
    granted: bool,
}

#[derive(Debug)]
enum PassGuard {
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
}

impl Pass {
    /// Turns an exclusive pass into a shared one without giving it back:
    /// tasks of this process waiting at the gate to read pass at once,
    /// writers keep waiting. A shared pass stays as it is.
    pub(crate) fn downgrade(&mut self) {
        self.guard = match self.guard.take() {
            Some(PassGuard::Exclusive(g)) => Some(PassGuard::Shared(g.downgrade())),
            other => other,
        };
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Nobody listens on most gates (only a semaphore's sweeps do):
        // then the notification, a lock of the `Notify`'s waiter list, is
        // skipped. A listener that registers meanwhile tries the gate after
        // registering, and finds it free (both orders are `SeqCst`).
        if self.granted && self.released.listened.load(Ordering::SeqCst) {
            self.released.notify.notify_waiters();
        }
    }
}

impl Gate {
    /// The gate of `path`, shared by every `Lock` of this process on it.
    pub(crate) fn of(path: &Path) -> Arc<Self> {
        static GATES: PerPath<Gate> = PerPath::new();
        GATES.get(path)
    }

    /// The acquire side of the protocol: passes the gate (at once, or
    /// waiting in FIFO order until `deadline` unless `fail_fast`), then
    /// waits out a handoff window this process owes another one. `None`:
    /// the gate stayed busy.
    pub(crate) async fn enter(
        &self,
        shared: bool,
        deadline: Instant,
        fail_fast: bool,
    ) -> Option<Pass> {
        let pass = match self.try_pass(shared) {
            Some(p) => p,
            None if fail_fast => return None,
            None => self.pass(shared, deadline).await?,
        };
        if !fail_fast {
            self.wait_handoff(deadline).await;
        }
        Some(pass)
    }

    /// A lock was granted under `pass`: it now counts for the handoff
    /// burst, and giving the pass back will wake waiters.
    pub(crate) fn granted(&self, pass: &mut Pass) {
        self.note_grant();
        pass.granted = true;
    }

    /// The release side of the protocol: unlocks `file` (the file `id`)
    /// and, if a waiter of another process announced itself and this
    /// process has had its burst, hands the lock over: stays away for the
    /// handoff window, and rings the longest-waiting waiter's doorbell
    /// (that one waiter wakes). Where that cannot be done — the waiter has
    /// no doorbell, the ring could not be sent, or it did not take the
    /// last handover — it asks the caller to close `file` instead, which
    /// wakes every waiter. Returns the unlock's result (`true` when the
    /// handle may be kept for reuse) and what was done.
    pub(crate) fn on_release(&self, file: &File, id: FileId) -> Release {
        let now = now_micros();
        let pick = if self.burst_done(now) && self.should_check(now) && self.capable(file) {
            self.pick_waiter(file, now)
        } else {
            None
        };
        let unlocked = crate::sys::unlock(file);
        let Some(pick) = pick else {
            return Release {
                unlocked,
                hand_over: false,
                close: false,
            };
        };
        self.owe_handoff();
        // After the unlock: the waiter's attempt must find the lock free.
        let rung = !pick.repeat && crate::sys::ring_announced(id, pick.key);
        Release {
            unlocked,
            hand_over: true,
            close: !rung,
        }
    }

    /// The announced waiter to hand the lock to, if one should be (see
    /// [`Handovers`]).
    fn pick_waiter(&self, file: &File, now: u64) -> Option<Pick> {
        let mut h = crate::util::lock(&self.handovers);
        let skip = h.ignored.filter(|_| now < h.ignored_until);
        let key = crate::sys::announcement_except(file, skip)?;
        if h.last != Some(key) {
            h.last = Some(key);
            h.misses = 0;
            return Some(Pick { key, repeat: false });
        }
        h.misses += 1;
        if h.misses < MISSES {
            return Some(Pick { key, repeat: true });
        }
        // It did not take the lock the last times: leave it out for a
        // while, and hand over to another announced waiter if there is one.
        let min = u64::try_from(IGNORE_MIN.as_micros()).unwrap_or(u64::MAX);
        let max = u64::try_from(IGNORE_MAX.as_micros()).unwrap_or(u64::MAX);
        h.backoff = if h.ignored == Some(key) {
            h.backoff.saturating_mul(2).clamp(min, max)
        } else {
            min
        };
        h.ignored = Some(key);
        h.ignored_until = now.saturating_add(h.backoff);
        h.misses = 0;
        h.last = crate::sys::announcement_except(file, Some(key));
        #[cfg(feature = "tracing")]
        tracing::debug!(
            backoff = ?Duration::from_micros(h.backoff),
            "an announced waiter did not take {MISSES} handovers: left out for a while"
        );
        h.last.map(|key| Pick { key, repeat: false })
    }

    /// Whether waiters may announce themselves on `file` (its filesystem,
    /// looked up once per gate).
    pub(crate) fn capable(&self, file: &File) -> bool {
        match self.capable.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let yes = crate::sys::handoff_capable(file);
                self.capable
                    .store(if yes { 1 } else { 2 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// Passes the gate in FIFO order, waiting until `deadline`; `None` if
    /// the deadline passed first.
    async fn pass(&self, shared: bool, deadline: Instant) -> Option<Pass> {
        let rw = self.rw.clone();
        let guard = if shared {
            tokio::time::timeout_at(deadline, rw.read_owned())
                .await
                .ok()
                .map(PassGuard::Shared)
        } else {
            tokio::time::timeout_at(deadline, rw.write_owned())
                .await
                .ok()
                .map(PassGuard::Exclusive)
        };
        guard.map(|g| self.pass_from(g))
    }

    fn pass_from(&self, guard: PassGuard) -> Pass {
        Pass {
            guard: Some(guard),
            released: self.released.clone(),
            granted: false,
        }
    }

    /// Notified each time a pass of this gate is given back (from now on:
    /// the gate notifies only once someone asked for this).
    pub(crate) fn released_notifier(&self) -> Arc<Notify> {
        self.released.listened.store(true, Ordering::SeqCst);
        self.released.notify.clone()
    }

    /// Whether this process may owe another one a handoff window (an
    /// acquisition must then wait it out: [`enter`](Self::enter)).
    pub(crate) fn handoff_owed(&self) -> bool {
        self.handoff_until.load(Ordering::Relaxed) != 0
    }

    /// Passes the gate only if nobody in this process holds or waits for it.
    pub(crate) fn try_pass(&self, shared: bool) -> Option<Pass> {
        let rw = self.rw.clone();
        let guard = if shared {
            rw.try_read_owned().ok().map(PassGuard::Shared)
        } else {
            rw.try_write_owned().ok().map(PassGuard::Exclusive)
        };
        guard.map(|g| self.pass_from(g))
    }

    /// Waits out a handoff window this process owes another one (bounded
    /// by `deadline`).
    async fn wait_handoff(&self, deadline: Instant) {
        let raw = self.handoff_until.load(Ordering::Relaxed);
        if raw == 0 {
            return;
        }
        let until = Instant::from_std(base() + Duration::from_micros(raw));
        if until > Instant::now() {
            tokio::time::sleep_until(until.min(deadline)).await;
        }
        if until <= Instant::now() {
            // Served: later acquisitions may take the fast path again
            // (unless a newer handoff set a later time meanwhile).
            let _ =
                self.handoff_until
                    .compare_exchange(raw, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Whether this release should look for an announced waiter: at most
    /// once per [`CHECK_EVERY`].
    fn should_check(&self, now: u64) -> bool {
        let last = self.last_check.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CHECK_EVERY.as_micros() as u64 && last != 0 {
            return false;
        }
        self.last_check.store(now.max(1), Ordering::Relaxed);
        true
    }

    /// Notes a grant: starts a run of grants if none is under way.
    fn note_grant(&self) {
        if self.burst_start.load(Ordering::Relaxed) == 0 {
            self.burst_start
                .store(now_micros().max(1), Ordering::Relaxed);
        }
    }

    /// Whether the current run of grants has lasted long enough to hand
    /// over to an announced waiter.
    fn burst_done(&self, now: u64) -> bool {
        let start = self.burst_start.load(Ordering::Relaxed);
        now.saturating_sub(start) >= BURST.as_micros() as u64
    }

    fn owe_handoff(&self) {
        self.burst_start.store(0, Ordering::Relaxed);
        let until = base().elapsed() + HANDOFF_WINDOW;
        let micros = u64::try_from(until.as_micros()).unwrap_or(u64::MAX);
        self.handoff_until.store(micros, Ordering::Relaxed);
    }
}

/// What [`Gate::on_release`] did.
#[derive(Debug)]
pub(crate) struct Release {
    /// The unlock's result: `true` when the handle may be kept for reuse.
    pub(crate) unlocked: std::io::Result<bool>,
    /// The lock was handed over to a waiter of another process.
    pub(crate) hand_over: bool,
    /// Close the descriptor now: that wakes the waiters (a handover that
    /// could not ring its waiter's doorbell).
    pub(crate) close: bool,
}

/// The waiter a release hands over to: its announcement's key, and whether
/// the last handover went to it too (it did not take that one: then every
/// waiter is woken, not just this one).
#[derive(Debug, Clone, Copy)]
struct Pick {
    key: u64,
    repeat: bool,
}
