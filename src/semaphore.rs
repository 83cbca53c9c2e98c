//! [`BoundedSemaphore`]: at most N holders across processes, one lock file
//! per slot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::StreamExt;

use crate::deadline::Schedule;
use crate::error::{Error, Result};
use crate::file::engine::{self, Attempt, Contender, FileOptions, SlotTry};
use crate::file::raw::{Handle, OpenMode};
use crate::file::wake::Watch;
use crate::lock::{absolute, Lock, LockGuard};
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};

const DEFAULT_NAME: &str = "bounded_semaphore";
const DEFAULT_PATTERN: &str = "{name}.{number:02d}.lock";
/// More slots than any real use needs; bounds the memory a semaphore value
/// takes (a path per slot) and the length of a sweep. Descriptors do not
/// grow with it: an acquisition tries at most 64 slot files at once (two
/// windows of 32), and between acquisitions a semaphore value keeps the
/// descriptors of its lowest 64 slots open for reuse, besides the slots its
/// permits hold (and, on Linux, one for ringing waiters and one per
/// waiting acquisition, for its place in the queue).
pub const MAX_SLOTS: usize = 10_000;
const OP: &str = "failed to acquire semaphore";

/// A counting semaphore across processes: at most `maximum` holders, each
/// holding an exclusive lock on one slot file (Python's `BoundedSemaphore`).
///
/// Defaults: name `bounded_semaphore`, directory [`std::env::temp_dir`],
/// pattern `{name}.{number:02d}.lock`, timeout 5 s, check interval 250 ms.
/// Nothing is opened until [`acquire`](Self::acquire). A sweep tries at
/// most 64 slot files at once, and between acquisitions a value keeps at
/// most 64 descriptors open for slots it does not hold (its lowest slots',
/// for reuse: a sweep that opened and closed busy slots would wake every
/// waiter by each close), and on Linux one more of its lowest slot's file,
/// to ring waiters' doorbells (below), so a 10,000-slot semaphore works
/// under the usual limit of 1,024 descriptors. Running out of descriptors is an
/// [`ErrorKind::Io`](crate::ErrorKind::Io) error at once, never contention.
///
/// # Differences from portalocker
///
/// * `fail_when_locked` means what it means for [`Lock`]: fail after the
///   first sweep that finds every slot busy (default false). Python only
///   looks at it once the timeout is spent and returns `None` when it is
///   false; here a busy semaphore at the deadline is always an error.
/// * Each [`acquire`](Self::acquire) returns its own [`BoundedSemaphorePermit`]; one
///   `BoundedSemaphore` value can hold several slots at once, like
///   `tokio::sync::Semaphore`.
/// * Slot files are opened concurrently instead of one by one (the lowest
///   free slot still wins), unusable slots are skipped instead of failing
///   the sweep, and waiters wake when a slot is released instead of at the
///   next interval.
/// * A name or pattern that would put slot files outside the directory
///   (a path separator of the platform, `..`, a drive prefix) is
///   rejected, and at most [`MAX_SLOTS`] slots are allowed.
///
/// # Examples
///
/// ```
/// use portalocker::BoundedSemaphore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let jobs = BoundedSemaphore::new(2).name("jobs").directory(dir.path());
/// let a = jobs.acquire().await?;
/// let b = jobs.acquire().await?;
/// assert_ne!(a.slot(), b.slot());
/// // A third holder is refused (here at once, with fail_when_locked).
/// let err = jobs.clone().fail_when_locked(true).acquire().await.unwrap_err();
/// assert!(err.is_already_locked());
/// drop(a);
/// let c = jobs.acquire().await?;
/// # drop((b, c));
/// # Ok(()) }
/// ```
///
/// # The on-disk protocol
///
/// Slot *n* of a semaphore is the file
/// `directory / pattern.format(name=name, number=n)`, for *n* in
/// `0..maximum`; with the default pattern `{name}.{number:02d}.lock` that is
/// `jobs.00.lock`, `jobs.01.lock`, … A permit is an exclusive `flock` on one
/// slot file. Python portalocker's `BoundedSemaphore` uses the same files,
/// so Python and Rust processes share one semaphore when they agree on the
/// name, the directory and the maximum. Slot files are never deleted.
///
/// # How a permit is found
///
/// As in Python, the **lowest free slot** wins: a sweep tries the slots in
/// ascending order. The slot files are opened concurrently, as futures on
/// the blocking pool (up to 16 ahead of the slot being tried; a file this
/// semaphore already has open is ready at once), but each non-blocking
/// lock attempt is made only once every lower slot was found busy. A slot
/// that cannot be used at all — a directory at its path, a file this user
/// may not open — is skipped for the rest of the call, so the result does
/// not depend on which open finished first; only when *no* slot is usable
/// does `acquire` fail with that error, naming the slots. While every
/// usable slot is busy the sweep repeats when a slot is released (woken by
/// the same mechanism as [`Lock`]) or at the latest every
/// `check_interval`.
///
/// Waiters in other processes are woken at a release, a few at a time
/// (Linux, local filesystems): a waiter that finds every slot busy joins
/// the semaphore's queue (a byte-range lock on the lowest slot's file, and
/// a doorbell: an abstract Unix socket of its process), and a release
/// rings the first two waiters in the queue instead of waking them all; a
/// waiter that is granted rings the next. Only the first waiter watches
/// the slot files, for releases by programs that ring no doorbell (Python
/// portalocker, `flock(1)`, a holder that dies). Waiters are therefore
/// served about in the order they came, and 100 processes on 4 slots burn
/// about 0.2 ms of CPU per grant (`benches/semaphore.rs`), not one sweep
/// per waiter per release. Elsewhere, and on network filesystems, a
/// release wakes every waiter (Linux) or waiters poll.
///
/// # Choose a private name and directory
///
/// Every program that uses the default name `bounded_semaphore` in the
/// temporary directory shares one semaphore with every other such program,
/// and temporary-directory cleaners may delete slot files while they are
/// held (the next contender then creates a fresh file and gets the slot
/// too). Use a name of your own and a long-lived directory of your own.
#[derive(Clone)]
pub struct BoundedSemaphore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Options {
    maximum: usize,
    name: String,
    named: bool,
    directory: PathBuf,
    pattern: String,
    wait: WaitOptions,
}

struct Inner {
    config: Options,
    /// The slot locks, built (and validated) on first use.
    slots: OnceLock<std::result::Result<Vec<Lock>, String>>,
    /// What rings the doorbell of the semaphore's oldest waiter when a
    /// permit is released; opened with the first window of slot files.
    ringer: OnceLock<Option<Arc<Ringer>>>,
}

/// Wakes a semaphore's waiters one at a time (Linux, local filesystems).
///
/// A waiter of this crate that finds every slot busy joins the semaphore's
/// queue ([`QueuePlace`](crate::sys::QueuePlace): a byte lock on the lowest
/// slot's file, ordered by when it began to wait, and a doorbell). Only the
/// first waiter in the queue watches the slot files for closes by other
/// processes (a release by Python portalocker, a holder that dies); the
/// others sleep until their doorbell rings or their next scheduled sweep.
/// A permit of this crate, when released, rings the first two waiters (the
/// second in case the first cannot take its turn); a waiter
/// that is granted a slot leaves the queue and rings the next one, which
/// takes a slot if one is still free, or else is now first and watches. So
/// a release wakes about one waiter per process in the queue's order,
/// instead of every waiter of every process.
#[derive(Debug)]
struct Ringer {
    /// A descriptor of the queue file that is in no queue.
    file: std::fs::File,
    id: crate::sys::FileId,
}

impl Ringer {
    /// After a release: the first two waiters, so that a first waiter
    /// that cannot take its turn (stopped by `SIGSTOP`, a debugger, a
    /// frozen cgroup) does not hold up the others.
    fn released(&self) {
        crate::sys::queue_ring(&self.file, self.id, 2);
    }

    /// After a waiter was granted a slot and left the queue: the waiter
    /// now first.
    fn pass_on(&self) {
        crate::sys::queue_ring(&self.file, self.id, 1);
    }
}

/// Rings on drop, after the permit's slot was released (fields drop in
/// order).
#[derive(Debug)]
struct RingOnDrop(Option<Arc<Ringer>>);

impl Drop for RingOnDrop {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.released();
        }
    }
}

impl Waiting for BoundedSemaphore {
    fn wait_options(&self) -> WaitOptions {
        self.inner.config.wait
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        self.map(|c| c.wait = wait)
    }
}

impl Waiting for NamedBoundedSemaphore {
    fn wait_options(&self) -> WaitOptions {
        self.0.wait_options()
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        Self(self.0.with_wait(wait))
    }
}

impl BoundedSemaphore {
    /// A semaphore with `maximum` slots and the defaults above. Never
    /// panics; `maximum == 0` is reported by [`acquire`](Self::acquire).
    pub fn new(maximum: usize) -> Self {
        Self::from_config(Options {
            maximum,
            name: DEFAULT_NAME.to_string(),
            named: false,
            directory: std::env::temp_dir(),
            pattern: DEFAULT_PATTERN.to_string(),
            wait: WaitOptions::default(),
        })
    }

    fn from_config(config: Options) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                slots: OnceLock::new(),
                ringer: OnceLock::new(),
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Options)) -> Self {
        let mut c = self.inner.config.clone();
        f(&mut c);
        Self::from_config(c)
    }

    /// The semaphore's name (default `bounded_semaphore`). Every process
    /// that shares the semaphore must use the same name.
    pub fn name(self, name: impl Into<String>) -> Self {
        self.map(|c| {
            c.name = name.into();
            c.named = true;
        })
    }

    /// Where the slot files live (default the temporary directory). It is
    /// not created; made absolute now.
    pub fn directory(self, dir: impl AsRef<Path>) -> Self {
        let dir = absolute(dir.as_ref());
        self.map(|c| c.directory = dir)
    }

    /// The slot file name pattern, in Python's format syntax (default
    /// `{name}.{number:02d}.lock`). `{name}` is the name; `{number}` is the
    /// slot number, optionally with a `:0Nd`-style spec; `{{` and `}}` are
    /// literal braces. A pattern without `{number…}` is invalid.
    pub fn filename_pattern(self, pattern: impl Into<String>) -> Self {
        let pattern = pattern.into();
        self.map(|c| c.pattern = pattern)
    }

    wait_setters!("a free slot", "false");

    /// The slot file paths, in slot order. Empty if the configuration is
    /// invalid (then [`acquire`](Self::acquire) says why).
    pub fn get_filenames(&self) -> Vec<PathBuf> {
        match self.slots() {
            Ok(slots) => slots.iter().map(|l| l.path().to_path_buf()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The slot file paths in a random order, on a fresh `Vec`.
    pub fn get_random_filenames(&self) -> Vec<PathBuf> {
        let mut names = self.get_filenames();
        for i in (1..names.len()).rev() {
            let j = (crate::util::fast_u64() % (i as u64 + 1)) as usize;
            names.swap(i, j);
        }
        names
    }

    fn slots(&self) -> Result<&[Lock]> {
        let slots = self
            .inner
            .slots
            .get_or_init(|| build_slots(&self.inner.config));
        match slots {
            Ok(v) => Ok(v),
            Err(reason) => Err(Error::invalid(OP, reason.clone())),
        }
    }

    /// Takes a free slot, waiting up to the timeout while all are busy.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. A slot is only ever taken by a
    /// non-blocking attempt immediately followed by the return of the
    /// permit, so dropping the future (mid-sweep or while waiting) holds no
    /// slot: the slot files it had open are closed with it (or kept, for
    /// the lowest 64 slots, as after any sweep), and one still being opened
    /// on the blocking pool is closed when that open finishes.
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) when every slot is
    /// still busy at the deadline (or after one sweep with
    /// `fail_when_locked`), naming any slots that were skipped as unusable;
    /// the error of the first slot (its kind and source), naming the others,
    /// when no slot is usable at all; [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// for `maximum == 0`, more than [`MAX_SLOTS`] slots, an empty or
    /// invalid name or pattern; [`ErrorKind::Io`](crate::ErrorKind::Io) for
    /// OS errors such as a missing directory, returned at once.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, as
    /// [`spawn_blocking`](tokio::task::spawn_blocking) does, and when it has
    /// to *wait* — every slot is busy and the timeout is not zero — on a
    /// runtime built without the time driver (`enable_time`), as
    /// [`tokio::time::sleep`] does. An uncontended acquisition, or one with
    /// a zero timeout, needs no timer.
    pub async fn acquire(&self) -> Result<BoundedSemaphorePermit> {
        self.acquire_with(self.inner.config.wait).await
    }

    acquire_variants!(BoundedSemaphorePermit);

    async fn acquire_with(&self, w: WaitOptions) -> Result<BoundedSemaphorePermit> {
        let slots = self.slots()?;
        let c = &self.inner.config;
        if !c.named {
            warn_default_name();
        }
        let start = tokio::time::Instant::now();
        let schedule = Schedule::new(w.timeout, w.check_interval);
        let mut sweep = Sweep {
            sem: self,
            slots,
            unusable: std::iter::repeat_with(|| None).take(slots.len()).collect(),
            watches: None,
            wait: w,
            place: None,
            joined: false,
            first: false,
            changed: false,
        };
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!(
            "acquire",
            semaphore = %c.name,
            directory = %c.directory.display(),
            maximum = c.maximum,
            timeout = ?w.timeout,
            fail_when_locked = w.fail_when_locked,
        );
        let waited = engine::wait(&mut sweep, schedule, w.fail_when_locked);
        #[cfg(feature = "tracing")]
        let waited = tracing::Instrument::instrument(waited, span.clone());
        let r = waited.await;
        #[cfg(feature = "tracing")]
        span.in_scope(|| match &r {
            Ok(p) => tracing::debug!(slot = p.slot, waited = ?start.elapsed(), "granted"),
            Err(e) => tracing::debug!(error = %e, "not acquired"),
        });
        let mut permit = r?;
        permit.waited = start.elapsed();
        Ok(permit)
    }

    fn busy(&self, waited: bool, timeout: Duration, unusable: &[Option<Error>]) -> Error {
        let c = &self.inner.config;
        let e = Error::new(crate::ErrorKind::AlreadyLocked, OP).with_path(&c.directory);
        let held = unusable.iter().filter(|u| u.is_none()).count();
        let mut reason = if held == c.maximum {
            format!("all {} slots of {:?} are held", c.maximum, c.name)
        } else {
            format!(
                "every usable slot of {:?} is held ({held} of {}); {}",
                c.name,
                c.maximum,
                describe_unusable(unusable)
            )
        };
        if waited && !timeout.is_zero() {
            reason.push_str(&format!(" (waited {})", crate::util::Rounded(timeout)));
        }
        e.with_reason(reason)
    }

    /// No slot can be used at all: the error of the first, naming the rest.
    fn none_usable(&self, unusable: &mut [Option<Error>]) -> Error {
        let c = &self.inner.config;
        let summary = describe_unusable(unusable);
        let first = unusable.iter_mut().find_map(Option::take);
        let kind = first.as_ref().map_or(crate::ErrorKind::Io, Error::kind);
        let e = Error::new(kind, OP)
            .with_path(&c.directory)
            .with_reason(format!("no slot of {:?} is usable: {summary}", c.name));
        match first {
            Some(first) => e.with_source(first),
            None => e,
        }
    }
}

/// "slot 0: …; slot 3: …" for the first few unusable slots.
fn describe_unusable(unusable: &[Option<Error>]) -> String {
    const SHOWN: usize = 3;
    let bad: Vec<String> = unusable
        .iter()
        .enumerate()
        .filter_map(|(i, u)| u.as_ref().map(|e| format!("slot {i}: {e}")))
        .collect();
    let mut out = bad
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if bad.len() > SHOWN {
        out.push_str(&format!("; and {} more unusable slots", bad.len() - SHOWN));
    }
    out
}

/// How many slot files one call on the blocking pool opens: a sweep of a
/// large semaphore costs one hop per window, not per slot.
const WINDOW: usize = 32;

/// How many windows a sweep opens ahead of the slot it is trying: enough
/// to hide the latency of the opens; with [`WINDOW`], the bound on the
/// descriptors an acquisition has open at once (64).
const WINDOWS_AHEAD: usize = 2;

/// How many of the lowest slots keep their descriptor open between
/// sweeps (busy or free; a held slot's descriptor closes on release, which
/// is what wakes other processes' waiters): a semaphore value has at most
/// this many descriptors open for slots it does not hold.
const KEEP_OPEN: usize = 64;

/// How many of the lowest slots a waiter watches for releases by other
/// processes (inotify watches are limited per user); a release of a higher
/// slot is found by the next scheduled sweep.
const WATCHED: usize = 1024;

/// The semaphore as a [`Contender`]: each attempt is one sweep, lowest
/// slot first, as Python sweeps: the slots' files are opened ahead in
/// windows on the blocking pool, but the non-blocking lock attempts are
/// made in ascending slot order, so the lowest free slot is granted. A slot
/// that fails with anything but contention (a directory there, a file this
/// user may not open) is recorded in `unusable` and skipped.
struct Sweep<'a> {
    sem: &'a BoundedSemaphore,
    slots: &'a [Lock],
    /// Slots that failed with anything but contention, skipped for the
    /// rest of this call.
    unusable: Vec<Option<Error>>,
    /// Registrations on the slots' files, kept alive while waiting.
    watches: Option<Vec<Watch>>,
    /// This call's waiting options (for the error message).
    wait: WaitOptions,
    /// This waiter's place in the semaphore's queue, from its first busy
    /// sweep (see [`Ringer`]); `None` where there is no queue.
    place: Option<crate::sys::QueuePlace>,
    /// Whether joining the queue was tried.
    joined: bool,
    /// Whether this waiter was first in the queue at its last sweep.
    first: bool,
    /// Whether the wake-up sources must be registered again.
    changed: bool,
}

impl Sweep<'_> {
    /// Joins the semaphore's queue through a descriptor of the lowest
    /// slot's file of its own (opened on the blocking pool).
    async fn join(&mut self) {
        self.joined = true;
        let path = self.slots[0].path().to_path_buf();
        let opened = crate::util::run_blocking(move || crate::sys::open_queue(&path)).await;
        self.place = opened
            .ok()
            .flatten()
            .and_then(|(file, id)| crate::sys::QueuePlace::join(file, id));
        self.changed = self.place.is_some();
    }
}

impl Contender for Sweep<'_> {
    type Granted = BoundedSemaphorePermit;

    async fn attempt(&mut self) -> Result<Attempt<BoundedSemaphorePermit>> {
        let ringer = &self.sem.inner.ringer;
        if let Some(permit) = sweep(self.slots, ringer, &mut self.unusable).await? {
            // Leave the queue, then ring the next waiter: it takes a slot
            // if one is still free, or else is now first and watches.
            if self.place.take().is_some() {
                if let Some(Some(r)) = ringer.get() {
                    r.pass_on();
                }
            }
            return Ok(Attempt::Granted(permit));
        }
        if self.unusable.iter().all(Option::is_some) {
            return Err(self.sem.none_usable(&mut self.unusable));
        }
        let waits = !self.wait.fail_when_locked && !self.wait.timeout.is_zero();
        if waits && !self.joined {
            self.join().await;
        }
        if let Some(place) = &self.place {
            let first = place.is_first();
            self.changed |= first != self.first;
            self.first = first;
        }
        if waits && self.watches.is_some() && !self.changed {
            // Nothing to register: the wait loop sleeps now.
            let place = match (&self.place, self.first) {
                (None, _) => "not queued",
                (Some(_), true) => "first",
                (Some(_), false) => "behind another",
            };
            diag!(
                trace,
                "portalocker: every slot of {:?} busy; waiting for a release (queue: {place})",
                self.sem.inner.config.name
            );
        }
        Ok(Attempt::Busy)
    }

    /// At the first busy sweep, and again when this waiter's place in the
    /// queue changes: every slot's releases in this process; its doorbell;
    /// and, unless it is in the queue behind another waiter, closes and
    /// handovers by other processes of the lowest [`WATCHED`] slots found
    /// busy (the OS limits watches per user).
    fn register(&mut self) -> Option<Vec<std::sync::Arc<tokio::sync::Notify>>> {
        if self.watches.is_some() && !self.changed {
            return None;
        }
        self.changed = false;
        let watch_files = self.place.is_none() || self.first;
        let (watches, notifiers): (Vec<_>, Vec<_>) = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, l)| l.engine.wake_sources(watch_files && i < WATCHED))
            .unzip();
        let watches: Vec<Watch> = watches.into_iter().flatten().collect();
        let mut all: Vec<_> = watches.iter().map(Watch::notifier).collect();
        all.extend(notifiers);
        all.extend(self.place.as_ref().map(crate::sys::QueuePlace::notifier));
        self.watches = Some(watches);
        Some(all)
    }

    async fn busy(&mut self, waited: bool) -> Error {
        self.sem.busy(waited, self.wait.timeout, &self.unusable)
    }
}

/// Opens the slot files of `window` in one call on the blocking pool (one
/// hop per window rather than per slot). If the sweep is dropped while it
/// runs, the files are closed when it ends.
async fn open_window(
    slots: &[Lock],
    ringer: &OnceLock<Option<Arc<Ringer>>>,
    window: Vec<usize>,
) -> Vec<(usize, Result<Handle>)> {
    // Kept descriptors (of the lowest slots) are tried as they are: a
    // sweep that opened and closed busy slots would, by each close, wake
    // every waiter of every process (an inotify close event).
    let mut kept: Vec<(usize, Result<Handle>)> = Vec::new();
    let mut jobs: Vec<(usize, PathBuf, OpenMode)> = Vec::new();
    for &i in &window {
        match slots[i].engine.take_idle_handle() {
            Some(h) => kept.push((i, Ok(h))),
            None => jobs.push((
                i,
                slots[i].path().to_path_buf(),
                slots[i].engine.opts.open_mode(),
            )),
        }
    }
    if jobs.is_empty() {
        return kept;
    }
    let to_open: Vec<usize> = jobs.iter().map(|(i, _, _)| *i).collect();
    // The ringer is opened with the first window, in the same hop.
    let queue = ringer
        .get()
        .is_none()
        .then(|| slots[0].path().to_path_buf());
    let opened = crate::util::run_blocking(move || {
        let files = jobs
            .into_iter()
            .map(|(i, path, mode)| (i, crate::file::raw::open_lock_file(&path, mode)))
            .collect::<Vec<_>>();
        (files, queue.and_then(|q| crate::sys::open_queue(&q)))
    })
    .await
    .map(|(files, queue)| {
        if let Some((file, id)) = queue {
            let _ = ringer.set(Some(Arc::new(Ringer { file, id })));
        }
        files
    });
    let as_error = |i: usize, e| Error::io(engine::OP_OPEN, Some(slots[i].path()), e);
    match opened {
        Ok(v) => kept.extend(
            v.into_iter()
                .map(|(i, r)| (i, r.map_err(|e| as_error(i, e)))),
        ),
        // The blocking pool is gone (the runtime shuts down).
        Err(e) => kept.extend(to_open.into_iter().map(|i| {
            (
                i,
                Err(as_error(i, std::io::Error::new(e.kind(), e.to_string()))),
            )
        })),
    }
    // In slot order: the lowest free slot is granted.
    kept.sort_by_key(|(i, _)| *i);
    kept
}

/// One sweep. At most [`WINDOWS_AHEAD`] × [`WINDOW`] slot files are open
/// at once (the windows being opened ahead, the one tried among them); a
/// slot that is not granted is closed at once unless it is one of the
/// lowest [`KEEP_OPEN`], whose descriptor is kept for the next sweep, so a
/// semaphore's descriptors are bounded whatever its size. Running out of descriptors (`EMFILE`,
/// `ENFILE`) ends the acquisition with that error at once: it says nothing
/// about the slot, and the slots not yet tried may be free.
async fn sweep(
    slots: &[Lock],
    ringer: &OnceLock<Option<Arc<Ringer>>>,
    unusable: &mut [Option<Error>],
) -> Result<Option<BoundedSemaphorePermit>> {
    let todo: Vec<usize> = (0..slots.len())
        .filter(|&i| unusable[i].is_none())
        .collect();
    let windows: Vec<Vec<usize>> = todo.chunks(WINDOW).map(<[usize]>::to_vec).collect();
    let mut opened = futures_util::stream::iter(windows)
        .map(|window| open_window(slots, ringer, window))
        .buffered(WINDOWS_AHEAD)
        .flat_map(futures_util::stream::iter);
    while let Some((i, opened)) = opened.next().await {
        let engine = &slots[i].engine;
        let mut handle = opened;
        // A file replaced under us is opened afresh, a few times.
        let mut tried = 0;
        let outcome = loop {
            let h = match handle {
                Ok(h) => h,
                Err(e) => break Err(e),
            };
            match engine.try_slot(h) {
                Ok(SlotTry::Replaced) if tried < 3 => {
                    tried += 1;
                    handle = engine.open_handle().await;
                }
                Ok(SlotTry::Replaced) => break Ok(None),
                Ok(SlotTry::Busy) => break Ok(None),
                Ok(SlotTry::Granted(g)) => break Ok(Some(g)),
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(Some(granted)) => {
                let ring = RingOnDrop(ringer.get().cloned().flatten());
                return Ok(Some(BoundedSemaphorePermit::new(
                    i,
                    slots[i].guard(granted),
                    ring,
                )));
            }
            Ok(None) => {}
            Err(e) if e.io_error().is_some_and(crate::sys::out_of_descriptors) => {
                let os = e.io_error().map_or_else(String::new, ToString::to_string);
                return Err(e.with_reason(format!(
                    "{os} while trying slot {i}; the slots after it were not tried \
                     (raise the open-file limit)"
                )));
            }
            Err(e) => unusable[i] = Some(e),
        }
    }
    Ok(None)
}

fn warn_default_name() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        diag!(
            warn,
            "portalocker: BoundedSemaphore uses the default name {DEFAULT_NAME:?}: every \
             program doing so shares one semaphore; set .name() and a private .directory()"
        );
    }
}

fn build_slots(c: &Options) -> std::result::Result<Vec<Lock>, String> {
    if c.maximum == 0 {
        return Err("maximum must be at least 1".into());
    }
    if c.maximum > MAX_SLOTS {
        return Err(format!("maximum {} exceeds {MAX_SLOTS} slots", c.maximum));
    }
    if c.name.is_empty() {
        return Err("the name is empty".into());
    }
    if c.directory.as_os_str().is_empty() {
        return Err("the directory is empty (use \".\" for the current directory)".into());
    }
    if c.name
        .contains(|ch| ch == '\0' || std::path::is_separator(ch))
    {
        return Err(format!(
            "the name {:?} contains a path separator or NUL",
            c.name
        ));
    }
    let pattern = Pattern::parse(&c.pattern)?;
    let opts = FileOptions {
        wait: WaitOptions {
            fail_when_locked: true,
            timeout: Duration::ZERO,
            ..WaitOptions::default()
        },
        ..FileOptions::default()
    };
    (0..c.maximum)
        .map(|n| {
            let file = pattern.format(&c.name, n);
            if !is_plain_file_name(&file) {
                return Err(format!(
                    "the pattern gives {file:?}, which is not a plain file name in the directory"
                ));
            }
            Ok(Lock::slot(c.directory.join(file), opts, n < KEEP_OPEN))
        })
        .collect()
}

/// Whether `name` names an entry of a directory and nothing else: not
/// empty, no NUL, no path separator of this platform (`/`, and `\` on
/// Windows), and a single normal path component (not `.`, `..`, a root or
/// a Windows drive prefix such as `C:x`).
fn is_plain_file_name(name: &str) -> bool {
    use std::path::{Component, Path};
    if name.contains(|ch| ch == '\0' || std::path::is_separator(ch)) {
        return false;
    }
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(n)), None) if n == name
    )
}

/// A parsed Python format string with the fields `name` and `number`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pattern(Vec<Piece>);

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Name,
    Number { width: usize, zero: bool },
}

impl Pattern {
    pub(crate) fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = |why: &str| format!("invalid filename pattern {s:?}: {why}");
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        let mut has_number = false;
        while let Some(ch) = chars.next() {
            match ch {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(bad("single '}'")),
                '{' => {
                    let mut field = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => field.push(c),
                            None => return Err(bad("unclosed '{'")),
                        }
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    let (key, spec) = field.split_once(':').unwrap_or((&field, ""));
                    match key {
                        "name" if spec.is_empty() || spec == "s" => pieces.push(Piece::Name),
                        "number" => {
                            pieces.push(parse_int_spec(spec).ok_or_else(|| {
                                bad(&format!("unsupported format spec {spec:?}"))
                            })?);
                            has_number = true;
                        }
                        _ => return Err(bad(&format!("unknown field {{{field}}}"))),
                    }
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if !has_number {
            return Err(bad(
                "it has no {number} field, so every slot would be one file",
            ));
        }
        Ok(Self(pieces))
    }

    pub(crate) fn format(&self, name: &str, number: usize) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Name => out.push_str(name),
                Piece::Number { width, zero: true } => {
                    out.push_str(&format!("{number:0width$}"));
                }
                Piece::Number { width, zero: false } => {
                    out.push_str(&format!("{number:>width$}"));
                }
            }
        }
        out
    }
}

/// `[0][width][d]`, the integer specs that make sense in a file name.
fn parse_int_spec(spec: &str) -> Option<Piece> {
    let spec = spec.strip_suffix('d').unwrap_or(spec);
    let (zero, digits) = match spec.strip_prefix('0') {
        Some(rest) => (true, rest),
        None => (false, spec),
    };
    let width = if digits.is_empty() {
        0
    } else if digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(Piece::Number { width, zero })
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("BoundedSemaphore")
            .field("maximum", &c.maximum)
            .field("name", &c.name)
            .field("directory", &c.directory)
            .field("filename_pattern", &c.pattern)
            .field("timeout", &c.wait.timeout)
            .field("check_interval", &c.wait.check_interval)
            .field("fail_when_locked", &c.wait.fail_when_locked)
            .finish()
    }
}

/// A held slot of a [`BoundedSemaphore`]; dropping it frees the slot.
///
/// Named so that it does not clash with [`tokio::sync::SemaphorePermit`]
/// in a file that uses both; [`SemaphorePermit`] is the same type under
/// the name of the API contract.
#[must_use = "if unused the slot is freed at once"]
#[clippy::has_significant_drop]
pub struct BoundedSemaphorePermit {
    slot: usize,
    guard: LockGuard,
    waited: Duration,
    /// Declared after `guard`: rings once the slot is free.
    _ring: RingOnDrop,
}

/// [`BoundedSemaphorePermit`] under the name of the API contract (and of
/// the porting notes). Prefer `BoundedSemaphorePermit` in code that also
/// uses [`tokio::sync::SemaphorePermit`].
pub type SemaphorePermit = BoundedSemaphorePermit;

impl BoundedSemaphorePermit {
    crate::lock::loss_vocabulary!();

    fn with_lock_guard<R>(&self, f: impl FnOnce(&LockGuard) -> R) -> Option<R> {
        Some(f(&self.guard))
    }

    fn new(slot: usize, mut guard: LockGuard, ring: RingOnDrop) -> Self {
        guard.close_on_release();
        Self {
            slot,
            guard,
            waited: Duration::ZERO,
            _ring: ring,
        }
    }

    /// How long the acquisition waited, from the call until a slot was
    /// granted (the sweep over the slots included).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sem = portalocker::BoundedSemaphore::new(2).name("jobs").directory(dir.path());
    /// let permit = sem.acquire().await?;
    /// println!("slot {} after {:?}", permit.slot(), permit.waited());
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The slot number, from 0.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The slot file.
    pub fn path(&self) -> &Path {
        self.guard.path()
    }

    /// Frees the slot, reporting errors.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: a dropped future frees the slot as
    /// dropping the permit does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the OS refused to unlock;
    /// the slot is freed anyway when the descriptor closes.
    pub async fn release(self) -> Result<()> {
        self.guard.release().await
    }
}

impl fmt::Debug for BoundedSemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphorePermit")
            .field("slot", &self.slot)
            .field("path", &self.path())
            .finish()
    }
}

/// A [`BoundedSemaphore`] whose default name is random
/// (`bounded_semaphore.<0..1000000>`), as Python's `NamedBoundedSemaphore`.
///
/// A random name is only useful when the very same value (or a clone) is
/// used by every cooperating task; across processes give a name.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let sem = portalocker::NamedBoundedSemaphore::new(3).directory(dir.path());
/// let permit = sem.acquire().await?;
/// assert!(permit.path().file_name().unwrap().to_str().unwrap().starts_with("bounded_semaphore."));
/// # drop(permit);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NamedBoundedSemaphore(BoundedSemaphore);

impl NamedBoundedSemaphore {
    /// A semaphore with `maximum` slots and a random name.
    pub fn new(maximum: usize) -> Self {
        let n = crate::util::fast_u64() % 1_000_001;
        // A generated name is private: no warning about a shared default.
        Self(BoundedSemaphore::new(maximum).name(format!("{DEFAULT_NAME}.{n}")))
    }

    /// See [`BoundedSemaphore::name`].
    pub fn name(self, name: impl Into<String>) -> Self {
        Self(self.0.name(name))
    }
    /// See [`BoundedSemaphore::directory`].
    pub fn directory(self, dir: impl AsRef<Path>) -> Self {
        Self(self.0.directory(dir))
    }
    /// See [`BoundedSemaphore::filename_pattern`].
    pub fn filename_pattern(self, pattern: impl Into<String>) -> Self {
        Self(self.0.filename_pattern(pattern))
    }
    wait_setters!("a free slot", "false");

    /// See [`BoundedSemaphore::get_filenames`].
    pub fn get_filenames(&self) -> Vec<PathBuf> {
        self.0.get_filenames()
    }
    /// See [`BoundedSemaphore::get_random_filenames`].
    pub fn get_random_filenames(&self) -> Vec<PathBuf> {
        self.0.get_random_filenames()
    }
    /// See [`BoundedSemaphore::acquire`].
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe, as [`BoundedSemaphore::acquire`].
    ///
    /// # Errors
    ///
    /// As [`BoundedSemaphore::acquire`].
    ///
    /// # Panics
    ///
    /// As [`BoundedSemaphore::acquire`].
    pub async fn acquire(&self) -> Result<BoundedSemaphorePermit> {
        self.0.acquire().await
    }

    acquire_variants!(BoundedSemaphorePermit);

    async fn acquire_with(&self, w: WaitOptions) -> Result<BoundedSemaphorePermit> {
        self.0.acquire_with(w).await
    }
}

impl From<NamedBoundedSemaphore> for BoundedSemaphore {
    fn from(s: NamedBoundedSemaphore) -> Self {
        s.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slot_file_names_never_leave_the_directory() {
        for ok in ["jobs.00.lock", "a", "..a", "a..", "...", "x y"] {
            assert!(is_plain_file_name(ok), "{ok:?}");
        }
        let mut bad = vec!["", ".", "..", "a/b", "/a", "a\0b"];
        if cfg!(windows) {
            bad.extend(["..\\x", "a\\b", "C:x", "C:", "\\\\srv\\s"]);
        }
        for b in bad {
            assert!(!is_plain_file_name(b), "{b:?}");
        }
    }

    use super::*;

    #[test]
    fn default_pattern_matches_python() {
        let p = Pattern::parse(DEFAULT_PATTERN).unwrap();
        assert_eq!(p.format("jobs", 0), "jobs.00.lock");
        assert_eq!(p.format("jobs", 7), "jobs.07.lock");
        assert_eq!(p.format("jobs", 123), "jobs.123.lock");
    }

    #[test]
    fn pattern_specs() {
        let cases = [
            ("{name}-{number}", "x-5"),
            ("{number:d}.{name}", "5.x"),
            ("{number:03d}", "005"),
            ("{number:3}", "  5"),
            ("{{{name}}}.{number:02}", "{x}.05"),
            ("{name:s}{number}", "x5"),
        ];
        for (pat, want) in cases {
            assert_eq!(Pattern::parse(pat).unwrap().format("x", 5), want, "{pat}");
        }
    }

    #[test]
    fn invalid_patterns() {
        for pat in [
            "{name}.lock",
            "static.lock",
            "{number",
            "{number}}x}",
            "{numbr}",
            "{number:x}",
            "{number:02f}",
            "{number:9999d}",
            "{name:>10}{number}",
            "}{number}",
        ] {
            assert!(Pattern::parse(pat).is_err(), "{pat}");
        }
    }
}

/// Randomised: strings of the characters patterns are made of.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::util::proptest_cases()))]

        #[test]
        fn valid_patterns_give_every_slot_its_own_name(s in "[{}:0123dnameumberx.]{0,48}") {
            if let Ok(p) = super::Pattern::parse(&s) {
                prop_assert_ne!(p.format("n", 3), p.format("n", 4));
            }
        }
    }
}
