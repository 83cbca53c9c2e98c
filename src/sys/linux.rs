//! What only Linux has: unnamed temporary files, a no-clobber rename, and
//! inotify.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

/// An unnamed temporary file in `dir` (`O_TMPFILE`), or `None` where the
/// filesystem or kernel lacks it (or `/proc`, needed to give it a name).
pub(crate) fn create_unnamed(dir: &Path, mode: u32) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags, CWD};
    if !Path::new("/proc/self/fd").is_dir() {
        return Ok(None);
    }
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    match rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(mode)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e) => {
            let e = io::Error::from(e);
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => Ok(None),
                _ => Err(e),
            }
        }
    }
}

/// Gives an unnamed file (from [`create_unnamed`]) the name `to`;
/// `AlreadyExists` if something is there.
pub(crate) fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        to,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

/// `renameat2(RENAME_NOREPLACE)`; `None` where the filesystem lacks it.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Option<io::Result<()>> {
    use rustix::fs::{RenameFlags, CWD};
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Some(Ok(())),
        Err(e) => {
            let e = io::Error::from(e);
            if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
                None
            } else {
                Some(Err(e))
            }
        }
    }
}

/// A registered inotify watch.
pub(crate) type WatchId = WatchDescriptor;

/// Watches `path` (not following a symlink) for the events a release or
/// handover causes; `fire` runs on the watcher thread for each. `None`
/// when inotify is unavailable (then waiters poll).
pub(crate) fn watch(path: &Path, fire: fn(&WatchId)) -> Option<WatchId> {
    // ACCESS: a holder hands over by setting the access time.
    let mask = WatchMask::ACCESS
        | WatchMask::CLOSE_WRITE
        | WatchMask::CLOSE_NOWRITE
        | WatchMask::ATTRIB
        | WatchMask::MODIFY
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW;
    watches(fire)?.add(path, mask).ok()
}

pub(crate) fn unwatch(id: WatchId) {
    if let Some(Some(mut w)) = WATCHES.get().cloned() {
        let _ = w.remove(id);
    }
}

/// The process-wide watch list and its reader thread, started on first use.
static WATCHES: OnceLock<Option<Watches>> = OnceLock::new();

fn watches(fire: fn(&WatchId)) -> Option<Watches> {
    WATCHES
        .get_or_init(|| {
            let mut inotify = Inotify::init().ok()?;
            let watches = inotify.watches();
            std::thread::Builder::new()
                .name("portalocker-inotify".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(events) = inotify.read_events_blocking(&mut buf) {
                        for ev in events {
                            fire(&ev.wd);
                        }
                    }
                })
                .ok()?;
            Some(watches)
        })
        .clone()
}
