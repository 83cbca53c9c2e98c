//! Interop with Python portalocker 4.4.2 on the same lock file: both take
//! `flock`, so each excludes the other.
mod support;

use std::time::Duration;

use portalocker::{Lock, LockFlags};
use support::Proc;

/// Python holds `Lock(path)` until stdin closes.
const PY_HOLD: &str = r#"
import sys, portalocker
lock = portalocker.Lock(sys.argv[1], timeout=30, flags=portalocker.LockFlags(int(sys.argv[2])))
lock.acquire()
print("@@LOCKED", flush=True)
sys.stdin.read()
lock.release()
print("@@RELEASED", flush=True)
"#;

/// Python tries once with fail_when_locked=True and reports.
const PY_TRY: &str = r#"
import sys, portalocker
try:
    with portalocker.Lock(sys.argv[1], fail_when_locked=True, timeout=0):
        print("@@RESULT acquired", flush=True)
except portalocker.AlreadyLocked as e:
    print("@@RESULT AlreadyLocked", flush=True)
"#;

const EX: &str = "6"; // EXCLUSIVE | NON_BLOCKING
const SH: &str = "5"; // SHARED | NON_BLOCKING

#[tokio::test]
async fn python_holds_rust_gets_already_locked() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("py.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), EX]);
    py.expect("LOCKED");
    let err = Lock::new(&path).try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    let err = Lock::new(&path)
        .flags(LockFlags::SHARED)
        .try_acquire()
        .await
        .unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    py.finish();
}

#[tokio::test]
async fn rust_holds_python_fail_when_locked_raises() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("rs.lock");
    let g = Lock::new(&path).acquire().await.unwrap();
    let mut py = Proc::python(PY_TRY, &[path.to_str().unwrap()]);
    assert_eq!(py.expect("RESULT"), "AlreadyLocked");
    py.finish();
    g.release().await.unwrap();
    let mut py = Proc::python(PY_TRY, &[path.to_str().unwrap()]);
    assert_eq!(py.expect("RESULT"), "acquired");
    py.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_releases_while_rust_waits_then_rust_acquires() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("handoff.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), EX]);
    py.expect("LOCKED");
    let lock = Lock::new(&path)
        .timeout(Duration::from_secs(30))
        .check_interval(Duration::from_millis(20));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        tx.send(()).unwrap();
        lock.acquire().await
    });
    rx.await.unwrap();
    py.close_stdin();
    py.expect("RELEASED");
    let g = waiter.await.unwrap().unwrap();
    // While Rust holds it, Python is excluded again.
    let mut probe = Proc::python(PY_TRY, &[path.to_str().unwrap()]);
    assert_eq!(probe.expect("RESULT"), "AlreadyLocked");
    probe.finish();
    g.release().await.unwrap();
    py.finish();
}

#[tokio::test]
async fn shared_locks_are_shared_across_languages() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("shared.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), SH]);
    py.expect("LOCKED");
    let reader = Lock::new(&path)
        .flags(LockFlags::SHARED)
        .try_acquire()
        .await
        .unwrap();
    assert!(Lock::new(&path)
        .try_acquire()
        .await
        .unwrap_err()
        .is_already_locked());
    drop(reader);
    py.finish();
}
