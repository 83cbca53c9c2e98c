//! Tests on tiny tmpfs mounts (a full disk, a read-only mount). They need
//! root and run one at a time: a child spawned by a concurrent test (even
//! `mount(8)` for another test's tmpfs) holds copies of this process's
//! descriptors until it execs, and an unlinked temporary file held that way
//! keeps its blocks — the next case would see a full disk that is not ours.
//!
//! Unix only: it mounts tmpfs filesystems (Linux, root).
#![cfg(unix)]
mod support;

use std::future::Future;

use std::sync::{Mutex, PoisonError};

use portalocker::{open_atomic, AtomicOptions, Durability, ErrorKind, Lock, LockFlags};
use support::entries;
use tokio::io::AsyncWriteExt;

/// Runs `test` on its own runtime while no other test of this binary runs.
fn one_at_a_time<F: Future<Output = ()>>(test: F) {
    if !support::needs_root("a small-mount test", "it mounts a tmpfs") {
        return;
    }
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(PoisonError::into_inner);
    support::current_thread().block_on(test);
}

/// How a payload too large for the disk is written.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// One `write_all`: acknowledged at once, the error only shows later.
    OneWrite,
    /// Many small writes; the caller stops at the first error it sees.
    Chunks,
    /// One write, then an explicit `flush` (which fails), then `commit`.
    FlushThenCommit,
}

/// Writes 1.5 MiB to a 1 MiB tmpfs in every way and with every
/// durability, new and replacing: `commit` must fail with the disk's error
/// and leave the destination as it was, with no temporary left behind.
#[test]
fn a_full_disk_fails_commit_and_leaves_the_destination_untouched() {
    one_at_a_time(async {
        let fs = support::SmallFs::mount("1m");
        let big = vec![7u8; 1536 * 1024];
        let durabilities = [Durability::Full, Durability::File, Durability::None];
        let patterns = [Pattern::OneWrite, Pattern::Chunks, Pattern::FlushThenCommit];
        for durability in durabilities {
            for pattern in patterns {
                for replace in [false, true] {
                    let case = format!("{durability:?} {pattern:?} replace={replace}");
                    let dest = fs.path().join("dest");
                    let _ = std::fs::remove_file(&dest);
                    if replace {
                        std::fs::write(&dest, b"good old content").unwrap();
                    }
                    let mut f = AtomicOptions::new()
                        .replace(replace)
                        .durability(durability)
                        .open(&dest)
                        .await
                        .unwrap();
                    match pattern {
                        Pattern::OneWrite => f.write_all(&big).await.unwrap(),
                        Pattern::Chunks => {
                            for chunk in big.chunks(4096) {
                                if f.write_all(chunk).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Pattern::FlushThenCommit => {
                            f.write_all(&big).await.unwrap();
                            let e = f.flush().await.unwrap_err();
                            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{case}");
                        }
                    }
                    let err = f.commit().await.expect_err(&case);
                    assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{case}: {err}");
                    assert!(err.to_string().contains("nothing was published"), "{err}");
                    if replace {
                        assert_eq!(std::fs::read(&dest).unwrap(), b"good old content", "{case}");
                        assert_eq!(entries(fs.path()), ["dest"], "{case}");
                    } else {
                        assert!(!dest.exists(), "{case}: a short file was published");
                        assert!(entries(fs.path()).is_empty(), "{case}");
                    }
                }
            }
        }
        // The disk is not left full: a payload that fits still commits.
        let dest = fs.path().join("fits");
        let mut f = open_atomic(&dest).await.unwrap();
        f.write_all(&big[..512 * 1024]).await.unwrap();
        f.commit().await.unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 512 * 1024);
    });
}

/// `release()` reports a write through the guard that the disk refused.
#[test]
fn a_full_disk_fails_lock_guard_release() {
    one_at_a_time(async {
        let fs = support::SmallFs::mount("1m");
        let lock = Lock::new(fs.path().join("data.lock"));
        let mut guard = lock.acquire().await.unwrap();
        guard.write_all(&vec![1u8; 1536 * 1024]).await.unwrap();
        let err = guard.release().await.unwrap_err();
        assert_eq!(err.kind(), portalocker::ErrorKind::Io, "{err}");
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::StorageFull),
            "{err}"
        );
        // Released all the same.
        drop(lock.try_acquire().await.unwrap());
    });
}

/// On a read-only mount an existing lock file locks, shared and exclusive
/// (opened read-only: only the guard's writes fail); a missing one reports
/// the mount's error.
#[test]
fn an_existing_lock_file_locks_on_a_read_only_mount() {
    one_at_a_time(async {
        let fs = support::SmallFs::mount("1m");
        let path = fs.path().join("ro.lock");
        std::fs::write(&path, b"").unwrap();
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(fs.path())
            .status()
            .unwrap();
        assert!(status.success());
        let guard = Lock::new(&path)
            .flags(LockFlags::SHARED)
            .acquire()
            .await
            .unwrap();
        guard.release().await.unwrap();
        let mut guard = Lock::new(&path)
            .try_acquire()
            .await
            .expect("an exclusive lock on an existing file of a read-only mount");
        let busy = Lock::new(&path).try_acquire().await.unwrap_err();
        assert!(busy.is_already_locked(), "{busy}");
        let write = tokio::io::AsyncWriteExt::write_all(&mut *guard, b"x").await;
        let write = match write {
            Ok(()) => tokio::io::AsyncWriteExt::flush(&mut *guard).await,
            e => e,
        };
        assert!(write.is_err(), "a write reached a read-only mount");
        drop(guard);
        let err = support::fails_with(
            ErrorKind::Io,
            Lock::new(fs.path().join("missing.lock")).try_acquire(),
        )
        .await;
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ReadOnlyFilesystem)
        );
    });
}
