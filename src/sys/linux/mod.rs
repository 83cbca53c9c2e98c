//! What only Linux has: unnamed temporary files, a no-clobber rename,
//! inotify, the `flock` holders of a file (`/proc/locks`), and, in
//! `handoff.rs`, the cross-process handoff's announcements and doorbells.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use rustix::fs::inotify;

mod handoff;
pub(crate) use self::handoff::*;

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

/// A registered inotify watch (its watch descriptor).
pub(crate) type WatchId = i32;

/// Watches `path` (not following a symlink) for the events that can mean
/// "the lock may be free": a close (a holder that releases by closing, as
/// Python does, a holder of this crate handing over, a holder that exits
/// or dies), a change of attributes (an unlink lowers the link count), a
/// removal or a rename. `fire` runs on the watcher thread, at most once per
/// watch per [`WATCH_GAP`]. `None` when inotify is unavailable (then
/// waiters poll).
///
/// Reads and writes are not watched: a holder that reads or writes its lock
/// file through its descriptor, however often, wakes nobody. An open and
/// close by a reader does; the gap bounds what that costs a waiter.
pub(crate) fn watch(path: &Path, fire: fn(&WatchId)) -> Option<WatchId> {
    let mask = inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::CLOSE_NOWRITE
        | inotify::WatchFlags::ATTRIB
        | inotify::WatchFlags::DELETE_SELF
        | inotify::WatchFlags::MOVE_SELF
        | inotify::WatchFlags::DONT_FOLLOW;
    match inotify::add_watch(&*watches(fire)?, path, mask) {
        Ok(id) => Some(id),
        Err(e) => {
            degraded(&format!(
                "no inotify watch could be added for {path:?} ({e})"
            ));
            None
        }
    }
}

/// Says once per process that waiters of other processes' locks poll
/// instead of being woken: releases are then seen up to a `check_interval`
/// late. The usual causes are the per-user limits on inotify instances and
/// watches.
fn degraded(why: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    diag!(
        warn,
        "portalocker: {why}; waiters of locks held by other processes poll every \
         check_interval instead of being woken at the release (raise \
         fs.inotify.max_user_instances / fs.inotify.max_user_watches, or the \
         process's open-file limit)"
    );
}

/// After delivering a batch of events, the watcher thread waits this long
/// before it reads the next one, so that a file opened and closed many
/// thousand times a second wakes its waiters at most once per gap (the
/// kernel merges the events meanwhile). A release is seen at most this
/// much later; a holder of this crate that hands over stays away longer.
pub(crate) const WATCH_GAP: Duration = Duration::from_millis(1);

pub(crate) fn unwatch(id: WatchId) {
    if let Some(Some(fd)) = WATCHES.get() {
        let _ = inotify::remove_watch(&**fd, id);
    }
}

/// The process-wide inotify instance and its reader thread, started on
/// first use.
static WATCHES: OnceLock<Option<std::sync::Arc<std::os::fd::OwnedFd>>> = OnceLock::new();

fn watches(fire: fn(&WatchId)) -> Option<std::sync::Arc<std::os::fd::OwnedFd>> {
    WATCHES
        .get_or_init(|| {
            let fd = match inotify::init(inotify::CreateFlags::CLOEXEC) {
                Ok(fd) => std::sync::Arc::new(fd),
                Err(e) => {
                    degraded(&format!("inotify is unavailable ({e})"));
                    return None;
                }
            };
            let reader_fd = fd.clone();
            std::thread::Builder::new()
                .name("portalocker-inotify".into())
                .spawn(move || {
                    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
                    let mut events = inotify::Reader::new(&*reader_fd, &mut buf);
                    let mut batch: Vec<WatchId> = Vec::new();
                    loop {
                        match events.next() {
                            Ok(ev) => {
                                if !batch.contains(&ev.wd()) {
                                    batch.push(ev.wd());
                                }
                            }
                            Err(rustix::io::Errno::INTR) => continue,
                            Err(_) => break,
                        }
                        // One read's events are one batch.
                        if events.is_buffer_empty() {
                            for wd in &batch {
                                fire(wd);
                            }
                            batch.clear();
                            std::thread::sleep(WATCH_GAP);
                        }
                    }
                })
                .map_err(|e| degraded(&format!("the inotify thread could not start ({e})")))
                .ok()?;
            Some(fd)
        })
        .clone()
}

/// The `flock` holders of the file `id` listed in `/proc/locks`: (pid,
/// shared). Lines look like
/// `1: FLOCK  ADVISORY  WRITE 9643 fe:00:10010845 0 EOF` (device major and
/// minor in hex, inode in decimal); blocked waiters (`->` lines) and
/// open-file-description locks (pid -1) are skipped.
pub(crate) fn lock_holders(id: super::FileId) -> Vec<(u32, bool)> {
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let (major, minor) = (
        u64::from(rustix::fs::major(id.volume)),
        u64::from(rustix::fs::minor(id.volume)),
    );
    parse_locks(&text, major, minor, id.index)
}

fn parse_locks(text: &str, major: u64, minor: u64, inode: u64) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // id: FLOCK ADVISORY WRITE pid maj:min:ino start end
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let Ok(pid) = f[4].parse::<u32>() else {
            continue;
        };
        let mut dev = f[5].split(':');
        let (Some(ma), Some(mi), Some(ino)) = (dev.next(), dev.next(), dev.next()) else {
            continue;
        };
        let same = u64::from_str_radix(ma, 16) == Ok(major)
            && u64::from_str_radix(mi, 16) == Ok(minor)
            && ino.parse::<u64>() == Ok(inode);
        if same {
            out.push((pid, f[3] == "READ"));
        }
    }
    out
}

/// `/proc/<pid>/cmdline`, arguments joined by spaces, at most 200
/// characters; `None` when unreadable.
pub(crate) fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        return None;
    }
    Some(text.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let text = "1: FLOCK  ADVISORY  WRITE 9643 fe:00:10010845 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 9700 fe:00:10010845 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 12 08:01:77 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 13 fe:00:10010845 0 EOF\n\
                    4: FLOCK  ADVISORY  READ 14 08:01:77 0 EOF\n\
                    5: OFDLCK ADVISORY  WRITE -1 08:01:77 0 EOF\n";
        assert_eq!(super::parse_locks(text, 0xfe, 0, 10010845), [(9643, false)]);
        assert_eq!(super::parse_locks(text, 8, 1, 77), [(12, true), (14, true)]);
        assert!(super::parse_locks(text, 8, 1, 78).is_empty());
        assert!(super::parse_locks("garbage\n\n1: FLOCK", 8, 1, 77).is_empty());
    }
}
