//! The waiting engine behind every file-based primitive.
//!
//! An acquisition of one lock file is, in order:
//!
//! 1. **enter** this process's gate for the file ([`Gate::enter`]): tasks
//!    of one process queue in FIFO order, and only the head touches the
//!    file;
//! 2. **wait** ([`wait`]): arm the wake-ups, make one non-blocking attempt,
//!    register for wake-ups at the first contention (then try once more at
//!    once, so a release in between is not missed), sleep until woken or
//!    the next scheduled attempt, until the deadline;
//! 3. **grant**: the pass is kept by the guard for as long as the lock;
//! 4. **release** ([`Engine::release`]): unlock, let the gate hand the
//!    lock over to an announced waiter of another process (it rings that
//!    waiter's doorbell, or has the descriptor closed, which wakes them
//!    all), wake this process's waiters, keep the descriptor for the next
//!    acquisition.
//!
//! [`wait`] is generic over a [`Contender`]: a single lock file
//! ([`Engine`]'s own) or a semaphore's sweep over its slots. Both use the
//! same schedule, wake-ups and error rules.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::deadline::{deadline_after, Schedule};
use crate::error::{Error, Result};
use crate::file::flags::{LockFlags, Mode, Operation};
use crate::file::gate::{self, Gate, Pass, Release};
use crate::file::holder::Holder;
use crate::file::raw::{self, FileId, Handle, OpenMode};
use crate::file::wake::{self, Armed, Watch};
use crate::options::WaitOptions;
use crate::util;

pub(crate) const OP_LOCK: &str = "failed to lock";
pub(crate) const OP_OPEN: &str = "failed to open lock file";

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

/// The options of one lock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileOptions {
    pub(crate) wait: WaitOptions,
    pub(crate) flags: LockFlags,
    pub(crate) truncate: bool,
    /// Refuse a lock file on a filesystem where `flock` may not exclude
    /// other hosts (`Lock::local_filesystem_only`).
    pub(crate) local_only: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            wait: WaitOptions::default(),
            flags: LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING,
            truncate: false,
            local_only: false,
        }
    }
}

impl FileOptions {
    pub(crate) fn mode(&self) -> Result<Mode> {
        match self.flags.operation()? {
            Operation::Lock { mode, .. } => Ok(mode),
            Operation::Unlock => Err(Error::invalid(
                "invalid lock flags",
                "UNBLOCK is not a lock mode; use SHARED or EXCLUSIVE",
            )),
        }
    }

    pub(crate) fn open_mode(&self) -> OpenMode {
        if self.truncate {
            OpenMode::Write
        } else if matches!(self.mode(), Ok(Mode::Shared)) {
            OpenMode::Read
        } else {
            OpenMode::Append
        }
    }
}

/// One lock file of this process: its path and options, the cached idle
/// descriptor, and the gate. Shared (`Arc`) by the `Lock` values that
/// describe it and by their guards.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) path: PathBuf,
    pub(crate) opts: FileOptions,
    /// An open, unlocked descriptor of the lock file, kept for reuse.
    idle: Mutex<Option<Handle>>,
    reuse: bool,
    /// Whether a contention error looks up and names the holder (not for
    /// a semaphore's slots: a sweep fails on every busy slot, and its own
    /// error names no slot's holder).
    name_holders: bool,
    /// This process's FIFO gate for the file.
    gate: OnceLock<Arc<Gate>>,
    /// The same file in the other mode (shared for an exclusive lock, and
    /// the reverse), built on the first `Lock::read`/`write` that needs it
    /// and kept, so that it keeps its own descriptor.
    pub(crate) other_mode: OnceLock<Arc<Self>>,
    /// The identity of the file last found busy at the path, for a
    /// semaphore slot, which keeps no descriptor it does not hold: its
    /// wake-ups are registered by identity.
    seen: Mutex<Option<FileId>>,
}

/// One attempt on a semaphore slot ([`Engine::try_slot`]).
#[derive(Debug)]
pub(crate) enum SlotTry {
    Granted(Granted),
    /// Held by another owner (of this process or another one).
    Busy,
    /// The descriptor's file is no longer the one at the path: open it
    /// again.
    Replaced,
}

/// A granted lock: the locked file, the pass of the gate, and how long
/// the acquisition waited (zero when the first attempt got it).
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) file: File,
    pub(crate) id: FileId,
    pub(crate) pass: Pass,
    pub(crate) waited: Duration,
}

impl Engine {
    /// `reuse`: keep the descriptor of a released lock for the next
    /// acquisition (a lock whose file is deleted on release must not).
    pub(crate) fn new(path: PathBuf, opts: FileOptions, reuse: bool) -> Self {
        Self {
            path,
            opts,
            idle: Mutex::new(None),
            reuse,
            name_holders: true,
            gate: OnceLock::new(),
            other_mode: OnceLock::new(),
            seen: Mutex::new(None),
        }
    }

    /// As [`new`](Self::new), for a semaphore slot: `keep_open` says
    /// whether its descriptor is kept for the next sweep while the slot is
    /// not held (a semaphore keeps them for its lowest slots only, so its
    /// descriptors are bounded whatever its size), and contention errors do
    /// not look up the holder.
    pub(crate) fn slot(path: PathBuf, opts: FileOptions, keep_open: bool) -> Self {
        Self {
            name_holders: false,
            ..Self::new(path, opts, keep_open)
        }
    }

    /// The kept descriptor, if any (a semaphore's sweep tries it instead of
    /// opening the file again).
    pub(crate) fn take_idle_handle(&self) -> Option<Handle> {
        self.take_idle()
    }

    /// One non-blocking attempt on a semaphore slot with a descriptor the
    /// caller opened ([`open_handle`](Self::open_handle)) or took from the
    /// cache: the gate only if nobody of this process holds or waits for
    /// it, then the OS lock. A descriptor that does not get the lock is
    /// kept if the slot keeps one, else closed; its file's identity is
    /// remembered for the wake-ups either way.
    pub(crate) fn try_slot(&self, handle: Handle) -> Result<SlotTry> {
        let gate = self.gate();
        if gate.handoff_owed() {
            self.note_seen(handle.id);
            self.put_idle(handle);
            return Ok(SlotTry::Busy);
        }
        let Some(mut pass) = gate.try_pass(false) else {
            self.note_seen(handle.id);
            self.put_idle(handle);
            return Ok(SlotTry::Busy);
        };
        let io_err = |e| Error::io(OP_LOCK, Some(&self.path), e);
        let locked = raw::try_lock(&handle.file, Mode::Exclusive).map_err(io_err)?;
        if !handle.is_at(&self.path).map_err(io_err)? {
            // Closing unlocks, if it locked.
            return Ok(SlotTry::Replaced);
        }
        if !locked {
            self.note_seen(handle.id);
            self.put_idle(handle);
            return Ok(SlotTry::Busy);
        }
        let Handle { file, id } = self.prepare(handle)?;
        gate.granted(&mut pass);
        Ok(SlotTry::Granted(Granted {
            file,
            id,
            pass,
            waited: Duration::ZERO,
        }))
    }

    fn note_seen(&self, id: FileId) {
        *util::lock(&self.seen) = Some(id);
    }

    pub(crate) fn reuse(&self) -> bool {
        self.reuse
    }

    fn gate(&self) -> &Arc<Gate> {
        self.gate.get_or_init(|| Gate::of(&self.path))
    }

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
        let mut contender = FileContender {
            engine: self,
            mode,
            current: self.take_idle(),
            stale: 0,
            watch: None,
            fail_fast,
            timeout,
            since: None,
            announced: false,
            bell: None,
            bell_fresh: false,
            attempts: 0,
        };
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

    /// [`try_fast`](Self::try_fast) after the checks of a full
    /// acquisition, for a caller that has not built the wait yet. `None`:
    /// take the full path.
    #[cfg_attr(feature = "tracing", allow(dead_code))]
    pub(crate) fn acquire_now(&self) -> Result<Option<Granted>> {
        raw::check_path(OP_LOCK, &self.path)?;
        self.try_fast(self.opts.mode()?)
    }

    /// The common case, without reading the clock or building a wait: the
    /// gate is free, no handoff is owed, and the kept descriptor locks at
    /// once and is still the file at the path. `None`: take the full path
    /// (which repeats the attempt and reports its errors).
    fn try_fast(&self, mode: Mode) -> Result<Option<Granted>> {
        let gate = self.gate();
        if gate.handoff_owed() {
            return Ok(None);
        }
        let Some(mut pass) = gate.try_pass(mode == Mode::Shared) else {
            return Ok(None);
        };
        let Some(handle) = self.take_idle() else {
            return Ok(None);
        };
        match raw::try_lock(&handle.file, mode) {
            Ok(true) => {}
            _ => {
                self.put_idle(handle);
                return Ok(None);
            }
        }
        if !matches!(handle.is_at(&self.path), Ok(true)) {
            // Replaced under us (or unknown): closing unlocks.
            return Ok(None);
        }
        let Handle { file, id } = self.prepare(handle)?;
        gate.granted(&mut pass);
        Ok(Some(Granted {
            file,
            id,
            pass,
            waited: Duration::ZERO,
        }))
    }

    /// The contention error. `here`: the holder (or the queue ahead) is in
    /// this process — another owner of the in-process gate — so the message
    /// never blames another process for it.
    pub(crate) fn busy(&self, timeout: Duration, fail_fast: bool, here: bool) -> Error {
        self.busy_held_by(timeout, fail_fast, here, &[])
    }

    /// [`busy`](Self::busy), naming the holders of another process that
    /// the OS reported.
    fn busy_held_by(
        &self,
        timeout: Duration,
        fail_fast: bool,
        here: bool,
        holders: &[Holder],
    ) -> Error {
        let mut who = if here {
            "already locked by another owner in this process".to_string()
        } else {
            "already locked by another process".to_string()
        };
        if let Some((first, rest)) = holders.split_first() {
            who = format!("already locked by another process, {first}");
            if !rest.is_empty() {
                who.push_str(&format!(" and {} more", rest.len()));
            }
        }
        let e = Error::already_locked(OP_LOCK, Some(&self.path))
            .with_holder_pid(holders.first().map(Holder::pid));
        if fail_fast || timeout.is_zero() {
            e.with_reason(who)
        } else {
            e.with_reason(format!("{who} (waited {})", util::Rounded(timeout)))
        }
    }

    /// The processes that hold this lock file now (best effort; see
    /// [`Holder`]). Reads `/proc` on Linux, which never waits on a disk.
    pub(crate) fn holders(&self) -> Vec<Holder> {
        match crate::sys::path_id(&self.path) {
            Ok(Some(id)) => crate::file::holder::of(id),
            _ => Vec::new(),
        }
    }

    /// What wakes a waiter on this file early: a release in this process
    /// (the gate) and, once the file was opened, a close or handover by
    /// another process (its [`Watch`]).
    /// `watch`: whether to register with the OS for the file (a
    /// semaphore watches only its lowest slots).
    pub(crate) fn wake_sources(&self, watch: bool) -> (Option<Watch>, Arc<Notify>) {
        let id = self.idle_id().or(*util::lock(&self.seen));
        let watch = id.filter(|_| watch).map(|id| Watch::new(&self.path, id));
        (watch, self.gate().released_notifier())
    }

    /// Unlocks `file` and keeps it for the next acquisition (or closes
    /// it), handing the lock over to an announced waiter of another
    /// process and waking this process's waiters. A file that was read,
    /// written or sought through the guard is rewound first, so every
    /// guard starts at offset 0.
    pub(crate) fn release(
        &self,
        mut file: File,
        id: FileId,
        touched: bool,
        keep: bool,
    ) -> io::Result<()> {
        let Release {
            unlocked,
            hand_over,
            close,
        } = match self.gate.get() {
            Some(g) => g.on_release(&file, id),
            None => Release {
                unlocked: crate::sys::unlock(&file),
                hand_over: false,
                close: false,
            },
        };
        wake::released(id);
        #[cfg(feature = "tracing")]
        if hand_over {
            tracing::debug!(
                path = %self.path.display(),
                rang = !close,
                "released: handed over to a waiting process"
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = hand_over;
        // A handover that could not ring: the close (when `file` drops
        // here) is what wakes the waiters of other processes.
        let reusable = matches!(unlocked, Ok(true))
            && !close
            && self.reuse
            && keep
            && (!touched || file.seek(SeekFrom::Start(0)).is_ok());
        if reusable {
            self.put_idle(Handle { file, id });
        }
        unlocked.map(drop)
    }

    /// Truncates a freshly locked file if asked; unlocks on failure.
    /// (Reused descriptors were rewound when they were put back.)
    fn prepare(&self, handle: Handle) -> Result<Handle> {
        if !self.opts.truncate {
            return Ok(handle);
        }
        if let Err(e) = raw::check_single_link(&handle.file) {
            let _ = handle.file.unlock();
            return Err(Error::io("refusing to truncate", Some(&self.path), e));
        }
        match handle.file.set_len(0) {
            Ok(()) => Ok(handle),
            Err(e) => {
                let _ = handle.file.unlock();
                Err(Error::io(
                    "failed to prepare lock file",
                    Some(&self.path),
                    e,
                ))
            }
        }
    }

    fn idle_id(&self) -> Option<FileId> {
        util::lock(&self.idle).as_ref().map(|h| h.id)
    }

    /// Keeps an unlocked descriptor for the next acquisition.
    fn put_idle(&self, handle: Handle) {
        if self.reuse {
            let mut idle = util::lock(&self.idle);
            if idle.is_none() {
                *idle = Some(handle);
            }
        }
    }

    fn take_idle(&self) -> Option<Handle> {
        util::lock(&self.idle).take()
    }

    /// Opens the lock file on the blocking pool; locks nothing.
    pub(crate) async fn open_handle(&self) -> Result<Handle> {
        self.open().await
    }

    async fn open(&self) -> Result<Handle> {
        let path = self.path.clone();
        let mode = self.opts.open_mode();
        util::blocking(move || raw::open_lock_file(&path, mode))
            .await
            .map_err(|e| Error::io(OP_OPEN, Some(&self.path), e))
    }
}

/// One lock file as a [`Contender`]: the descriptor being tried, kept
/// between attempts, its wake-up registration, and its announcement to
/// holders in other processes.
struct FileContender<'a> {
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
    since: Option<u64>,
    /// Whether `current` carries an announcement.
    announced: bool,
    /// The doorbell registration for the announcement on `current`'s file.
    bell: Option<crate::sys::Bell>,
    /// `bell` is new since the wake-up sources were last registered.
    bell_fresh: bool,
    /// Attempts made (for diagnostics).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    attempts: u32,
}

impl FileContender<'_> {
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
