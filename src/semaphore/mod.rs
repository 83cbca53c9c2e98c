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
use crate::file::engine::{FileOptions, SlotTry};
use crate::file::raw::{Handle, OpenMode};
use crate::file::wait::{self, Attempt, Contender};
use crate::file::wake::Watch;
use crate::lock::{absolute, Lock, LockGuard};
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};

mod pattern;
mod permit;
mod sweep;

use pattern::{is_plain_file_name, Pattern};
pub use permit::{BoundedSemaphorePermit, NamedBoundedSemaphore, SemaphorePermit};
use sweep::{Sweep, KEEP_OPEN};

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

crate::options::impl_waiting!(BoundedSemaphore, inner.config);

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
        let waited = wait::wait(&mut sweep, schedule, w.fail_when_locked);
        #[cfg(feature = "tracing")]
        let waited = tracing::Instrument::instrument(waited, span.clone());
        let r = waited.await;
        #[cfg(feature = "tracing")]
        span.in_scope(|| match &r {
            Ok(p) => tracing::debug!(slot = p.slot(), waited = ?start.elapsed(), "granted"),
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
