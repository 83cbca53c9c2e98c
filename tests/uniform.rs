//! The same acquisition API on every file primitive: `try_acquire` never
//! waits, `acquire_timeout` waits for this call only and keeps the owner,
//! and both are cancel safe (an aborted `acquire_timeout` wait leaves
//! nothing held).
mod support;

use std::future::Future;
use std::time::Duration;

use portalocker::{
    BoundedSemaphore, Error, Lock, NamedBoundedSemaphore, PidFileLock, RLock, TemporaryFileLock,
};

support::child_entry!();

const SHORT: Duration = Duration::from_millis(50);

/// While `held` lives: `try` and `timed` fail with contention (`timed`
/// after waiting its own timeout, although the value's timeout is an
/// hour); an aborted long wait leaves nothing behind; after `held` drops,
/// `try` succeeds.
async fn check<G, H, T, TF, W, WF, L, LF>(what: &str, held: H, try_: T, timed: W, long: L)
where
    H: Send + 'static,
    T: Fn() -> TF,
    TF: Future<Output = Result<G, Error>>,
    W: Fn(Duration) -> WF,
    WF: Future<Output = Result<G, Error>>,
    L: FnOnce() -> LF,
    LF: Future<Output = Result<G, Error>> + Send + 'static,
    G: Send + 'static,
{
    let started = std::time::Instant::now();
    let e = try_()
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: try_acquire got a held lock"));
    assert!(e.is_already_locked(), "{what}: {e}");
    let e = timed(SHORT)
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: acquire_timeout got it"));
    assert!(e.is_already_locked(), "{what}: {e}");
    assert!(e.to_string().contains("waited 50 ms"), "{what}: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{what}: the configured hour-long timeout was used"
    );
    // Cancel a long wait once it waits (it is then parked in the queue or
    // between attempts), then free the lock: nothing may be left held.
    let waiter = tokio::spawn(long());
    tokio::time::sleep(SHORT).await;
    waiter.abort();
    assert!(
        waiter.await.err().is_some_and(|e| e.is_cancelled()),
        "{what}"
    );
    drop(held);
    let g = try_()
        .await
        .unwrap_or_else(|e| panic!("{what}: still held after the holder left: {e}"));
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_primitive_has_try_acquire_and_acquire_timeout() {
    let d = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);

    let path = d.path().join("l.lock");
    let held = Lock::new(&path).acquire().await.unwrap();
    let l = Lock::new(&path).timeout(hour);
    let l2 = l.clone();
    check(
        "Lock",
        held,
        || l.try_acquire(),
        |t| l.acquire_timeout(t),
        move || async move { l2.acquire_timeout(Duration::from_secs(3600)).await },
    )
    .await;

    let path = d.path().join("r.lock");
    let held = Lock::new(&path).acquire().await.unwrap();
    let r = RLock::new(&path).timeout(hour);
    let r2 = r.clone();
    check(
        "RLock",
        held,
        || r.try_acquire(),
        |t| r.acquire_timeout(t),
        move || async move { r2.acquire_timeout(Duration::from_secs(3600)).await },
    )
    .await;
    // The owner is kept: a try while held re-enters instead of contending.
    let outer = r.acquire().await.unwrap();
    let inner = r.try_acquire().await.unwrap();
    assert_eq!(r.count(), 2);
    drop((inner, outer));

    let path = d.path().join("t.lock");
    let held = Lock::new(&path).acquire().await.unwrap();
    let t = TemporaryFileLock::new(&path)
        .fail_when_locked(false)
        .timeout(hour);
    let t2 = t.clone();
    check(
        "TemporaryFileLock",
        held,
        || t.try_acquire(),
        |x| t.acquire_timeout(x),
        move || async move { t2.acquire_timeout(Duration::from_secs(3600)).await },
    )
    .await;

    let pid = d.path().join("p.pid");
    let held = PidFileLock::new(&pid).acquire().await.unwrap();
    let p = PidFileLock::new(&pid).fail_when_locked(false).timeout(hour);
    let p2 = p.clone();
    check(
        "PidFileLock",
        held,
        || p.try_acquire(),
        |x| p.acquire_timeout(x),
        move || async move { p2.acquire_timeout(Duration::from_secs(3600)).await },
    )
    .await;

    let s = BoundedSemaphore::new(1)
        .name("u")
        .directory(d.path())
        .timeout(hour);
    let held = s.acquire().await.unwrap();
    let s2 = s.clone();
    check(
        "BoundedSemaphore",
        held,
        || s.try_acquire(),
        |x| s.acquire_timeout(x),
        move || async move { s2.acquire_timeout(Duration::from_secs(3600)).await },
    )
    .await;

    let n = NamedBoundedSemaphore::new(1)
        .name("n")
        .directory(d.path())
        .timeout(hour);
    let held = n.acquire().await.unwrap();
    let n2 = n.clone();
    check(
        "NamedBoundedSemaphore",
        held,
        || n.try_acquire(),
        |x| n.acquire_timeout(x),
        move || async move { n2.acquire_timeout(Duration::from_secs(3600)).await },
    )
    .await;
}

/// `waited()` on every guard: at least the time from the waiter's first
/// (pending) poll until the holder let go, and zero for a free `Lock`
/// (the fast path) and an `RLock` re-entry.
#[tokio::test]
async fn every_guard_says_how_long_it_waited() {
    use futures_util::FutureExt;
    use std::pin::pin;

    /// Polls `acquire` once (it must wait: `release` holds the lock), lets
    /// go of the holder, and returns the lower bound the guard's
    /// `waited()` must meet.
    async fn waited_at_least<G, F: std::future::Future<Output = Result<G, Error>>>(
        what: &str,
        acquire: F,
        release: impl FnOnce(),
        waited: impl Fn(&G) -> Duration,
    ) {
        let mut fut = pin!(acquire);
        assert!(fut.as_mut().now_or_never().is_none(), "{what}: it waits");
        let first_poll = std::time::Instant::now();
        // Let the clock move on before the holder lets go.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let released = std::time::Instant::now();
        release();
        let guard = fut.await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let lower = released - first_poll;
        assert!(
            waited(&guard) >= lower,
            "{what}: {:?} < {lower:?}",
            waited(&guard)
        );
    }

    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);

    let lock = Lock::new(p("w.lock"));
    drop(lock.acquire().await.unwrap());
    let g = lock.acquire().await.unwrap();
    // Wine reports an unlock as a lock violation, so the descriptor is
    // closed rather than kept there (see src/sys/windows.rs): no fast path.
    assert_eq!(
        if support::under_wine() {
            Duration::ZERO
        } else {
            g.waited()
        },
        Duration::ZERO,
        "free, with a kept descriptor: at once"
    );
    waited_at_least(
        "Lock",
        Lock::new(p("w.lock")).acquire(),
        || drop(g),
        |g| g.waited(),
    )
    .await;

    let r = RLock::new(p("r.lock"));
    let outer = r.acquire().await.unwrap();
    assert_eq!(
        r.acquire().await.unwrap().waited(),
        Duration::ZERO,
        "re-entry"
    );
    waited_at_least(
        "RLock",
        RLock::new(p("r.lock")).acquire(),
        || drop(outer),
        |g| g.waited(),
    )
    .await;

    let t = TemporaryFileLock::new(p("t.lock")).acquire().await.unwrap();
    let t2 = TemporaryFileLock::new(p("t.lock")).fail_when_locked(false);
    waited_at_least(
        "TemporaryFileLock",
        t2.acquire(),
        || drop(t),
        |g| g.waited(),
    )
    .await;

    let pid = PidFileLock::new(p("d.pid")).acquire().await.unwrap();
    let pid2 = PidFileLock::new(p("d.pid")).fail_when_locked(false);
    waited_at_least("PidFileLock", pid2.acquire(), || drop(pid), |g| g.waited()).await;

    let sem = || BoundedSemaphore::new(1).name("w").directory(d.path());
    let permit = sem().acquire().await.unwrap();
    let sem2 = sem();
    waited_at_least(
        "BoundedSemaphore",
        sem2.acquire(),
        || drop(permit),
        |g| g.waited(),
    )
    .await;
}
