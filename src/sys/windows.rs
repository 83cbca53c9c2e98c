//! Windows.
//!
//! Locks are `LockFileEx` over the whole file (std's `File::lock`
//! family). Files are opened with every share mode, including
//! `FILE_SHARE_DELETE`, so a lock file another handle has open can still be
//! deleted or renamed (a `TemporaryFileLock` removes its file on release),
//! and with `FILE_FLAG_OPEN_REPARSE_POINT`, so a symlink or junction at the
//! path is opened as itself — and then refused as "not a regular file" —
//! instead of followed. Unix permission bits do not apply: created files
//! get the directory's inherited ACL.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::OpenOptionsExt;
use std::path::Path;

use super::FileId;

const FILE_SHARE_ALL: u32 = 0x1 | 0x2 | 0x4; // READ | WRITE | DELETE
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const FILE_FLAG_BACKUP_SEMANTICS: u32 = 0x0200_0000;
const ERROR_INVALID_FUNCTION: i32 = 1;
const ERROR_NOT_SUPPORTED: i32 = 50;
const ERROR_TOO_MANY_LINKS: i32 = 1142;
const ERROR_LOCK_VIOLATION: i32 = 33;
const ERROR_CANT_RESOLVE_FILENAME: i32 = 1921;

pub(crate) fn harden(o: &mut OpenOptions, _mode: u32) {
    o.share_mode(FILE_SHARE_ALL)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
}

pub(crate) fn open_nonblocking(o: &mut OpenOptions) {
    // Opening a named pipe's client end does not block on Windows.
    o.share_mode(FILE_SHARE_ALL);
}

pub(crate) fn create_new(path: &Path, _mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .share_mode(FILE_SHARE_ALL)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)
}

fn file_id(f: &File) -> io::Result<FileId> {
    let info = winapi_util::file::information(f)?;
    Ok(FileId {
        volume: info.volume_serial_number(),
        index: info.file_index(),
    })
}

/// The identity of `f` if it is a regular file.
pub(crate) fn regular_file_id(f: &File) -> io::Result<Option<FileId>> {
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    file_id(f).map(Some)
}

pub(crate) fn path_id(path: &Path) -> io::Result<Option<FileId>> {
    // No access rights are needed to read the identity; backup semantics
    // let a directory be opened too.
    let opened = OpenOptions::new()
        .access_mode(0)
        .share_mode(FILE_SHARE_ALL)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS)
        .open(path);
    match opened {
        Ok(f) => file_id(&f).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn link_count(f: &File) -> io::Result<u64> {
    Ok(winapi_util::file::information(f)?.number_of_links())
}

/// Unlocks `f`; `true`: the handle may be kept for reuse.
///
/// std's `File::unlock` calls `UnlockFile` twice (a handle may hold a
/// shared and an exclusive lock) and expects `ERROR_NOT_LOCKED` from the
/// second call. Wine answers `ERROR_LOCK_VIOLATION` there although the
/// first call released the lock. Windows never answers that for a region
/// the handle locked, so it is taken as released — and the handle is
/// closed rather than kept (`false`), which releases every lock it could
/// still hold.
pub(crate) fn unlock(f: &File) -> io::Result<bool> {
    match f.unlock() {
        Err(e) if e.raw_os_error() == Some(ERROR_LOCK_VIOLATION) => Ok(false),
        r => r.map(|()| true),
    }
}

/// Windows refuses to open a directory as a file with "access denied";
/// say what it is instead, as Unix does with `EISDIR`.
pub(crate) fn explain_open_error(path: &Path, e: io::Error) -> io::Error {
    const ERROR_ACCESS_DENIED: i32 = 5;
    if e.raw_os_error() == Some(ERROR_ACCESS_DENIED)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    {
        return io::Error::new(io::ErrorKind::IsADirectory, "the path is a directory");
    }
    e
}

/// The process is out of handles (`ERROR_TOO_MANY_OPEN_FILES`).
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    e.raw_os_error() == Some(4)
}

pub(crate) fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_CANT_RESOLVE_FILENAME)
}

pub(crate) fn is_fsync_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_INVALID_FUNCTION)
}

/// Windows has no call that flushes a directory entry; NTFS journals it.
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

pub(crate) fn hard_links_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(ERROR_INVALID_FUNCTION | ERROR_NOT_SUPPORTED | ERROR_TOO_MANY_LINKS)
    )
}

/// Windows has no Redis address of its own (no Unix sockets in redis-rs
/// there): always `None`.
#[cfg(feature = "redis")]
pub(crate) async fn connect_local(
    _addr: &redis::ConnectionAddr,
) -> Option<io::Result<tokio::net::TcpStream>> {
    None
}
