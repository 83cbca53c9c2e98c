//! `RedisLock` interop with Python portalocker 4.4.2 on the same channel.
//!
//! Unix only: the Redis server and the Python venv come from the Linux CI host.
#![cfg(all(feature = "redis", unix))]
mod support;

use std::time::{Duration, Instant};

use portalocker::RedisLock;
use support::{Proc, RedisServer};

support::child_entry!();

const PY_COMMON: &str = r#"
import os, sys, time, redis, portalocker
url, channel = sys.argv[1], sys.argv[2]
conn = redis.Redis.from_url(url)
"#;

/// Python holds the lock until stdin closes.
fn py_hold() -> String {
    format!(
        "{PY_COMMON}
lock = portalocker.RedisLock(channel, connection=conn, timeout=30, interrupt_on_lost=False)
lock.acquire()
print('@@LOCKED', lock.holder_id if hasattr(lock, 'holder_id') else '', flush=True)
sys.stdin.read()
lock.release()
print('@@RELEASED', flush=True)
"
    )
}

/// Python tries once with fail_when_locked.
fn py_try() -> String {
    format!(
        "{PY_COMMON}
lock = portalocker.RedisLock(channel, connection=conn, fail_when_locked=True, timeout=3, interrupt_on_lost=False)
{}",
        support::PY_REPORT_ONE_ACQUIRE
    )
}

// Multi-threaded: this thread blocks reading the child's output, and the
// holder's keep-alive task must keep answering Python's pings meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_holds_python_fail_when_locked_raises() {
    let srv = RedisServer::start();
    let g = RedisLock::new("ip", srv.client()).acquire().await.unwrap();
    let mut py = Proc::python(&py_try(), &[&srv.url(), "ip"]);
    assert_eq!(py.expect("RESULT"), "AlreadyLocked");
    py.finish();
    // Python's probe did not reap us: we answered its ping in time.
    assert!(!g.is_lost());
    g.release().await.unwrap();
    let mut py = Proc::python(&py_try(), &[&srv.url(), "ip"]);
    assert_eq!(py.expect("RESULT"), "acquired");
    py.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_holds_rust_is_refused_then_takes_over_when_python_dies() {
    let srv = RedisServer::start();
    let mut py = Proc::python(&py_hold(), &[&srv.url(), "pk"]);
    let py_id = py.expect("LOCKED").trim().to_string();
    let err = support::busy(
        RedisLock::new("pk", srv.client())
            .fail_when_locked(true)
            .acquire(),
    )
    .await;
    // The Python holder is named by its holder id and address.
    assert_eq!(py_id.len(), 32, "Python 4.4.2 has holder_id: {py_id:?}");
    assert_eq!(err.holder_id(), Some(py_id.as_str()), "{err}");
    assert!(err.to_string().contains("(client 127.0.0.1:"), "{err}");
    let lock = RedisLock::new("pk", srv.client()).timeout(Duration::from_secs(30));
    let waiter = support::spawn_started(async move { lock.acquire().await }).await;
    let killed = Instant::now();
    py.kill();
    let (g, at) = waiter.await.unwrap();
    let g = g.unwrap();
    assert!(
        at - killed < Duration::from_secs(3),
        "took {:?}",
        at - killed
    );
    g.release().await.unwrap();
}

/// Two Rust processes and two Python processes increment one key under the
/// lock: no lost update, and the fence tokens each sees only increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_rust_and_python_workers_never_lose_an_update() {
    let srv = RedisServer::start();
    let url = srv.url();
    let n = "15";
    let mut procs = Vec::new();
    for _ in 0..2 {
        procs.push(Proc::role(
            "child_entry",
            "redis-counter",
            &[&url, "mix", "k", n],
        ));
        procs.push(Proc::python(
            support::PY_REDIS_COUNTER,
            &[&url, "mix", "k", n],
        ));
    }
    for mut p in procs {
        assert_eq!(p.expect("DONE"), n);
        p.finish();
    }
    let total: u64 = srv.cmd(&["GET", "k"]).await;
    assert_eq!(total, 60);
    let fence: u64 = srv.cmd(&["GET", "mix-fence"]).await;
    assert_eq!(
        fence, 60,
        "every exclusive grant, Rust or Python, drew one token"
    );
}

/// Python waits for the lock (its default check interval), then holds it
/// for 50 ms. Prints `@@WAITING`, then `@@GOT <ns since the epoch>`.
fn py_wait() -> String {
    format!(
        "{PY_COMMON}
lock = portalocker.RedisLock(channel, connection=conn, timeout=30, interrupt_on_lost=False)
print('@@WAITING', flush=True)
lock.acquire()
print('@@GOT', time.time_ns(), flush=True)
time.sleep(0.05)
lock.release()
"
    )
}

/// The members of the channel's server-side queue, first first.
async fn queue(srv: &RedisServer, channel: &str) -> Vec<String> {
    srv.cmd(&["ZRANGE", &format!("{channel} portalocker-queue"), "0", "-1"])
        .await
}

/// A Python writer that waits is seen (its replies to the holder's pings
/// are watched) and given a place in the queue; a writer of this crate that
/// comes later waits behind it, though it would otherwise move the moment
/// the lock is free and take it long before Python's next poll. (Before,
/// Python peers had no place and were served only when no writer of this
/// crate waited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_python_writer_keeps_its_place_ahead_of_later_rust_writers() {
    let srv = RedisServer::start();
    let url = srv.url();
    let holder = RedisLock::new("order", srv.client())
        .acquire()
        .await
        .unwrap();
    let mut py = Proc::python(&py_wait(), &[&url, "order"]);
    py.expect("WAITING");
    let mut q = Vec::new();
    for _ in 0..3000 {
        q = queue(&srv, "order").await;
        if q.iter().any(|m| m.starts_with("foreign:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        q.len() == 1 && q[0].starts_with("foreign:"),
        "the Python waiter has no place: {q:?}"
    );
    // Another client address: another process as far as the lock knows.
    let later = RedisLock::new("order", srv.other_client()).timeout(Duration::from_secs(30));
    let rust = tokio::spawn(async move {
        let g = later.acquire().await.unwrap();
        let at = support::epoch_ns();
        g.release().await.unwrap();
        at
    });
    for _ in 0..3000 {
        q = queue(&srv, "order").await;
        if q.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(q.len() == 2 && q[0].starts_with("foreign:"), "{q:?}");
    holder.release().await.unwrap();
    let python_at: u128 = py.expect("GOT").parse().unwrap();
    let rust_at = rust.await.unwrap();
    assert!(
        python_at < rust_at,
        "the later Rust writer was served first ({} ms before Python)",
        (python_at - rust_at) / 1_000_000
    );
    py.finish();
}
