//! The platform interface without Linux's extras, for macOS, the BSDs and
//! Windows (and for Linux built with `--cfg portalocker_portable`): no
//! unnamed temporary files (atomic writes and pid files use a named
//! temporary), an atomic no-clobber rename only on macOS
//! (`renameatx_np(RENAME_EXCL)`; elsewhere publication uses a hard link),
//! no change notification (waiters of another process's lock poll every
//! `check_interval`; waiters in this process are still woken at once).

use std::fs::File;
use std::io;
use std::path::Path;

pub(crate) fn create_unnamed(_dir: &Path, _mode: u32) -> io::Result<Option<File>> {
    Ok(None)
}

pub(crate) fn link_unnamed(_file: &File, _to: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "unnamed temporary files are not supported on this platform",
    ))
}

/// macOS: `renameatx_np(RENAME_EXCL)` (through rustix); `None` where the
/// filesystem or the system lacks it (then publication falls back to a hard
/// link).
#[cfg(target_vendor = "apple")]
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Option<io::Result<()>> {
    use rustix::fs::{RenameFlags, CWD};
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Some(Ok(())),
        Err(e) => {
            let e = io::Error::from(e);
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)
            ) {
                None
            } else {
                Some(Err(e))
            }
        }
    }
}

/// No atomic no-clobber rename here (the BSDs, Windows, portable Linux):
/// publication uses a hard link.
#[cfg(not(target_vendor = "apple"))]
pub(crate) fn rename_noreplace(_from: &Path, _to: &Path) -> Option<io::Result<()>> {
    None
}

/// A watch's name; none is ever made here (there is no watcher).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WatchId(());

pub(crate) fn watch(_path: &Path, _fire: fn(&WatchId)) -> Option<WatchId> {
    None
}

pub(crate) fn unwatch(_id: WatchId) {}

/// No lock table to read here.
pub(crate) fn lock_holders(_id: super::FileId) -> Vec<(u32, bool)> {
    Vec::new()
}

pub(crate) fn command_line(_pid: u32) -> Option<String> {
    None
}

/// No byte-range announcements here: waiters of another process poll, and
/// a holder never hands over. (On macOS and the BSDs `flock` and byte-range
/// locks are one lock, so an announcement would block the holder; Windows
/// byte-range locks are mandatory.)
pub(crate) fn handoff_capable(_file: &File) -> bool {
    false
}

pub(crate) fn wait_key() -> u64 {
    0
}

/// No doorbells here (no announcements to ring).
#[derive(Debug)]
pub(crate) struct Bell(std::convert::Infallible);

impl Bell {
    pub(crate) fn announced(_file: super::FileId, _key: u64) -> Option<Self> {
        None
    }

    pub(crate) fn notifier(&self) -> std::sync::Arc<tokio::sync::Notify> {
        match self.0 {}
    }
}

pub(crate) fn ring_announced(_file: super::FileId, _key: u64) -> bool {
    false
}

pub(crate) fn announce(_file: &File, _t: u64) -> bool {
    false
}

pub(crate) fn withdraw(_file: &File) {}

pub(crate) fn announced_before(_file: &File, _t: u64) -> bool {
    false
}

pub(crate) fn announcement_except(_file: &File, _skip: Option<u64>) -> Option<u64> {
    None
}

/// No semaphore queue here: a semaphore's waiters are woken as every
/// lock's are (see `wake`).
#[derive(Debug)]
pub(crate) struct QueuePlace(std::convert::Infallible);

impl QueuePlace {
    pub(crate) fn join(_file: File, _queue: super::FileId) -> Option<Self> {
        None
    }

    pub(crate) fn notifier(&self) -> std::sync::Arc<tokio::sync::Notify> {
        match self.0 {}
    }

    pub(crate) fn is_first(&self) -> bool {
        match self.0 {}
    }
}

pub(crate) fn open_queue(_path: &Path) -> Option<(File, super::FileId)> {
    None
}

pub(crate) fn queue_ring(_file: &File, _queue: super::FileId, _n: usize) -> usize {
    0
}
