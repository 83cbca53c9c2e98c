//! `LeaseLock` beside `Lock`, in one run on one machine: uncontended
//! acquire + release (median of 300, interleaved), and a handover (one
//! task releases, another, already waiting, holds: median of 100), on the
//! temporary directory's filesystem and, as root, on a `bindfs` FUSE
//! mount of it (what a shared filesystem costs).
//!
//! ```text
//! cargo bench --bench lease
//! ```
//!
//! Prints a Markdown table and writes it to `docs/lease.md`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use portalocker::{LeaseLock, Lock};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Uncontended acquire + release, in ms: (Lock, LeaseLock).
async fn uncontended(dir: &Path) -> (f64, f64) {
    let lock = Lock::new(dir.join("u.lock"));
    let lease = LeaseLock::new(dir.join("u.lease"));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        lock.acquire().await.unwrap().release().await.unwrap();
        a.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        lease.acquire().await.unwrap().release().await.unwrap();
        b.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(a), median(b))
}

/// A handover in ms: from the start of the holder's release until the
/// waiting task holds. `interval`: the lease waiter's check interval.
async fn handover(dir: &Path, interval: Duration) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..100 {
        let path = dir.join(format!("h{i}.lock"));
        let held = Lock::new(&path).acquire().await.unwrap();
        let waiter = tokio::spawn(async move {
            let g = Lock::new(&path).acquire().await.unwrap();
            let at = Instant::now();
            drop(g);
            at
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        held.release().await.unwrap();
        a.push(waiter.await.unwrap().duration_since(t).as_secs_f64() * 1e3);

        let path = dir.join(format!("h{i}.lease"));
        let held = LeaseLock::new(&path).acquire().await.unwrap();
        let waiter = tokio::spawn(async move {
            let g = LeaseLock::new(&path)
                .check_interval(interval)
                .acquire()
                .await
                .unwrap();
            let at = Instant::now();
            drop(g);
            at
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        held.release().await.unwrap();
        b.push(waiter.await.unwrap().duration_since(t).as_secs_f64() * 1e3);
    }
    (median(a), median(b))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = tempfile::tempdir().unwrap();
    let local_fs = portalocker::filesystem_of(local.path()).unwrap().name;
    let mut rows = Vec::new();
    #[allow(unused_mut)]
    let mut places: Vec<(String, std::path::PathBuf)> = vec![(local_fs, local.path().into())];
    #[cfg(unix)]
    let hosts = support::is_root().then(support::lease::TwoHosts::mount);
    #[cfg(unix)]
    if let Some(h) = &hosts {
        places.push(("bindfs (FUSE)".into(), h.a.clone()));
    }
    for (name, dir) in places {
        let (lock_u, lease_u) = rt.block_on(uncontended(&dir));
        let (lock_h, lease_h1) = rt.block_on(handover(&dir, Duration::from_millis(1)));
        let (_, lease_h250) = rt.block_on(handover(&dir, Duration::from_millis(250)));
        rows.push(format!(
            "| {name} | {lock_u:.3} ms | {lease_u:.3} ms | {lock_h:.3} ms | {lease_h1:.2} ms | \
             {lease_h250:.1} ms |"
        ));
    }
    let text = format!(
        "`LeaseLock` beside `Lock` (one run of `cargo bench --bench lease`, 2-core VM; \
         medians: 300 uncontended acquire + release, 100 handovers between two tasks of one \
         process, from the start of the holder's release until the waiter holds). A lease \
         waiter polls, so its handover is about half its `check_interval` on average; \
         `Lock`'s waiter is woken at once.\n\n\
         | filesystem | `Lock` acquire + release | `LeaseLock` acquire + release | `Lock` \
         handover | `LeaseLock` handover, check_interval 1 ms | `LeaseLock` handover, 250 ms \
         (default) |\n| --- | --- | --- | --- | --- | --- |\n{}\n",
        rows.join("\n")
    );
    print!("{text}");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/lease.md");
    std::fs::write(&doc, format!("# The lease lock's cost\n\n{text}")).unwrap();
}
