//! The per-file state behind every file-based primitive ([`Engine`]): its
//! options, the cached descriptor, the fast path and the release path. The
//! slow path of an acquisition, `Engine::acquire`, is in `wait.rs`.
//!
//! An acquisition of one lock file is, in order:
//!
//! 1. **enter** this process's gate for the file ([`Gate::enter`]): tasks
//!    of one process queue in FIFO order, and only the head touches the
//!    file;
//! 2. **wait** (`wait.rs`, over a `FileContender`): arm the wake-ups, make
//!    one non-blocking attempt, register for wake-ups at the first
//!    contention (then try once more at once, so a release in between is
//!    not missed), sleep until woken or the next scheduled attempt, until
//!    the deadline;
//! 3. **grant**: the pass is kept by the guard for as long as the lock;
//! 4. **release** ([`Engine::release`]): unlock, let the gate hand the
//!    lock over to an announced waiter of another process (it rings that
//!    waiter's doorbell, or has the descriptor closed, which wakes them
//!    all), wake this process's waiters, keep the descriptor for the next
//!    acquisition.
//!
//! The wait loop is generic over a contender: a single lock file
//! ([`Engine`]'s own) or a semaphore's sweep over its slots. Both use the
//! same schedule, wake-ups and error rules.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::file::flags::{LockFlags, Mode, Operation};
use crate::file::gate::{Gate, Pass, Release};
use crate::file::holder::Holder;
use crate::file::raw::{self, FileId, Handle, OpenMode};
use crate::file::wake::{self, Watch};
use crate::options::WaitOptions;
use crate::util;

pub(crate) const OP_LOCK: &str = "failed to lock";
pub(crate) const OP_OPEN: &str = "failed to open lock file";

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
    pub(super) name_holders: bool,
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

    pub(super) fn note_seen(&self, id: FileId) {
        *util::lock(&self.seen) = Some(id);
    }

    pub(crate) fn reuse(&self) -> bool {
        self.reuse
    }

    pub(super) fn gate(&self) -> &Arc<Gate> {
        self.gate.get_or_init(|| Gate::of(&self.path))
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
    pub(super) fn try_fast(&self, mode: Mode) -> Result<Option<Granted>> {
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
    pub(super) fn busy_held_by(
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
    pub(super) fn prepare(&self, handle: Handle) -> Result<Handle> {
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
    pub(super) fn put_idle(&self, handle: Handle) {
        if self.reuse {
            let mut idle = util::lock(&self.idle);
            if idle.is_none() {
                *idle = Some(handle);
            }
        }
    }

    pub(super) fn take_idle(&self) -> Option<Handle> {
        util::lock(&self.idle).take()
    }

    /// Opens the lock file on the blocking pool; locks nothing.
    pub(crate) async fn open_handle(&self) -> Result<Handle> {
        self.open().await
    }

    pub(super) async fn open(&self) -> Result<Handle> {
        let path = self.path.clone();
        let mode = self.opts.open_mode();
        util::blocking(move || raw::open_lock_file(&path, mode))
            .await
            .map_err(|e| Error::io(OP_OPEN, Some(&self.path), e))
    }
}
