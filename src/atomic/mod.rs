//! Atomic file writes: the complete new file appears at the destination,
//! or nothing changes there.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncSeek, AsyncWrite, AsyncWriteExt, BufWriter};

mod publish;

use crate::util;
pub use publish::PublishError;
use publish::{check_destination, create, naming, publish, Temp};

const BUFFER: usize = 64 * 1024;

/// How much of a commit is made durable with `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `fsync` the file before publishing and the directory after: once
    /// `commit` returns, the file and its name survive a crash or power
    /// loss. The default.
    #[default]
    Full,
    /// `fsync` the file only (what Python portalocker does): the content
    /// is durable before it is published, but after a power loss the new
    /// name may be missing.
    File,
    /// No `fsync` at all: still atomic for other processes, but a power
    /// loss may leave the destination missing, empty or partial. For
    /// scratch data only.
    None,
}

/// Options for an atomic write. [`open_atomic`] is `AtomicOptions::new().open(path)`.
///
/// # Examples
///
/// ```
/// use portalocker::{AtomicOptions, Durability};
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("config.toml");
/// std::fs::write(&path, "old")?;
/// let mut f = AtomicOptions::new()
///     .replace(true)
///     .durability(Durability::Full)
///     .open(&path)
///     .await?;
/// f.write_all(b"new").await?;
/// f.commit().await?;
/// assert_eq!(std::fs::read_to_string(&path)?, "new");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct AtomicOptions {
    replace: bool,
    durability: Durability,
}

impl AtomicOptions {
    /// Never replace, full durability.
    pub fn new() -> Self {
        Self::default()
    }

    /// Atomically replace an existing destination instead of refusing it
    /// (write temporary, `fsync`, `rename` over, `fsync` the directory).
    /// Default false: an existing destination is `AlreadyExists`.
    pub fn replace(mut self, yes: bool) -> Self {
        self.replace = yes;
        self
    }

    /// How much to `fsync`; see [`Durability`]. Default [`Durability::Full`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Starts an atomic write to `path`.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: a dropped future leaves no file behind
    /// (a temporary file still being created on the blocking pool is
    /// removed as soon as that finishes). Parent directories it created
    /// stay.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if anything exists at `path` (even a dangling
    /// symlink) and `replace` is off; `IsADirectory` if `path` is a
    /// directory; `InvalidInput` for an empty path or a NUL byte; the OS
    /// error when the directory cannot be created or written.
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<AtomicFile> {
        check_destination(path.as_ref())?;
        let dest = std::path::absolute(path.as_ref())
            .map_err(|e| naming(path.as_ref(), "cannot start an atomic write of", e))?;
        let opts = self.clone();
        let d = dest.clone();
        let (file, guard) = util::blocking(move || create(&d, &opts))
            .await
            .map_err(|e| naming(&dest, "cannot start an atomic write of", e))?;
        let temp = guard.keep().map_or(Temp::Unnamed, Temp::Named);
        Ok(AtomicFile {
            writer: Some(BufWriter::with_capacity(
                BUFFER,
                tokio::fs::File::from_std(file),
            )),
            temp: Some(temp),
            dest,
            opts: self.clone(),
            failed: None,
        })
    }
}

/// Starts an atomic write to `path` that never replaces an existing file,
/// with full durability. See [`AtomicFile`] (how it works, limitations) and
/// [`AtomicOptions`].
///
/// # Cancel safety
///
/// This function is cancel safe: see [`AtomicOptions::open`].
///
/// # Errors
///
/// As [`AtomicOptions::open`].
///
/// # Examples
///
/// ```
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("out/report.json");
/// let mut f = portalocker::open_atomic(&path).await?;
/// f.write_all(b"{}").await?;
/// f.commit().await?; // the complete file appears, or nothing does
/// assert_eq!(std::fs::read(&path)?, b"{}");
///
/// // Never replaces: a second writer is refused.
/// let err = portalocker::open_atomic(&path).await.unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
/// # Ok(()) }
/// ```
#[doc(alias = "write_atomic")]
pub async fn open_atomic(path: impl AsRef<Path>) -> io::Result<AtomicFile> {
    AtomicOptions::new().open(path).await
}

/// A file being written atomically; implements [`AsyncWrite`] and
/// [`AsyncSeek`]. Nothing appears at the destination until
/// [`commit`](Self::commit); dropping it (or [`discard`](Self::discard))
/// throws everything away.
///
/// # How it works
///
/// 1. [`open_atomic`] checks that nothing exists at the destination
///    (unless replacing), creates missing parent directories, and creates
///    the temporary file in the destination's directory. On Linux it is an
///    *unnamed* file (`O_TMPFILE`): it has no name until it is published,
///    so a crash leaves nothing behind. Elsewhere (or on filesystems without
///    `O_TMPFILE`) it is `.portalocker.<16 random hex>.tmp`, created with
///    `O_CREAT | O_EXCL | O_NOFOLLOW`. Either way the mode is that of a
///    plain `create` (`0o666` minus the umask), except that it is never
///    world-writable, even with a umask of 0.
/// 2. Writes go to that file (buffered in memory up to 64 KiB).
/// 3. [`AtomicFile::commit`] writes what is buffered, `fsync`s the file,
///    publishes it **without replacing** anything (`linkat`, or a
///    no-clobber rename — Linux's `renameat2(RENAME_NOREPLACE)`, macOS's
///    `renameatx_np(RENAME_EXCL)` — falling back to a hard link, and on
///    filesystems without hard links to an existence check and `rename`),
///    then `fsync`s the directory so the new name survives a power loss.
///
/// # Notes and limitations
///
/// * The temporary file and the destination are in the same directory, so
///   on the same filesystem; publication is a single metadata operation.
/// * Without hard links and without `RENAME_NOREPLACE` (some FUSE, SMB or
///   NFS mounts), the no-replace check and the rename are two steps: two
///   publishers racing there may both succeed, the second replacing the
///   first (as in Python portalocker).
/// * Replacing ([`AtomicOptions::replace`]) publishes with `rename` over
///   the destination: readers see the old or the new content, never a mix.
///   A symlink at the destination is replaced, never followed.
/// * Metadata of a replaced file (owner, mode, extended attributes) is not
///   copied: the new file has the mode of a fresh `create`.
/// * A named temporary file is left behind if the process dies between its
///   creation and publication (only where `O_TMPFILE` is unavailable).
/// * On Windows, publication without replacing is a hard link (NTFS; on
///   FAT, the existence check and `rename` above), replacing is
///   `MoveFileExW(MOVEFILE_REPLACE_EXISTING)` (std's `rename`), which
///   fails while another process has the destination open without
///   `FILE_SHARE_DELETE`; the directory cannot be `fsync`ed, so
///   `Durability::Full` syncs the file only.
///
/// # Errors are `std::io::Error`
///
/// Unlike the locks, `AtomicFile` (and [`open_atomic`]) return
/// [`std::io::Result`]: it is a file — an [`AsyncWrite`](tokio::io::AsyncWrite)
/// that is written, flushed and committed in code that already speaks
/// `io::Result` (copies, serializers, `tokio::io` helpers), every failure it
/// has is an I/O failure, and the one extra fact, where the data went when
/// a `replace(false)` publication found the destination taken, travels as
/// a [`PublishError`] inside the `io::Error` (get it with
/// `err.get_ref().and_then(|e| e.downcast_ref::<PublishError>())`). Turning
/// these into [`crate::Error`] would add a wrapper without adding
/// information. In a function that returns [`crate::Result`], `?` converts
/// them ([`Error`](crate::Error) implements `From<io::Error>`, kind `Io`,
/// the source kept).
///
/// # Cancel safety
///
/// Dropping an [`AtomicFile`], or any of its futures, before `commit`
/// starts publishing discards everything: no destination, no temporary
/// file. (On Windows, a file deleted while open keeps its name until its
/// last handle closes: after a drop with a write still in flight on the
/// blocking pool, the temporary's name lingers until that write ends.) Once `commit` has handed the file to the blocking pool the
/// publication runs to its end even if the future is dropped, so the
/// destination is then either absent or complete — never partial.
#[must_use = "an AtomicFile that is not committed is discarded"]
pub struct AtomicFile {
    writer: Option<BufWriter<tokio::fs::File>>,
    temp: Option<Temp>,
    dest: PathBuf,
    opts: AtomicOptions,
    /// The first write, flush or seek error reported to the caller. Once
    /// set, `commit` publishes nothing: the file may be short or partial.
    failed: Option<io::Error>,
}

impl AtomicFile {
    /// The destination.
    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// Writes what is buffered, `fsync`s (per [`Durability`]), publishes
    /// the file at the destination and `fsync`s the directory.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the file reaches the blocking pool
    /// discards everything; after that the publication completes in the
    /// background. Either way the destination is absent or complete.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if the destination appeared since
    /// [`open_atomic`] (it is left untouched); the OS error of a failed
    /// write, `fsync` or publication.
    ///
    /// A write is acknowledged before it reaches the file, so a full disk
    /// (`ENOSPC`), a quota (`EDQUOT`), a size limit (`EFBIG`) or an I/O
    /// error may only show here: if any write, flush or seek failed —
    /// including one whose error the caller already saw and ignored — the
    /// payload is incomplete, nothing is published, the destination is
    /// untouched and the temporary file is removed. The error has the
    /// failed operation's [`io::ErrorKind`] (e.g. `StorageFull`). When publication fails the complete
    /// payload is kept in a temporary file in the same directory, named in
    /// the error message and reachable as [`PublishError::preserved`]
    /// through [`io::Error::get_ref`].
    pub async fn commit(mut self) -> io::Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Err(io::Error::other("the atomic file is closed"));
        };
        // Flushing writes what is buffered and waits for the write still in
        // flight on the blocking pool, reporting its error: a write is
        // acknowledged before it runs, so only this tells whether every byte
        // reached the file. (`into_std` would wait too, but drops the error.)
        let flushed = writer.flush().await;
        if let Some(e) = self.failed.take() {
            return Err(self.unpublished("an earlier write failed", &e));
        }
        if let Err(e) = flushed {
            return Err(self.unpublished("writing failed", &e));
        }
        let file = writer.into_inner().into_std().await;
        let temp = self.temp.take().unwrap_or(Temp::Unnamed);
        let dest = self.dest.clone();
        let opts = self.opts.clone();
        let d = dest.clone();
        util::blocking(move || publish(file, &[], temp, &d, &opts))
            .await
            .map_err(|e| naming(&dest, "failed to commit the atomic write of", e))
    }

    /// The error of a commit that publishes nothing because the payload is
    /// incomplete; the temporary file is removed when `self` drops.
    fn unpublished(&self, what: &str, e: &io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!(
                "{what} ({e}): the payload for {:?} is incomplete, so nothing was published \
                 and the destination is untouched",
                self.dest
            ),
        )
    }

    /// Remembers the first I/O error the caller saw.
    fn note<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            self.record(e);
        }
        r
    }

    fn record(&mut self, e: &io::Error) {
        if self.failed.is_none() {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
        }
    }

    /// Throws the new content away; nothing appears at the destination and
    /// no temporary file remains.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping it discards as well (once
    /// polled, the removal already runs on the blocking pool and completes
    /// there shortly after the future is dropped).
    ///
    /// # Errors
    ///
    /// The OS error of removing a named temporary file.
    pub async fn discard(mut self) -> io::Result<()> {
        drop(self.writer.take());
        match self.temp.take() {
            Some(t) => util::blocking(move || t.remove()).await,
            None => Ok(()),
        }
    }

    fn writer(&mut self) -> io::Result<Pin<&mut BufWriter<tokio::fs::File>>> {
        match self.writer.as_mut() {
            Some(w) => Ok(Pin::new(w)),
            None => Err(io::Error::other("the atomic file is closed")),
        }
    }
}

impl AsyncWrite for AtomicFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.writer() {
            Ok(w) => w.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.note(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = match this.writer() {
            Ok(w) => w.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.note(r)
    }

    /// Flushes; the file is published only by [`AtomicFile::commit`].
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl AsyncSeek for AtomicFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let r = this.writer().and_then(|w| w.start_seek(position));
        if let Err(e) = &r {
            this.record(e);
        }
        r
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        let r = match this.writer() {
            Ok(w) => w.poll_complete(cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.note(r)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(t) = self.temp.take() {
            let _ = t.remove();
        }
    }
}

impl fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicFile")
            .field("path", &self.dest)
            .field("temp", &self.temp)
            .field("options", &self.opts)
            .finish()
    }
}
