//! Waiting: the wait loop ([`wait`]) over a [`Contender`], and the lock
//! file's contender ([`FileContender`]): its attempts on one descriptor,
//! its announcement to a holder in another process and its doorbell, and
//! the contention error it ends with. A semaphore's sweep is the other
//! contender (`semaphore/sweep.rs`).

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::deadline::{deadline_after, Schedule};
use crate::error::{Error, Result};
use crate::file::engine::{Engine, Granted, OP_LOCK};
use crate::file::flags::Mode;
use crate::file::gate;
use crate::file::raw::{self, Handle};
use crate::file::wake::{Armed, Watch};
use crate::util;

/// The outcome of one non-blocking attempt.
#[derive(Debug)]
pub(crate) enum Attempt<T> {
    /// Acquired.
    Granted(T),
    /// Held by someone else: wait (or fail, with `fail_when_locked`).
    Busy,
    /// Try again at once (the file was replaced under us).
    Again,
    /// Sleep until the next scheduled attempt, even with
    /// `fail_when_locked` (the file keeps being replaced under us).
    Pause,
}

/// What [`wait`] waits for.
pub(crate) trait Contender {
    type Granted;

    /// One non-blocking attempt. An error ends the wait at once: only
    /// contention is retried.
    async fn attempt(&mut self) -> Result<Attempt<Self::Granted>>;

    /// After a busy attempt: the wake-up sources to wait on from now on,
    /// if they must be (re-)registered; `None` keeps the current ones.
    /// A registration is followed by another attempt at once.
    fn register(&mut self) -> Option<Vec<Arc<Notify>>>;

    /// The contention error; `waited`: the deadline passed (rather than
    /// `fail_when_locked` ending the wait at the first busy attempt). Any
    /// lookup it needs (who holds the lock) runs off the runtime's threads.
    async fn busy(&mut self, waited: bool) -> Error;
}

/// The wait loop: attempts paced by `schedule` until one is granted, an
/// attempt fails, or the deadline passes (at once with `fail_fast`).
///
/// Wake-ups are armed *before* each attempt, so a release that happens
/// while the attempt runs still ends the next sleep early.
pub(crate) async fn wait<C: Contender>(
    c: &mut C,
    mut schedule: Schedule,
    fail_fast: bool,
) -> Result<C::Granted> {
    let mut notifiers: Vec<Arc<Notify>> = Vec::new();
    loop {
        let armed = Armed::new(&notifiers);
        match c.attempt().await? {
            Attempt::Granted(g) => return Ok(g),
            Attempt::Again => continue,
            Attempt::Busy if fail_fast => return Err(c.busy(false).await),
            Attempt::Busy => {
                if let Some(n) = c.register() {
                    drop(armed);
                    notifiers = n;
                    continue;
                }
            }
            Attempt::Pause => {}
        }
        let Some(target) = schedule.next_attempt() else {
            return Err(c.busy(true).await);
        };
        armed.until(target).await;
    }
}

/// One lock file as a [`Contender`]: the descriptor being tried, kept
/// between attempts, its wake-up registration, and its announcement to
/// holders in other processes.
pub(crate) struct FileContender<'a> {
    engine: &'a Engine,
    mode: Mode,
    current: Option<Handle>,
    /// Consecutive attempts that found the file replaced under us.
    stale: u32,
    watch: Option<Watch>,
    fail_fast: bool,
    timeout: Duration,
    /// This wait's key ([`crate::sys::wait_key`]), taken when it first
    /// found the lock held by another process: when, on the system-wide
    /// clock of the announcements, and which doorbell rings it.
    pub(super) since: Option<u64>,
    /// Whether `current` carries an announcement.
    announced: bool,
    /// The doorbell registration for the announcement on `current`'s file.
    bell: Option<crate::sys::Bell>,
    /// `bell` is new since the wake-up sources were last registered.
    bell_fresh: bool,
    /// Attempts made (for diagnostics).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(super) attempts: u32,
}

impl<'a> FileContender<'a> {
    /// A wait on `engine`'s file in `mode`, starting with the descriptor
    /// `current` (the idle one, if any).
    pub(super) fn new(
        engine: &'a Engine,
        mode: Mode,
        current: Option<Handle>,
        fail_fast: bool,
        timeout: Duration,
    ) -> Self {
        Self {
            engine,
            mode,
            current,
            stale: 0,
            watch: None,
            fail_fast,
            timeout,
            since: None,
            announced: false,
            bell: None,
            bell_fresh: false,
            attempts: 0,
        }
    }

    /// Announces this waiter on `handle`'s file once per descriptor, so
    /// that a holder in another process hands the lock over, and listens
    /// to its doorbell for that file.
    fn announce(&mut self, handle: &Handle) {
        if self.announced || !self.engine.gate().capable(&handle.file) {
            return;
        }
        let since = *self.since.get_or_insert_with(crate::sys::wait_key);
        self.announced = crate::sys::announce(&handle.file, since);
        if self.announced {
            self.bell = crate::sys::Bell::announced(handle.id, since);
            self.bell_fresh = self.bell.is_some();
        }
    }

    /// Gives an older announced waiter a head start before this attempt.
    async fn defer_to_older(&self, file: &File) {
        if let Some(since) = self.since {
            if self.announced && crate::sys::announced_before(file, since) {
                tokio::time::sleep(gate::DEFER).await;
            }
        }
    }

    /// Withdraws the announcement carried by `file` (granted, or giving
    /// up and keeping the descriptor).
    fn withdraw(&mut self, file: &File) {
        if std::mem::take(&mut self.announced) {
            crate::sys::withdraw(file);
        }
        self.bell = None;
    }
}

impl Contender for FileContender<'_> {
    type Granted = Handle;

    async fn attempt(&mut self) -> Result<Attempt<Handle>> {
        self.attempts = self.attempts.saturating_add(1);
        let e = self.engine;
        let handle = match self.current.take() {
            Some(h) => {
                self.defer_to_older(&h.file).await;
                h
            }
            None => e.open().await?,
        };
        let io_err = |err| Error::io(OP_LOCK, Some(&e.path), err);
        let locked = raw::try_lock(&handle.file, self.mode).map_err(io_err)?;
        // Whatever the outcome, a descriptor whose file is no longer at the
        // path is worthless: drop it (closing also unlocks) and open the
        // path afresh, at once for a few times, then after a pause.
        if !handle.is_at(&e.path).map_err(io_err)? {
            // (Closing also drops its announcement.)
            drop(handle);
            self.announced = false;
            self.bell = None;
            self.stale += 1;
            if self.stale <= 3 {
                return Ok(Attempt::Again);
            }
            self.stale = 0;
            return Ok(Attempt::Pause);
        }
        self.stale = 0;
        if locked {
            self.withdraw(&handle.file);
            return e.prepare(handle).map(Attempt::Granted);
        }
        if !self.fail_fast {
            // Ask a holder in another process to hand the lock over.
            self.announce(&handle);
        }
        self.current = Some(handle);
        Ok(Attempt::Busy)
    }

    fn register(&mut self) -> Option<Vec<Arc<Notify>>> {
        let id = self.current.as_ref()?.id;
        let new_watch = self.watch.as_ref().map(Watch::id) != Some(id);
        if !new_watch && !std::mem::take(&mut self.bell_fresh) {
            return None;
        }
        // First contention on this file (or on a new file at the path), or
        // a new doorbell registration.
        if new_watch {
            self.watch = Some(Watch::new(&self.engine.path, id));
        }
        self.bell_fresh = false;
        let mut n: Vec<Arc<Notify>> = self.watch.iter().map(Watch::notifier).collect();
        n.extend(self.bell.as_ref().map(crate::sys::Bell::notifier));
        Some(n)
    }

    async fn busy(&mut self, _waited: bool) -> Error {
        // Who holds it, from the descriptor we tried (the file at the path
        // when we last looked), once per failed call. The lookup reads the
        // OS's lock table and command lines (`/proc` on Linux), so it runs
        // on the blocking pool; the descriptor is back in the cache before
        // it starts, so a cancellation during it loses nothing.
        let mut id = None;
        if let Some(h) = self.current.take() {
            id = Some(h.id);
            self.engine.note_seen(h.id);
            self.withdraw(&h.file);
            self.engine.put_idle(h);
        }
        let holders = match id {
            Some(id) if self.engine.name_holders => {
                util::run_blocking(move || crate::file::holder::of(id))
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.engine
            .busy_held_by(self.timeout, self.fail_fast, false, &holders)
    }
}

/// The acquisition of one lock file: the fast path, and the wait when it
/// is busy.
impl Engine {
    /// The whole acquisition, for a wait that started at `start` (the
    /// deadline is `start + timeout`; `None`: now): validation, the
    /// in-process gate, the OS lock.
    pub(crate) async fn acquire(
        &self,
        start: Option<Instant>,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<Granted> {
        // A semaphore's slot attempts are traced by the semaphore's span.
        #[cfg(feature = "tracing")]
        if self.name_holders {
            let span = tracing::debug_span!(
                "acquire",
                path = %self.path.display(),
                mode = ?self.opts.mode().ok(),
                timeout = ?timeout,
                fail_when_locked = fail_fast,
            );
            let traced = async {
                let r = self.acquire_inner(start, timeout, fail_fast).await;
                if let Err(e) = &r {
                    // A contention error names the holder when it is known.
                    tracing::debug!(error = %e, holder_pid = ?e.holder_pid(), "not acquired");
                }
                r
            };
            return tracing::Instrument::instrument(traced, span).await;
        }
        self.acquire_inner(start, timeout, fail_fast).await
    }

    async fn acquire_inner(
        &self,
        start: Option<Instant>,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<Granted> {
        raw::check_path(OP_LOCK, &self.path)?;
        let mode = self.opts.mode()?;
        if let Some(granted) = self.try_fast(mode)? {
            #[cfg(feature = "tracing")]
            tracing::debug!(attempts = 1, waited = ?Duration::ZERO, "granted at once");
            return Ok(granted);
        }
        let start = start.unwrap_or_else(Instant::now);
        let deadline = deadline_after(start, timeout);
        let gate = self.gate();
        let Some(mut pass) = gate.enter(mode == Mode::Shared, deadline, fail_fast).await else {
            return Err(self.busy(timeout, fail_fast, true));
        };
        #[cfg(feature = "tracing")]
        let queued = start.elapsed();
        let mut contender = FileContender::new(self, mode, self.take_idle(), fail_fast, timeout);
        let schedule = Schedule::from(start, deadline, self.opts.wait.check_interval);
        let Handle { file, id } = wait(&mut contender, schedule, fail_fast).await?;
        gate.granted(&mut pass);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            queued_in_process = ?queued,
            waited = ?start.elapsed(),
            attempts = contender.attempts,
            announced_to_holder = contender.since.is_some(),
            "granted"
        );
        Ok(Granted {
            file,
            id,
            pass,
            waited: start.elapsed(),
        })
    }
}
