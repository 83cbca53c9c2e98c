//! Uncontended acquire + release, each beside a plain baseline in the same
//! run, as ratios (the crate's time over the baseline's):
//!
//! * **reused**: one `Lock` acquired and dropped over and over (and with
//!   `release().await`), against std's `try_lock` + `unlock` on a file
//!   that stays open; and the floor of that path beside the same
//!   baseline: the pair plus the one `lstat` of the path each grant makes.
//! * **fresh**: a new `Lock` each time (open, lock, release, close),
//!   against one bare `spawn_blocking` hop that opens and locks, the file
//!   closed when dropped; and, for scale, a synchronous open + lock +
//!   unlock + close.
//!
//! ```text
//! cargo bench --bench file_lock                    # 15 rounds
//! FILE_LOCK_ROUNDS=31 cargo bench --bench file_lock
//! FILE_LOCK_ONLY=reused cargo bench --bench file_lock   # one group (or reused-drop, fresh), not written
//! ```
//!
//! Each round times a batch of the baseline, then a batch of the crate's
//! path, in one current-thread runtime; the table gives the median time
//! per operation of each and the median of the rounds' ratios. It is
//! printed and written to `docs/file-lock.md`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portalocker::Lock;

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The time per operation of `n` runs of `f`.
fn sync_loop(n: u32, f: impl Fn()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() / f64::from(n)
}

/// The time per operation of `n` runs of the future `f` makes, one after
/// the other on `rt`.
fn async_loop<F: std::future::Future<Output = ()>>(
    rt: &tokio::runtime::Runtime,
    n: u32,
    f: impl Fn() -> F,
) -> f64 {
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            f().await;
        }
        t.elapsed().as_secs_f64() / f64::from(n)
    })
}

struct Row {
    what: &'static str,
    baseline: &'static str,
    ours: Duration,
    theirs: Duration,
    ratio: f64,
}

/// `rounds` rounds of (baseline batch, crate batch) of `n` operations
/// each; medians.
fn compare(
    what: &'static str,
    baseline: &'static str,
    rounds: usize,
    n: u32,
    mut base: impl FnMut(u32) -> f64,
    mut ours: impl FnMut(u32) -> f64,
) -> Row {
    // One untimed batch of each first (page cache, allocator, threads).
    base(n / 10 + 1);
    ours(n / 10 + 1);
    let (mut b, mut o, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let tb = base(n);
        let to = ours(n);
        b.push(tb);
        o.push(to);
        r.push(to / tb);
    }
    Row {
        what,
        baseline,
        ours: Duration::from_secs_f64(median(&mut o)),
        theirs: Duration::from_secs_f64(median(&mut b)),
        ratio: median(&mut r),
    }
}

fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this
    // with no such flag: then one short round proves it works.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("FILE_LOCK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 15 } else { 1 });
    let scale = if benching { 1 } else { 100 };
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("bench.lock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    // `FILE_LOCK_ONLY=reused` or `fresh`: one group (for a profiler).
    let only = std::env::var("FILE_LOCK_ONLY").unwrap_or_default();
    let run = |group: &str| only.is_empty() || only.starts_with(group);

    let file = open(&path);
    let lock = Lock::new(&path);
    if run("reused") {
        let std_pair = |n| {
            sync_loop(n, || {
                file.try_lock().unwrap();
                file.unlock().unwrap();
            })
        };
        rows.push(compare(
            "reused `Lock`: acquire + drop",
            "std `try_lock` + `unlock` on an open file",
            rounds,
            20_000 / scale,
            std_pair,
            |n| {
                async_loop(&rt, n, || async {
                    drop(black_box(lock.acquire().await.unwrap()));
                })
            },
        ));
        if only.is_empty() {
            // The floor of the reused path: the same pair plus the one
            // `lstat` of the path that every grant makes, so that a lock
            // file deleted or replaced meanwhile is never trusted.
            rows.push(compare(
                "floor of the reused path (not this crate): std `try_lock` + `lstat` of the path + `unlock`",
                "std `try_lock` + `unlock` on an open file",
                rounds,
                20_000 / scale,
                std_pair,
                |n| {
                    sync_loop(n, || {
                        file.try_lock().unwrap();
                        black_box(std::fs::symlink_metadata(&path).unwrap());
                        file.unlock().unwrap();
                    })
                },
            ));
        }
        if only != "reused-drop" {
            rows.push(compare(
                "reused `Lock`: acquire + `release().await`",
                "std `try_lock` + `unlock` on an open file",
                rounds,
                20_000 / scale,
                std_pair,
                |n| {
                    async_loop(&rt, n, || async {
                        lock.acquire().await.unwrap().release().await.unwrap();
                    })
                },
            ));
        }
    }
    drop(lock);
    drop(file);

    let p = &path;
    let fresh = |n| {
        async_loop(&rt, n, || async {
            drop(black_box(Lock::new(p).acquire().await.unwrap()));
        })
    };
    if run("fresh") {
        rows.push(compare(
            "fresh `Lock` each time",
            "one `spawn_blocking` hop: open + `try_lock`, then close",
            rounds,
            2_000 / scale,
            |n| {
                async_loop(&rt, n, || async {
                    let p = p.clone();
                    let f = tokio::task::spawn_blocking(move || {
                        let f = open(&p);
                        f.try_lock().unwrap();
                        f
                    })
                    .await
                    .unwrap();
                    drop(black_box(f));
                })
            },
            fresh,
        ));
        rows.push(compare(
            "fresh `Lock` each time",
            "synchronous open + `try_lock` + `unlock` + close (no hop)",
            rounds,
            2_000 / scale,
            |n| {
                sync_loop(n, || {
                    let f = open(p);
                    f.try_lock().unwrap();
                    f.unlock().unwrap();
                })
            },
            fresh,
        ));
    }

    let mut md = String::new();
    writeln!(
        md,
        "| path | this crate | baseline | baseline time | ratio (median of {rounds} rounds) |"
    )
    .unwrap();
    writeln!(md, "| --- | --- | --- | --- | --- |").unwrap();
    for r in &rows {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.2}× |",
            r.what,
            show(r.ours),
            r.baseline,
            show(r.theirs),
            r.ratio
        )
        .unwrap();
    }
    print!("{md}");
    if benching && only.is_empty() {
        let doc = format!(
            "# Uncontended file locks\n\nGenerated by `cargo bench --bench file_lock` (one run, \
             {rounds} rounds; each round times a batch of the baseline, then a batch of this \
             crate's path, on one current-thread Tokio runtime; medians). The ratio is this \
             crate's time over the baseline's.\n\n{md}"
        );
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/file-lock.md"),
            doc,
        )
        .unwrap();
    }
}
