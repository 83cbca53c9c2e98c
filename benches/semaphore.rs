//! `BoundedSemaphore` under contention and uncontended, each beside a
//! plain-std baseline.
//!
//! ```text
//! cargo bench --bench semaphore
//! ```
//!
//! * `four_processes_two_slots`: 4 processes share 2 slots; each takes a
//!   slot, holds it 10 ms and frees it, 50 times. The ideal total is
//!   4 × 50 × 10 ms / 2 = 1 s. Baseline: the same schedule among 4 threads
//!   on a std `Mutex` + `Condvar` counting semaphore (ideal scheduling in
//!   one process).
//! * `free_slot`: acquire + drop of a free slot, beside a `Lock` acquire +
//!   drop (reused and fresh).

use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use portalocker::{BoundedSemaphore, Lock};

const WORKER_ENV: &str = "PORTALOCKER_BENCH_SEM_WORKER";
const PROCS: usize = 4;
const SLOTS: usize = 2;
const ROUNDS: usize = 50;
const HOLD: Duration = Duration::from_millis(10);

fn worker(dir: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sem = BoundedSemaphore::new(SLOTS)
            .name("bench")
            .directory(dir)
            .timeout(Duration::from_secs(60));
        for _ in 0..ROUNDS {
            let permit = sem.acquire().await.unwrap();
            // The same sleep as the baseline (tokio's timer would round
            // each hold up to the next millisecond).
            std::thread::sleep(HOLD);
            drop(permit);
        }
    });
}

fn std_semaphore_threads() {
    let state = Arc::new((Mutex::new(SLOTS), Condvar::new()));
    let threads: Vec<_> = (0..PROCS)
        .map(|_| {
            let state = state.clone();
            std::thread::spawn(move || {
                let (m, cv) = &*state;
                for _ in 0..ROUNDS {
                    let mut free = cv.wait_while(m.lock().unwrap(), |f| *f == 0).unwrap();
                    *free -= 1;
                    drop(free);
                    std::thread::sleep(HOLD);
                    *m.lock().unwrap() += 1;
                    cv.notify_one();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn contention(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut g = c.benchmark_group("four_processes_two_slots");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("std_mutex_condvar_threads", |b| {
        b.iter(std_semaphore_threads);
    });
    g.bench_function("portalocker_processes", |b| {
        b.iter(|| {
            let children: Vec<_> = (0..PROCS)
                .map(|_| {
                    Command::new(&exe)
                        .env(WORKER_ENV, dir.path())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut child in children {
                assert!(child.wait().unwrap().success());
            }
        });
    });
    g.finish();
}

fn free_slot(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("free_slot");
    let lock = Lock::new(dir.path().join("one.lock"));
    g.bench_function("lock_reused_acquire_drop", |b| {
        b.to_async(&rt).iter(|| async {
            drop(lock.acquire().await.unwrap());
        });
    });
    g.bench_function("lock_fresh_acquire_drop", |b| {
        b.to_async(&rt).iter(|| async {
            drop(
                Lock::new(dir.path().join("one.lock"))
                    .acquire()
                    .await
                    .unwrap(),
            );
        });
    });
    let sem = BoundedSemaphore::new(4).name("free").directory(dir.path());
    g.bench_function("semaphore_acquire_drop", |b| {
        b.to_async(&rt).iter(|| async {
            drop(sem.acquire().await.unwrap());
        });
    });
    g.finish();
}

criterion_group!(benches, free_slot, contention);

fn main() {
    if let Some(dir) = std::env::var_os(WORKER_ENV) {
        worker(dir.to_str().unwrap());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
