//! Every Unix: macOS, the BSDs and Linux.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::FileId;

pub(crate) fn harden(o: &mut OpenOptions, mode: u32) {
    o.mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
}

pub(crate) fn open_nonblocking(o: &mut OpenOptions) {
    o.custom_flags(libc::O_NONBLOCK);
}

pub(crate) fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn id_of(m: &std::fs::Metadata) -> FileId {
    FileId {
        volume: m.dev(),
        index: m.ino(),
    }
}

/// The identity of `f` if it is a regular file (one `fstat`).
pub(crate) fn regular_file_id(f: &File) -> io::Result<Option<FileId>> {
    let m = f.metadata()?;
    Ok(m.is_file().then(|| id_of(&m)))
}

pub(crate) fn path_id(path: &Path) -> io::Result<Option<FileId>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(id_of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn link_count(f: &File) -> io::Result<u64> {
    Ok(f.metadata()?.nlink())
}

/// Unlocks `f`; `true`: the handle may be kept for reuse.
pub(crate) fn unlock(f: &File) -> io::Result<bool> {
    f.unlock().map(|()| true)
}

/// Unix errors already say what is at the path (`EISDIR`, `ELOOP`).
pub(crate) fn explain_open_error(_path: &Path, e: io::Error) -> io::Error {
    e
}

/// The process or the system is out of file descriptors.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

pub(crate) fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

pub(crate) fn is_fsync_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    super::fsync(&File::open(dir)?)
}

pub(crate) fn hard_links_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::ENOTSUP | libc::EMLINK)
    ) || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Connects to a Redis address only this platform has (a Unix socket);
/// `None` for any other address.
#[cfg(feature = "redis")]
pub(crate) async fn connect_local(
    addr: &redis::ConnectionAddr,
) -> Option<io::Result<tokio::net::UnixStream>> {
    match addr {
        redis::ConnectionAddr::Unix(path) => Some(tokio::net::UnixStream::connect(path).await),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_symlink_is_recognised_and_explained() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink(d.path().join("target"), &link).unwrap();
        let mut o = OpenOptions::new();
        o.read(true).append(true).create(true);
        harden(&mut o, 0o600);
        let err = o.open(&link).unwrap_err();
        assert!(is_symlink_refusal(&err), "{err}");
        assert!(!d.path().join("target").exists(), "followed the symlink");
        let e = crate::Error::io("failed to open lock file", Some(&link), err);
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
