//! The low-level, synchronous lock functions and the file helpers every
//! file-based primitive shares.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::file::flags::{LockFlags, Mode, Operation};
use crate::sys;

/// Locks `file` with `flags`, the way Python's `portalocker.lock` does.
///
/// * `EXCLUSIVE` or `SHARED` waits in the kernel until the lock is granted.
/// * With `NON_BLOCKING` added, a busy lock is reported at once as an
///   error for which [`Error::is_already_locked`] is true.
/// * `UNBLOCK` alone unlocks, as `flock(LOCK_UN)` does.
///
/// A wait interrupted by a signal is resumed.
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
/// invalid flag set (see [`LockFlags`]), [`ErrorKind::AlreadyLocked`](crate::ErrorKind::AlreadyLocked)
/// for contention with `NON_BLOCKING`, [`ErrorKind::Io`](crate::ErrorKind::Io)
/// when the OS cannot lock the file (e.g. `ENOLCK`).
///
/// # Differences from portalocker
///
/// Python 4.2+ rejects `UNBLOCK`; here `UNBLOCK` alone unlocks, as in
/// `flock(2)` and the 2.x API. `UNBLOCK` mixed with a lock bit is rejected.
///
/// # Examples
///
/// ```
/// use portalocker::{lock, unlock, LockFlags};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.lock");
/// let a = std::fs::File::create(&path)?;
/// let b = std::fs::File::open(&path)?;
///
/// lock(&a, LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING)?;
/// let err = lock(&b, LockFlags::SHARED | LockFlags::NON_BLOCKING).unwrap_err();
/// assert!(err.is_already_locked());
/// unlock(&a)?;
/// lock(&b, LockFlags::SHARED | LockFlags::NON_BLOCKING)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Notes on file locks
///
/// * Locks are **advisory**: they exclude only other lockers. A process
///   that ignores the lock can still read and write the file.
/// * On Unix the lock is `flock(2)` (through std's `File::lock` family), the
///   same lock Python portalocker takes by default, so Rust and Python
///   processes exclude each other on the same file.
/// * A `flock` lock belongs to the *open file description*: two separate
///   opens of one path conflict even inside one process, while `dup`ed or
///   `try_clone`d handles share one lock. The lock goes away on explicit
///   unlock or when the last handle to the description closes, which
///   includes the death of the process.
/// * `flock` and `fcntl`/`lockf` record locks do not see each other on
///   Linux. On NFS, `flock` is emulated with byte-range locks and a client
///   cut off past its lease can lose a lock without noticing: this crate
///   promises nothing on network filesystems.
///
/// # Blocking
///
/// [`lock`] without [`LockFlags::NON_BLOCKING`] waits inside the kernel.
/// Call it from synchronous code or `spawn_blocking`, never on an async
/// worker thread. The async locks of this crate never do.
pub fn lock(file: &File, flags: LockFlags) -> Result<()> {
    match flags.operation()? {
        Operation::Unlock => unlock(file),
        Operation::Lock {
            mode,
            non_blocking: true,
        } => match try_lock(file, mode) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::already_locked("failed to lock file", None)
                .with_reason("already locked through another open file description")),
            Err(e) => Err(Error::io("failed to lock file", None, e)),
        },
        Operation::Lock {
            mode,
            non_blocking: false,
        } => loop {
            let r = match mode {
                Mode::Exclusive => file.lock(),
                Mode::Shared => file.lock_shared(),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("failed to lock file", None, e)),
            }
        },
    }
}

/// Unlocks `file` (`flock(LOCK_UN)`). Unlocking a file that is not locked
/// succeeds.
///
/// # Errors
///
/// [`ErrorKind::Io`](crate::ErrorKind::Io) when the OS refuses; never
/// `AlreadyLocked`.
pub fn unlock(file: &File) -> Result<()> {
    sys::unlock(file)
        .map(drop)
        .map_err(|e| Error::io("failed to unlock file", None, e))
}

/// One non-blocking attempt. `Ok(false)` means contention.
pub(crate) fn try_lock(file: &File, mode: Mode) -> io::Result<bool> {
    let r = match mode {
        Mode::Exclusive => file.try_lock(),
        Mode::Shared => file.try_lock_shared(),
    };
    match r {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Turns the exclusive lock `file` holds into a shared one without
/// unlocking it in between: `flock(2)` converts a lock of one open file
/// description in place (Linux, macOS and the BSDs check for conflicts
/// and swap the lock under one lock of their own, and an exclusive holder
/// has no conflicts), and Windows lets a handle take a shared lock over
/// its own exclusive one, whose first unlock then removes the exclusive
/// one. `Ok(false)`: the OS refused the shared lock, and the exclusive one
/// may be gone.
pub(crate) fn downgrade(file: &File) -> io::Result<bool> {
    let shared = try_lock(file, Mode::Shared)?;
    #[cfg(windows)]
    if shared {
        file.unlock()?;
    }
    Ok(shared)
}

/// How a lock file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Read + append, like Python's `'a'` (plus read access).
    Append,
    /// Read + write without `O_APPEND`; the caller truncates once locked
    /// (Python's `'w'`, rewritten to `'a'` and truncated after locking).
    Write,
    /// Read-only when the file exists (a shared lock needs no write
    /// access, so it works on a read-only mount or another user's 0644
    /// file); created as with `Append` when it does not.
    Read,
}

/// An open lock file and the identity (device, inode) it had when opened,
/// which never changes for a descriptor.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) file: File,
    pub(crate) id: FileId,
}

impl Handle {
    /// Whether this descriptor's file is still the one at `path` (the
    /// symlink itself if `path` is one). A missing path is "no". One
    /// `lstat`, no `fstat`.
    pub(crate) fn is_at(&self, path: &Path) -> io::Result<bool> {
        Self::id_is_at(self.id, path)
    }

    /// Whether the file at `path` has identity `id`.
    pub(crate) fn id_is_at(id: FileId, path: &Path) -> io::Result<bool> {
        sys::is_at(id, path)
    }
}

/// Fails when `file` has other hard links: truncating or rewriting it
/// would change a file that lives under another name too.
pub(crate) fn check_single_link(file: &File) -> io::Result<()> {
    let links = sys::link_count(file)?;
    if links > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the file has {links} hard links; a planted link is never written through"),
        ));
    }
    Ok(())
}

pub(crate) use crate::sys::FileId;

/// Opens (creating if needed) a lock file without following a symlink at
/// the final component and without blocking on a FIFO, and checks that it
/// is a regular file. The descriptor is close-on-exec (std always sets
/// `O_CLOEXEC`).
///
/// An existing file the user may read but not write (another user's file,
/// or any file on a read-only mount) is opened read-only for an exclusive
/// lock too (`OpenMode::Append`): a lock needs no write access, only the
/// guard's writes do (they fail with the OS's error).
pub(crate) fn open_lock_file(path: &Path, mode: OpenMode) -> io::Result<Handle> {
    let open = |mode: OpenMode| {
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Append => o.append(true).create(true),
            OpenMode::Write => o.write(true).create(true),
            OpenMode::Read => &mut o,
        };
        sys::harden(&mut o, crate::util::SHARED_FILE_MODE);
        o.open(path).map_err(|e| sys::explain_open_error(path, e))
    };
    let file = match open(mode) {
        Err(e) if mode == OpenMode::Read && e.kind() == io::ErrorKind::NotFound => {
            open(OpenMode::Append)?
        }
        // No write access (another user's file) or no writes at all (a
        // read-only mount): an existing file still locks read-only; a
        // missing one reports the original error.
        Err(e)
            if mode == OpenMode::Append
                && matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
        {
            open(OpenMode::Read).map_err(|_| e)?
        }
        r => r?,
    };
    let Some(id) = sys::regular_file_id(&file)? else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    };
    Ok(Handle { file, id })
}

/// Rejects paths that can never name a lock file, before any I/O.
pub(crate) fn check_path(op: &'static str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid(op, "the path is empty"));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(Error::invalid(op, "the path contains a NUL byte").with_path(path));
    }
    Ok(())
}
