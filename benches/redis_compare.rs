//! `RedisLock` beside Python portalocker 4.4.2's, in one run on one machine:
//! uncontended acquire + release, how long a waiter takes to get the lock
//! after its holder process is SIGKILLed or releases, and contention: N = 2,
//! 4, 8, 16 tasks of one process and N processes taking turns on a tiny
//! critical section (a non-atomic GET + SET of a counter), beside N Python
//! processes and N processes of a hand-made `SET NX PX` + notify lock; 1,000
//! waiters of one process draining; and whether a smaller `check_interval`
//! is ever slower.
//!
//! ```text
//! cargo bench --features redis --bench redis_compare
//! ```
//!
//! Starts its own `redis-server`. Python comes from `$PORTALOCKER_PYTHON`,
//! else `target/py-venv` (made by `scripts/test.sh`). Prints Markdown tables
//! and writes them to `docs/redis.md`.

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

    let mut doc = String::new();
    let mut out = |line: String| {
        println!("{line}");
        doc.push_str(&line);
        doc.push('\n');
    };
    out("# The Redis lock under contention".into());
    out(String::new());
    out(format!(
        "One run of `cargo bench --features redis --bench redis_compare` on this machine \
         ({} cores), against a local redis-server; Python is portalocker 4.4.2 with its \
         defaults. Every contender's grants were counted and the shared counter matched \
         their sum in every cell (the bench fails otherwise).",
        std::thread::available_parallelism().map_or(0, usize::from)
    ));
    out(String::new());
    out("| Redis lock, local server | this crate | Python portalocker 4.4.2 | target |".into());
    out("| --- | --- | --- | --- |".into());
    out(format!("| uncontended acquire + release, median | {rust_median:.2} ms | {py_median:.1} ms | ≤ 2 ms |"));
    out(format!("| waiter gets the lock after the holder is SIGKILLed, p50 / p99 (20 rounds) | {p50:.0} / {p99:.0} ms | | p99 ≤ 250 + 50 ms |"));
    out(format!("| waiter gets the lock after a clean release, median | {h50:.1} ms (30 rounds) | {py_h50:.0} ms (10 rounds) | ≤ 10 ms |"));
    out(String::new());
    contention(&srv, &rt, &mut out);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/redis.md");
    std::fs::write(path, doc).unwrap();
    eprintln!("wrote {path}");
}

/// How long each contention cell runs (5 s; `PORTALOCKER_BENCH_CELL_MS`
/// overrides it for a quick look).
fn cell() -> Duration {
    std::env::var("PORTALOCKER_BENCH_CELL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_millis)
}

/// What one contender reports.
#[derive(Clone, Copy, Default)]
struct Report {
    grants: u64,
    max_wait_ms: f64,
}

/// One cell's result.
struct Cell {
    grants: u64,
    per_s: f64,
    max_wait_ms: f64,
    least: u64,
    most: u64,
    new_conns_per_grant: f64,
}

impl Cell {
    fn show(&self) -> String {
        format!(
            "{} grants, {:.0}/s, max wait {:.0} ms, {}–{} per contender, {:.2} conn/grant",
            self.grants,
            self.per_s,
            self.max_wait_ms,
            self.least,
            self.most,
            self.new_conns_per_grant
        )
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

async fn info_field(con: &mut portalocker::redis::aio::MultiplexedConnection, field: &str) -> u64 {
    let info: String = portalocker::redis::cmd("INFO")
        .query_async(con)
        .await
        .unwrap();
    support::info_field(&info, field)
}

/// Runs contenders (processes already READY, or tasks) and checks the count.
fn finish_cell(
    srv: &support::RedisServer,
    rt: &tokio::runtime::Runtime,
    key: &str,
    conns_before: u64,
    elapsed: Duration,
    reports: &[Report],
) -> Cell {
    let counted: u64 = rt
        .block_on(srv.cmd::<Option<u64>>(&["GET", key]))
        .unwrap_or(0);
    let grants: u64 = reports.iter().map(|r| r.grants).sum();
    assert_eq!(
        counted, grants,
        "lost updates in {key}: the counter says {counted}, the contenders {grants}"
    );
    let conns_after = total_connections(srv, rt);
    Cell {
        grants,
        per_s: grants as f64 / elapsed.as_secs_f64(),
        max_wait_ms: reports.iter().map(|r| r.max_wait_ms).fold(0.0, f64::max),
        least: reports.iter().map(|r| r.grants).min().unwrap_or(0),
        most: reports.iter().map(|r| r.grants).max().unwrap_or(0),
        new_conns_per_grant: (conns_after - conns_before).saturating_sub(1) as f64
            / grants.max(1) as f64,
    }
}

fn total_connections(srv: &support::RedisServer, rt: &tokio::runtime::Runtime) -> u64 {
    rt.block_on(async {
        let mut c = srv
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        info_field(&mut c, "total_connections_received").await
    })
}

/// N processes of `kind` ("bench-rs", "bench-nx" or Python) for one cell.
fn run_processes(
    srv: &support::RedisServer,
    rt: &tokio::runtime::Runtime,
    kind: &str,
    n: usize,
    ci_ms: u64,
) -> Cell {
    static CELLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let cell_no = CELLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let channel = format!("{kind}-{n}-{ci_ms}-{cell_no}");
    let key = format!("{channel}-count");
    let mut procs: Vec<support::Proc> = (0..n)
        .map(|_| {
            let args = [srv.url(), channel.clone(), key.clone(), ci_ms.to_string()];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if kind == "python" {
                support::Proc::python(PY_CONTENDER, &args)
            } else {
                support::Proc::role("", kind, &args)
            }
        })
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    let before = total_connections(srv, rt);
    let start = Instant::now();
    let deadline = unix_ms() + cell().as_millis();
    for p in &mut procs {
        p.send(&format!("GO {deadline}"));
    }
    let reports: Vec<Report> = procs
        .iter_mut()
        .map(|p| {
            let line = p.expect("DONE");
            let mut it = line.split_whitespace();
            Report {
                grants: it.next().unwrap().parse().unwrap(),
                max_wait_ms: it.next().unwrap().parse().unwrap(),
            }
        })
        .collect();
    let elapsed = start.elapsed();
    for p in procs {
        p.finish();
    }
    finish_cell(srv, rt, &key, before, elapsed, &reports)
}

/// N tasks of this process, one `RedisLock` value each.
fn run_tasks(srv: &support::RedisServer, rt: &tokio::runtime::Runtime, n: usize) -> Cell {
    let channel = format!("tasks-{n}");
    let key = format!("{channel}-count");
    let before = total_connections(srv, rt);
    let start = Instant::now();
    let until = start + cell();
    let reports: Vec<Report> = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let client = srv.client();
                let lock =
                    RedisLock::new(&channel, client.clone()).timeout(Duration::from_secs(60));
                let key = key.clone();
                tokio::spawn(async move {
                    let mut con = client.get_multiplexed_async_connection().await.unwrap();
                    let mut r = Report::default();
                    while Instant::now() < until {
                        let t = Instant::now();
                        let g = lock.acquire().await.unwrap();
                        r.max_wait_ms = r.max_wait_ms.max(t.elapsed().as_secs_f64() * 1000.0);
                        support::redis_bump(&mut con, &key).await;
                        g.release().await.unwrap();
                        r.grants += 1;
                    }
                    r
                })
            })
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    finish_cell(srv, rt, &key, before, start.elapsed(), &reports)
}

/// 1,000 tasks of one process wait for a held lock; after the release,
/// how long until each had it once, and how many connections at most.
fn drain(
    srv: &support::RedisServer,
    rt: &tokio::runtime::Runtime,
    n: usize,
) -> (Duration, u64, u64) {
    rt.block_on(async {
        let mut probe = srv
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // Clients before the lock is used: this sampling connection (and
        // any left from earlier cells).
        let baseline = info_field(&mut probe, "connected_clients").await;
        let lock = RedisLock::new("drain", srv.client()).timeout(Duration::from_secs(120));
        let holder = lock.acquire().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let lock = lock.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    tx.send(()).unwrap();
                    lock.acquire().await.unwrap().release().await.unwrap();
                })
            })
            .collect();
        for _ in 0..n {
            rx.recv().await.unwrap();
        }
        // Let every task reach the queue.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let conns_before = info_field(&mut probe, "total_connections_received").await;
        let released = Instant::now();
        holder.release().await.unwrap();
        let done = tokio::spawn(async move {
            for t in tasks {
                t.await.unwrap();
            }
        });
        let mut peak = 0;
        while !done.is_finished() {
            peak = peak.max(info_field(&mut probe, "connected_clients").await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = released.elapsed();
        done.await.unwrap();
        let conns = info_field(&mut probe, "total_connections_received").await - conns_before;
        (took, peak.saturating_sub(baseline), conns)
    })
}

fn contention(
    srv: &support::RedisServer,
    rt: &tokio::runtime::Runtime,
    out: &mut impl FnMut(String),
) {
    out(format!(
        "## Contention: N contenders taking turns for {} s each\n\n\
         Each contender loops acquire → GET + SET of a counter → release until the cell's \
         time is up. Per cell: grants per second (all contenders), the longest single \
         acquire, the fewest–most grants of one contender, and new server connections per \
         grant (`total_connections_received`). This crate and the `SET NX PX` lock run with \
         the default `check_interval` (250 ms); Python with its defaults. The `SET NX PX` \
         lock is the usual hand-made one: `SET key token NX PX 10000`, else wait up to \
         100 ms for a message on a notify channel that the releaser (a compare-and-delete \
         script) publishes to.\n",
        cell().as_secs_f64()
    ));
    out("| N | this crate, N tasks of one process | this crate, N processes | Python 4.4.2, N processes | `SET NX PX` + notify, N processes |".into());
    out("| --- | --- | --- | --- | --- |".into());
    let mut at8 = None;
    for n in [2, 4, 8, 16] {
        let tasks = run_tasks(srv, rt, n);
        let procs = run_processes(srv, rt, "bench-rs", n, 250);
        let py = run_processes(srv, rt, "python", n, 250);
        let nx = run_processes(srv, rt, "bench-nx", n, 250);
        out(format!(
            "| {n} | {} | {} | {} | {} |",
            tasks.show(),
            procs.show(),
            py.show(),
            nx.show()
        ));
        if n == 16 {
            out(String::new());
            out(format!(
                "Targets at N = 16 processes: ≥ 200 grants/s — {:.0}/s; max wait ≤ 0.5 s — {:.0} ms.",
                procs.per_s, procs.max_wait_ms
            ));
        }
        if n == 8 {
            at8 = Some(procs);
        }
    }
    let at8 = at8.unwrap();
    out(format!(
        "At N = 8 processes: {:.2} new connections per grant (target ≤ 3).",
        at8.new_conns_per_grant
    ));
    out(String::new());
    out("## A smaller `check_interval` is never slower (N = 8 processes)\n".into());
    out("| `check_interval` | this crate |".into());
    out("| --- | --- |".into());
    for ci in [250, 50, 10] {
        let c = run_processes(srv, rt, "bench-rs", 8, ci);
        out(format!("| {ci} ms | {} |", c.show()));
    }
    out(String::new());
    let n = 1000;
    let (took, peak, conns) = drain(srv, rt, n);
    out("## 1,000 waiters in one process\n".into());
    out(format!(
        "After the holder released, the {n} waiting tasks each had the lock once within \
         {:.2} s (target ≤ 2 s), with at most {peak} connections of this process open at \
         once (target ≤ 8; the command connection and the subscription of the task whose \
         turn it is) and {conns} new connections in all (one subscription per grant).",
        took.as_secs_f64()
    ));
}

const PY_CONTENDER: &str = r#"
import sys, time, redis, portalocker
url, channel, key = sys.argv[1], sys.argv[2], sys.argv[3]
conn = redis.Redis.from_url(url)
lock = portalocker.RedisLock(channel, connection=conn, timeout=120, interrupt_on_lost=False)
print("@@READY", flush=True)
deadline = int(sys.stdin.readline().split()[1]) / 1000
grants, worst = 0, 0.0
while time.time() < deadline:
    t = time.perf_counter()
    lock.acquire()
    worst = max(worst, time.perf_counter() - t)
    v = int(conn.get(key) or 0)
    conn.set(key, v + 1)
    lock.release()
    grants += 1
print("@@DONE", grants, worst * 1000, flush=True)
"#;

/// A contender process of the contention table: `bench-rs` (this crate)
/// or `bench-nx` (the hand-made `SET NX PX` lock).
fn contender_main(role: &str, args: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (url, channel, key) = (&args[0], &args[1], &args[2]);
        let ci = Duration::from_millis(args[3].parse().unwrap());
        let client = portalocker::redis::Client::open(url.as_str()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let lock = RedisLock::new(channel, client.clone())
            .timeout(Duration::from_secs(120))
            .check_interval(ci);
        let mut nx = NxLock::new(&client, channel).await;
        support::say("READY", "");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let deadline: u128 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut r = Report::default();
        while unix_ms() < deadline {
            let t = Instant::now();
            if role == "bench-rs" {
                let g = lock.acquire().await.unwrap();
                r.max_wait_ms = r.max_wait_ms.max(t.elapsed().as_secs_f64() * 1000.0);
                support::redis_bump(&mut con, key).await;
                g.release().await.unwrap();
            } else {
                nx.acquire(&mut con).await;
                r.max_wait_ms = r.max_wait_ms.max(t.elapsed().as_secs_f64() * 1000.0);
                support::redis_bump(&mut con, key).await;
                nx.release(&mut con).await;
            }
            r.grants += 1;
        }
        support::say("DONE", format!("{} {}", r.grants, r.max_wait_ms));
    });
}

/// The usual hand-made Redis lock: `SET NX PX` with a random token, a
/// compare-and-delete release that publishes on a notify channel, and
/// waiters that retry on a notice or after 100 ms.
struct NxLock {
    key: String,
    notify: String,
    token: String,
    notices: portalocker::redis::aio::PubSubStream,
}

impl NxLock {
    async fn new(client: &portalocker::redis::Client, channel: &str) -> Self {
        let notify = format!("{channel}-nx-notify");
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(&notify).await.unwrap();
        Self {
            key: format!("{channel}-nx"),
            notify,
            token: format!(
                "{:x}",
                std::process::id() as u64 * 1_000_003 + unix_ms() as u64
            ),
            notices: ps.into_on_message(),
        }
    }

    async fn acquire(&mut self, con: &mut portalocker::redis::aio::MultiplexedConnection) {
        use futures_util::StreamExt;
        loop {
            let ok: Option<String> = portalocker::redis::cmd("SET")
                .arg(&self.key)
                .arg(&self.token)
                .arg("NX")
                .arg("PX")
                .arg(10_000)
                .query_async(con)
                .await
                .unwrap();
            if ok.is_some() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.notices.next()).await;
        }
    }

    async fn release(&mut self, con: &mut portalocker::redis::aio::MultiplexedConnection) {
        let _: i64 = portalocker::redis::cmd("EVAL")
            .arg(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]); \
                 return redis.call('PUBLISH', KEYS[2], 'free') end return 0",
            )
            .arg(2)
            .arg(&self.key)
            .arg(&self.notify)
            .arg(&self.token)
            .query_async(con)
            .await
            .unwrap();
    }
}
