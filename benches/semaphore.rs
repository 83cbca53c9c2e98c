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
//! * First (Linux; `SEMAPHORE_HERD=0` skips it), the herd: P = 25 and 100
//!   processes share 4 slots, each taking a slot 20 times and holding it
//!   1 ms; the table gives the CPU the processes burned per grant, this
//!   crate beside Python portalocker 4.4.2 (`$PORTALOCKER_PYTHON`, else
//!   `target/py-venv`), from one run.

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

const HERD_ENV: &str = "PORTALOCKER_BENCH_SEM_HERD";
const HERD_SLOTS: usize = 4;
const HERD_ROUNDS: usize = 20;

const PY_HERD: &str = r#"
import os, sys, time, portalocker
d, slots, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sem = portalocker.BoundedSemaphore(slots, name="herd", directory=d, timeout=600)
t0 = time.process_time()
for _ in range(rounds):
    sem.acquire()
    time.sleep(0.001)
    sem.release()
print(time.process_time() - t0)
"#;

/// This process's CPU time, summed over its threads from
/// `/proc/self/task/*/schedstat` (nanoseconds on a CPU), in seconds.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

fn herd_worker(dir: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = cpu_seconds();
    rt.block_on(async {
        let sem = BoundedSemaphore::new(HERD_SLOTS)
            .name("herd")
            .directory(dir)
            .timeout(Duration::from_secs(600));
        for _ in 0..HERD_ROUNDS {
            let permit = sem.acquire().await.unwrap();
            std::thread::sleep(Duration::from_millis(1));
            drop(permit);
        }
    });
    println!("{}", cpu_seconds() - start);
}

/// Runs `p` herd workers of `who`; returns (wall seconds, CPU seconds).
fn herd_run(who: &str, p: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let python = std::env::var_os("PORTALOCKER_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"),
        std::path::PathBuf::from,
    );
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..p)
        .map(|_| {
            let mut c = if who == "python" {
                let mut c = Command::new(&python);
                c.args(["-c", PY_HERD, &d])
                    .arg(HERD_SLOTS.to_string())
                    .arg(HERD_ROUNDS.to_string());
                c
            } else {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.env(HERD_ENV, &d);
                c
            };
            c.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut cpu = 0.0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{who} herd worker failed");
        cpu += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .unwrap_or(0.0);
    }
    (started.elapsed().as_secs_f64(), cpu)
}

fn herd() {
    println!(
        "Semaphore herd: P processes share {HERD_SLOTS} slots, {HERD_ROUNDS} grants each, \
         1 ms held (one run)\n\n\
         | lock | P | grants | wall | CPU ms/grant |\n| --- | --- | --- | --- | --- |"
    );
    for p in [25usize, 100] {
        for who in ["portalocker", "python"] {
            let (wall, cpu) = herd_run(who, p);
            let grants = p * HERD_ROUNDS;
            println!(
                "| {who} | {p} | {grants} | {wall:.2} s | {:.2} |",
                cpu * 1e3 / grants as f64
            );
        }
    }
    println!();
}

fn main() {
    if let Some(dir) = std::env::var_os(WORKER_ENV) {
        worker(dir.to_str().unwrap());
        return;
    }
    if let Some(dir) = std::env::var_os(HERD_ENV) {
        herd_worker(dir.to_str().unwrap());
        return;
    }
    if cfg!(target_os = "linux") && std::env::var_os("SEMAPHORE_HERD").is_none_or(|v| v != "0") {
        herd();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
