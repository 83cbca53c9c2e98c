//! [`PidFileLock`]: a single-instance lock that publishes the holder's pid.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::engine::FileOptions;
use crate::lock::{absolute, Lock};
use crate::options::{acquire_variants, wait_setters, WaitOptions, Waiting};
use crate::sys;
use crate::temporary::DeleteOnRelease;
use crate::util::{self, PerPath, PID_FILE_MODE};

/// A lock for single-instance daemons (Python's `PidFileLock`).
///
/// The OS lock is on `<pid_path>.lock`; the holder's pid is published in
/// `pid_path`. Contention is an error for which
/// [`is_already_locked()`](Error::is_already_locked) is true and
/// [`holder_pid()`](Error::holder_pid) is the pid read from the pid file,
/// when it is readable.
///
/// Defaults as in Python: **`fail_when_locked` true** (so the timeout only
/// matters after `fail_when_locked(false)`), timeout 5 s, check interval
/// 250 ms.
///
/// # Differences from portalocker
///
/// * Fail-closed is the only mode: contention is always an error carrying
///   `holder_pid`, like Python's `fail_closed()`. There is no "inspection
///   mode" that runs the body without the lock.
/// * The pid is published through an unguessable temporary name created
///   with `O_EXCL | O_NOFOLLOW`; a symlink at the pid path or the sidecar
///   is refused, never followed or removed.
/// * A pid that does not fit a `u32` is reported as unreadable.
///
/// # Examples
///
/// ```
/// use portalocker::PidFileLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> portalocker::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let lock = PidFileLock::new(dir.path().join("daemon.pid"));
/// let guard = lock.acquire().await?;
/// assert_eq!(lock.read_pid().await, Some(std::process::id()));
///
/// // A second instance is refused and learns who runs.
/// let err = PidFileLock::new(lock.path()).acquire().await.unwrap_err();
/// assert!(err.is_already_locked());
/// assert_eq!(err.holder_pid(), Some(std::process::id()));
/// guard.release().await?;
/// # Ok(()) }
/// ```
///
/// # Files
///
/// Two files, exactly as Python portalocker 4.4.2 uses them, so a Python
/// and a Rust daemon exclude each other and read each other's pid:
///
/// * `<pid_path>.lock`, the sidecar, carries the OS lock (`flock`);
/// * `<pid_path>` holds the holder's pid: ASCII decimal, no sign, no
///   padding, no newline. It is published atomically (a temporary file in
///   the same directory, `fsync`, then `rename` over the pid file), so a
///   reader sees the previous complete pid or the new one, never a partial
///   file.
///
/// On release both files are removed while the sidecar is still locked.
///
/// # What the pid means
///
/// The `flock` decides ownership; the pid is diagnostic only. It says who
/// *wrote* the file, not whether that process is still alive (pids are
/// reused). A holder that crashed leaves both files behind with its lock
/// released by the kernel: the next daemon simply takes the sidecar lock
/// and overwrites the stale pid.
#[derive(Clone, Debug)]
pub struct PidFileLock {
    pid_path: PathBuf,
    sidecar: Lock,
}

impl Waiting for PidFileLock {
    fn wait_options(&self) -> WaitOptions {
        self.sidecar.wait_options()
    }

    fn with_wait(self, wait: WaitOptions) -> Self {
        Self {
            sidecar: self.sidecar.with_wait(wait),
            ..self
        }
    }
}

impl PidFileLock {
    /// A pid-file lock for `pid_path`. No I/O happens here.
    pub fn new(pid_path: impl AsRef<Path>) -> Self {
        let pid_path = absolute(pid_path.as_ref());
        let mut sidecar = pid_path.clone().into_os_string();
        sidecar.push(".lock");
        let opts = FileOptions {
            wait: WaitOptions {
                fail_when_locked: true,
                ..WaitOptions::default()
            },
            ..FileOptions::default()
        };
        Self {
            sidecar: Lock::with_options(PathBuf::from(sidecar), opts, false),
            pid_path,
        }
    }

    wait_setters!("the lock", "**true**, as in Python");

    /// The absolute path of the pid file.
    pub fn path(&self) -> &Path {
        &self.pid_path
    }

    /// The absolute path of the sidecar that carries the OS lock.
    pub fn lock_path(&self) -> &Path {
        self.sidecar.path()
    }

    /// Takes the lock and publishes this process's pid.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Dropped while waiting, it holds nothing
    /// (at most an empty, unlocked sidecar it created stays behind).
    /// Dropped while the pid is being published (on the blocking pool), the
    /// publication finishes and is then rolled back: the pid file and the
    /// sidecar are removed while still locked, and the lock is released.
    ///
    /// # Errors
    ///
    /// [`is_already_locked()`](Error::is_already_locked) with
    /// [`holder_pid()`](Error::holder_pid) on contention;
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
    /// empty path, a NUL byte, or a symlink or non-file at the pid path;
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) for other OS errors. On any
    /// error nothing is left locked.
    ///
    /// # Panics
    ///
    /// As [`Lock::acquire`](crate::Lock::acquire): outside a Tokio runtime, and when it has to wait
    /// on a runtime without the time driver (`enable_time`).
    pub async fn acquire(&self) -> Result<PidFileLockGuard> {
        self.acquire_with(self.wait_options()).await
    }

    acquire_variants!(PidFileLockGuard);

    async fn acquire_with(&self, w: WaitOptions) -> Result<PidFileLockGuard> {
        crate::file::raw::check_path("failed to lock", &self.pid_path)?;
        // A publication of this process may still run on the blocking pool
        // (or roll back, its acquire cancelled) and hold the sidecar: wait
        // for it, so it is never mistaken for a holder. It ends on its own:
        // a write and a rename, or two unlinks.
        let flight = in_flight(&self.pid_path);
        drop(flight.lock().await);
        let guard = match self.sidecar.acquire_with(w).await {
            Ok(g) => g,
            Err(e) if e.is_already_locked() => {
                let pid = self.read_pid().await;
                return Err(e.with_holder_pid(pid));
            }
            Err(e) => return Err(e),
        };
        let mut held = PidFileLockGuard {
            inner: DeleteOnRelease::new(guard),
            pid_path: self.pid_path.clone(),
            tickets: std::sync::atomic::AtomicU64::new(0),
            published: std::sync::Arc::default(),
        };
        // The guard travels through the blocking task: if this future is
        // dropped meanwhile, the task's output (the guard) is dropped when
        // it finishes, which removes both files and unlocks.
        // Taken while holding the sidecar, so no other publication of this
        // process can be in flight: at most a finished one whose token is
        // being dropped.
        let token = flight.lock_owned().await;
        let joined = util::run_blocking(move || {
            remove_stale_temporaries(&held.pid_path);
            let r = publish_pid(&held.pid_path, std::process::id());
            if r.is_ok() {
                let p = held.pid_path.clone();
                held.inner.set_companion(p);
            }
            // Dropped in this order if the acquire was cancelled: the
            // rollback (held) first, then the in-flight token.
            (held, r, token)
        })
        .await;
        let (held, r, _token) =
            joined.map_err(|e| Error::io("failed to publish pid", Some(&self.pid_path), e))?;
        match r {
            Ok(()) => Ok(held),
            Err(e) => Err(Error::io("failed to publish pid", Some(&self.pid_path), e)),
        }
    }

    /// The pid in the pid file, if it is readable and valid: ASCII digits
    /// only (surrounding whitespace allowed), at most 20 of them, greater
    /// than zero. Signs, underscores, `0`, non-ASCII digits and anything
    /// else give `None`, as in Python, so the result is safe to pass to
    /// `kill`. No liveness check is made.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: it only reads.
    pub async fn read_pid(&self) -> Option<u32> {
        let path = self.pid_path.clone();
        util::run_blocking(move || read_pid_file(&path))
            .await
            .ok()
            .flatten()
    }
}

/// A held [`PidFileLock`]. Dropping it or calling
/// [`release`](Self::release) removes the pid file and the sidecar, then
/// unlocks.
#[must_use = "if unused the lock is released (and the pid file removed) at once"]
#[clippy::has_significant_drop]
pub struct PidFileLockGuard {
    inner: DeleteOnRelease,
    pid_path: PathBuf,
    /// [`set_pid`](Self::set_pid) calls, in call order.
    tickets: std::sync::atomic::AtomicU64,
    /// The newest ticket whose pid was published; held while publishing,
    /// so a publication that outlives its dropped call never overwrites a
    /// newer one.
    published: std::sync::Arc<std::sync::Mutex<u64>>,
}

impl PidFileLockGuard {
    crate::lock::loss_vocabulary!();

    /// The guard of the sidecar lock (`<pid_path>.lock`), whose removal or
    /// replacement is a loss.
    fn with_lock_guard<R>(&self, f: impl FnOnce(&crate::LockGuard) -> R) -> Option<R> {
        self.inner.lock_guard().map(f)
    }

    /// The absolute path of the pid file.
    pub fn path(&self) -> &Path {
        &self.pid_path
    }

    /// How long the acquisition waited (see [`LockGuard::waited`](crate::LockGuard::waited)).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::PidFileLock::new(dir.path().join("daemon.pid"));
    /// let guard = lock.acquire().await?;
    /// println!("single instance after {:?}", guard.waited());
    /// # Ok(()) }
    /// ```
    pub fn waited(&self) -> std::time::Duration {
        self.inner.waited()
    }

    /// The absolute path of the locked sidecar.
    pub fn lock_path(&self) -> &Path {
        self.inner.lock_path()
    }

    /// Replaces the pid in the pid file with `pid`, atomically (a new
    /// temporary file, `fsync`, `rename`), e.g. with the pid of a child
    /// that does the work, which is what operators will signal. The lock
    /// stays with this guard.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the rewrite runs on the blocking pool
    /// and ends either way; the file holds the old or the new pid, never a
    /// mix, and a rewrite whose call was dropped never overwrites the pid
    /// of a later call (rewrites run one at a time, and one older than the
    /// last published is skipped).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the file cannot be
    /// written; it then still holds the old pid.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> portalocker::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = portalocker::PidFileLock::new(dir.path().join("daemon.pid"));
    /// let guard = lock.acquire().await?;
    /// guard.set_pid(4242).await?; // the worker this process supervises
    /// assert_eq!(lock.read_pid().await, Some(4242));
    /// # Ok(()) }
    /// ```
    pub async fn set_pid(&self, pid: u32) -> Result<()> {
        let ticket = 1 + self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (path, published) = (self.pid_path.clone(), self.published.clone());
        util::blocking(move || {
            let mut last = util::lock(&published);
            if *last > ticket {
                // A later call published already: this pid is stale.
                return Ok(());
            }
            publish_pid(&path, pid)?;
            *last = ticket;
            Ok(())
        })
        .await
        .map_err(|e| Error::io("failed to publish pid", Some(&self.pid_path), e))
    }

    /// Removes the pid file and the sidecar while still locked, then
    /// unlocks.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: the files are removed before the first
    /// `.await`, and a dropped future unlocks as dropping the guard would.
    ///
    /// # Errors
    ///
    /// As [`TemporaryFileLockGuard::release`](crate::TemporaryFileLockGuard::release).
    pub async fn release(self) -> Result<()> {
        self.inner.release().await
    }
}

impl fmt::Debug for PidFileLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PidFileLockGuard")
            .field("path", &self.pid_path)
            .finish_non_exhaustive()
    }
}

/// Writes `pid` to `path` atomically: a new, unguessable temporary file in
/// the same directory (`O_EXCL`, no symlink following), `fsync`, `rename`.
fn publish_pid(path: &Path, pid: u32) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the pid file path is a symbolic link, which is never followed or replaced",
            ))
        }
        Ok(m) if !m.is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the pid file path is not a regular file",
            ))
        }
        _ => {}
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let write = |file: &mut std::fs::File| -> io::Result<()> {
        file.write_all(pid.to_string().as_bytes())?;
        sys::fsync(file)
    };
    // Where the OS has unnamed files, the content is written before the
    // file has a name: a holder killed mid-write leaves nothing behind, and
    // one killed between the link and the rename leaves a temporary that
    // the next holder removes.
    if let Some(mut file) = sys::create_unnamed(dir, PID_FILE_MODE)? {
        write(&mut file)?;
        let ((), tmp) = temp_name_beside(path, pid, |tmp| sys::link_unnamed(&file, tmp))?;
        let renamed = std::fs::rename(&tmp, path);
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return renamed;
    }
    let (mut file, tmp) = temp_name_beside(path, pid, |tmp| sys::create_new(tmp, PID_FILE_MODE))?;
    let written = write(&mut file).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Calls `create` with fresh temporary names `<pid file name>.<pid>.<16
/// hex>.tmp` beside `path` until one is free; returns what it made and
/// the name used.
fn temp_name_beside<T>(
    path: &Path,
    pid: u32,
    create: impl FnMut(&Path) -> io::Result<T>,
) -> io::Result<(T, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the pid path has no file name",
        ));
    };
    let mut stem = name.to_os_string();
    stem.push(format!(".{pid}."));
    util::with_temp_name(dir, &stem, create)
}

/// Whether `file` is a temporary name [`temp_name_beside`] makes for the
/// pid file `pid_name`: `<pid_name>.<decimal pid>.<16 hex>.tmp`.
fn is_temp_name(pid_name: &[u8], file: &[u8]) -> bool {
    let Some(rest) = file
        .strip_prefix(pid_name)
        .and_then(|r| r.strip_prefix(b"."))
        .and_then(|r| r.strip_suffix(b".tmp"))
    else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (pid, hex) = (&rest[..dot], &rest[dot + 1..]);
    !pid.is_empty()
        && pid.len() <= 10
        && pid.iter().all(u8::is_ascii_digit)
        && hex.len() == 16
        && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes the temporaries earlier holders left beside the pid file when
/// they died mid-publication. Only a holder of the sidecar lock publishes,
/// so while we hold it no such file can be in use. Best effort.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let name = name.as_encoded_bytes();
    for entry in entries.flatten() {
        let file = entry.file_name();
        if is_temp_name(name, file.as_encoded_bytes())
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// This process's publications in flight, per pid path (see `acquire`).
fn in_flight(path: &Path) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static IN_FLIGHT: PerPath<tokio::sync::Mutex<()>> = PerPath::new();
    IN_FLIGHT.get(path)
}

/// Reads and validates a pid file; never follows a symlink into a FIFO
/// or reads more than a few KiB.
fn read_pid_file(path: &Path) -> Option<u32> {
    let mut o = OpenOptions::new();
    o.read(true);
    sys::open_nonblocking(&mut o);
    let file = o.open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut raw = Vec::new();
    file.take(4096).read_to_end(&mut raw).ok()?;
    parse_pid(&raw)
}

/// Python portalocker 4.4.2's `read_pid` rules: decode as ASCII (invalid
/// bytes fail), strip whitespace, then 1 to 20 ASCII digits with a value
/// above zero. Values that do not fit a `u32` are not pids here.
pub(crate) fn parse_pid(raw: &[u8]) -> Option<u32> {
    // Python's str.strip() whitespace, restricted to ASCII.
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f);
    let start = raw.iter().position(|b| !is_space(b))?;
    let end = raw.iter().rposition(|b| !is_space(b))? + 1;
    let digits = &raw[start..end];
    if digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    u32::try_from(value).ok().filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::{is_temp_name, parse_pid};

    #[test]
    fn only_our_temporary_names_are_stale_temporaries() {
        let yes: &[&[u8]] = &[
            b"d.pid.42.0123456789abcdef.tmp",
            b"d.pid.4294967295.ffffffffffffffff.tmp",
        ];
        let no: &[&[u8]] = &[
            b"d.pid",
            b"d.pid.lock",
            b"d.pid.42.0123456789abcdef",
            b"d.pid.42.0123456789ABCDEF.tmp",
            b"d.pid.42.0123456789abcde.tmp",
            b"d.pid..0123456789abcdef.tmp",
            b"d.pid.4x.0123456789abcdef.tmp",
            b"d.pid.12345678901.0123456789abcdef.tmp",
            b"e.pid.42.0123456789abcdef.tmp",
            b"xd.pid.42.0123456789abcdef.tmp",
            b".portalocker.0123456789abcdef.tmp",
        ];
        for f in yes {
            assert!(is_temp_name(b"d.pid", f), "{}", String::from_utf8_lossy(f));
        }
        for f in no {
            assert!(!is_temp_name(b"d.pid", f), "{}", String::from_utf8_lossy(f));
        }
    }

    #[test]
    fn strict_pid_parsing() {
        let cases: &[(&[u8], Option<u32>)] = &[
            (b"16802", Some(16802)),
            (b"  42\n", Some(42)),
            (b"\t7\r\n\x0b\x0c\x1c", Some(7)),
            (b"0000123", Some(123)),
            (b"4294967295", Some(u32::MAX)),
            (b"4294967296", None),
            (b"12345678901234567890", None), // 20 digits, valid syntax, not a u32
            (b"123456789012345678901", None), // 21 digits
            (b"0", None),
            (b"000", None),
            (b"-1", None),
            (b"+5", None),
            (b"1_000", None),
            (b"12 34", None),
            (b"", None),
            (b"   ", None),
            (b"\xd9\xa1", None), // Arabic-Indic digit one, UTF-8
            (b"1\xff", None),
            (b"0x10", None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_pid(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
    }
}

/// Randomised: any bytes, biased towards what the parser cares about.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    fn pid_bytes() -> impl Strategy<Value = Vec<u8>> {
        let chars = b"0123456789 \t\n\r+-_x\x0b\x0c".to_vec();
        proptest::collection::vec(
            prop_oneof![3 => proptest::sample::select(chars), 1 => any::<u8>()],
            0..48,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::util::proptest_cases()))]

        #[test]
        fn only_plain_positive_decimals_are_pids(raw in pid_bytes()) {
            if let Some(pid) = super::parse_pid(&raw) {
                let text = String::from_utf8(raw.clone()).expect("accepted input is ASCII");
                // Python's str.strip() whitespace, ASCII part.
                let trimmed =
                    text.trim_matches(|c: char| " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f".contains(c));
                prop_assert!(trimmed.bytes().all(|b| b.is_ascii_digit()));
                prop_assert!(trimmed.len() <= 20 && pid > 0);
                prop_assert_eq!(trimmed.parse::<u64>().ok(), Some(u64::from(pid)));
            }
        }
    }
}
