//! The platform layer: every call that differs between operating systems,
//! behind one small interface. Nothing outside this module names a target
//! OS in a `#[cfg]`.
//!
//! * `unix.rs` — every Unix (macOS, the BSDs, Linux): `O_NOFOLLOW` and
//!   `O_NONBLOCK` opens, (device, inode) identity, `fsync` of directories.
//! * `linux/` — what only Linux has: in `mod.rs`, unnamed temporary files
//!   (`O_TMPFILE` + `linkat`), `renameat2(RENAME_NOREPLACE)`, inotify
//!   wake-ups for waiters of another process's lock and the `flock`
//!   holders of a file; in `handoff.rs`, the waiters' announcements
//!   (open-file-description byte locks), the doorbells that wake one
//!   waiter, and a semaphore's wait queue.
//! * `generic.rs` — the same interface without those: named temporary
//!   files, hard-link publication, polling waiters. macOS, the BSDs and
//!   Windows use it, and so does Linux when built with
//!   `RUSTFLAGS="--cfg portalocker_portable"`, so that CI exercises the
//!   code those platforms run.
//! * `windows.rs` — Windows: share modes that allow deleting a locked
//!   file, no reparse-point following, (volume, file index) identity.
//!
//! The interface:
//!
//! | item | meaning |
//! | --- | --- |
//! | `harden(&mut OpenOptions, mode)` | never follow a final symlink, never block on a FIFO; created files get `mode` (Unix) |
//! | `open_nonblocking(&mut OpenOptions)` | never block on a FIFO (reads that may follow symlinks) |
//! | `create_new(path, mode)` | create exclusively, never through a symlink |
//! | `regular_file_id(&File)`, `path_id(&Path)` | the identity of an open regular file, and of the file at a path (not following a final symlink) |
//! | `link_count(&File)` | hard links of an open file |
//! | `unlock(&File)` | unlock; `false` when the handle must be closed rather than kept (see `windows.rs`) |
//! | `explain_open_error(path, err)` | an open error that says what is at the path (a directory) |
//! | `is_symlink_refusal(&io::Error)` | the error of an open that refused a symlink |
//! | `out_of_descriptors(&io::Error)` | the process or system has no file descriptor left |
//! | `is_fsync_unsupported(&io::Error)` | a filesystem that cannot `fsync` |
//! | `sync_dir(&Path)` | make a new directory entry durable |
//! | `hard_links_unsupported(&io::Error)` | a filesystem without hard links |
//! | `create_unnamed`, `link_unnamed` | unnamed temporary files, where they exist |
//! | `rename_noreplace(from, to)` | an atomic no-clobber rename, where it exists (Linux `renameat2`, macOS `renameatx_np`) |
//! | `WatchId`, `watch(path, fire)`, `unwatch(id)` | change notification on a lock file, where it exists |
//! | `handoff_capable(&File)`, `wait_key()`, `announce(&File, key)`, `withdraw(&File)`, `announced_before(&File, key)`, `announcement_except(&File, skip)`, `Bell` (`announced`, `notifier`), `ring_announced(id, key)` | a waiter's announcement to a holder in another process, and the holder's ring that wakes that one waiter (Linux: open-file-description byte locks and abstract Unix sockets), where they exist |
//! | `open_queue(path)`, `QueuePlace` (`join`, `is_first`, `notifier`), `queue_ring(&File, id, n)` | a semaphore's wait queue across processes and its waiters' doorbells (Linux: open-file-description byte locks and abstract Unix sockets), where they exist |
//! | `lock_holders(id)`, `command_line(pid)` | who holds `flock` locks on a file (Linux: `/proc/locks`), and their command lines |
//! | `mount(path)` (a [`Mount`]), `local_flock_magic(magic)`, `process_start(pid)` | which filesystem a path is on (`mounts_linux.rs`: `statfs` magic and `/proc/self/mountinfo`, whatever the cfg; `mounts_bsd.rs`: `statfs` type name and `MNT_LOCAL`; `mounts_other.rs`: UNC paths on Windows), the Linux filesystems whose `flock` the kernel keeps, and when a process started (Linux: `/proc/<pid>/stat`; with the pid it names one process) |
//! | `connect_local(addr)` | (feature `redis`) a Redis address only this platform has: a Unix socket |

use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;

#[cfg(not(any(unix, windows)))]
compile_error!("portalocker supports Unix (Linux, macOS, the BSDs) and Windows");

#[cfg(all(target_os = "linux", not(portalocker_portable)))]
mod linux;
#[cfg(all(target_os = "linux", not(portalocker_portable)))]
pub(crate) use self::linux::*;

#[cfg(not(all(target_os = "linux", not(portalocker_portable))))]
mod generic;
#[cfg(not(all(target_os = "linux", not(portalocker_portable))))]
pub(crate) use self::generic::*;

// Mount tables and process start times: one file per platform family.
#[cfg_attr(target_os = "linux", path = "mounts_linux.rs")]
#[cfg_attr(
    any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ),
    path = "mounts_bsd.rs"
)]
#[cfg_attr(
    not(any(
        target_os = "linux",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    )),
    path = "mounts_other.rs"
)]
mod mounts;
pub(crate) use self::mounts::{local_flock_magic, mount, process_start};

/// What the platform says about the filesystem a path is on, unsorted:
/// `crate::filesystem` turns it into a `Filesystem` (so this layer does not
/// depend on the public type).
#[derive(Debug, Default)]
pub(crate) struct Mount {
    /// The `statfs` magic number (Linux).
    pub(crate) magic: Option<u64>,
    /// The type name (`mountinfo`, `f_fstypename`; `"smb"` for a UNC path).
    pub(crate) name: String,
    /// Whether the platform marks it local (`MNT_LOCAL`; `Some(false)` for
    /// a UNC path), where it says.
    pub(crate) local: Option<bool>,
    pub(crate) mount_point: Option<std::path::PathBuf>,
    pub(crate) options: Vec<String>,
}

/// The identity of a file: (device, inode) on Unix, (volume serial number,
/// file index) on Windows. It never changes for an open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    pub(crate) volume: u64,
    pub(crate) index: u64,
}

/// Whether the file at `path` (the symlink itself, if it is one) is the
/// file `id`; a missing path is "no".
pub(crate) fn is_at(id: FileId, path: &Path) -> io::Result<bool> {
    Ok(path_id(path)? == Some(id))
}

/// `fsync`s `f`, treating a filesystem that cannot sync as success.
pub(crate) fn fsync(f: &File) -> io::Result<()> {
    match f.sync_all() {
        Err(e) if is_fsync_unsupported(&e) => Ok(()),
        other => other,
    }
}
