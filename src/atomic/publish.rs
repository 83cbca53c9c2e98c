//! Making the temporary file and publishing it: the part of an atomic
//! write that runs on the blocking pool, and the error a failed
//! publication carries.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{AtomicOptions, Durability};
use crate::sys;
use crate::util::{self, SHARED_FILE_MODE};

/// The error inside the `io::Error` of a failed publication: the
/// destination, where the complete payload was kept, and the cause (also
/// the `source()`).
#[derive(Debug)]
pub struct PublishError {
    destination: PathBuf,
    preserved: Option<PathBuf>,
    source: io::Error,
}

impl PublishError {
    /// The destination that could not be written.
    pub fn destination(&self) -> &Path {
        &self.destination
    }

    /// Where the complete payload was kept, if it could be kept.
    pub fn preserved(&self) -> Option<&Path> {
        self.preserved.as_deref()
    }

    fn into_io(self) -> io::Error {
        io::Error::new(self.source.kind(), self)
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failed to publish {:?}: {}",
            self.destination, self.source
        )?;
        match &self.preserved {
            Some(p) => write!(f, " (payload preserved at {})", p.display()),
            None => write!(f, " (the payload could not be preserved)"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The temporary file: unnamed (`O_TMPFILE`) or at a path we created.
#[derive(Debug)]
pub(super) enum Temp {
    Unnamed,
    Named(PathBuf),
}

impl Temp {
    pub(super) fn remove(self) -> io::Result<()> {
        match self {
            Self::Unnamed => Ok(()),
            Self::Named(p) => match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }
}

/// Removes a named temporary file on drop unless kept.
pub(super) struct TempGuard(Option<PathBuf>);

impl TempGuard {
    pub(super) fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates the temporary file. A named one comes with a guard that removes
/// it when dropped: if `open_atomic`'s future is cancelled while this runs
/// on the blocking pool, the result is dropped unclaimed and the name must
/// not stay behind.
pub(super) fn create(dest: &Path, opts: &AtomicOptions) -> io::Result<(File, TempGuard)> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{dest:?} is a directory"),
            ))
        }
        Ok(_) if !opts.replace => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{dest:?} already exists"),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = parent(dest)?;
    std::fs::create_dir_all(dir)?;
    if let Some(file) = sys::create_unnamed(dir, SHARED_FILE_MODE)? {
        return Ok((file, TempGuard(None)));
    }
    let (path, file) = create_named(dir)?;
    Ok((file, TempGuard(Some(path))))
}

/// Rejects, before any I/O, destinations that can never name a file: an
/// empty path, a NUL byte, a trailing separator (`dir/new/` names a
/// directory) or a last component of `.` or `..`.
pub(super) fn check_destination(path: &Path) -> io::Result<()> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let why = if bytes.is_empty() {
        "the path is empty"
    } else if bytes.contains(&0) {
        "the path contains a NUL byte"
    } else if bytes
        .last()
        .is_some_and(|&b| std::path::is_separator(char::from(b)))
    {
        "the path ends with a separator, so it names a directory, not a file"
    } else if path.file_name().is_none()
        || bytes == b"."
        || bytes
            .strip_suffix(b".")
            .and_then(<[u8]>::last)
            .is_some_and(|&b| std::path::is_separator(char::from(b)))
    {
        "the path has no file name (it ends in `.` or `..`)"
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cannot write {path:?} atomically: {why}"),
    ))
}

/// `e`, with a message that names `path` (`what {path:?}: {e}`) unless it
/// names it already. The kind is kept; the OS's text is in the message, so
/// (std's convention) it is not repeated as a `source()`.
pub(super) fn naming(path: &Path, what: &str, e: io::Error) -> io::Error {
    let text = e.to_string();
    if text.contains(&format!("{path:?}")) {
        return e;
    }
    io::Error::new(e.kind(), format!("{what} {path:?}: {text}"))
}

pub(super) fn parent(dest: &Path) -> io::Result<&Path> {
    dest.parent().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{dest:?} has no parent directory"),
        )
    })
}

/// The stem of a named temporary file: `.portalocker.<16 hex>.tmp`.
pub(crate) const TEMP_STEM: &str = ".portalocker.";

/// `.portalocker.<16 unguessable hex>.tmp` in `dir`, created exclusively.
pub(super) fn create_named(dir: &Path) -> io::Result<(PathBuf, File)> {
    let (file, path) =
        util::with_temp_name(dir, TEMP_STEM, |p| sys::create_new(p, SHARED_FILE_MODE))?;
    Ok((path, file))
}

pub(super) fn publish(
    mut file: File,
    pending: &[u8],
    temp: Temp,
    dest: &Path,
    opts: &AtomicOptions,
) -> io::Result<()> {
    // Until published, a named temporary file is removed on any error: an
    // incomplete payload is never kept.
    let (named, guard) = match temp {
        Temp::Unnamed => (false, TempGuard(None)),
        Temp::Named(p) => (true, TempGuard(Some(p))),
    };
    file.write_all(pending)?;
    if opts.durability != Durability::None {
        sys::fsync(&file)?;
    }
    // From here on the payload is complete: a failed publication keeps it.
    let published = if named {
        let temp = guard.0.clone().unwrap_or_default();
        let r = if opts.replace {
            std::fs::rename(&temp, dest)
        } else {
            publish_named_noreplace(&temp, dest)
        };
        match r {
            Ok(()) => {
                guard.keep();
                Ok(())
            }
            Err(e) => Err(PublishError {
                destination: dest.to_path_buf(),
                preserved: guard.keep(),
                source: e,
            }),
        }
    } else {
        drop(guard);
        publish_unnamed(&file, dest, opts.replace)
    };
    published.map_err(PublishError::into_io)?;
    if opts.durability == Durability::Full {
        sys::sync_dir(parent(dest)?).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("published {dest:?}, but syncing its directory failed: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Gives the unnamed file its name: `linkat` refuses an existing
/// destination. Replacing links it to a temporary name first, then renames
/// that over the destination.
pub(super) fn publish_unnamed(file: &File, dest: &Path, replace: bool) -> Result<(), PublishError> {
    let link_to = |to: &Path| sys::link_unnamed(file, to);
    let dir = dest.parent().unwrap_or(Path::new("/"));
    // Keeps the complete payload under a new name in `dir`.
    let preserve = || -> Option<PathBuf> {
        util::with_temp_name(dir, TEMP_STEM, link_to)
            .ok()
            .map(|((), p)| p)
    };
    let fail = |source: io::Error, preserved| PublishError {
        destination: dest.to_path_buf(),
        preserved,
        source,
    };
    if !replace {
        return link_to(dest).map_err(|e| fail(e, preserve()));
    }
    let temp = preserve().ok_or_else(|| {
        fail(
            io::Error::other("cannot link the temporary file into the directory"),
            None,
        )
    })?;
    std::fs::rename(&temp, dest).map_err(|e| fail(e, Some(temp)))
}

/// Publishes `temp` at `dest` without replacing: an atomic no-clobber
/// rename where the platform has one, else a hard link (then the temporary
/// name is removed), else — on filesystems without hard links — an
/// existence check and `rename`.
pub(super) fn publish_named_noreplace(temp: &Path, dest: &Path) -> io::Result<()> {
    if let Some(r) = sys::rename_noreplace(temp, dest) {
        return r;
    }
    match std::fs::hard_link(temp, dest) {
        Ok(()) => {
            let _ = std::fs::remove_file(temp);
            Ok(())
        }
        Err(e) if sys::hard_links_unsupported(&e) => {
            if std::fs::symlink_metadata(dest).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{dest:?} already exists ({e})"),
                ));
            }
            std::fs::rename(temp, dest)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    //! The named-temporary-file path, used where `O_TMPFILE` is missing.
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn named_publish(dir: &Path, dest: &Path, opts: &AtomicOptions, data: &[u8]) -> io::Result<()> {
        let (path, file) = create_named(dir)?;
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with(".portalocker.") && name.len() == 33,
            "{name}"
        );
        publish(file, data, Temp::Named(path), dest, opts)
    }

    #[test]
    fn named_temporary_publishes_without_replacing() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        named_publish(d.path(), &dest, &AtomicOptions::new(), b"one").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        assert_eq!(names(d.path()), ["dest"]);

        let err = named_publish(d.path(), &dest, &AtomicOptions::new(), b"two").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        let kept = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<PublishError>())
            .and_then(PublishError::preserved)
            .unwrap()
            .to_path_buf();
        assert_eq!(std::fs::read(&kept).unwrap(), b"two");
    }

    #[test]
    fn named_temporary_replaces_and_leaves_no_litter() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        std::fs::write(&dest, b"old").unwrap();
        let opts = AtomicOptions::new()
            .replace(true)
            .durability(Durability::None);
        named_publish(d.path(), &dest, &opts, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(names(d.path()), ["dest"]);
    }

    #[test]
    fn a_failed_write_removes_the_named_temporary() {
        let d = tempfile::tempdir().unwrap();
        let (path, file) = create_named(d.path()).unwrap();
        // A read-only descriptor: the write fails before anything is published.
        drop(file);
        let ro = File::open(&path).unwrap();
        let err = publish(
            ro,
            b"data",
            Temp::Named(path),
            &d.path().join("x"),
            &AtomicOptions::new(),
        )
        .unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));
    }
}
