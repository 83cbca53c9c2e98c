//! A held lock file removed or replaced by a third party: the lock is
//! then on a file no path names, and the next owner locks a new file at
//! once. The guard tells: `is_lost()`, `ensure_held()`, `lost().await`,
//! `watch_lost()`, `run_while_held`, and `release()` reports `LockLost`.
//!
//! Unix only: removing or renaming over an open, locked file is what
//! these tests do, and Windows (where the crate's share mode allows it)
//! keeps a deleted name until the last handle closes.
#![cfg(unix)]

use std::path::Path;
use std::time::Duration;

use portalocker::{ErrorKind, Lock, PidFileLock, TemporaryFileLock};

/// Bounds waits that must end (a hang fails instead of blocking CI).
const BOUND: Duration = Duration::from_secs(60);

async fn assert_lost_by(what: &str, path: &Path, outsider: impl FnOnce()) {
    let guard = Lock::new(path).acquire().await.unwrap();
    let mut watched = guard.watch_lost();
    assert!(!guard.is_lost(), "{what}");
    assert!(!*watched.borrow(), "{what}");
    guard.ensure_held().unwrap();
    // Untouched, it is not lost (and meanwhile the watching task looks).
    let early = tokio::time::timeout(Duration::from_millis(300), guard.lost()).await;
    assert!(early.is_err(), "{what}: lost while untouched");
    outsider();
    tokio::time::timeout(BOUND, guard.lost())
        .await
        .unwrap_or_else(|_| panic!("{what}: lost() never resolved"));
    tokio::time::timeout(BOUND, watched.wait_for(|l| *l))
        .await
        .unwrap_or_else(|_| panic!("{what}: watch_lost() never turned true"))
        .unwrap();
    assert!(guard.is_lost(), "{what}");
    let e = guard.ensure_held().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LockLost, "{what}: {e}");
    assert_eq!(e.path(), Some(path), "{what}");
    assert!(e.to_string().contains("removed or replaced"), "{what}: {e}");
    let ran = guard.run_while_held(async { 1 }).await;
    assert!(ran.is_err_and(|e| e.is_lock_lost()), "{what}");
    // What the loss means: another process (a plain flock here; within
    // this process the gate still keeps other owners out) gets "the" lock
    // at once, on the new file at the path.
    let other = std::fs::File::create(path).unwrap();
    other
        .try_lock()
        .unwrap_or_else(|e| panic!("{what}: the new file was not free: {e}"));
    let e = guard.release().await.unwrap_err();
    assert!(e.is_lock_lost(), "{what}: {e}");
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_lock_file_is_a_lost_lock() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("rm.lock");
    assert_lost_by("rm", &path, || std::fs::remove_file(&path).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_over_the_lock_file_is_a_lost_lock() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("over.lock");
    let other = d.path().join("other");
    assert_lost_by("mv other over", &path, || {
        std::fs::write(&other, b"").unwrap();
        std::fs::rename(&other, &path).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_file_moved_away_is_a_lost_lock() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("away.lock");
    let away = d.path().join("elsewhere");
    assert_lost_by("mv away", &path, || std::fs::rename(&path, &away).unwrap()).await;
}

/// Reading, writing and touching the file is not a loss, and a guard that
/// watches for one releases cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_of_the_file_is_not_a_loss() {
    use tokio::io::AsyncWriteExt;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("used.lock");
    let mut guard = Lock::new(&path).acquire().await.unwrap();
    let watched = guard.watch_lost();
    guard.write_all(b"pid 42\n").await.unwrap();
    guard.flush().await.unwrap();
    let _ = std::fs::read(&path).unwrap();
    std::fs::File::open(&path).unwrap();
    let ran = guard.run_while_held(async { 7 }).await.unwrap();
    assert_eq!(ran, 7);
    assert!(!guard.is_lost() && !*watched.borrow());
    guard.release().await.unwrap();
}

/// Guards that remove their own file on release do not mistake that for a
/// loss.
#[tokio::test]
async fn removing_guards_release_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let t = TemporaryFileLock::new(d.path().join("t.lock"));
    t.acquire().await.unwrap().release().await.unwrap();
    let p = PidFileLock::new(d.path().join("p.pid"));
    p.acquire().await.unwrap().release().await.unwrap();
}

/// The guards built on `Lock` speak the same vocabulary: removing the file
/// each of them locks is a loss they report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_guard_reports_a_removed_file() {
    use portalocker::{BoundedSemaphore, RLock};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let rm = |p: &Path| std::fs::remove_file(p).unwrap();

    let r = RLock::new(dir.join("r.lock"));
    let g = r.acquire().await.unwrap();
    let g2 = r.acquire().await.unwrap();
    assert!(!g.is_lost());
    rm(&dir.join("r.lock"));
    tokio::time::timeout(BOUND, g2.lost()).await.unwrap();
    assert!(g.is_lost() && g.ensure_held().unwrap_err().is_lock_lost());
    drop((g, g2));

    let t = TemporaryFileLock::new(dir.join("t.lock"))
        .acquire()
        .await
        .unwrap();
    rm(&dir.join("t.lock"));
    tokio::time::timeout(BOUND, t.lost()).await.unwrap();
    assert!(t.is_lost());
    assert!(t.release().await.unwrap_err().is_lock_lost());

    let p = PidFileLock::new(dir.join("p.pid")).acquire().await.unwrap();
    rm(&dir.join("p.pid.lock"));
    assert!(
        *tokio::time::timeout(BOUND, p.watch_lost().wait_for(|l| *l))
            .await
            .unwrap()
            .unwrap()
    );
    assert!(p.ensure_held().unwrap_err().is_lock_lost());
    drop(p);

    let sem = BoundedSemaphore::new(2).name("s").directory(dir);
    let permit = sem.acquire().await.unwrap();
    assert!(!permit.is_lost());
    rm(permit.path());
    tokio::time::timeout(BOUND, permit.lost()).await.unwrap();
    assert!(permit.is_lost());
}

/// Through the `HeldLock` trait every file guard stops work the same way
/// when its file is taken away; none has a fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_guard_is_a_held_lock() {
    use portalocker::{BoundedSemaphore, HeldLock, RLock};
    async fn stops_when_lost(what: &str, g: &impl HeldLock, file: &Path) {
        assert!(!g.is_lost(), "{what}");
        assert_eq!(g.fence_token(), None, "{what}");
        let mut work = std::pin::pin!(g.run_while_held(std::future::pending::<()>()));
        assert!(
            futures_util::FutureExt::now_or_never(work.as_mut()).is_none(),
            "{what}"
        );
        std::fs::remove_file(file).unwrap();
        let r = tokio::time::timeout(BOUND, work)
            .await
            .unwrap_or_else(|_| panic!("{what}: the work was not stopped"));
        assert!(r.is_err_and(|e| e.is_lock_lost()), "{what}");
        assert!(
            *g.watch_lost().borrow() && g.ensure_held().is_err(),
            "{what}"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let g = Lock::new(dir.join("a.lock")).acquire().await.unwrap();
    stops_when_lost("Lock", &g, &dir.join("a.lock")).await;
    let g = RLock::new(dir.join("b.lock")).acquire().await.unwrap();
    stops_when_lost("RLock", &g, &dir.join("b.lock")).await;
    let g = TemporaryFileLock::new(dir.join("c.lock"))
        .acquire()
        .await
        .unwrap();
    stops_when_lost("TemporaryFileLock", &g, &dir.join("c.lock")).await;
    let g = PidFileLock::new(dir.join("d.pid")).acquire().await.unwrap();
    stops_when_lost("PidFileLock", &g, &dir.join("d.pid.lock")).await;
    let sem = BoundedSemaphore::new(1).name("e").directory(dir);
    let g = sem.acquire().await.unwrap();
    let slot = g.path().to_path_buf();
    stops_when_lost("BoundedSemaphore", &g, &slot).await;
}
