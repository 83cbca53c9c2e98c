//! `RedisClusterLock` on a 3-primary + 3-replica cluster started here,
//! beside `RedisLock` on a standalone server in the same run: uncontended
//! acquire + release, and N tasks taking turns.
//!
//! ```text
//! cargo bench --features redis-cluster --bench redis_cluster
//! ```
//!
//! Prints a Markdown table and writes it to `docs/redis-cluster.md`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portalocker::{RedisClusterLock, RedisLock};

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `n` tasks loop acquire → release for `run`: (grants, max wait, fewest,
/// most per task).
async fn contend<F, Fut>(n: usize, run: Duration, one: F) -> (usize, Duration, usize, usize)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let end = Instant::now() + run;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let (mut count, mut worst) = (0usize, Duration::ZERO);
                while Instant::now() < end {
                    let t = Instant::now();
                    one().await;
                    worst = worst.max(t.elapsed());
                    count += 1;
                }
                (count, worst)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    let total = all.iter().map(|a| a.0).sum();
    let worst = all.iter().map(|a| a.1).max().unwrap();
    let fewest = all.iter().map(|a| a.0).min().unwrap();
    let most = all.iter().map(|a| a.0).max().unwrap();
    (total, worst, fewest, most)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (rounds, run) = if benching {
        (300, Duration::from_secs(5))
    } else {
        (5, Duration::from_millis(200))
    };
    let cluster = support::cluster::RedisCluster::start();
    let single = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut md = String::new();
    rt.block_on(async {
        let cl = RedisClusterLock::new("bench", cluster.client_via(0));
        let sl = RedisLock::new("bench", single.client());
        // Warm up both (connections, scripts).
        drop(cl.acquire().await.unwrap());
        sl.acquire().await.unwrap().release().await.unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            cl.acquire().await.unwrap().release().await.unwrap();
            a.push(t.elapsed());
            let t = Instant::now();
            sl.acquire().await.unwrap().release().await.unwrap();
            b.push(t.elapsed());
        }
        writeln!(md, "| measure | `RedisClusterLock` (3 primaries + 3 replicas) | `RedisLock` (one server) |").unwrap();
        writeln!(md, "| --- | --- | --- |").unwrap();
        writeln!(
            md,
            "| uncontended acquire + release, median / p99 ({rounds} rounds) | {} / {} | {} / {} |",
            ms(percentile(&mut a, 0.5)),
            ms(percentile(&mut a, 0.99)),
            ms(percentile(&mut b, 0.5)),
            ms(percentile(&mut b, 0.99))
        )
        .unwrap();
        for (interval, n) in [(Duration::from_millis(250), 4), (Duration::from_millis(10), 4)] {
            let cl = RedisClusterLock::new("bench-n", cluster.client_via(1)).check_interval(interval);
            let sl = RedisLock::new("bench-n", single.client()).check_interval(interval);
            let c = contend(n, run, move || {
                let cl = cl.clone();
                async move { cl.acquire().await.unwrap().release().await.unwrap() }
            })
            .await;
            let s = contend(n, run, move || {
                let sl = sl.clone();
                async move { sl.acquire().await.unwrap().release().await.unwrap() }
            })
            .await;
            let cell = |(total, worst, fewest, most): (usize, Duration, usize, usize)| {
                format!(
                    "{:.0} grants/s, max wait {}, {fewest}–{most} per task",
                    total as f64 / run.as_secs_f64(),
                    ms(worst)
                )
            };
            writeln!(
                md,
                "| {n} tasks of one process, `check_interval` {} ms, {} s | {} | {} |",
                interval.as_millis(),
                run.as_secs_f64(),
                cell(c),
                cell(s)
            )
            .unwrap();
        }
    });
    print!("{md}");
    if benching {
        let doc = format!(
            "# The Redis Cluster lock\n\nOne run of `cargo bench --features redis-cluster --bench \
             redis_cluster` on this machine (2 cores): a 3-primary + 3-replica cluster and a \
             standalone server, all local. A cluster grant waits for the slot's replica (`WAIT`), \
             and waiters poll (no queue, no release notice), so contention is served by \
             `check_interval`.\n\n{md}"
        );
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/redis-cluster.md"),
            doc,
        )
        .unwrap();
    }
}
