//! The cross-process handoff in the field's conditions: a holder that keeps
//! re-taking its lock must hand it to a waiter of another process on a
//! relatime filesystem while it reads the lock file, on tmpfs, and when the
//! waiter may only read the file; a waiter killed while announced leaves
//! nothing behind. Every side is a real process (this binary re-executed);
//! nothing is timed except generous per-acquisition timeouts.
//!
//! Linux only (built without `--cfg portalocker_portable`): elsewhere
//! waiters poll and holders never hand over, which `tests/lock.rs` covers.
#![cfg(all(target_os = "linux", not(portalocker_portable)))]
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use portalocker::Lock;
use support::Proc;

support::child_entry!();

/// The statistical half: fifty acquisitions with a 1 s timeout each (a handover takes a few
/// milliseconds) against a holder in another process that re-takes the
/// lock in a loop: every one is served.
/// `waiter` starts a `serve-on-go` role with these arguments.
fn assert_served_against_looping_holder(
    path: &Path,
    reads: bool,
    waiter: impl FnOnce(&[&str]) -> Proc,
) {
    let mut holder = looping_holder(path, reads);
    let mut waiter = waiter(&[path.to_str().unwrap(), "50", "1000"]);
    holder.expect("LOOPING");
    waiter.send("go");
    let served = waiter.expect("SERVED");
    assert!(
        served.starts_with("50 of 50;"),
        "{}: {served}",
        path.display()
    );
    holder.close_stdin();
    let grants: u64 = holder.expect("GRANTS").trim().parse().unwrap();
    assert!(grants >= 100, "the holder looped ({grants} grants)");
    holder.finish();
    waiter.finish();
}

/// The deterministic half: this process holds the lock, a waiter of
/// another process (`waiter`, role `wait`) announces itself, the lock file
/// is read (through the guard's descriptor and a fresh one — on relatime
/// or strictatime mounts that changes the access time), and the release
/// after the holder's burst hands over: it rings the waiter's doorbell,
/// and the waiter gets the lock.
async fn assert_hands_over_despite_reads(path: &Path, waiter: impl FnOnce() -> Proc) {
    let ino = std::fs::metadata(path).unwrap().ino();
    let lock = Lock::new(path);
    let guard = lock.acquire().await.unwrap();
    let held = std::time::Instant::now();
    let mut waiter = waiter();
    waiter.expect("WAITING");
    wait_for_announcement(ino, &mut waiter).await;
    let mut buf = [0u8; 5];
    let fd = std::os::fd::AsFd::as_fd(&*guard)
        .try_clone_to_owned()
        .unwrap();
    std::os::unix::fs::FileExt::read_at(&std::fs::File::from(fd), &mut buf, 0).unwrap();
    let _ = std::io::Read::read(&mut std::fs::File::open(path).unwrap(), &mut buf).unwrap();
    // A holder hands over only after a burst of grants (a millisecond).
    while held.elapsed() < Duration::from_millis(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(guard);
    assert_eq!(
        support::open_count(path),
        1,
        "{}: the release handed over by ringing the waiter (keeping its descriptor)",
        path.display()
    );
    waiter.expect("ACQUIRED");
    waiter.finish();
}

async fn wait_for_announcement(ino: u64, waiter: &mut Proc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while announcements(ino) == 0 {
        waiter.assert_alive();
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never announced itself on inode {ino}; /proc/locks:\n{}",
            std::fs::read_to_string("/proc/locks").unwrap()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn looping_holder(path: &Path, reads: bool) -> Proc {
    let p = path.to_str().unwrap();
    Proc::role(
        "child_entry",
        "loop",
        &[p, if reads { "reads" } else { "plain" }],
    )
}

/// A handover wakes the longest-waiting waiter alone, by its doorbell: the
/// holder keeps its descriptor (no close, so no inotify event wakes every
/// waiter), and the waiter, which never polls, is served at once.
#[tokio::test]
async fn a_handover_rings_the_waiter_and_keeps_the_descriptor() {
    let (_d, path) = support::temp_path("rung.lock");
    std::fs::write(&path, b"").unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let lock = Lock::new(&path);
    let guard = lock.acquire().await.unwrap();
    let held = std::time::Instant::now();
    let mut waiter = Proc::role(
        "child_entry",
        "wait",
        &[path.to_str().unwrap(), "wake-only"],
    );
    waiter.expect("WAITING");
    wait_for_announcement(ino, &mut waiter).await;
    // A holder hands over only after a burst of grants (a millisecond).
    while held.elapsed() < Duration::from_millis(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(guard);
    assert_eq!(
        support::open_count(&path),
        1,
        "the release kept its descriptor (it rang instead of closing)"
    );
    waiter.expect("ACQUIRED");
    waiter.finish();
}

/// The old handoff (a sentinel access time) lost its announcement to every
/// read of the lock file on relatime mounts — the default on ext4 and
/// tmpfs — and a waiter timed out 3 times in 10.
#[tokio::test]
async fn a_holder_reading_its_lock_file_hands_over_on_relatime_and_tmpfs() {
    if !support::needs_root("the relatime/tmpfs handoff test", "it mounts a tmpfs") {
        return;
    }
    let disk = tempfile::tempdir().unwrap();
    let tmpfs = support::SmallFs::mount("8m");
    for dir in [disk.path(), tmpfs.path()] {
        let path = dir.join("read.lock");
        std::fs::write(&path, b"hello world").unwrap();
        let waiter = || {
            Proc::role(
                "child_entry",
                "wait",
                &[path.to_str().unwrap(), "wake-only"],
            )
        };
        assert_hands_over_despite_reads(&path, waiter).await;
        assert_served_against_looping_holder(&path, true, |args| {
            Proc::role("child_entry", "serve-on-go", args)
        });
    }
}

/// A waiter that is not the file's owner — with write access (0666) or
/// only read access (0644) — is handed the lock like the owner. (The old
/// handoff needed to set the access time, which only the owner may: such
/// a waiter timed out 8 times in 10.)
#[tokio::test]
async fn a_waiter_that_does_not_own_the_file_is_handed_the_lock() {
    if !support::needs_root(
        "the non-owner handoff test",
        "it runs a waiter as nobody against a root-owned file",
    ) {
        return;
    }
    for mode in [0o666, 0o644] {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = d.path().join("shared.lock");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let waiter = || {
            Proc::role_as_nobody(
                d.path(),
                "child_entry",
                "wait",
                &[path.to_str().unwrap(), "wake-only"],
            )
        };
        assert_hands_over_despite_reads(&path, waiter).await;
        assert_served_against_looping_holder(&path, false, |args| {
            Proc::role_as_nobody(d.path(), "child_entry", "serve-on-go", args)
        });
    }
}

/// The open-file-description locks (announcements) on the file `ino`.
fn announcements(ino: u64) -> usize {
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    locks
        .lines()
        .filter(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
        .count()
}

/// A waiter SIGKILLed while announced leaves no state: its announcement
/// was the kernel's and died with it, the lock file's times were never
/// touched, and the holder's next releases keep their descriptor (a
/// release that handed over to it would close it: a ring to a process
/// that is gone cannot be sent).
#[tokio::test]
async fn a_killed_announced_waiter_leaves_nothing_behind() {
    let (_d, path) = support::temp_path("killed.lock");
    std::fs::write(&path, b"").unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(past)
                .set_modified(past),
        )
        .unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let lock = Lock::new(&path);
    let guard = lock.acquire().await.unwrap();
    let mut waiter = Proc::role("child_entry", "wait", &[path.to_str().unwrap()]);
    waiter.expect("WAITING");
    // The waiter announces at its first busy attempt.
    wait_for_announcement(ino, &mut waiter).await;
    waiter.kill();
    assert_eq!(
        announcements(ino),
        0,
        "the announcement died with the waiter"
    );
    drop(guard);
    for _ in 0..1_000 {
        lock.acquire().await.unwrap().release().await.unwrap();
    }
    assert_eq!(
        support::open_count(&path),
        1,
        "no release handed over: the descriptor is kept for reuse"
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.accessed().unwrap(), past, "access time untouched");
    assert_eq!(
        meta.modified().unwrap(),
        past,
        "modification time untouched"
    );
}

/// A waiter that cannot take what it is handed (SIGSTOPped while announced:
/// a debugger, a frozen cgroup) stops being handed the lock after a few
/// handovers. The first one rings its doorbell (the holder keeps its
/// descriptor); since it did not take that, the next ones close the
/// descriptor, which wakes every waiter; then it is left out and the
/// holder's releases keep their descriptor again, instead of every one
/// closing it and staying away for nothing. Resumed, the waiter is still
/// served.
#[tokio::test]
async fn a_stopped_announced_waiter_is_left_out_after_a_few_handovers() {
    let (_d, path) = support::temp_path("stopped.lock");
    std::fs::write(&path, b"").unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let lock = Lock::new(&path).timeout(Duration::from_secs(60));
    let guard = lock.acquire().await.unwrap();
    let mut waiter = Proc::role("child_entry", "wait", &[path.to_str().unwrap()]);
    waiter.expect("WAITING");
    wait_for_announcement(ino, &mut waiter).await;
    let waiter_pid = waiter.pid();
    support::kill("-STOP", waiter_pid);
    drop(guard);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut closes = 0;
    loop {
        let g = lock.acquire().await.unwrap();
        // Past the holder's burst, so the release looks for announcements.
        let held = std::time::Instant::now();
        while held.elapsed() < Duration::from_millis(3) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(g);
        if support::open_count(&path) == 0 {
            closes += 1;
        } else if closes > 0 {
            break; // kept its descriptor again: left out
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {closes} closing handovers the stopped waiter is still handed the lock \
             (or was never handed it)"
        );
    }
    assert!(
        (1..=3).contains(&closes),
        "{closes} closing handovers to the stopped waiter before it was left out"
    );
    support::kill("-CONT", waiter_pid);
    waiter.expect("ACQUIRED");
    waiter.finish();
}
