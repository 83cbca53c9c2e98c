//! A semaphore's descriptors do not grow with its size: under the usual
//! limit of 1,024 open files, the one free slot of a 10,000-slot semaphore
//! is found; besides held slots only the lowest 64 stay open; running out
//! of descriptors is an I/O error at once, never "every slot is busy".
//!
//! One test per binary on purpose: it lowers this process's open-file
//! limit and counts its descriptors.
//!
//! Linux only: it counts `/proc/self/fd` and lowers the limit with
//! util-linux `prlimit`.
#![cfg(target_os = "linux")]
mod support;

use std::time::{Duration, Instant};

use portalocker::{BoundedSemaphore, ErrorKind};
use support::Proc;

support::child_entry!();

const SLOTS: usize = 10_000;
/// Slots each holder process locks (each stays below 1,024 descriptors).
const PER_HOLDER: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_slot_of_a_huge_semaphore_is_found_under_a_small_descriptor_limit() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    // Every slot but the last is held by other processes.
    let mut holders: Vec<Proc> = (0..SLOTS.div_ceil(PER_HOLDER))
        .map(|k| {
            let from = k * PER_HOLDER;
            let to = ((k + 1) * PER_HOLDER).min(SLOTS - 1);
            let (from, to) = (from.to_string(), to.to_string());
            Proc::role("child_entry", "slots-hold", &[dir, "big", &from, &to])
        })
        .collect();
    for h in &mut holders {
        h.expect("HELD");
    }
    let me = std::process::id().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &me, "--nofile=1024:"])
        .status()
        .expect("prlimit (util-linux) is needed");
    assert!(limited.success());
    // The first release of a semaphore in a process opens the socket it
    // rings waiters' doorbells with (Linux; one per process): open it
    // before the baseline.
    drop(
        BoundedSemaphore::new(1)
            .name("warm-up")
            .directory(d.path())
            .acquire()
            .await
            .unwrap(),
    );
    let sem = BoundedSemaphore::new(SLOTS)
        .name("big")
        .directory(d.path())
        .fail_when_locked(true);
    let baseline = support::fd_count();
    let started = Instant::now();
    let permit = sem.acquire().await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "slot {} of {SLOTS} found in {:?} (one sweep, open-file limit 1024)",
        permit.slot(),
        started.elapsed()
    );
    assert_eq!(permit.slot(), SLOTS - 1);
    // The held slot stays open, the lowest 64 slots' descriptors are kept
    // for the next sweep, and one more of the lowest slot's file rings
    // waiters' doorbells; nothing else (opens of the sweep still finishing
    // on the blocking pool close as they end).
    const KEPT: usize = 64 + 1;
    let settled = support::eventually(Duration::from_secs(30), || {
        support::fd_count() <= baseline + KEPT + 1
    })
    .await;
    assert!(
        settled,
        "{} descriptors, {baseline} before",
        support::fd_count()
    );
    drop(permit);
    let settled = support::eventually(Duration::from_secs(30), || {
        support::fd_count() <= baseline + KEPT
    })
    .await;
    assert!(
        settled,
        "{} descriptors, {baseline} before",
        support::fd_count()
    );

    // Out of descriptors: an I/O error at once, not contention. Two are
    // left, so the sweep opens some slots (busy) before the others fail.
    let mut hoard = support::use_up_descriptors();
    hoard.truncate(hoard.len() - 2);
    let e = sem.acquire().await.unwrap_err();
    drop(hoard);
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert_eq!(
        e.io_error().and_then(std::io::Error::raw_os_error),
        Some(24),
        "{e}"
    );
    assert!(e.to_string().contains("open-file limit"), "{e}");
    for h in holders {
        h.finish();
    }
}
