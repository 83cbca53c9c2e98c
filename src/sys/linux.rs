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
