//! Hostile filesystems and bad input: planted symlinks, hard links and
//! FIFOs at every path the crate writes or removes, and a table of bad
//! arguments for every constructor and setter. Nothing outside is
//! truncated, written or removed; every bad input is a typed error, never
//! a panic or a hang.
//!
//! Unix only: it plants Unix symlinks, hard links and FIFOs (the Windows behaviour of reparse points is covered by the unit tests of src/sys/windows.rs where Wine allows).
#![cfg(unix)]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use portalocker::{
    open_atomic, AtomicOptions, BoundedSemaphore, ErrorKind, Lock, LockFlags, PidFileLock, RLock,
    TemporaryFileLock,
};

struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim");
        std::fs::write(&path, b"precious").unwrap();
        Self { _dir: dir, path }
    }
    fn intact(&self) {
        assert_eq!(
            std::fs::read(&self.path).unwrap(),
            b"precious",
            "the victim was changed"
        );
    }
}

fn symlink(to: &Path, at: &Path) {
    std::os::unix::fs::symlink(to, at).unwrap();
}

fn is_symlink(p: &Path) -> bool {
    p.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
}

/// A symlink to a victim at each path the crate opens, writes or removes.
#[tokio::test]
async fn planted_symlinks_are_never_followed() {
    let v = Victim::new();
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);

    symlink(&v.path, &p("lock"));
    assert!(Lock::new(p("lock")).truncate(true).acquire().await.is_err());
    assert!(RLock::new(p("lock")).acquire().await.is_err());

    symlink(&v.path, &p("tmp.lock"));
    assert!(TemporaryFileLock::new(p("tmp.lock"))
        .acquire()
        .await
        .is_err());
    assert!(is_symlink(&p("tmp.lock")), "the link itself was removed");

    symlink(&v.path, &p("a.pid"));
    assert!(PidFileLock::new(p("a.pid")).acquire().await.is_err());
    assert!(is_symlink(&p("a.pid")));
    symlink(&v.path, &p("b.pid.lock"));
    assert!(PidFileLock::new(p("b.pid")).acquire().await.is_err());

    symlink(&v.path, &p("sem.00.lock"));
    let sem = BoundedSemaphore::new(2).name("sem").directory(d.path());
    // Slot 1 is usable; slot 0 is a link and is never followed.
    let permits: Vec<_> = futures_util::future::join_all((0..2).map(|_| sem.acquire())).await;
    assert!(
        permits.iter().any(Result::is_err),
        "a symlinked slot was used"
    );
    drop(permits);

    symlink(&v.path, &p("atomic"));
    assert_eq!(
        open_atomic(p("atomic")).await.unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    let mut f = AtomicOptions::new()
        .replace(true)
        .open(p("atomic"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut f, b"new")
        .await
        .unwrap();
    f.commit().await.unwrap();
    assert!(
        !is_symlink(&p("atomic")),
        "replace mode replaces the link itself"
    );

    v.intact();
}

/// A hard link to a victim is never truncated or removed through.
#[tokio::test]
async fn planted_hard_links_are_never_written_through() {
    let v = Victim::new();
    let d = tempfile::tempdir_in(v.path.parent().unwrap()).unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::hard_link(&v.path, p("lock")).unwrap();
    assert!(Lock::new(p("lock")).truncate(true).acquire().await.is_err());
    // Locking without writing is harmless, and writes nothing.
    drop(Lock::new(p("lock")).acquire().await.unwrap());
    std::fs::hard_link(&v.path, p("tmp.lock")).unwrap();
    assert!(TemporaryFileLock::new(p("tmp.lock"))
        .acquire()
        .await
        .is_err());
    std::fs::hard_link(&v.path, p("sem.00.lock")).unwrap();
    let permit = BoundedSemaphore::new(1)
        .name("sem")
        .directory(d.path())
        .acquire()
        .await
        .unwrap();
    drop(permit);
    v.intact();
    assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 8);
}

/// A FIFO at any lock path never hangs an acquire.
#[tokio::test]
async fn fifos_never_hang() {
    let d = tempfile::tempdir().unwrap();
    let fifo = |n: &str| {
        let p = d.path().join(n);
        assert!(std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap()
            .success());
        p
    };
    let limit = Duration::from_secs(20);
    let f = fifo("l");
    assert!(tokio::time::timeout(limit, Lock::new(&f).acquire())
        .await
        .unwrap()
        .is_err());
    let f = fifo("t");
    assert!(
        tokio::time::timeout(limit, TemporaryFileLock::new(&f).acquire())
            .await
            .unwrap()
            .is_err()
    );
    let _ = fifo("p.pid.lock");
    let r = tokio::time::timeout(limit, PidFileLock::new(d.path().join("p.pid")).acquire()).await;
    assert!(r.unwrap().is_err());
    let _ = fifo("s.00.lock");
    let r = tokio::time::timeout(
        limit,
        BoundedSemaphore::new(1)
            .name("s")
            .directory(d.path())
            .acquire(),
    )
    .await;
    assert!(r.unwrap().is_err());
}

/// Every constructor and setter, with bad values: typed errors, no panics.
#[tokio::test]
async fn bad_inputs_are_typed_errors() {
    let d = tempfile::tempdir().unwrap();
    let huge = "n".repeat(5000);
    let bad_paths: Vec<(PathBuf, &str)> = vec![
        (PathBuf::from(""), "empty"),
        (PathBuf::from("a\0b"), "NUL"),
        (d.path().to_path_buf(), "directory"),
        (d.path().join(&huge), "name too long"),
        (d.path().join("missing/x"), "missing parent"),
    ];
    for (path, what) in &bad_paths {
        let e = Lock::new(path).acquire().await.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Io),
            "Lock {what}: {e}"
        );
        let e = RLock::new(path).acquire().await.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Io),
            "RLock {what}: {e}"
        );
        let e = TemporaryFileLock::new(path).acquire().await.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Io),
            "Temp {what}: {e}"
        );
        if *what != "directory" {
            let e = PidFileLock::new(path).acquire().await.unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Io),
                "Pid {what}: {e}"
            );
        }
        if *what != "directory" {
            let sem = BoundedSemaphore::new(1).name("x").directory(path);
            let e = sem.acquire().await.unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Io),
                "Sem dir {what}: {e}"
            );
        }
        if *what != "missing parent" {
            assert!(open_atomic(path).await.is_err(), "open_atomic {what}");
        }
    }
    // Invalid flags everywhere they are accepted.
    for bits in [0u8, 3, 4, 7, 8, 9, 10, 12, 15] {
        let flags = LockFlags::from_bits(bits).unwrap();
        support::fails_with(
            ErrorKind::InvalidInput,
            Lock::new(d.path().join("f")).flags(flags).acquire(),
        )
        .await;
        support::fails_with(
            ErrorKind::InvalidInput,
            RLock::new(d.path().join("f")).flags(flags).acquire(),
        )
        .await;
    }
    assert!(LockFlags::from_bits(16).is_none() && LockFlags::from_bits(255).is_none());
    // Semaphore sizes and names.
    for (sem, what) in [
        (BoundedSemaphore::new(0), "zero slots"),
        (BoundedSemaphore::new(usize::MAX), "usize::MAX slots"),
        (BoundedSemaphore::new(2).name(""), "empty name"),
        (BoundedSemaphore::new(2).name("a/b"), "slash"),
        (
            BoundedSemaphore::new(2).filename_pattern(""),
            "empty pattern",
        ),
        (
            BoundedSemaphore::new(2).filename_pattern("{number:99999d}"),
            "huge width",
        ),
    ] {
        let e = sem.directory(d.path()).acquire().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
    }
    // Extreme durations are values, not errors, and never overflow.
    for t in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        let g = Lock::new(d.path().join("t"))
            .timeout(t)
            .check_interval(t)
            .acquire()
            .await
            .unwrap();
        let busy = Lock::new(d.path().join("t"))
            .timeout(Duration::ZERO)
            .check_interval(t)
            .acquire()
            .await;
        assert!(busy.unwrap_err().is_already_locked());
        drop(g);
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn bad_redis_inputs_are_typed_errors() {
    use portalocker::RedisLock;
    let client = portalocker::redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let long = "c".repeat(100_000);
    for ch in [
        "",
        " ",
        "a b",
        "a\nb",
        "a\rb",
        "\u{0}",
        "tab\there",
        long.as_str(),
    ] {
        support::fails_with(
            ErrorKind::InvalidInput,
            RedisLock::new(ch, client.clone()).acquire(),
        )
        .await;
    }
    // Invalid sets (NON_BLOCKING with a mode is valid: it is implied).
    for bits in [0u8, 3, 4, 8, 9, 12] {
        support::fails_with(
            ErrorKind::InvalidInput,
            RedisLock::new("ok", client.clone())
                .flags(LockFlags::from_bits(bits).unwrap())
                .acquire(),
        )
        .await;
    }
    for s in [Duration::ZERO, Duration::from_secs(1), Duration::MAX] {
        support::fails_with(
            ErrorKind::InvalidInput,
            RedisLock::new("ok", client.clone())
                .self_check_interval(s)
                .acquire(),
        )
        .await;
    }
    // Extreme timeouts against an unreachable server: a Redis error, fast.
    for t in [Duration::ZERO, Duration::from_millis(200)] {
        support::fails_with(
            ErrorKind::Redis,
            RedisLock::new("ok", client.clone()).timeout(t).acquire(),
        )
        .await;
    }
}

/// A directory or a symlink at a lock path is `InvalidInput`, as the docs
/// promise (like a FIFO), for every file primitive and for the pid file's
/// sidecar; `open_atomic` refuses a destination that names a directory
/// before it creates anything.
#[tokio::test]
async fn directories_and_symlinks_at_lock_paths_are_invalid_input() {
    let v = Victim::new();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let link = d.path().join("a-symlink");
    symlink(&v.path, &link);
    for (what, path) in [("directory", &dir), ("symlink", &link)] {
        let kinds = [
            ("Lock", Lock::new(path).acquire().await.map(drop)),
            (
                "Lock shared",
                Lock::new(path)
                    .flags(LockFlags::SHARED)
                    .acquire()
                    .await
                    .map(drop),
            ),
            ("RLock", RLock::new(path).acquire().await.map(drop)),
            (
                "TemporaryFileLock",
                TemporaryFileLock::new(path).acquire().await.map(drop),
            ),
        ];
        for (name, r) in kinds {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name} on a {what}: {e}");
            assert!(e.to_string().contains(what), "{name}: {e}");
        }
    }
    // The pid file path and the sidecar, each a symlink or a directory.
    for (n, (pid_kind, sidecar_kind)) in [
        ("file", "symlink"),
        ("file", "directory"),
        ("symlink", "file"),
        ("directory", "file"),
    ]
    .into_iter()
    .enumerate()
    {
        let pid = d.path().join(format!("p{n}.pid"));
        let sidecar = d.path().join(format!("p{n}.pid.lock"));
        for (kind, at) in [(pid_kind, &pid), (sidecar_kind, &sidecar)] {
            match kind {
                "symlink" => symlink(&v.path, at),
                "directory" => std::fs::create_dir(at).unwrap(),
                _ => {}
            }
        }
        let e = PidFileLock::new(&pid).acquire().await.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "pid {pid_kind}, sidecar {sidecar_kind}: {e}"
        );
    }
    v.intact();
    // A trailing separator names a directory: refused up front, no litter.
    let before = std::fs::read_dir(d.path()).unwrap().count();
    for bad in ["new/", "new/.", "new/.."] {
        let e = open_atomic(d.path().join(bad)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {e}");
    }
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), before);
    assert!(!d.path().join("new").exists(), "a directory was created");
}
