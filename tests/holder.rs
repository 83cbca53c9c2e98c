//! Who holds a lock: `Lock::holders()` and the holder named in contention
//! errors, against a Rust holder and a Python portalocker holder in other
//! processes.
//!
//! Linux only: the kernel's lock table is read from `/proc/locks` (other
//! platforms find no holder, by design), and the Python holder comes from
//! the Linux CI host's venv.
#![cfg(all(target_os = "linux", not(portalocker_portable)))]
mod support;

use std::time::Duration;

use portalocker::{Lock, LockFlags};
use support::Proc;

support::child_entry!();

#[tokio::test]
async fn a_rust_holder_in_another_process_is_named() {
    let (_d, path) = support::temp_path("held.lock");
    let lock = Lock::new(&path);
    assert!(lock.holders().await.is_empty(), "nobody holds it yet");
    let mut child = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    child.expect("LOCKED");
    let holders = lock.holders().await;
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].pid(), child.pid());
    assert!(!holders[0].is_shared());
    let cmd = holders[0]
        .command()
        .expect("our child's command line is readable");
    assert!(cmd.contains("child_entry"), "{cmd}");

    let err = lock.try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    assert_eq!(err.holder_pid(), Some(child.pid()), "{err}");
    assert!(
        err.to_string().contains(&format!("pid {}", child.pid())),
        "{err}"
    );
    let err = lock
        .acquire_timeout(Duration::from_millis(30))
        .await
        .unwrap_err();
    assert_eq!(err.holder_pid(), Some(child.pid()), "{err}");
    child.finish();
    assert!(lock.holders().await.is_empty(), "released");
    drop(lock.try_acquire().await.unwrap());
}

#[tokio::test]
async fn shared_holders_are_all_listed_and_this_process_is_not() {
    let (_d, path) = support::temp_path("shared.lock");
    let mut a = Proc::role("child_entry", "hold", &[path.to_str().unwrap(), "sh"]);
    a.expect("LOCKED");
    let mut b = Proc::role("child_entry", "hold", &[path.to_str().unwrap(), "sh"]);
    b.expect("LOCKED");
    let mine = Lock::new(&path)
        .flags(LockFlags::SHARED)
        .acquire()
        .await
        .unwrap();
    let mut pids: Vec<_> = Lock::new(&path)
        .holders()
        .await
        .iter()
        .inspect(|h| assert!(h.is_shared(), "{h}"))
        .map(|h| h.pid())
        .collect();
    pids.sort_unstable();
    let mut want = vec![a.pid(), b.pid()];
    want.sort_unstable();
    assert_eq!(pids, want, "this process's own lock is not listed");
    drop(mine);
    a.finish();
    b.finish();
}

const PY_HOLD: &str = r#"
import sys, portalocker
lock = portalocker.Lock(sys.argv[1], timeout=5)
lock.acquire()
print("@@LOCKED", flush=True)
sys.stdin.readline()
lock.release()
"#;

#[tokio::test]
async fn a_python_holder_is_named_with_its_command_line() {
    let (_d, path) = support::temp_path("py.lock");
    let mut py = Proc::python(PY_HOLD, &[path.to_str().unwrap()]);
    py.expect("LOCKED");
    let err = Lock::new(&path).try_acquire().await.unwrap_err();
    assert_eq!(err.holder_pid(), Some(py.pid()), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("python"), "the command line is named: {msg}");
    py.finish();
}

/// The other file primitives name the holder too: an `RLock` and a
/// `TemporaryFileLock` on a file a Rust process in another process holds,
/// and a `PidFileLock` held by another process (whose pid the pid file
/// also says).
#[cfg(all(target_os = "linux", not(portalocker_portable)))]
#[tokio::test]
async fn every_file_primitive_names_the_holder() {
    use portalocker::{PidFileLock, RLock, TemporaryFileLock};
    let (d, path) = support::temp_path("held.lock");
    let mut child = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    child.expect("LOCKED");
    let pid = child.pid();
    let named = |what: &str, err: portalocker::Error| {
        assert!(err.is_already_locked(), "{what}: {err}");
        assert_eq!(err.holder_pid(), Some(pid), "{what}: {err}");
        assert!(
            err.to_string().contains(&format!("pid {pid}")),
            "{what}: {err}"
        );
    };
    named("RLock", RLock::new(&path).try_acquire().await.unwrap_err());
    named(
        "RLock, timed",
        RLock::new(&path)
            .acquire_timeout(Duration::from_millis(30))
            .await
            .unwrap_err(),
    );
    named(
        "TemporaryFileLock",
        TemporaryFileLock::new(&path)
            .try_acquire()
            .await
            .unwrap_err(),
    );
    child.finish();

    let pid_path = d.path().join("daemon.pid");
    let mut child = Proc::role("child_entry", "pid-hold", &[pid_path.to_str().unwrap()]);
    child.expect("LOCKED");
    let pid = child.pid();
    let err = PidFileLock::new(&pid_path).try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    assert_eq!(err.holder_pid(), Some(pid), "{err}");
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
    child.finish();
}
