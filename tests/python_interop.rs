//! Interop with Python portalocker 4.4.2 on the same lock file: both take
//! `flock`, so each excludes the other.
//!
//! Unix only: the Python venv with portalocker 4.4.2 is built on the Linux CI host.
#![cfg(unix)]
mod support;

use std::time::Duration;

use portalocker::{Lock, LockFlags};
use support::Proc;

/// Python holds `Lock(path)` with the flags in argv[2], or a
/// `TemporaryFileLock(path)` when argv[2] is "tmp", until stdin closes.
const PY_HOLD: &str = r#"
import sys, portalocker
if sys.argv[2] == "tmp":
    lock = portalocker.TemporaryFileLock(sys.argv[1])
else:
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
    let (_d, path) = support::temp_path("py.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), EX]);
    py.expect("LOCKED");
    let err = Lock::new(&path).try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    support::busy(Lock::new(&path).flags(LockFlags::SHARED).try_acquire()).await;
    py.finish();
}

#[tokio::test]
async fn rust_holds_python_fail_when_locked_raises() {
    let (_d, path) = support::temp_path("rs.lock");
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
    let (_d, path) = support::temp_path("handoff.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), EX]);
    py.expect("LOCKED");
    let lock = Lock::new(&path)
        .timeout(Duration::from_secs(30))
        .check_interval(Duration::from_millis(20));
    let waiter = support::spawn_started(async move { lock.acquire().await }).await;
    py.close_stdin();
    py.expect("RELEASED");
    let g = waiter.await.unwrap().0.unwrap();
    // While Rust holds it, Python is excluded again.
    let mut probe = Proc::python(PY_TRY, &[path.to_str().unwrap()]);
    assert_eq!(probe.expect("RESULT"), "AlreadyLocked");
    probe.finish();
    g.release().await.unwrap();
    py.finish();
}

#[tokio::test]
async fn shared_locks_are_shared_across_languages() {
    let (_d, path) = support::temp_path("shared.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), SH]);
    py.expect("LOCKED");
    let reader = Lock::new(&path)
        .flags(LockFlags::SHARED)
        .try_acquire()
        .await
        .unwrap();
    support::busy(Lock::new(&path).try_acquire()).await;
    drop(reader);
    py.finish();
}

/// Python's PidFileLock holds (fail_closed) until stdin closes.
const PY_PID_HOLD: &str = r#"
import os, sys, portalocker
lock = portalocker.PidFileLock(sys.argv[1])
with lock.fail_closed():
    print("@@LOCKED", os.getpid(), flush=True)
    sys.stdin.read()
print("@@RELEASED", flush=True)
"#;

/// Python reads the pid, then tries fail_closed().
const PY_PID_PROBE: &str = r#"
import sys, portalocker
lock = portalocker.PidFileLock(sys.argv[1])
print("@@READ", lock.read_pid(), flush=True)
try:
    with lock.fail_closed():
        print("@@RESULT acquired", flush=True)
except portalocker.AlreadyLocked as e:
    print("@@RESULT AlreadyLocked", e.holder_pid, flush=True)
"#;

#[tokio::test]
async fn python_pid_file_lock_holds_rust_sees_its_pid() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("daemon.pid");
    let mut py = Proc::python(PY_PID_HOLD, &[pid.to_str().unwrap()]);
    let py_pid: u32 = py.expect("LOCKED").parse().unwrap();
    let lock = portalocker::PidFileLock::new(&pid);
    assert_eq!(lock.read_pid().await, Some(py_pid));
    let err = lock.acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    assert_eq!(err.holder_pid(), Some(py_pid));
    py.close_stdin();
    py.expect("RELEASED");
    py.finish();
    // Python removed both files on release; Rust takes over cleanly.
    assert!(!pid.exists());
    lock.acquire().await.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn rust_pid_file_lock_holds_python_reads_the_pid_and_fails_closed() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("daemon.pid");
    let g = portalocker::PidFileLock::new(&pid).acquire().await.unwrap();
    let me = std::process::id().to_string();
    let mut py = Proc::python(PY_PID_PROBE, &[pid.to_str().unwrap()]);
    assert_eq!(py.expect("READ"), me);
    assert_eq!(py.expect("RESULT"), format!("AlreadyLocked {me}"));
    py.finish();
    g.release().await.unwrap();
    let mut py = Proc::python(PY_PID_PROBE, &[pid.to_str().unwrap()]);
    assert_eq!(py.expect("READ"), "None");
    assert_eq!(py.expect("RESULT"), "acquired");
    py.finish();
}

#[tokio::test]
async fn temporary_file_locks_exclude_each_other_across_languages() {
    let (_d, path) = support::temp_path("tmp.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap(), "tmp"]);
    py.expect("LOCKED");
    let lock = portalocker::TemporaryFileLock::new(&path);
    assert!(lock.acquire().await.unwrap_err().is_already_locked());
    assert!(path.exists(), "Rust removed Python's lock file");
    py.close_stdin();
    py.expect("RELEASED");
    py.finish();
    assert!(!path.exists());
    let g = lock.acquire().await.unwrap();
    let mut probe = Proc::python(PY_TRY, &[path.to_str().unwrap()]);
    assert_eq!(probe.expect("RESULT"), "AlreadyLocked");
    probe.finish();
    g.release().await.unwrap();
    assert!(!path.exists());
}
