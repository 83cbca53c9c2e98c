//! Fair handoff.
//!
//! * **In one process**, every lock file has a FIFO gate (a Tokio `RwLock`:
//!   exclusive acquisitions take it for writing, shared ones for reading).
//!   An acquisition passes the gate before it touches the OS lock and keeps
//!   it while held, so tasks of one process are served in arrival order and
//!   the next one wakes the moment the previous guard is released — with no
//!   polling, and with only the task at the head of the queue holding a
//!   descriptor.
//! * **Across processes** (Linux, same file owner), a waiter *announces*
//!   itself by setting the lock file's access time to a sentinel value, and
//!   a releasing holder that sees the sentinel *pokes* the file (a fresh
//!   access time, which inotify reports to the waiters) and then stays away
//!   from the lock for a short handoff window, so the waiter gets it
//!   instead of the releasing process re-taking it at once. Holders that
//!   see no announcement re-lock at full speed: unfairness is bounded by
//!   one burst of the window, not by a whole run.

use std::fs::{File, FileTimes};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tokio::time::Instant;

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

/// The access time a waiting process sets to announce itself.
fn sentinel() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1)
}

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
    burst_start: std::sync::atomic::AtomicU64,
    /// When a release last looked for an announcement (µs since `base()`).
    last_check: std::sync::atomic::AtomicU64,
    rw: Arc<RwLock<()>>,
    /// Until when this process stays away after handing the lock over
    /// (µs since `base()`; 0: never).
    handoff_until: std::sync::atomic::AtomicU64,
    /// Notified whenever a pass is given back, for waiters that only try
    /// the gate (a semaphore's sweeps).
    released: Arc<Notify>,
}

/// A passed gate, held for as long as the lock; giving it back notifies
/// [`Gate::released_notifier`].
#[derive(Debug)]
pub(crate) struct Pass {
    guard: Option<PassGuard>,
    released: Arc<Notify>,
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

impl Drop for Pass {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.granted {
            self.released.notify_waiters();
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

    /// The release side of the protocol: unlocks `file` and, if a waiter of
    /// another process announced itself and this process has had its burst,
    /// hands the lock over (wakes that waiter and stays away for the
    /// handoff window). Returns the unlock's result: `true` when the
    /// handle may be kept for reuse.
    pub(crate) fn on_release(&self, file: &File) -> std::io::Result<bool> {
        let announced = self.burst_done() && self.should_check() && announced(file);
        let unlocked = crate::sys::unlock(file);
        if announced {
            hand_over(file, self);
        }
        unlocked
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

    /// Notified each time a pass of this gate is given back.
    pub(crate) fn released_notifier(&self) -> Arc<Notify> {
        self.released.clone()
    }

    /// Passes the gate only if nobody in this process holds or waits for it.
    fn try_pass(&self, shared: bool) -> Option<Pass> {
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
        let until = self
            .handoff_until
            .load(std::sync::atomic::Ordering::Relaxed);
        if until == 0 {
            return;
        }
        let until = Instant::from_std(base() + Duration::from_micros(until));
        if until > Instant::now() {
            tokio::time::sleep_until(until.min(deadline)).await;
        }
    }

    /// Whether this release should look for an announced waiter: at most
    /// once per [`CHECK_EVERY`].
    fn should_check(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(base().elapsed().as_micros()).unwrap_or(u64::MAX);
        let last = self.last_check.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CHECK_EVERY.as_micros() as u64 && last != 0 {
            return false;
        }
        self.last_check.store(now.max(1), Ordering::Relaxed);
        true
    }

    /// Notes a grant: starts a run of grants if none is under way.
    fn note_grant(&self) {
        use std::sync::atomic::Ordering;
        if self.burst_start.load(Ordering::Relaxed) == 0 {
            self.burst_start
                .store(now_micros().max(1), Ordering::Relaxed);
        }
    }

    /// Whether the current run of grants has lasted long enough to hand
    /// over to an announced waiter.
    fn burst_done(&self) -> bool {
        let start = self.burst_start.load(std::sync::atomic::Ordering::Relaxed);
        now_micros().saturating_sub(start) >= BURST.as_micros() as u64
    }

    fn owe_handoff(&self) {
        self.burst_start
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let until = base().elapsed() + HANDOFF_WINDOW;
        let micros = u64::try_from(until.as_micros()).unwrap_or(u64::MAX);
        self.handoff_until
            .store(micros, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A waiter in this process announces itself to the holder in another
/// process. Needs to own the file (else nothing happens, and the waiter
/// falls back to being woken by closes and polling).
pub(crate) fn announce(file: &File) {
    // One announcement is enough: skip the write (and the inotify event it
    // sends every other waiter) when another waiter already made it.
    if !announced(file) {
        let _ = file.set_times(FileTimes::new().set_accessed(sentinel()));
    }
}

/// Whether a waiter announced itself on `file` (one `fstat`).
fn announced(file: &File) -> bool {
    file.metadata()
        .and_then(|m| m.accessed())
        .is_ok_and(|t| t == sentinel())
}

/// After unlocking a file on which a waiter announced itself: wake the
/// waiters (inotify reports the new access time) and stay away for the
/// handoff window.
fn hand_over(file: &File, gate: &Gate) {
    let _ = file.set_times(FileTimes::new().set_accessed(SystemTime::now()));
    gate.owe_handoff();
}
