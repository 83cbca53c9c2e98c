//! `EtcdLock` beside `RedisLock`, in one run on one machine: uncontended
//! acquire + release (median and 99th percentile of 300), and 8 processes
//! taking turns on an empty critical section for 10 s (grants per second,
//! the fewest grants of one process, the longest wait).
//!
//! ```text
//! cargo bench --features etcd,redis --bench etcd_compare
//! ```
//!
//! Starts its own `redis-server` and a 3-member etcd cluster on loopback
//! (data in `/dev/shm`, as the tests do). Prints a Markdown table and
//! writes it to `docs/etcd.md`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use portalocker::{EtcdLock, RedisLock};

const PROCS: usize = 8;
const RUN: Duration = Duration::from_secs(10);

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn unix_ms() -> u128 {
    support::epoch_ns() / 1_000_000
}

fn main() {
    if let Some((role, args)) = support::child_role() {
        if role.starts_with("bench-") {
            contender_main(&role, &args);
        } else {
            support::child_main();
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = support::RedisServer::start();
    let etcd = rt.block_on(support::etcd::EtcdCluster::start(3));

    let (redis_med, redis_p99, etcd_med, etcd_p99) = rt.block_on(async {
        let rl = RedisLock::new("cmp", redis.client());
        let el = EtcdLock::new("cmp", etcd.client().await);
        let (mut r, mut e) = (Vec::new(), Vec::new());
        // Interleaved, so that a noisy moment costs both alike.
        for _ in 0..300 {
            let t = Instant::now();
            rl.acquire().await.unwrap().release().await.unwrap();
            r.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            el.acquire().await.unwrap().release().await.unwrap();
            e.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        (
            percentile(&mut r, 0.5),
            percentile(&mut r, 0.99),
            percentile(&mut e, 0.5),
            percentile(&mut e, 0.99),
        )
    });
    let redis_run = contend("bench-redis", &redis.url());
    let etcd_run = contend("bench-etcd", &etcd.endpoint_list());

    let row = |what: &str, med: f64, p99: f64, c: &Contention| {
        format!(
            "| {what} | {med:.2} ms | {p99:.2} ms | {:.0}/s | {} | {:.0} ms |\n",
            c.total as f64 / RUN.as_secs_f64(),
            c.fewest,
            c.max_wait_ms
        )
    };
    let mut doc = String::from(
        "# `EtcdLock` beside `RedisLock`\n\n\
         From one run of `cargo bench --features etcd,redis --bench etcd_compare` on the \
         2-core development VM: a `redis-server` and a 3-member etcd cluster (data in \
         `/dev/shm`), all on loopback. Uncontended: 300 acquire + release pairs of each, \
         interleaved. Contended: 8 processes taking turns on an empty critical section for \
         10 s; the fewest grants of one process and the longest single wait say whether \
         every process was served.\n\n\
         | Lock | uncontended, median | uncontended, p99 | 8 processes, grants | fewest of one \
         process | longest wait |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    doc.push_str(&row("`RedisLock`", redis_med, redis_p99, &redis_run));
    doc.push_str(&row("`EtcdLock`", etcd_med, etcd_p99, &etcd_run));
    doc.push_str(
        "\nAn etcd grant is a write the cluster agrees on (a majority of members append \
         it to their logs and sync them) and a lease: two round trips to acquire (grant \
         the lease; put the key and read the head of the queue in one transaction) and \
         one to release (revoke). A handover is the holder's revoke plus the next \
         waiter's watch event; nobody polls. What it buys: the lock survives the loss \
         of any minority of the members, and the token is the key's revision.\n",
    );
    print!("{doc}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/etcd.md");
    std::fs::write(path, doc).unwrap();
}

struct Contention {
    total: u64,
    fewest: u64,
    max_wait_ms: f64,
}

fn contend(kind: &str, target: &str) -> Contention {
    let mut procs: Vec<_> = (0..PROCS)
        .map(|_| support::Proc::role("", kind, &[target, "handover"]))
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    let end = unix_ms() + RUN.as_millis();
    for p in &mut procs {
        p.send(&format!("go {end}"));
    }
    let mut c = Contention {
        total: 0,
        fewest: u64::MAX,
        max_wait_ms: 0.0,
    };
    for mut p in procs {
        let done = p.expect("DONE");
        p.finish();
        let mut f = done.split_whitespace();
        let grants: u64 = f.next().unwrap().parse().unwrap();
        let wait: f64 = f.next().unwrap().parse().unwrap();
        c.total += grants;
        c.fewest = c.fewest.min(grants);
        c.max_wait_ms = c.max_wait_ms.max(wait);
    }
    c
}

fn contender_main(role: &str, args: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (target, name) = (&args[0], &args[1]);
        let long = Duration::from_secs(120);
        let redis = (role == "bench-redis").then(|| {
            RedisLock::new(
                name,
                portalocker::redis::Client::open(target.as_str()).unwrap(),
            )
            .timeout(long)
        });
        let etcd = if role == "bench-etcd" {
            let eps: Vec<&str> = target.split(',').collect();
            let client = portalocker::etcd_client::Client::connect(eps, None)
                .await
                .unwrap();
            Some(EtcdLock::new(name, client).timeout(long))
        } else {
            None
        };
        support::say("READY", "");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let deadline: u128 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (mut grants, mut max_wait) = (0u64, 0f64);
        while unix_ms() < deadline {
            let t = Instant::now();
            if let Some(l) = &redis {
                let g = l.acquire().await.unwrap();
                max_wait = max_wait.max(t.elapsed().as_secs_f64() * 1000.0);
                g.release().await.unwrap();
            } else if let Some(l) = &etcd {
                let g = l.acquire().await.unwrap();
                max_wait = max_wait.max(t.elapsed().as_secs_f64() * 1000.0);
                g.release().await.unwrap();
            }
            grants += 1;
        }
        support::say("DONE", format!("{grants} {max_wait}"));
    });
}
