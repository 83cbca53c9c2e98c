//! `RedisLock` beside Python portalocker 4.4.2's, in one run on one machine:
//! uncontended acquire + release, and how long a waiter takes to get the
//! lock after its holder process is SIGKILLed.
//!
//! ```text
//! cargo bench --features redis --bench redis_compare
//! ```
//!
//! Starts its own `redis-server`. Python comes from `$PORTALOCKER_PYTHON`,
//! else `target/py-venv` (made by `scripts/test.sh`). Prints a Markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use portalocker::RedisLock;

const PY_UNCONTENDED: &str = r#"
import sys, time, statistics, redis, portalocker
conn = redis.Redis.from_url(sys.argv[1])
lock = portalocker.RedisLock("cmp-py", connection=conn, interrupt_on_lost=False)
ts = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); lock.acquire(); lock.release(); ts.append(time.perf_counter() - t)
print("@@MEDIAN", statistics.median(ts) * 1000)
"#;

const PY_WAITER: &str = r#"
import sys, time, redis, portalocker
lock = portalocker.RedisLock(sys.argv[2], connection=redis.Redis.from_url(sys.argv[1]), timeout=30, interrupt_on_lost=False)
print("@@WAITING", flush=True)
lock.acquire()
print("@@ACQUIRED", time.time(), flush=True)
lock.release()
"#;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::var_os(support::ROLE_ENV).is_some() {
        support::child_main();
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("PORTALOCKER_PYTHON").is_none() {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/py-venv/bin/python");
        std::env::set_var("PORTALOCKER_PYTHON", venv);
    }
    let srv = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Uncontended.
    let lock = RedisLock::new("cmp-rs", srv.client());
    let mut rust: Vec<f64> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            lock.acquire().await.unwrap().release().await.unwrap();
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        v
    });
    let rust_median = percentile(&mut rust, 0.5);
    let mut py = support::Proc::python(PY_UNCONTENDED, &[&srv.url(), "30"]);
    let py_median: f64 = py.expect("MEDIAN").parse().unwrap();
    py.finish();

    // Failover: a waiter with the default check_interval (250 ms) after
    // its holder process is SIGKILLed.
    let mut failover: Vec<f64> = rt.block_on(async {
        let mut v = Vec::new();
        for round in 0..20 {
            let channel = format!("cmp-kill-{round}");
            let mut holder = support::Proc::role("", "redis-hold", &[&srv.url(), &channel]);
            holder.expect("LOCKED");
            let waiter = RedisLock::new(&channel, srv.client()).timeout(Duration::from_secs(30));
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                tx.send(()).unwrap();
                let g = waiter.acquire().await.unwrap();
                let at = Instant::now();
                g.release().await.unwrap();
                at
            });
            rx.await.unwrap();
            // Let the waiter settle into its wait before the kill.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let killed = Instant::now();
            holder.kill();
            let at = task.await.unwrap();
            v.push((at - killed).as_secs_f64() * 1000.0);
        }
        v
    });
    let p50 = percentile(&mut failover, 0.5);
    let p99 = percentile(&mut failover, 0.99);

    // Clean handoff: a waiter (default check_interval) gets the lock after
    // the holder releases it. Rust waiter, and Python waiter, both behind a
    // Rust holder.
    let mut handoff: Vec<f64> = rt.block_on(async {
        let mut v = Vec::new();
        for round in 0..30 {
            let channel = format!("cmp-rel-{round}");
            let holder = RedisLock::new(&channel, srv.client())
                .acquire()
                .await
                .unwrap();
            let waiter = RedisLock::new(&channel, srv.client()).timeout(Duration::from_secs(30));
            let task = tokio::spawn(async move {
                let g = waiter.acquire().await.unwrap();
                let at = Instant::now();
                g.release().await.unwrap();
                at
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.release().await.unwrap();
            let released = Instant::now();
            let at = task.await.unwrap();
            v.push((at - released).as_secs_f64() * 1000.0);
        }
        v
    });
    let h50 = percentile(&mut handoff, 0.5);
    let mut py_handoff: Vec<f64> = rt.block_on(async {
        let mut v = Vec::new();
        for round in 0..10 {
            let channel = format!("cmp-prel-{round}");
            let holder = RedisLock::new(&channel, srv.client())
                .acquire()
                .await
                .unwrap();
            let mut py = support::Proc::python(PY_WAITER, &[&srv.url(), &channel]);
            py.expect("WAITING");
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.release().await.unwrap();
            let released = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let at: f64 = py.expect("ACQUIRED").parse().unwrap();
            py.finish();
            v.push((at - released) * 1000.0);
        }
        v
    });
    let py_h50 = percentile(&mut py_handoff, 0.5);

    println!("| Redis lock, local server | this crate | Python portalocker 4.4.2 | target |");
    println!("| --- | --- | --- | --- |");
    println!("| uncontended acquire + release, median | {rust_median:.2} ms | {py_median:.1} ms | ≤ 2 ms |");
    println!("| waiter gets the lock after the holder is SIGKILLed, p50 / p99 (20 rounds) | {p50:.0} / {p99:.0} ms | | p99 ≤ 250 + 50 ms |");
    println!("| waiter gets the lock after a clean release, median | {h50:.1} ms (30 rounds) | {py_h50:.0} ms (10 rounds) | ≤ 10 ms |");
}
