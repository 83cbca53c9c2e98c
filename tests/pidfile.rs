//! `PidFileLock`: files and format of Python portalocker, holder pid on
//! contention, stale pid files, hostile paths.
mod support;

use std::time::Duration;

use portalocker::{ErrorKind, Lock, PidFileLock};
use support::Proc;

support::child_entry!();

fn sidecar(pid: &std::path::Path) -> std::path::PathBuf {
    let mut s = pid.as_os_str().to_os_string();
    s.push(".lock");
    s.into()
}

#[tokio::test]
async fn publishes_the_pid_and_removes_both_files_on_release() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    let lock = PidFileLock::new(&pid);
    assert_eq!(lock.lock_path(), sidecar(&pid));
    let g = lock.acquire().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap(),
        std::process::id().to_string(),
        "ASCII decimal, no newline"
    );
    assert!(sidecar(&pid).is_file());
    // The sidecar carries the OS lock; the pid file carries none.
    support::busy(Lock::new(sidecar(&pid)).try_acquire()).await;
    drop(Lock::new(&pid).try_acquire().await.unwrap());
    assert_eq!(g.path(), pid);
    g.release().await.unwrap();
    assert!(!pid.exists() && !sidecar(&pid).exists());
    // Only the two files: no temporary litter in the directory.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn drop_removes_both_files_too() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    drop(PidFileLock::new(&pid).acquire().await.unwrap());
    assert!(!pid.exists() && !sidecar(&pid).exists());
}

#[tokio::test]
async fn contention_reports_the_holder_pid() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    let mut child = Proc::role("child_entry", "pid-hold", &[pid.to_str().unwrap()]);
    let child_pid: u32 = child.expect("LOCKED").parse().unwrap();
    let lock = PidFileLock::new(&pid);
    assert_eq!(lock.read_pid().await, Some(child_pid));
    let err = lock.acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    assert_eq!(err.holder_pid(), Some(child_pid));
    // Named once ("pid N (command)" from the lock table, or "holder pid
    // N" from the pid file), never twice.
    assert_eq!(
        err.to_string().matches(&format!("pid {child_pid}")).count(),
        1,
        "{err}"
    );
    // With fail_when_locked(false) it waits for the timeout, then fails the same way.
    let err = PidFileLock::new(&pid)
        .fail_when_locked(false)
        .timeout(Duration::from_millis(100))
        .check_interval(Duration::from_millis(10))
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.holder_pid(), Some(child_pid));
    child.close_stdin();
    child.expect("RELEASED");
    child.finish();
    assert!(!pid.exists());
    drop(lock.acquire().await.unwrap());
}

#[tokio::test]
async fn a_holder_whose_pid_file_is_gone_still_excludes_with_no_pid() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    let _g = PidFileLock::new(&pid).acquire().await.unwrap();
    std::fs::remove_file(&pid).unwrap();
    let err = PidFileLock::new(&pid).acquire().await.unwrap_err();
    assert!(err.is_already_locked());
    assert_eq!(err.holder_pid(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pid_file_from_a_crashed_holder_does_not_block() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    let mut child = Proc::role("child_entry", "pid-hold", &[pid.to_str().unwrap()]);
    let child_pid: u32 = child.expect("LOCKED").parse().unwrap();
    child.kill();
    // The crash left both files, with the dead holder's pid.
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap(),
        child_pid.to_string()
    );
    assert!(sidecar(&pid).exists());
    let g = PidFileLock::new(&pid).acquire().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap(),
        std::process::id().to_string()
    );
    g.release().await.unwrap();
}

#[tokio::test]
async fn read_pid_is_strict() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    let lock = PidFileLock::new(&pid);
    assert_eq!(lock.read_pid().await, None, "missing file");
    for (content, want) in [
        ("123", Some(123)),
        (" 77\n", Some(77)),
        ("-1", None),
        ("0", None),
        ("1_000", None),
        ("abc", None),
        ("123456789012345678901", None),
    ] {
        std::fs::write(&pid, content).unwrap();
        assert_eq!(lock.read_pid().await, want, "{content:?}");
    }
}

// Unix only: it plants a FIFO (mkfifo).
#[cfg(unix)]
#[tokio::test]
async fn a_fifo_at_the_pid_path_never_hangs() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("app.pid");
    assert!(std::process::Command::new("mkfifo")
        .arg(&pid)
        .status()
        .unwrap()
        .success());
    let lock = PidFileLock::new(&pid);
    let r = tokio::time::timeout(Duration::from_secs(30), lock.read_pid()).await;
    assert_eq!(r.expect("read_pid hung on a FIFO"), None);
    let r = tokio::time::timeout(Duration::from_secs(30), lock.acquire()).await;
    let err = r.expect("acquire hung on a FIFO").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(pid.exists(), "the FIFO is not ours to remove");
    drop(Lock::new(sidecar(&pid)).try_acquire().await.unwrap());
}

// Unix only: it plants Unix symlinks.
#[cfg(unix)]
#[tokio::test]
async fn symlinks_are_refused_and_their_targets_untouched() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();

    // A symlink at the pid path.
    let pid = d.path().join("a.pid");
    std::os::unix::fs::symlink(&victim, &pid).unwrap();
    let err = PidFileLock::new(&pid).acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(
        pid.symlink_metadata().unwrap().file_type().is_symlink(),
        "link kept"
    );
    assert!(!sidecar(&pid).exists(), "the sidecar was rolled back");

    // A symlink at the sidecar path.
    let pid = d.path().join("b.pid");
    std::os::unix::fs::symlink(&victim, sidecar(&pid)).unwrap();
    let err = PidFileLock::new(&pid).acquire().await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!pid.exists());

    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[tokio::test]
async fn bad_paths_are_typed_errors() {
    let d = tempfile::tempdir().unwrap();
    for (p, kind) in [
        (std::path::PathBuf::from(""), ErrorKind::InvalidInput),
        (std::path::PathBuf::from("x\0.pid"), ErrorKind::InvalidInput),
        (d.path().join("missing/app.pid"), ErrorKind::Io),
    ] {
        let err = PidFileLock::new(&p).acquire().await.unwrap_err();
        assert_eq!(err.kind(), kind, "{p:?}: {err}");
    }
    // A directory at the pid path: the sidecar locks, publishing refuses.
    let dir_pid = d.path().join("dir.pid");
    std::fs::create_dir(&dir_pid).unwrap();
    let err = PidFileLock::new(&dir_pid).acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(dir_pid.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_roll_back_completely() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("c.pid");
    let lock = PidFileLock::new(&pid);
    let mut cancelled = 0;
    for i in 0..300u64 {
        // Odd iterations: a timeout of 0-149 µs; even ones: cancelled
        // right after the first poll (the fast lock path alone would
        // otherwise beat every timer tick).
        let budget = Duration::from_micros(i % 150);
        let outcome = if i % 2 == 0 {
            use futures_util::FutureExt;
            let mut fut = std::pin::pin!(lock.acquire());
            match fut.as_mut().now_or_never() {
                Some(r) => Ok(r),
                None => Err(()),
            }
        } else {
            tokio::time::timeout(budget, lock.acquire())
                .await
                .map_err(drop)
        };
        match outcome {
            Ok(g) => drop(g.unwrap()),
            Err(()) => {
                cancelled += 1;
                // A retry at once waits for the rollback still running on
                // the blocking pool: never "already locked" by ourselves.
                let g = lock
                    .acquire()
                    .await
                    .unwrap_or_else(|e| panic!("iteration {i}: retry after a cancel: {e}"));
                assert_eq!(lock.read_pid().await, Some(std::process::id()));
                g.release().await.unwrap();
            }
        }
        // A publication that was in flight finishes on the blocking pool
        // and is then rolled back: both files go and the lock is freed.
        let side = sidecar(&pid);
        let p = pid.clone();
        let clean = support::eventually(Duration::from_secs(10), move || {
            !p.exists() && std::fs::File::open(&side).map_or(true, |f| f.try_lock().is_ok())
        })
        .await;
        assert!(clean, "iteration {i}: left the pid file or the lock behind");
    }
    assert!(cancelled > 0);
}

/// A holder killed mid-publication leaves `<pid>.<n>.<hex>.tmp` behind; the
/// next holder removes such files (and only such files).
#[tokio::test]
async fn stale_temporaries_of_killed_holders_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("daemon.pid");
    let stale = [
        "daemon.pid.4242.0123456789abcdef.tmp",
        "daemon.pid.7.fedcba9876543210.tmp",
    ];
    let keep = [
        "daemon.pid.notes",
        "other.pid.4242.0123456789abcdef.tmp",
        ".portalocker.0123456789abcdef.tmp",
    ];
    for f in stale.iter().chain(&keep) {
        std::fs::write(d.path().join(f), b"123").unwrap();
    }
    let guard = PidFileLock::new(&pid).acquire().await.unwrap();
    let mut left: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.extend(["daemon.pid".to_string(), "daemon.pid.lock".to_string()]);
    want.sort();
    assert_eq!(left, want);
    guard.release().await.unwrap();
}

/// SIGKILLed holders in the middle of acquire/release loops leave no
/// temporary files behind once the lock is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_publishers_leave_no_temporaries() {
    let d = tempfile::tempdir().unwrap();
    let pid = d.path().join("loop.pid");
    for _ in 0..40 {
        let mut a = Proc::role("child_entry", "pid-loop", &[pid.to_str().unwrap()]);
        let mut b = Proc::role("child_entry", "pid-loop", &[pid.to_str().unwrap()]);
        a.expect("LOOPING");
        b.expect("LOOPING");
        a.kill();
        b.kill();
    }
    let guard = PidFileLock::new(&pid).acquire().await.unwrap();
    let litter: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(litter.is_empty(), "{litter:?}");
    guard.release().await.unwrap();
}

/// `set_pid` is cancel safe: dropped at any point, the pid file holds one
/// whole pid, the one before or the new one, never a mix or nothing; no
/// temporary file is left; and the lock stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_pid_is_cancel_safe() {
    let (d, path) = support::temp_path("worker.pid");
    let lock = PidFileLock::new(&path);
    let guard = lock.acquire().await.unwrap();
    // Call i sets 1_000_000 + i. A dropped call's rewrite may still land
    // later, but the file only ever holds a whole pid of a call made so
    // far, and never goes back to an older call's.
    let mut newest_seen: Option<u32> = None;
    for i in 0..300u32 {
        let budget = Duration::from_micros(u64::from(i * 7 % 400));
        let _ = tokio::time::timeout(budget, guard.set_pid(1_000_000 + i)).await;
        let now = lock
            .read_pid()
            .await
            .expect("the pid file holds a whole pid");
        if now == std::process::id() {
            assert_eq!(newest_seen, None, "{i}: back to the first pid");
            continue;
        }
        let call = now.checked_sub(1_000_000).filter(|c| *c <= i);
        let call = call.unwrap_or_else(|| panic!("{i}: the pid file holds {now}"));
        assert!(
            newest_seen.is_none_or(|n| call >= n),
            "{i}: the file went back from call {newest_seen:?} to call {call}"
        );
        newest_seen = Some(call);
    }
    // Once a call has returned, no older rewrite overwrites it.
    guard.set_pid(42).await.unwrap();
    assert_eq!(lock.read_pid().await, Some(42));
    assert!(guard.ensure_held().is_ok());
    // A publication still running when its future was dropped ends on the
    // blocking pool: only the pid file and the sidecar remain.
    let only_ours = support::eventually(Duration::from_secs(10), || {
        support::entries(d.path()) == ["worker.pid", "worker.pid.lock"]
    })
    .await;
    assert!(only_ours, "{:?}", support::entries(d.path()));
    guard.release().await.unwrap();
}
