//! What the network costs a `RedisLock`: uncontended acquire + release and
//! a handover (holder releases → a waiter of another client holds), behind
//! a delaying proxy at 0, 1 and 5 ms one-way delay, beside Python
//! portalocker 4.4.2's uncontended acquire + release. The implied round
//! trips are (time at delay d − time at 0) / (a `PING`'s time at d − at 0).
//!
//! ```text
//! cargo bench --features redis --bench redis_rtt
//! ```
//!
//! Starts its own `redis-server` and proxy (a few lines of Tokio in
//! `tests/support`; this kernel has no `tc netem`). The proxy delays every
//! chunk it forwards, so pipelined commands that arrive in one chunk cost
//! one delay, as on a real link, and a new connection's first chunk one
//! round trip more (the TCP handshake the kernel completed at once). Python comes from `$PORTALOCKER_PYTHON`,
//! else `target/py-venv`. Prints a Markdown table and writes it to
//! `docs/redis-round-trips.md`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use portalocker::RedisLock;

const ROUNDS: usize = 15;

const PY_UNCONTENDED: &str = r#"
import sys, time, statistics, redis, portalocker
conn = redis.Redis.from_url(sys.argv[1])
lock = portalocker.RedisLock("rtt-py", connection=conn, interrupt_on_lost=False)
lock.acquire(); lock.release()
ts = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); lock.acquire(); lock.release(); ts.append(time.perf_counter() - t)
print("@@MEDIAN", statistics.median(ts) * 1000)
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn client(port: u16) -> portalocker::redis::Client {
    portalocker::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap()
}

/// Median ms of an uncontended acquire + release (after a warm-up that
/// opens the command connection).
async fn uncontended(port: u16) -> f64 {
    let lock = RedisLock::new("rtt", client(port));
    for _ in 0..3 {
        lock.acquire().await.unwrap().release().await.unwrap();
    }
    let mut ts = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        lock.acquire().await.unwrap().release().await.unwrap();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(ts)
}

/// Median ms from a holder's release to a waiting client's grant (two
/// proxies, so the two locks contend on the server, not in this process).
async fn handover(server: &support::RedisServer, holder_port: u16, waiter_port: u16) -> f64 {
    let mut ts = Vec::new();
    // One value each, as a service keeps its lock: after the first round
    // the waiter knows the lock is contended and waits without a first
    // attempt.
    let holding = RedisLock::new("rtt-hand", client(holder_port));
    let waiting = RedisLock::new("rtt-hand", client(waiter_port)).timeout(Duration::from_secs(30));
    for _ in 0..ROUNDS {
        let holder = holding.acquire().await.unwrap();
        let waiter = waiting.clone();
        let task = tokio::spawn(async move {
            let g = waiter.acquire().await.unwrap();
            let at = Instant::now();
            g.release().await.unwrap();
            at
        });
        // The waiter waits (on the side channel) before the release.
        assert_eq!(
            server
                .numsub_settled("rtt-hand portalocker-released", 1)
                .await,
            1
        );
        let released = Instant::now();
        holder.release().await.unwrap();
        let granted = task.await.unwrap();
        ts.push(granted.duration_since(released).as_secs_f64() * 1e3);
    }
    median(ts)
}

/// Median ms of one `PING` on an open connection through the proxy: the
/// link's round trip as the proxy delivers it (its timer adds a little to
/// each hop), the unit of the implied round trips.
async fn ping(port: u16) -> f64 {
    let mut con = client(port)
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut ts = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let _: String = portalocker::redis::cmd("PING")
            .query_async(&mut con)
            .await
            .unwrap();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(ts)
}

fn python_uncontended(url: &str) -> Option<f64> {
    let python = std::env::var_os("PORTALOCKER_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"),
        std::path::PathBuf::from,
    );
    let out = std::process::Command::new(python)
        .args(["-c", PY_UNCONTENDED, url, "5"])
        .output()
        .ok()?;
    let median = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("@@MEDIAN "))
        .and_then(|v| v.trim().parse().ok());
    if median.is_none() {
        eprintln!("python failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    median
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
    rt.block_on(async {
        let server = support::RedisServer::start();
        let a = support::Proxy::start_relay(server.port).await;
        let b = support::Proxy::start_relay(server.port).await;
        let mut rows = Vec::new();
        for d in [0u64, 1, 5] {
            a.delay(Duration::from_millis(d));
            b.delay(Duration::from_millis(d));
            let rtt = ping(a.port).await;
            let un = uncontended(a.port).await;
            let hand = handover(&server, a.port, b.port).await;
            let py = python_uncontended(&a.url());
            rows.push((d, rtt, un, hand, py));
        }
        let (_, rtt0, un0, hand0, _) = rows[0];
        let implied = |v: f64, base: f64, d: u64, rtt: f64| {
            if d == 0 {
                "—".to_string()
            } else {
                format!("{:.1}", (v - base) / (rtt - rtt0))
            }
        };
        let mut doc = String::from(
            "# The Redis lock over a slow link\n\n\
             Generated by `cargo bench --features redis --bench redis_rtt` (one run): a\n\
             delaying proxy between the clients and a local `redis-server` delays each\n\
             chunk by the one-way delay, and a new connection's first bytes by one\n\
             round trip more (its TCP handshake); medians of 15 rounds. Implied round\n\
             trips: (time at delay d − time at 0) / (`PING` at d − `PING` at 0).\n\n\
             | one-way delay | `PING` | uncontended acquire + release | implied round trips | handover (release → other client holds) | implied round trips | Python portalocker 4.4.2, uncontended |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for (d, rtt, un, hand, py) in &rows {
            let py = py.map_or_else(|| "(no Python)".to_string(), |p| format!("{p:.1} ms"));
            doc.push_str(&format!(
                "| {d} ms | {rtt:.2} ms | {un:.2} ms | {} | {hand:.2} ms | {} | {py} |\n",
                implied(*un, un0, *d, *rtt),
                implied(*hand, hand0, *d, *rtt),
            ));
        }
        println!("{doc}");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/redis-round-trips.md");
        std::fs::write(path, doc).unwrap();
    });
}
