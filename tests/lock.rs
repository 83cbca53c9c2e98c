//! `Lock` and `LockGuard`: acquire/try_acquire, timeouts, errors, guards.
mod support;

use std::io::SeekFrom;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portalocker::{ErrorKind, Lock, LockFlags};
use support::Proc;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

support::child_entry!();

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn defaults_match_portalocker() {
    let lock = Lock::new("relative.lock");
    let dbg = format!("{lock:?}");
    assert!(lock.path().is_absolute(), "{dbg}");
    assert!(lock.path().ends_with("relative.lock"));
    assert!(dbg.contains("timeout: 5s"), "{dbg}");
    assert!(dbg.contains("check_interval: 250ms"), "{dbg}");
    assert!(dbg.contains("fail_when_locked: false"), "{dbg}");
    assert!(dbg.contains("flags: EXCLUSIVE | NON_BLOCKING"), "{dbg}");
    assert!(dbg.contains("truncate: false"), "{dbg}");
}

#[tokio::test]
async fn acquire_creates_the_file_and_drop_releases() {
    let d = dir();
    let path = d.path().join("a.lock");
    let lock = Lock::new(&path);
    let guard = lock.acquire().await.unwrap();
    assert!(path.is_file());
    assert_eq!(guard.path(), path);
    // A second owner in the same process contends (flock semantics: two
    // open file descriptions conflict).
    let err = lock.try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    assert_eq!(err.path(), Some(path.as_path()));
    assert_eq!(
        err.to_string(),
        format!("failed to lock {path:?}: already locked by another owner in this process")
    );
    drop(guard);
    lock.try_acquire().await.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn contention_error_converts_to_would_block() {
    let d = dir();
    let lock = Lock::new(d.path().join("a.lock"));
    let _g = lock.acquire().await.unwrap();
    let err: std::io::Error = lock.try_acquire().await.unwrap_err().into();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

/// A zero timeout, or `fail_when_locked` with a long one, makes one
/// attempt and fails at once: no pause (a pause would be >= 30 s here).
#[tokio::test]
async fn timeout_zero_or_fail_when_locked_makes_one_attempt_and_fails_at_once() {
    let d = dir();
    let path = d.path().join("a.lock");
    let _g = Lock::new(&path).acquire().await.unwrap();
    let slow = Lock::new(&path).check_interval(Duration::from_secs(60));
    for lock in [
        slow.clone().timeout(Duration::ZERO),
        slow.timeout(Duration::from_secs(600))
            .fail_when_locked(true),
    ] {
        let start = std::time::Instant::now();
        let err = lock.acquire().await.unwrap_err();
        assert!(err.is_already_locked(), "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}

#[tokio::test]
async fn acquire_waits_for_the_timeout_then_reports_contention() {
    let d = dir();
    let path = d.path().join("a.lock");
    let _g = Lock::new(&path).acquire().await.unwrap();
    let start = std::time::Instant::now();
    let err = support::busy(
        Lock::new(&path)
            .timeout(support::ms(300))
            .check_interval(support::ms(20))
            .acquire(),
    )
    .await;
    assert!(err.to_string().contains("waited 300 ms"), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn acquire_succeeds_once_the_holder_releases() {
    let d = dir();
    let path = d.path().join("a.lock");
    let holder = Lock::new(&path).acquire().await.unwrap();
    let lock = Lock::new(&path)
        .timeout(Duration::from_secs(30))
        .check_interval(Duration::from_millis(10));
    let waiter = support::spawn_started(async move { lock.acquire().await }).await;
    holder.release().await.unwrap();
    let g = waiter.await.unwrap().0.unwrap();
    g.release().await.unwrap();
}

#[tokio::test]
async fn missing_directory_fails_at_once_with_the_cause() {
    let d = dir();
    let start = std::time::Instant::now();
    let err = support::fails_with(
        ErrorKind::Io,
        Lock::new(d.path().join("no/such/dir/a.lock"))
            .timeout(Duration::from_secs(600))
            .acquire(),
    )
    .await;
    assert_eq!(err.io_error().unwrap().kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().starts_with("failed to open lock file"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn directory_at_the_path_fails_at_once() {
    let d = dir();
    let err = Lock::new(d.path())
        .timeout(Duration::from_secs(600))
        .acquire()
        .await
        .unwrap_err();
    // Documented as InvalidInput (a path that can never be a lock file);
    // the OS error stays reachable.
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(
        err.io_error().unwrap().kind(),
        std::io::ErrorKind::IsADirectory
    );
}

// Unix only: Unix permission bits and a `nobody` child.
#[cfg(unix)]
#[tokio::test]
async fn permission_denied_fails_at_once() {
    let d = dir();
    let path = d.path().join("no-access.lock");
    std::fs::write(&path, "").unwrap();
    // Neither readable nor writable: read access alone would do (see
    // `an_exclusive_lock_needs_only_read_access`).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if support::is_root() {
        // Root ignores permissions: try as `nobody` in a child process.
        let mut child =
            Proc::role_as_nobody(d.path(), "child_entry", "try", &[path.to_str().unwrap()]);
        assert_eq!(child.expect("RESULT"), "Io Some(PermissionDenied)");
        child.finish();
    } else {
        let err = Lock::new(&path).acquire().await.unwrap_err();
        assert_eq!(
            err.io_error().unwrap().kind(),
            std::io::ErrorKind::PermissionDenied
        );
    }
}

#[tokio::test]
async fn bad_paths_are_invalid_input() {
    for p in ["", "a\0b.lock"] {
        let err = Lock::new(p).acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{p:?}: {err}");
    }
}

#[tokio::test]
async fn invalid_flags_are_invalid_input() {
    let d = dir();
    for flags in [
        LockFlags::SHARED | LockFlags::EXCLUSIVE,
        LockFlags::NON_BLOCKING,
        LockFlags::UNBLOCK,
        LockFlags::EXCLUSIVE | LockFlags::UNBLOCK,
        LockFlags::default(),
    ] {
        support::fails_with(
            ErrorKind::InvalidInput,
            Lock::new(d.path().join("a.lock")).flags(flags).acquire(),
        )
        .await;
    }
    assert!(!d.path().join("a.lock").exists(), "nothing was created");
}

#[tokio::test]
async fn shared_locks_coexist_and_exclude_writers() {
    let d = dir();
    let path = d.path().join("rw.lock");
    let r1 = Lock::new(&path)
        .flags(LockFlags::SHARED)
        .acquire()
        .await
        .unwrap();
    let r2 = Lock::new(&path)
        .flags(LockFlags::SHARED | LockFlags::NON_BLOCKING)
        .try_acquire()
        .await
        .unwrap();
    support::busy(Lock::new(&path).try_acquire()).await;
    drop((r1, r2));
    let w = Lock::new(&path).try_acquire().await.unwrap();
    support::busy(Lock::new(&path).flags(LockFlags::SHARED).try_acquire()).await;
    drop(w);
}

#[tokio::test]
async fn truncate_empties_only_once_the_lock_is_held() {
    let d = dir();
    let path = d.path().join("t.lock");
    let mut holder = Lock::new(&path).acquire().await.unwrap();
    holder.write_all(b"holder data").await.unwrap();
    holder.flush().await.unwrap();
    support::busy(Lock::new(&path).truncate(true).try_acquire()).await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"holder data",
        "not truncated while busy"
    );
    holder.release().await.unwrap();

    let mut g = Lock::new(&path).truncate(true).acquire().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"", "truncated once held");
    // Writes honour the position, like a real 'w' mode.
    g.write_all(b"abcdef").await.unwrap();
    g.seek(SeekFrom::Start(1)).await.unwrap();
    g.write_all(b"X").await.unwrap();
    g.release().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"aXcdef");
}

#[tokio::test]
async fn append_mode_keeps_content_and_reads_from_the_start() {
    let d = dir();
    let path = d.path().join("a.lock");
    std::fs::write(&path, b"one\n").unwrap();
    let lock = Lock::new(&path);
    for line in [b"two\n", b"six\n"] {
        let mut g = lock.acquire().await.unwrap();
        let mut seen = Vec::new();
        g.read_to_end(&mut seen).await.unwrap();
        assert!(seen.starts_with(b"one\n"));
        g.write_all(line).await.unwrap();
        g.release().await.unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\nsix\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_never_releases_before_written_data_reached_the_file() {
    let d = dir();
    let path = d.path().join("w.lock");
    let payload = vec![b'x'; 1 << 20];
    for _ in 0..20 {
        let lock = Lock::new(&path).truncate(true);
        let mut g = lock.acquire().await.unwrap();
        // write_all returns once the last chunk is handed to the blocking
        // pool; the write may still be in flight when the guard drops.
        g.write_all(&payload).await.unwrap();
        drop(g);
        let next = Lock::new(&path)
            .timeout(Duration::from_secs(30))
            .check_interval(Duration::from_millis(1));
        let g = next.acquire().await.unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            payload.len() as u64,
            "the next holder saw a partial write"
        );
        drop(g);
    }
}

#[tokio::test]
async fn release_reports_success_and_frees_the_lock() {
    let d = dir();
    let path = d.path().join("r.lock");
    let lock = Lock::new(&path);
    let mut g = lock.acquire().await.unwrap();
    g.write_all(b"data").await.unwrap();
    g.release().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    drop(Lock::new(&path).try_acquire().await.unwrap());
}

// Unix only: it plants a Unix symlink.
#[cfg(unix)]
#[tokio::test]
async fn symlink_at_the_path_is_refused_and_target_untouched() {
    let d = dir();
    let target = d.path().join("precious.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let link = d.path().join("evil.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = Lock::new(&link).truncate(true).acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    // A dangling symlink is not followed to create its target either.
    let dangling = d.path().join("dangling.lock");
    std::os::unix::fs::symlink(d.path().join("created-through-link"), &dangling).unwrap();
    assert!(Lock::new(&dangling).acquire().await.is_err());
    assert!(!d.path().join("created-through-link").exists());
}

// Unix only: it plants a FIFO (mkfifo).
#[cfg(unix)]
#[tokio::test]
async fn fifo_at_the_path_never_hangs() {
    let d = dir();
    let fifo = d.path().join("fifo.lock");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let r = tokio::time::timeout(Duration::from_secs(30), Lock::new(&fifo).acquire())
        .await
        .expect("acquire on a FIFO hung");
    let err = r.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

// Unix only: Unix permission bits (Windows files get the directory's ACL).
#[cfg(unix)]
#[tokio::test]
async fn created_lock_files_are_not_world_writable() {
    let d = dir();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = d.path().join("m.lock");
    // umask 0 in the child, so only the crate's own mode limits the bits.
    let mut child = Proc::role_via(
        "umask 000; exec \"$0\" \"$@\"",
        "child_entry",
        "try",
        &[path.to_str().unwrap()],
    );
    assert_eq!(child.expect("RESULT"), "ok");
    child.finish();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o002, 0, "world-writable: {mode:o}");
    assert_eq!(mode, 0o664);
}

#[tokio::test]
async fn reused_lock_reverifies_the_file_at_the_path() {
    let d = dir();
    let path = d.path().join("swap.lock");
    let lock = Lock::new(&path);
    // Leaves an idle descriptor cached in `lock`.
    lock.acquire().await.unwrap().release().await.unwrap();
    // Someone replaces the file and holds a lock on the new one.
    std::fs::remove_file(&path).unwrap();
    let other = Lock::new(&path).acquire().await.unwrap();
    // The cached descriptor (old inode) is free, but the lock on the path is not.
    let err = lock.try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    drop(other);
    // And once it is free, we lock the file now at the path.
    let mut g = lock.try_acquire().await.unwrap();
    g.write_all(b"mine").await.unwrap();
    g.release().await.unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"mine",
        "locked the old file"
    );
}

#[test]
fn waiting_never_blocks_a_current_thread_runtime() {
    let d = dir();
    let path = d.path().join("held.lock");
    let mut holder = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    holder.expect("LOCKED");
    let rt = support::current_thread();
    let ticks = rt.block_on(async {
        let ticker = tokio::spawn(async {
            let mut n = 0u32;
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                n += 1;
                if n == 40 {
                    return n;
                }
            }
        });
        let lock = Lock::new(&path)
            .timeout(Duration::from_secs(60))
            .check_interval(Duration::from_millis(50));
        let acquire = lock.acquire();
        tokio::select! {
            r = acquire => panic!("acquired a lock held by another process: {r:?}"),
            n = ticker => n.unwrap(),
        }
    });
    // The other task ran to completion on the only thread while acquire waited.
    assert_eq!(ticks, 40);
    holder.finish();
}

#[tokio::test]
async fn guard_and_futures_are_send_sync_static() {
    fn send_sync_static<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let d = dir();
    let lock = Lock::new(d.path().join("s.lock"));
    send_sync_static(&lock);
    let fut = lock.acquire();
    send(&fut);
    let g = fut.await.unwrap();
    send_sync_static(&g);
    send(&lock.try_acquire());
    send(&g.release());
}

#[test]
fn guard_dropped_outside_any_runtime_releases() {
    let d = dir();
    let path = d.path().join("o.lock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = rt.block_on(Lock::new(&path).acquire()).unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
    let probe = std::fs::File::open(&path).unwrap();
    assert!(probe.try_lock().is_err(), "still held before the drop");
    std::thread::spawn(move || drop(g)).join().unwrap();
    probe.try_lock().unwrap();
}

/// A waiter wakes when a guard of this process releases, not at its next
/// poll: with a 60 s check interval the first poll would come after 30 s.
#[tokio::test]
async fn in_process_release_wakes_the_waiter_at_once() {
    let d = dir();
    let path = d.path().join("wake.lock");
    for _ in 0..20 {
        let holder = Lock::new(&path).acquire().await.unwrap();
        let lock = Lock::new(&path)
            .timeout(Duration::from_secs(120))
            .check_interval(Duration::from_secs(60));
        let waiter = tokio::spawn(async move { lock.acquire().await });
        // Single-threaded runtime: yielding lets the waiter run until it
        // waits.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let released = std::time::Instant::now();
        holder.release().await.unwrap();
        drop(waiter.await.unwrap().unwrap());
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "woke only by polling"
        );
    }
}

/// Tasks of one process are served in the order they asked.
#[tokio::test]
async fn tasks_of_one_process_are_served_in_fifo_order() {
    let d = dir();
    let path = d.path().join("fifo.lock");
    let holder = Lock::new(&path).acquire().await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (path, order) = (path.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = Lock::new(&path)
                .timeout(Duration::from_secs(120))
                .check_interval(Duration::from_secs(60))
                .acquire()
                .await
                .unwrap();
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
            drop(g);
        }));
        tokio::task::yield_now().await; // task i is queued before task i + 1
    }
    drop(holder);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

/// Another process that dies while holding the lock closes the file: the
/// waiter wakes on that close instead of at its next poll.
// Linux only: the wake-up comes from inotify; elsewhere (and with
// `--cfg portalocker_portable`) a waiter of another process's lock polls.
#[cfg(all(target_os = "linux", not(portalocker_portable)))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_holder_process_wakes_the_waiter_at_once() {
    let d = dir();
    let path = d.path().join("wake-proc.lock");
    let mut child = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    child.expect("LOCKED");
    let lock = Lock::new(&path)
        .timeout(Duration::from_secs(120))
        .check_interval(Duration::from_secs(60));
    let waiter = support::spawn_started(async move { lock.acquire().await }).await;
    assert!(support::eventually(Duration::from_secs(10), || support::open_count(&path) >= 1).await);
    let killed = std::time::Instant::now();
    child.kill();
    drop(waiter.await.unwrap().0.unwrap());
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "woke only by polling"
    );
}

/// As root: a root-owned file `name` (`contents`, `mode`) in a new
/// directory, held (`how`: "ex" or "sh") by a child running as `nobody`;
/// `None`, said on stderr, when the test does not run as root.
#[cfg(unix)]
fn held_by_nobody(
    name: &str,
    contents: &[u8],
    mode: u32,
    how: &str,
) -> Option<(tempfile::TempDir, std::path::PathBuf, Proc)> {
    if !support::needs_root(
        "a read-access lock test",
        "it runs a process as nobody against a root-owned file",
    ) {
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let mut holder = Proc::role_as_nobody(
        d.path(),
        "child_entry",
        "hold",
        &[path.to_str().unwrap(), how],
    );
    holder.expect("LOCKED");
    Some((d, path, holder))
}

/// An exclusive lock on another user's file that this user may only read:
/// opened read-only, it works, and it excludes the owner.
// Unix only: Unix permission bits and a `nobody` child.
#[cfg(unix)]
#[test]
fn an_exclusive_lock_needs_only_read_access() {
    let Some((_d, path, holder)) = held_by_nobody("read-only.lock", b"data", 0o444, "ex") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        support::busy(Lock::new(&path).flags(LockFlags::SHARED).try_acquire()).await;
    });
    holder.finish();
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

/// `flock(LOCK_SH)` needs only a read-only descriptor: a shared lock on
/// another user's 0644 file works for a user who may only read it, and it
/// still excludes an exclusive holder.
// Unix only: Unix permission bits and a `nobody` child.
#[cfg(unix)]
#[test]
fn a_shared_lock_needs_only_read_access() {
    let Some((_d, path, reader)) = held_by_nobody("readers.lock", b"", 0o644, "sh") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let err = Lock::new(&path).try_acquire().await.unwrap_err();
        assert!(err.is_already_locked(), "{err}");
        let shared = Lock::new(&path).flags(LockFlags::SHARED);
        drop(shared.try_acquire().await.unwrap());
    });
    reader.finish();
}

/// A guard dropped while its write is still in flight on the blocking pool
/// releases through the engine once the write is done: the next owner of
/// this process is let through only then, and gets the lock at once
/// (before, the gate let it through while the write still held the lock,
/// and nothing woke it when the write's close released it: it slept until
/// its next scheduled attempt, here an hour away).
#[test]
fn a_guard_dropped_during_a_write_hands_the_lock_to_the_next_owner() {
    let rt = one_blocking_thread();
    rt.block_on(async {
        let d = dir();
        let path = d.path().join("w.lock");
        let hour = Duration::from_secs(3600);
        // The waiter keeps a descriptor from an earlier grant, so its
        // attempts need no blocking-pool thread.
        let waiter_lock = Lock::new(&path).timeout(hour).check_interval(hour);
        drop(waiter_lock.acquire().await.unwrap());
        let mut guard = Lock::new(&path).acquire().await.unwrap();
        let mut waiter = std::pin::pin!(waiter_lock.acquire());
        assert!(futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none());
        // Occupy the only blocking thread, so the guard's write is queued
        // (in flight) when the guard drops.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || wait.recv().unwrap());
        guard.write_all(b"payload").await.unwrap();
        drop(guard);
        // Whatever the gate lets through now meets the lock still held.
        assert!(futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none());
        go.send(()).unwrap();
        blocker.await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the next owner was not handed the lock released after the write")
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"payload");
        drop(got);
    });
}

/// A failed attempt looks up who holds the lock (the OS's lock table and
/// command lines: `/proc` on Linux) on the blocking pool, never on a
/// runtime thread: with the only blocking thread busy, the failed
/// `try_acquire` waits for it instead of reading files inline.
#[test]
fn a_failed_attempt_looks_up_the_holder_on_the_blocking_pool() {
    let rt = one_blocking_thread();
    rt.block_on(async {
        let d = dir();
        let path = d.path().join("h.lock");
        let held = std::fs::File::create(&path).unwrap();
        held.lock().unwrap();
        let lock = Lock::new(&path);
        // The first failure opens the file; its descriptor is kept, so the
        // next attempt needs the blocking pool only for the lookup.
        assert!(lock.try_acquire().await.unwrap_err().is_already_locked());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || wait.recv().unwrap());
        let mut attempt = std::pin::pin!(lock.try_acquire());
        assert!(
            futures_util::FutureExt::now_or_never(attempt.as_mut()).is_none(),
            "the failed attempt did its holder lookup on the runtime thread"
        );
        go.send(()).unwrap();
        blocker.await.unwrap();
        let e = attempt.await.unwrap_err();
        assert!(e.is_already_locked(), "{e}");
    });
}

/// A current-thread runtime whose blocking pool has one thread, which a
/// test can keep busy to hold back blocking-pool work deterministically.
fn one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap()
}

/// `read()` and `write()` take one lock file shared or exclusive whatever
/// the `Lock`'s configured flags: readers share (with a shared holder in
/// another process too), a writer excludes them and is excluded by them,
/// a dropped `read()` future holds nothing, and alternating modes keeps
/// one descriptor per mode, not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_write_share_and_exclude() {
    let (_d, path) = support::temp_path("rw.lock");
    let lock = Lock::new(&path).timeout(Duration::from_millis(200));
    let (a, b) = (lock.read().await.unwrap(), lock.read().await.unwrap());
    assert!(lock.try_write().await.unwrap_err().is_already_locked());
    assert!(lock.try_acquire().await.unwrap_err().is_already_locked());
    drop((a, b));
    let w = lock.write().await.unwrap();
    assert!(lock.try_read().await.unwrap_err().is_already_locked());
    drop(w);
    for _ in 0..100 {
        drop(lock.read().await.unwrap());
        drop(lock.write().await.unwrap());
    }
    #[cfg(target_os = "linux")]
    assert!(
        support::open_count(&path) <= 2,
        "{}",
        support::open_count(&path)
    );

    // Another process's shared holder shares with read(), not write().
    let p = path.to_str().unwrap();
    let mut reader = Proc::role("child_entry", "hold", &[p, "sh"]);
    reader.expect("LOCKED");
    let r = lock.try_read().await.unwrap();
    assert!(lock.try_write().await.unwrap_err().is_already_locked());
    drop(r);
    reader.finish();

    // Another process's exclusive holder: a read() dropped while waiting
    // leaves nothing held once the holder is gone.
    let mut writer = Proc::role("child_entry", "hold", &[p]);
    writer.expect("LOCKED");
    let waited = tokio::time::timeout(Duration::from_millis(50), lock.read()).await;
    assert!(waited.is_err() || waited.unwrap().unwrap_err().is_already_locked());
    writer.finish();
    drop(lock.try_write().await.unwrap());

    // A shared-configured lock writes through write() too.
    let shared = Lock::new(&path).flags(LockFlags::SHARED);
    let w = shared.write().await.unwrap();
    assert!(shared.try_read().await.unwrap_err().is_already_locked());
    drop(w);
}

/// A task may wait for a lock whose guard it acquired, once that guard can
/// be released elsewhere: handed to another task, or held by another
/// branch of a `join!` in this very task. Both waits end with the lock
/// granted. (This is why an acquisition is never refused "at once" as a
/// self-deadlock: the crate cannot tell these from a guard that stays in
/// the waiting task.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_may_wait_for_a_guard_it_acquired_and_handed_on() {
    let (_d, path) = support::temp_path("handed.lock");
    let lock = Lock::new(&path).timeout(Duration::from_secs(60));

    // Handed to another task, which releases it when told.
    let guard = lock.acquire().await.unwrap();
    let (go, told) = tokio::sync::oneshot::channel::<()>();
    let other = tokio::spawn(async move {
        told.await.unwrap();
        guard.release().await.unwrap();
    });
    let mut again = std::pin::pin!(lock.acquire());
    assert!(
        futures_util::FutureExt::now_or_never(again.as_mut()).is_none(),
        "granted while held"
    );
    go.send(()).unwrap();
    drop(again.await.unwrap());
    other.await.unwrap();

    // Held by the other branch of a `join!` in this task.
    let guard = lock.acquire().await.unwrap();
    let (go, told) = tokio::sync::oneshot::channel::<()>();
    let (released, waited) = tokio::join!(
        async move {
            told.await.unwrap();
            guard.release().await
        },
        async {
            let mut again = std::pin::pin!(lock.acquire());
            assert!(
                futures_util::FutureExt::now_or_never(again.as_mut()).is_none(),
                "granted while held"
            );
            go.send(()).unwrap();
            again.await
        },
    );
    released.unwrap();
    drop(waited.unwrap());
}

/// A downgraded writer lets readers in (a task of this process already
/// waiting at the gate, and another process) and keeps writers out, and
/// what it wrote before is there for the readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgraded_writer_lets_readers_in_and_keeps_writers_out() {
    let (_d, path) = support::temp_path("downgrade.lock");
    let lock = Lock::new(&path).timeout(Duration::from_secs(60));
    let mut writer = lock.write().await.unwrap();
    writer.write_all(b"v2").await.unwrap();
    let mut waiting = std::pin::pin!(lock.read());
    assert!(futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none());
    writer.downgrade().await.unwrap();
    let mut reader = waiting.await.unwrap();
    let mut seen = String::new();
    reader.read_to_string(&mut seen).await.unwrap();
    assert_eq!(seen, "v2", "the readers do not see what the writer wrote");
    let mut other = Proc::role("child_entry", "hold", &[path.to_str().unwrap(), "sh"]);
    other.expect("LOCKED");
    let mut try_write = Proc::role("child_entry", "try", &[path.to_str().unwrap()]);
    assert!(try_write.expect("RESULT").starts_with("AlreadyLocked"));
    try_write.finish();
    support::busy(lock.try_write()).await;
    // Downgrading a shared lock changes nothing.
    reader.downgrade().await.unwrap();
    drop((reader, writer));
    other.close_stdin();
    other.expect("RELEASED");
    other.finish();
    drop(lock.try_write().await.unwrap());
}

/// A downgrade never lets a waiting writer in: another process loops on a
/// plain blocking `flock` (the kernel wakes it the moment the lock is
/// free), and this one takes the lock exclusively, downgrades it and holds
/// it shared for a while, 4,000 times (an unlock and relock in between
/// fails this within a few hundred). No section of the other process may
/// overlap one of ours (each from the exclusive grant to the shared
/// release), and every downgrade succeeds.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_never_lets_a_waiting_writer_in() {
    let (d, path) = support::temp_path("atomic-downgrade.lock");
    std::fs::write(&path, b"").unwrap();
    let out = d.path().join("writer-sections");
    let mut writer = Proc::role(
        "child_entry",
        "flock-writer",
        &[path.to_str().unwrap(), out.to_str().unwrap()],
    );
    writer.expect("LOOPING");
    let lock = Lock::new(&path)
        .timeout(Duration::from_secs(60))
        .check_interval(Duration::from_millis(1));
    let mut ours = Vec::new();
    for _ in 0..4_000 {
        let mut g = lock.write().await.unwrap();
        let start = support::epoch_ns();
        g.downgrade().await.unwrap();
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        ours.push((start, support::epoch_ns()));
        drop(g);
    }
    writer.close_stdin();
    let count: usize = writer.expect("DONE").trim().parse().unwrap();
    writer.finish();
    let theirs: Vec<(u128, u128)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(theirs.len(), count);
    assert!(count > 1, "the other writer never contended");
    for &(s, e) in &ours {
        if let Some(t) = theirs.iter().find(|&&(ts, te)| ts < e && s < te) {
            panic!("the other writer held {t:?} inside our section ({s}, {e})");
        }
    }
}

/// The guard makes its Tokio file on first use: threads that dereference
/// one guard at once all get the same file (50 rounds of 8 threads), and
/// writes through it still reach the disk before the unlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dereferenced_from_many_threads_has_one_file() {
    let (_d, path) = support::temp_path("shared-guard.lock");
    let lock = Lock::new(&path).truncate(true);
    for round in 0..50 {
        let guard = std::sync::Arc::new(lock.acquire().await.unwrap());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let addresses: Vec<usize> = (0..8)
            .map(|_| {
                let (guard, barrier) = (guard.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let file: &tokio::fs::File = &guard;
                    std::ptr::from_ref(file) as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(addresses.windows(2).all(|w| w[0] == w[1]), "{addresses:?}");
        let mut guard = std::sync::Arc::into_inner(guard).unwrap();
        guard
            .write_all(format!("round {round}").as_bytes())
            .await
            .unwrap();
        guard.release().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("round {round}")
        );
    }
}
