//! Uncontended acquire + release, each beside a plain-std baseline.
//!
//! ```text
//! cargo bench --bench file_lock
//! ```
//!
//! * `reused`: one `Lock` acquired and released over and over, against
//!   std's `try_lock` + `unlock` on an already open file.
//! * `fresh`: a new `Lock` each time, against one bare
//!   `spawn_blocking(open + try_lock)` round trip, and against a
//!   synchronous open + lock + unlock + close.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use portalocker::Lock;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open(path: &PathBuf) -> File {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

fn uncontended(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.lock");
    let rt = runtime();

    let mut g = c.benchmark_group("uncontended_reused");
    {
        let file = open(&path);
        g.bench_function("std_try_lock_unlock_open_file", |b| {
            b.iter(|| {
                file.try_lock().unwrap();
                file.unlock().unwrap();
            });
        });
    }
    {
        let lock = Lock::new(&path);
        g.bench_function("portalocker_reused_lock_drop", |b| {
            b.to_async(&rt).iter(|| async {
                let guard = lock.acquire().await.unwrap();
                drop(black_box(guard));
            });
        });
        g.bench_function("portalocker_reused_lock_release", |b| {
            b.to_async(&rt).iter(|| async {
                lock.acquire().await.unwrap().release().await.unwrap();
            });
        });
    }
    g.finish();

    let mut g = c.benchmark_group("uncontended_fresh");
    g.bench_function("std_open_lock_unlock_close", |b| {
        b.iter(|| {
            let f = open(&path);
            f.try_lock().unwrap();
            f.unlock().unwrap();
        });
    });
    g.bench_function("std_spawn_blocking_open_try_lock", |b| {
        b.to_async(&rt).iter(|| async {
            let p = path.clone();
            let f = tokio::task::spawn_blocking(move || {
                let f = open(&p);
                f.try_lock().unwrap();
                f
            })
            .await
            .unwrap();
            drop(black_box(f));
        });
    });
    g.bench_function("portalocker_fresh_lock", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = Lock::new(&path).acquire().await.unwrap();
            drop(black_box(guard));
        });
    });
    g.finish();
}

criterion_group!(benches, uncontended);
criterion_main!(benches);
