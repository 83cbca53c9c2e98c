//! 10,000 tasks waiting on 100 lock files in one process: all finish, and
//! neither threads nor descriptors run out (tasks of one process queue at
//! the in-process gate; only the head of each queue holds a descriptor).
//!
//! Unix only: it counts descriptors and threads through /proc.
#![cfg(unix)]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portalocker::Lock;

fn status(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap()
}

#[test]
fn ten_thousand_tasks_on_a_hundred_files() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let threads_before = status("Threads:");
    let fds_before = support::fd_count();
    let (peak_threads, peak_fds, done) = rt.block_on(async {
        let done = Arc::new(AtomicUsize::new(0));
        let peaks = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let monitor = {
            let peaks = peaks.clone();
            tokio::spawn(async move {
                loop {
                    peaks.0.fetch_max(status("Threads:"), Ordering::Relaxed);
                    peaks.1.fetch_max(support::fd_count(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let locks: Vec<Lock> = (0..100)
            .map(|i| {
                Lock::new(d.path().join(format!("f{i}.lock"))).timeout(Duration::from_secs(600))
            })
            .collect();
        let tasks: Vec<_> = (0..10_000)
            .map(|i| {
                let lock = locks[i % 100].clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let g = lock.acquire().await.unwrap();
                    tokio::task::yield_now().await;
                    drop(g);
                    done.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        monitor.abort();
        (
            peaks.0.load(Ordering::Relaxed),
            peaks.1.load(Ordering::Relaxed),
            done.load(Ordering::Relaxed),
        )
    });
    let rss_peak_kib = status("VmHWM:");
    eprintln!(
        "10,000 tasks on 100 files: peak RSS {rss_peak_kib} KiB, threads {threads_before} -> peak {peak_threads}, \
         descriptors {fds_before} -> peak {peak_fds}"
    );
    assert_eq!(done, 10_000);
    // 2 workers, the wake-up thread and at most one blocking-pool thread
    // per lock file (opening it); never one per task.
    assert!(
        peak_threads <= threads_before + 100 + 3,
        "{peak_threads} threads"
    );
    // About one descriptor per lock file, never one per task.
    assert!(peak_fds < fds_before + 300, "{peak_fds} descriptors");
}
