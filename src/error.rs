//! The crate's error type.
//!
//! Every lock operation returns [`Error`], an opaque struct with a
//! [`kind()`](Error::kind), predicates for the common questions
//! ([`is_already_locked()`](Error::is_already_locked),
//! [`is_lock_lost()`](Error::is_lock_lost)) and context accessors
//! ([`path()`](Error::path), [`holder_pid()`](Error::holder_pid)). The
//! underlying OS error, when there is one, is [`io_error()`](Error::io_error).
//! Its text is part of the message, so (std's convention) it is not also
//! the [`source()`](std::error::Error::source): a chain report such as
//! `anyhow`'s says it once.
//!
//! # Mapping to Python portalocker
//!
//! | Python | [`ErrorKind`] |
//! | --- | --- |
//! | `AlreadyLocked` | [`ErrorKind::AlreadyLocked`] |
//! | `LockLostError` | [`ErrorKind::LockLost`] |
//! | `LockException` (backend failure, e.g. `ENOLCK`) | [`ErrorKind::Io`] |
//! | raw `OSError` from opening the file | [`ErrorKind::Io`] |
//! | `RuntimeError` / `ValueError` for invalid flags or arguments | [`ErrorKind::InvalidInput`] |
//! | `LockException('Already locked')` and other misuse | [`ErrorKind::InvalidInput`] |
//!
//! # Conversion to `std::io::Error`
//!
//! `From<Error> for std::io::Error` keeps the meaning in the
//! [`io::ErrorKind`](std::io::ErrorKind), and the original [`Error`] stays
//! reachable through [`io::Error::get_ref`](std::io::Error::get_ref):
//!
//! | [`ErrorKind`] | `io::ErrorKind` |
//! | --- | --- |
//! | `AlreadyLocked` | `WouldBlock` |
//! | `LockLost` | `ConnectionAborted` |
//! | `Io` | the kind of the underlying OS error |
//! | `InvalidInput` | `InvalidInput` |
//! | `Redis` | `Other` |
//! | `Etcd` | `Other` |
//! | `Unsupported` | `Unsupported` |

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A `Result` whose error defaults to [`portalocker::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in broad strokes. See [`Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The lock is held by someone else: at the deadline, or at once with
    /// `fail_when_locked` or `try_acquire`.
    AlreadyLocked,
    /// A held lock was revoked: a Redis lock whose subscription died, or a
    /// file lock whose file a third party removed or replaced while it was
    /// held.
    LockLost,
    /// An operating-system error: opening, locking, unlocking, writing or
    /// removing a file.
    Io,
    /// A Redis command or connection failed.
    Redis,
    /// An etcd request failed, or the cluster could not be reached
    /// (e.g. it has no quorum) before the deadline.
    Etcd,
    /// The setup is one this lock cannot be safe on, so nothing was
    /// granted: a Redis replica (a lock there is not seen by holders on
    /// the primary) or a Redis Cluster node (a subscriber count covers one
    /// node). The message says what to use instead.
    Unsupported,
    /// The arguments cannot work: invalid flags, an empty path, a path
    /// with a NUL byte, a zero-slot semaphore, a symlink where a lock file
    /// should be, misuse of an API.
    InvalidInput,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AlreadyLocked => "already locked",
            Self::LockLost => "lock lost",
            Self::Io => "I/O error",
            Self::Redis => "Redis error",
            Self::Etcd => "etcd error",
            Self::Unsupported => "unsupported setup",
            Self::InvalidInput => "invalid input",
        })
    }
}

/// The error type of every lock operation in this crate.
///
/// `Display` names the operation, the path (or channel) and the reason,
/// for example `failed to lock "/run/app.lock": already locked by another
/// process`.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    /// What was being done, e.g. "failed to lock".
    op: Cow<'static, str>,
    path: Option<PathBuf>,
    channel: Option<String>,
    /// The name of a lock that is neither a file nor a Redis channel (an
    /// etcd lock's name).
    name: Option<String>,
    holder_pid: Option<u32>,
    holder_id: Option<String>,
    /// Why it failed, in words.
    reason: Cow<'static, str>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, op: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                op: op.into(),
                path: None,
                channel: None,
                name: None,
                holder_pid: None,
                holder_id: None,
                reason: Cow::Borrowed(""),
                source: None,
            }),
        }
    }

    pub(crate) fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.inner.path = Some(path.into());
        self
    }

    #[allow(dead_code)] // set by the Redis lock
    pub(crate) fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.inner.channel = Some(channel.into());
        self
    }

    #[allow(dead_code)] // set by the etcd lock
    pub(crate) fn with_lock_name(mut self, name: impl Into<String>) -> Self {
        self.inner.name = Some(name.into());
        self
    }

    pub(crate) fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.inner.reason = reason.into();
        self
    }

    pub(crate) fn with_holder_pid(mut self, pid: Option<u32>) -> Self {
        self.inner.holder_pid = pid;
        self
    }

    #[allow(dead_code)] // set by the Redis lock
    pub(crate) fn with_holder_id(mut self, id: Option<String>) -> Self {
        self.inner.holder_id = id;
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Contention: `op` on `path` failed because another holder has it.
    pub(crate) fn already_locked(op: &'static str, path: Option<&Path>) -> Self {
        let e = Self::new(ErrorKind::AlreadyLocked, op).with_reason("already locked");
        match path {
            Some(p) => e.with_path(p),
            None => e,
        }
    }

    /// An OS error while doing `op` on `path`; the reason is the OS error's
    /// text unless the error is one we can explain better.
    pub(crate) fn io(op: &'static str, path: Option<&Path>, err: io::Error) -> Self {
        let kind = if is_invalid_path(&err) {
            ErrorKind::InvalidInput
        } else {
            ErrorKind::Io
        };
        let reason = explain_io(&err);
        let e = Self::new(kind, op).with_reason(reason).with_source(err);
        match path {
            Some(p) => e.with_path(p),
            None => e,
        }
    }

    /// Arguments that cannot work.
    pub(crate) fn invalid(op: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, op).with_reason(reason)
    }

    /// The broad category of this error.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalocker::{ErrorKind, LockFlags};
    ///
    /// let file = tempfile::tempfile()?;
    /// let err = portalocker::lock(&file, LockFlags::SHARED | LockFlags::EXCLUSIVE).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::InvalidInput);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the lock is held elsewhere (Python's `AlreadyLocked`).
    ///
    /// This is the error of an `acquire` whose timeout ran out while the
    /// lock stayed busy, and of a `try_acquire` or `fail_when_locked`
    /// attempt that met a holder.
    pub fn is_already_locked(&self) -> bool {
        self.inner.kind == ErrorKind::AlreadyLocked
    }

    /// Whether a held lock was revoked (Python's `LockLostError`): see
    /// [`ErrorKind::LockLost`].
    pub fn is_lock_lost(&self) -> bool {
        self.inner.kind == ErrorKind::LockLost
    }

    /// The pid of the current holder, when it is known: for a
    /// [`PidFileLock`], the pid read from the pid file; for a file lock held
    /// by another process on Linux, the pid the kernel lists for it (see
    /// [`Holder`](crate::Holder); the message also names its command line).
    /// `None` elsewhere. Diagnostic only: the process may have exited since.
    ///
    /// [`PidFileLock`]: crate::PidFileLock
    pub fn holder_pid(&self) -> Option<u32> {
        self.inner.holder_pid
    }

    /// For a contention error of the Redis lock: the id of a holder the
    /// probe found (32 hex characters, the suffix of its connection name
    /// `<channel>-lock-<id>`; a Python holder's `holder_id`). The message
    /// also gives its client address when the server's client list showed
    /// it. `None` when no holder answered (or for other errors).
    /// Diagnostic only: it may have released since.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # #[cfg(feature = "redis")] {
    /// let client = portalocker::redis::Client::open("redis://127.0.0.1/").unwrap();
    /// if let Err(e) = portalocker::RedisLock::new("jobs", client).try_acquire().await {
    ///     eprintln!("{e}; holder id {:?}", e.holder_id());
    /// }
    /// # } }
    /// ```
    pub fn holder_id(&self) -> Option<&str> {
        self.inner.holder_id.as_deref()
    }

    /// The file concerned, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The Redis channel concerned, for errors of the Redis lock.
    pub fn channel(&self) -> Option<&str> {
        self.inner.channel.as_deref()
    }

    /// The name of the lock concerned, for errors of the etcd lock.
    pub fn lock_name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The operating-system error behind this one, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = portalocker::Lock::new("/nonexistent-dir/app.lock")
    ///     .try_acquire()
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(err.io_error().unwrap().kind(), std::io::ErrorKind::NotFound);
    /// # }
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        let source = self.inner.source.as_deref()?;
        if let Some(io) = source.downcast_ref::<io::Error>() {
            return Some(io);
        }
        // An error that wraps another of this crate's (e.g. the first slot
        // of a semaphore none of whose slots is usable).
        source.downcast_ref::<Self>().and_then(Self::io_error)
    }
}

/// Whether `reason` names `pid` as a whole number after "pid ".
fn names_pid(reason: &str, pid: u32) -> bool {
    let needle = format!("pid {pid}");
    reason
        .match_indices(&needle)
        .any(|(at, _)| !reason[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Whether an OS error says the path can never name a lock file: invalid
/// input, a directory there, or a symbolic link (refused by `O_NOFOLLOW`
/// with `ELOOP`). Retrying or fixing permissions would not help.
fn is_invalid_path(err: &io::Error) -> bool {
    if matches!(
        err.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::IsADirectory
    ) {
        return true;
    }
    crate::sys::is_symlink_refusal(err)
}

fn explain_io(err: &io::Error) -> Cow<'static, str> {
    if crate::sys::is_symlink_refusal(err) {
        return Cow::Borrowed("the path is a symbolic link, which is never followed");
    }
    if err.kind() == io::ErrorKind::IsADirectory {
        return Cow::Borrowed("the path is a directory, not a file");
    }
    Cow::Owned(err.to_string())
}

/// Lets `?` lift an `io::Error` into this crate's error in a function that
/// returns [`Result`]: kind [`ErrorKind::Io`], the `io::Error` kept as the
/// source (so [`Error::io_error`] returns it).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use tokio::io::AsyncWriteExt;
/// let mut guard = portalocker::Lock::new(dir.path().join("owner.lock")).acquire().await?;
/// guard.write_all(b"pid 42").await?; // an io::Error becomes portalocker::Error
/// guard.release().await?;
/// # Ok(()) }
/// ```
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::new(ErrorKind::Io, "I/O error")
            .with_reason(e.to_string())
            .with_source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.write_str(&i.op)?;
        if let Some(path) = &i.path {
            write!(f, " {path:?}")?;
        } else if let Some(channel) = &i.channel {
            write!(f, " on channel {channel:?}")?;
        } else if let Some(name) = &i.name {
            write!(f, " {name:?}")?;
        }
        if !i.reason.is_empty() {
            write!(f, ": {}", i.reason)?;
        }
        // The reason may name the holder already (the OS's lock table
        // gives "pid N (command)"): the pid is said once.
        if let Some(pid) = i.holder_pid.filter(|p| !names_pid(&i.reason, *p)) {
            write!(f, " (holder pid {pid})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &i.kind).field("message", &self.to_string());
        if let Some(source) = &i.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    /// The error behind this one. Following the convention of std's own
    /// wrappers (`io::Error`), an error is *either* shown in the message
    /// *or* returned here, never both, so a report that walks the chain
    /// (`anyhow`, `eyre`) says each thing once: where the message already
    /// carries the source's text (an OS or Redis error quoted as the
    /// reason), this returns the source's own source instead. The OS error
    /// itself stays reachable through [`Error::io_error`].
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let source = self.inner.source.as_deref()?;
        let text = source.to_string();
        if !text.is_empty() && self.inner.reason.contains(&text) {
            return source.source();
        }
        Some(source as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind() {
            ErrorKind::AlreadyLocked => io::ErrorKind::WouldBlock,
            ErrorKind::LockLost => io::ErrorKind::ConnectionAborted,
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            ErrorKind::Io => err.io_error().map_or(io::ErrorKind::Other, Self::kind),
            ErrorKind::Redis | ErrorKind::Etcd => io::ErrorKind::Other,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
        };
        Self::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_path_and_reason() {
        let e = Error::already_locked("failed to lock", Some(Path::new("/run/app.lock")));
        assert_eq!(
            e.to_string(),
            "failed to lock \"/run/app.lock\": already locked"
        );
        let e = e.with_holder_pid(Some(42));
        assert_eq!(
            e.to_string(),
            "failed to lock \"/run/app.lock\": already locked (holder pid 42)"
        );
        assert_eq!(e.holder_pid(), Some(42));
        // A reason that names the holder already: the pid is said once.
        let e = Error::already_locked("failed to lock", Some(Path::new("/a")))
            .with_reason("already locked by another process, pid 42 (sleep 9)")
            .with_holder_pid(Some(42));
        assert_eq!(e.to_string().matches("42").count(), 1, "{e}");
        let e = e.with_holder_pid(Some(4));
        assert!(e.to_string().ends_with("(holder pid 4)"), "{e}");
    }

    /// std's convention: a source is shown in the message or returned by
    /// `source()`, never both, so a chain report says it once.
    #[test]
    fn a_source_is_said_once_in_a_chain() {
        use std::error::Error as _;
        let os = io::Error::from_raw_os_error(13);
        let text = os.to_string();
        let e = Error::io("failed to open lock file", Some(Path::new("/x")), os);
        let mut chain = vec![e.to_string()];
        let mut next = e.source();
        while let Some(s) = next {
            chain.push(s.to_string());
            next = s.source();
        }
        let all = chain.join(": ");
        assert_eq!(all.matches(&text).count(), 1, "{all}");
        assert_eq!(e.io_error().map(io::Error::raw_os_error), Some(Some(13)));
        // A source the message does not quote is returned.
        let inner = Error::io(
            "failed to lock",
            Some(Path::new("/y")),
            io::Error::other("disk on fire"),
        );
        let outer = Error::new(ErrorKind::Io, "failed to lock")
            .with_reason("no slot is usable")
            .with_source(inner);
        assert!(outer
            .source()
            .is_some_and(|s| s.to_string().contains("disk on fire")));
    }

    #[test]
    fn io_errors_keep_source_and_kind() {
        let os = io::Error::from(io::ErrorKind::PermissionDenied);
        let e = Error::io("failed to open lock file", Some(Path::new("/x")), os);
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.path(), Some(Path::new("/x")));
        // The OS text is in the message, so it is not the source too.
        assert!(e.to_string().contains("permission denied"), "{e}");
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            e.io_error().unwrap().kind(),
            io::ErrorKind::PermissionDenied
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        let back = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(back.kind(), ErrorKind::Io);
    }

    #[test]
    fn io_invalid_input_is_invalid_input() {
        let os = io::Error::new(io::ErrorKind::InvalidInput, "nul byte");
        let e = Error::io("failed to open lock file", None, os);
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn question_mark_lifts_io_errors_keeping_the_os_error() {
        fn read() -> Result<Vec<u8>> {
            Ok(std::fs::read("/nonexistent/portalocker-test")?)
        }
        let e = read().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(
            e.io_error().map(io::Error::kind),
            Some(io::ErrorKind::NotFound)
        );
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn io_error_mapping() {
        let cases = [
            (
                Error::already_locked("failed to lock", None),
                io::ErrorKind::WouldBlock,
            ),
            (
                Error::new(ErrorKind::LockLost, "lock lost"),
                io::ErrorKind::ConnectionAborted,
            ),
            (
                Error::invalid("bad flags", "why"),
                io::ErrorKind::InvalidInput,
            ),
            (Error::new(ErrorKind::Redis, "redis"), io::ErrorKind::Other),
            (Error::new(ErrorKind::Io, "no source"), io::ErrorKind::Other),
        ];
        for (err, want) in cases {
            let kind = err.kind();
            let io: io::Error = err.into();
            assert_eq!(io.kind(), want, "{kind:?}");
        }
    }

    #[test]
    fn predicates() {
        let e = Error::already_locked("x", None);
        assert!(e.is_already_locked() && !e.is_lock_lost());
        let e = Error::new(ErrorKind::LockLost, "x").with_channel("jobs");
        assert!(e.is_lock_lost() && !e.is_already_locked());
        assert_eq!(e.channel(), Some("jobs"));
        assert_eq!(e.to_string(), "x on channel \"jobs\"");
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static + std::error::Error>() {}
        check::<Error>();
    }
}
