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
