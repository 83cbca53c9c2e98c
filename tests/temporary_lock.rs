//! `TemporaryFileLock`: the file exists only while held, and no split brain.
mod support;

use std::time::Duration;

use portalocker::{ErrorKind, Lock, TemporaryFileLock};
use support::Proc;

support::child_entry!();

#[tokio::test]
async fn file_exists_only_while_held() {
    let (_d, path) = support::temp_path("t.lock");
    let lock = TemporaryFileLock::new(&path);
    let g = lock.acquire().await.unwrap();
    assert!(path.is_file());
    assert_eq!(g.path(), path);
    g.release().await.unwrap();
    assert!(!path.exists());
    let g = lock.acquire().await.unwrap();
    assert!(path.is_file());
    drop(g);
    assert!(!path.exists(), "drop removes the file too");
}

#[tokio::test]
async fn a_failed_contender_removes_nothing() {
    let (_d, path) = support::temp_path("t.lock");
    let holder = TemporaryFileLock::new(&path).acquire().await.unwrap();
    let contender = TemporaryFileLock::new(&path);
    // fail_when_locked defaults to true: no waiting.
    let err = contender.acquire().await.unwrap_err();
    assert!(err.is_already_locked());
    drop(contender);
    assert!(
        path.is_file(),
        "the holder's file was removed by a contender"
    );
    support::busy(Lock::new(&path).try_acquire()).await;
    holder.release().await.unwrap();
}

/// The #115 scenario, step by step: A holds; B (another process) waits
/// with the old file open; A releases (the file goes); C arrives and
/// creates a new file. B's next attempt locks the nameless old inode, sees
/// that it is not the file at the path, and contends for the new file
/// instead of entering: exactly one of B and C holds.
// Unix only: it watches another process's descriptors in /proc.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_on_the_old_inode_never_joins_a_new_holder() {
    let (_d, path) = support::temp_path("race.lock");
    for round in 0..150 {
        let a = TemporaryFileLock::new(&path).acquire().await.unwrap();
        let mut b = Proc::role("child_entry", "tmp-wait", &[path.to_str().unwrap(), "40"]);
        b.expect("STARTED");
        // Wait until B has the old file open.
        let fd_dir = format!("/proc/{}/fd", b.pid());
        let p = path.clone();
        let opened = support::eventually(Duration::from_secs(10), move || {
            std::fs::read_dir(&fd_dir)
                .map(|rd| {
                    rd.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                        .any(|t| t == p)
                })
                .unwrap_or(false)
        })
        .await;
        assert!(opened, "round {round}: B never opened the file");
        a.release().await.unwrap();
        let c = TemporaryFileLock::new(&path).acquire().await;
        let b_result = b.expect("RESULT");
        match (b_result.as_str(), &c) {
            ("busy", Ok(_)) | ("ok", Err(_)) => {}
            _ => panic!("round {round}: B {b_result}, C {c:?}: not exactly one holder"),
        }
        if let Err(e) = &c {
            assert!(e.is_already_locked(), "round {round}: {e}");
        }
        drop(c);
        b.finish();
    }
}

/// Three processes, 1,200 rounds: an O_EXCL marker inside the critical
/// section proves there is never a second holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_never_hold_at_once() {
    let d = tempfile::tempdir().unwrap();
    let lock = d.path().join("soak.lock");
    let marker = d.path().join("inside");
    let (l, m) = (lock.to_str().unwrap(), marker.to_str().unwrap());
    let mut children: Vec<_> = (0..3)
        .map(|_| Proc::role("child_entry", "tmp-soak", &[l, m, "400"]))
        .collect();
    for c in &mut children {
        c.expect("READY");
    }
    for mut c in children {
        assert_eq!(c.expect("DONE"), "400");
        c.finish();
    }
    assert!(!lock.exists(), "the last holder removed the file");
}

#[tokio::test]
async fn a_replaced_file_is_not_removed_and_release_reports_the_loss() {
    let (_d, path) = support::temp_path("t.lock");
    if support::under_wine() {
        // Wine 8 deletes an open file only at its last close (Windows'
        // legacy semantics), so the path cannot be recreated meanwhile;
        // Windows 10 and later remove the name at once (POSIX semantics,
        // which std asks for), as this test needs.
        eprintln!("skipped under Wine: no POSIX delete semantics");
        return;
    }
    let g = TemporaryFileLock::new(&path).acquire().await.unwrap();
    // Someone else removes and recreates the path while we hold it.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"theirs").unwrap();
    let err = g.release().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockLost, "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
}

// Unix only: it plants a Unix symlink.
#[cfg(unix)]
#[tokio::test]
async fn symlinks_and_hard_links_are_never_written_or_removed() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();

    let sym = d.path().join("sym.lock");
    std::os::unix::fs::symlink(&victim, &sym).unwrap();
    let err = TemporaryFileLock::new(&sym).acquire().await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(sym.symlink_metadata().unwrap().file_type().is_symlink());

    let hard = d.path().join("hard.lock");
    std::fs::hard_link(&victim, &hard).unwrap();
    let err = TemporaryFileLock::new(&hard).acquire().await.unwrap_err();
    assert!(err.to_string().contains("hard links"), "{err}");
    assert!(hard.exists(), "a refused acquire removes nothing");

    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // Nothing was left locked.
    drop(Lock::new(&hard).try_acquire().await.unwrap());
}

#[tokio::test]
async fn bad_paths_are_typed_errors() {
    let d = tempfile::tempdir().unwrap();
    for (p, kind) in [
        (std::path::PathBuf::from(""), ErrorKind::InvalidInput),
        (std::path::PathBuf::from("a\0b"), ErrorKind::InvalidInput),
        (d.path().to_path_buf(), ErrorKind::InvalidInput),
        (d.path().join("missing/t.lock"), ErrorKind::Io),
    ] {
        let err = TemporaryFileLock::new(&p).acquire().await.unwrap_err();
        assert_eq!(err.kind(), kind, "{p:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leave_nothing_locked() {
    let (_d, path) = support::temp_path("c.lock");
    let lock = TemporaryFileLock::new(&path);
    for i in 0..500u64 {
        let budget = Duration::from_micros(i % 100);
        drop(tokio::time::timeout(budget, lock.acquire()).await);
        // A cancelled acquire never holds the lock; a completed one was
        // dropped, which removed the file.
        let probe = Lock::new(&path).try_acquire().await.unwrap();
        drop(probe);
    }
}
