//! The small helpers every module shares: randomness (a cheap generator
//! for jitter, the OS's cryptographic source for names that must not be
//! guessed), temporary names, the blocking-pool wrapper, the policy for
//! poisoned locks, per-path registries, file modes and "never".

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

/// Permission bits of a created lock file or atomically written file,
/// before the umask: shared with the owner's group, never world-writable.
pub(crate) const SHARED_FILE_MODE: u32 = 0o664;

/// Permission bits of a pid file before the umask: readable by all (a pid
/// is public information), writable by the owner only.
pub(crate) const PID_FILE_MODE: u32 = 0o644;

/// About 30 years: what tokio itself treats as "never". Every deadline,
/// interval and expiry is capped at this, so no `Duration` up to
/// `Duration::MAX` overflows an `Instant`.
pub(crate) const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A duration as a person reads it in a message: two significant figures
/// at most, in the largest unit that fits (`435 µs`, `2.5 ms`, `1.2 s`,
/// `42 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`); `Duration::MAX` (and
/// anything from [`NEVER`] up) is "forever".
pub(crate) struct Rounded(pub(crate) Duration);

impl std::fmt::Display for Rounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        let frac = |v: f64, unit: &str| {
            if v < 9.95 {
                format!("{v:.1} {unit}").replace(".0 ", " ")
            } else {
                format!("{v:.0} {unit}")
            }
        };
        let both = |a: u64, ua: &str, b: u64, ub: &str| {
            if b == 0 {
                format!("{a} {ua}")
            } else {
                format!("{a} {ua} {b} {ub}")
            }
        };
        let text = if d >= NEVER {
            "forever".to_string()
        } else if d.is_zero() {
            "0 s".to_string()
        } else if d < Duration::from_millis(1) {
            format!("{} µs", d.as_micros().max(1))
        } else if d < Duration::from_secs(1) {
            frac(d.as_secs_f64() * 1e3, "ms")
        } else if secs < 60 {
            frac(d.as_secs_f64(), "s")
        } else if secs < 3_600 {
            both(secs / 60, "min", secs % 60, "s")
        } else if secs < 86_400 {
            both(secs / 3_600, "h", secs % 3_600 / 60, "min")
        } else {
            both(secs / 86_400, "d", secs % 86_400 / 3_600, "h")
        };
        f.write_str(&text)
    }
}

/// Locks `m`, using the data even if a thread panicked while holding it.
///
/// The policy for every `std` mutex in this crate: each guards a map or a
/// slot that a critical section changes in one step (an insert, a remove,
/// a swap), so a panic cannot leave it half-updated, and refusing to work
/// after someone else's panic would only spread it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on Tokio's blocking pool. A panic in `f` (or a runtime that
/// shut down under it) becomes an `io::Error` rather than unwinding into
/// the caller's task.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    run_blocking(f).await?
}

/// As [`blocking`], for a closure that does not return an `io::Result`:
/// only a panic (or a runtime shutdown) is an error.
pub(crate) async fn run_blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

/// One shared value per key in this process, created on first use and
/// dropped with its last user (the map holds weak references).
#[derive(Debug)]
pub(crate) struct PerKey<K, T> {
    map: OnceLock<Mutex<HashMap<K, Weak<T>>>>,
}

/// One shared value per path (lock file, PID file) in this process.
pub(crate) type PerPath<T> = PerKey<PathBuf, T>;

impl<K: std::hash::Hash + Eq, T: Default> PerKey<K, T> {
    pub(crate) const fn new() -> Self {
        Self {
            map: OnceLock::new(),
        }
    }

    /// The value of `key`, shared with every other user of it.
    pub(crate) fn get<Q>(&self, key: &Q) -> Arc<T>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut map = lock(self.map.get_or_init(Mutex::default));
        if let Some(v) = map.get(key).and_then(Weak::upgrade) {
            return v;
        }
        // Forget dead entries now and then, amortised over insertions.
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let v = Arc::new(T::default());
        map.insert(key.to_owned(), Arc::downgrade(&v));
        v
    }
}

/// A fast per-thread pseudo-random generator (xorshift64*), seeded from
/// std's randomly keyed hasher. Cheap and **guessable**: for jitter and
/// shuffles only, never for a name another user must not predict (use
/// [`unguessable_u64`]).
pub(crate) fn fast_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = RandomState::new().build_hasher();
            h.write_u64(u64::from(std::process::id()));
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A uniform float in `[0, 1)` from [`fast_u64`], for jitter.
pub(crate) fn unit() -> f64 {
    (fast_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Random bytes from the OS's cryptographic source (`getrandom(2)`,
/// `getentropy`, `BCryptGenRandom`, …), for names and tokens another user
/// must not predict. Should the OS refuse (it practically never does) the
/// bytes come from std's randomly keyed hasher mixed with the clock, which
/// is still unpredictable across processes, though not a cryptographic
/// guarantee.
pub(crate) fn unguessable(buf: &mut [u8]) {
    if getrandom::fill(buf).is_ok() {
        return;
    }
    for chunk in buf.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u64(fast_u64());
        let v = h.finish().to_ne_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A `u64` from [`unguessable`].
pub(crate) fn unguessable_u64() -> u64 {
    let mut b = [0u8; 8];
    unguessable(&mut b);
    u64::from_ne_bytes(b)
}

/// 32 lowercase hex digits (128 bits) from [`unguessable`].
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // Redis holder ids
pub(crate) fn unguessable_hex32() -> String {
    let mut b = [0u8; 16];
    unguessable(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Calls `create` with fresh unguessable names `<stem><16 hex>.tmp` until
/// one is free (`create` says `AlreadyExists` for a taken one); returns
/// what `create` made and the name used. Gives up after 100 collisions.
pub(crate) fn with_temp_name<T>(
    dir: &Path,
    stem: impl AsRef<std::ffi::OsStr>,
    mut create: impl FnMut(&Path) -> io::Result<T>,
) -> io::Result<(T, PathBuf)> {
    let mut last = None;
    for _ in 0..100 {
        let mut name = OsString::from(stem.as_ref());
        name.push(format!("{:016x}.tmp", unguessable_u64()));
        let path = dir.join(name);
        match create(&path) {
            Ok(v) => return Ok((v, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

#[cfg(test)]
pub(crate) fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_are_rounded_for_people() {
        use super::Rounded;
        use std::time::Duration as D;
        for (d, want) in [
            (D::ZERO, "0 s"),
            (D::from_nanos(1), "1 µs"),
            (D::from_nanos(435_066), "435 µs"),
            (D::from_micros(2_500), "2.5 ms"),
            (D::from_millis(2), "2 ms"),
            (D::from_micros(12_345), "12 ms"),
            (D::from_millis(999), "999 ms"),
            (D::from_millis(1_234), "1.2 s"),
            (D::from_millis(9_990), "10 s"),
            (D::from_secs(42), "42 s"),
            (D::from_secs(60), "1 min"),
            (D::from_secs(185), "3 min 5 s"),
            (D::from_secs(7_800), "2 h 10 min"),
            (D::from_secs(86_400 * 3 + 3_600 * 4 + 5), "3 d 4 h"),
            (D::MAX, "forever"),
        ] {
            assert_eq!(Rounded(d).to_string(), want, "{d:?}");
        }
    }

    use super::*;

    #[test]
    fn unguessable_values_differ_and_are_hex() {
        let a = unguessable_hex32();
        let b = unguessable_hex32();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_ne!(unguessable_u64(), unguessable_u64());
    }

    #[test]
    fn unit_is_in_range() {
        for _ in 0..10_000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    #[test]
    fn temp_names_retry_on_collisions_and_stop() {
        let dir = Path::new("/nonexistent-dir");
        let mut tries = 0;
        let ((), p) = with_temp_name(dir, ".x.", |_| {
            tries += 1;
            if tries < 3 {
                Err(io::Error::from(io::ErrorKind::AlreadyExists))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(tries, 3);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".x.") && name.ends_with(".tmp"), "{name}");
        assert_eq!(name.len(), ".x.".len() + 16 + 4);
        let e = with_temp_name(dir, "y", |_| -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::AlreadyExists))
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let e = with_temp_name(dir, "y", |_| -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn per_path_values_are_shared_while_used() {
        static REG: PerPath<Mutex<u32>> = PerPath::new();
        let a = REG.get(Path::new("/a"));
        *lock(&a) = 7;
        assert_eq!(*lock(&REG.get(Path::new("/a"))), 7);
        assert_eq!(*lock(&REG.get(Path::new("/b"))), 0);
        drop(a);
        assert_eq!(
            *lock(&REG.get(Path::new("/a"))),
            0,
            "dropped with its last user"
        );
    }
}
