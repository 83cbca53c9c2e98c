//! The low-level `lock` / `unlock` functions and flag validation.
use portalocker::{lock, unlock, ErrorKind, LockFlags, LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN};
use std::fs::File;

fn two_handles() -> (tempfile::TempDir, File, File) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f.lock");
    let a = File::create(&p).unwrap();
    let b = File::open(&p).unwrap();
    (d, a, b)
}

#[test]
fn non_blocking_contention_is_already_locked() {
    let (_d, a, b) = two_handles();
    lock(&a, LOCK_EX | LOCK_NB).unwrap();
    let err = lock(&b, LOCK_EX | LOCK_NB).unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    assert_eq!(err.kind(), ErrorKind::AlreadyLocked);
    let err = lock(&b, LOCK_SH | LOCK_NB).unwrap_err();
    assert!(err.is_already_locked());
    unlock(&a).unwrap();
    lock(&b, LOCK_EX | LOCK_NB).unwrap();
}

#[test]
fn shared_locks_coexist() {
    let (_d, a, b) = two_handles();
    lock(&a, LOCK_SH | LOCK_NB).unwrap();
    lock(&b, LOCK_SH | LOCK_NB).unwrap();
    let (_d2, c, _) = two_handles();
    lock(&c, LOCK_EX).unwrap();
}

#[test]
fn unblock_alone_unlocks() {
    let (_d, a, b) = two_handles();
    lock(&a, LOCK_EX).unwrap();
    lock(&a, LOCK_UN).unwrap();
    lock(&b, LOCK_EX | LOCK_NB).unwrap();
}

#[test]
fn invalid_combinations_are_rejected_before_any_lock() {
    let (_d, a, b) = two_handles();
    for flags in [
        LOCK_SH | LOCK_EX,
        LOCK_SH | LOCK_EX | LOCK_NB,
        LOCK_NB,
        LockFlags::default(),
        LOCK_UN | LOCK_EX,
        LOCK_UN | LOCK_SH,
        LOCK_UN | LOCK_NB,
    ] {
        let err = lock(&a, flags).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{flags:?}");
        let io: std::io::Error = err.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }
    // Nothing was locked by the rejected calls.
    lock(&b, LOCK_EX | LOCK_NB).unwrap();
}

#[test]
fn blocking_lock_waits_for_the_holder() {
    let (_d, a, b) = two_handles();
    lock(&a, LOCK_EX).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        tx.send(()).unwrap();
        lock(&b, LOCK_EX).unwrap();
        b
    });
    rx.recv().unwrap();
    // The waiter cannot finish while we hold the lock.
    assert!(!t.is_finished());
    unlock(&a).unwrap();
    let b = t.join().unwrap();
    assert!(lock(&a, LOCK_EX | LOCK_NB).unwrap_err().is_already_locked());
    unlock(&b).unwrap();
}

#[test]
fn unlocking_an_unlocked_file_is_fine() {
    let (_d, a, _b) = two_handles();
    unlock(&a).unwrap();
}

/// One rule for every lock type: in `Lock` and `RLock` flags,
/// `NON_BLOCKING` is implied (accepted, never a reason to give up at
/// once); `timeout` and `fail_when_locked` decide whether to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_blocking_in_a_lock_types_flags_is_implied() {
    use portalocker::{Lock, RLock};
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("nb.lock");
    for flags in [LOCK_EX, LOCK_EX | LOCK_NB] {
        let holder = Lock::new(&path).acquire().await.unwrap();
        let lock = Lock::new(&path).flags(flags);
        let e = lock
            .clone()
            .fail_when_locked(true)
            .acquire()
            .await
            .unwrap_err();
        assert!(e.is_already_locked(), "{flags:?}: {e}");
        let rlock = RLock::new(&path).flags(flags).fail_when_locked(true);
        let e = rlock.acquire().await.unwrap_err();
        assert!(e.is_already_locked(), "{flags:?}: {e}");
        // The holder is an owner of this process: a waiter's first poll
        // finds the lock busy and parks at the in-process gate, touching
        // no file, so it is decided in that poll whether it gives up.
        let lock = lock.timeout(Duration::from_secs(60));
        let mut waiter = std::pin::pin!(lock.acquire());
        assert!(
            futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none(),
            "{flags:?}: gave up at once"
        );
        holder.release().await.unwrap();
        let g = waiter.await.unwrap();
        g.release().await.unwrap();
    }
    for flags in [LOCK_SH, LOCK_SH | LOCK_NB] {
        let a = Lock::new(&path).flags(flags).acquire().await.unwrap();
        let b = Lock::new(&path).flags(flags).try_acquire().await.unwrap();
        drop((a, b));
    }
}

/// Why a held lock offers `downgrade` but no `try_upgrade`: `flock(2)`
/// drops a shared lock before it finds that it cannot make it exclusive,
/// so a failed non-blocking upgrade leaves nothing held (another
/// description then locks the file exclusively). A `try_upgrade` that
/// failed would hand back a "shared" lock that another writer could
/// already have taken and released.
#[cfg(unix)]
#[test]
fn a_failed_flock_upgrade_leaves_nothing_held() {
    let (d, a, b) = two_handles();
    a.lock_shared().unwrap();
    b.lock_shared().unwrap();
    assert!(
        matches!(a.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "the upgrade succeeded beside another reader"
    );
    b.unlock().unwrap();
    let c = File::open(d.path().join("f.lock")).unwrap();
    assert!(
        c.try_lock().is_ok(),
        "the reader whose upgrade failed still holds its shared lock: a try_upgrade could keep it"
    );
}
