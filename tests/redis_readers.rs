//! `RedisLock` readers and writers, the self-check against half-open
//! links, loss hooks, and scale.
//!
//! Unix only: the Redis server comes from Debian on the Linux CI host.
#![cfg(all(feature = "redis", unix))]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portalocker::{ErrorKind, LockFlags, RedisLock};
use support::{Proc, Proxy, RedisServer};

support::child_entry!();

fn reader(srv: &RedisServer, ch: &str) -> RedisLock {
    RedisLock::new(ch, srv.client()).flags(LockFlags::SHARED)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_new_readers_then_takes_over() {
    let srv = RedisServer::start();
    let r1 = reader(&srv, "rw").acquire().await.unwrap();
    // The writer waits (elected, pending) while the reader holds.
    let writer = RedisLock::new("rw", srv.client())
        .timeout(Duration::from_secs(30))
        .check_interval(Duration::from_millis(50));
    let w = tokio::spawn(async move { writer.acquire().await });
    // Once the writer is subscribed and elected, a new reader is refused.
    let blocked = support::eventually_async(Duration::from_secs(10), || async {
        matches!(
            reader(&srv, "rw").fail_when_locked(true).acquire().await,
            Err(e) if e.is_already_locked()
        )
    })
    .await;
    assert!(blocked, "a new reader joined past a waiting writer");
    r1.release().await.unwrap();
    let w = w.await.unwrap().unwrap();
    assert!(!w.is_lost());
    w.release().await.unwrap();
}

const PY_LOCK: &str = r#"
import sys, redis, portalocker
url, channel, mode, action = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
flags = portalocker.LockFlags.SHARED if mode == "sh" else portalocker.LockFlags.EXCLUSIVE
lock = portalocker.RedisLock(channel, connection=redis.Redis.from_url(url), flags=flags,
                             fail_when_locked=True, timeout=3, interrupt_on_lost=False)
try:
    lock.acquire()
except portalocker.AlreadyLocked:
    print("@@RESULT AlreadyLocked", flush=True)
    sys.exit(0)
print("@@RESULT acquired", flush=True)
if action == "hold":
    sys.stdin.read()
lock.release()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_readers_and_writers_mix() {
    let srv = RedisServer::start();
    let url = srv.url();
    // A Python reader holds; a Rust reader joins; writers of both are refused.
    let mut py_reader = Proc::python(PY_LOCK, &[&url, "mx", "sh", "hold"]);
    assert_eq!(py_reader.expect("RESULT"), "acquired");
    let rs_reader = reader(&srv, "mx")
        .fail_when_locked(true)
        .acquire()
        .await
        .unwrap();
    support::busy(
        RedisLock::new("mx", srv.client())
            .fail_when_locked(true)
            .acquire(),
    )
    .await;
    let mut py_writer = Proc::python(PY_LOCK, &[&url, "mx", "ex", "try"]);
    assert_eq!(py_writer.expect("RESULT"), "AlreadyLocked");
    py_writer.finish();
    // A second Python reader joins both.
    let mut py_reader2 = Proc::python(PY_LOCK, &[&url, "mx", "sh", "try"]);
    assert_eq!(py_reader2.expect("RESULT"), "acquired");
    py_reader2.finish();
    py_reader.finish();
    rs_reader.release().await.unwrap();
    // A Rust writer holds; Python readers and writers are refused.
    let w = RedisLock::new("mx", srv.client()).acquire().await.unwrap();
    for mode in ["sh", "ex"] {
        let mut py = Proc::python(PY_LOCK, &[&url, "mx", mode, "try"]);
        assert_eq!(py.expect("RESULT"), "AlreadyLocked", "{mode}");
        py.finish();
    }
    assert!(!w.is_lost());
    w.release().await.unwrap();
}

#[tokio::test]
async fn self_check_settings_that_cannot_win_the_race_are_rejected() {
    let srv = RedisServer::start();
    for (s, u) in [(500, 1000), (1000, 1000), (0, 1000), (200, 400)] {
        support::fails_with(
            ErrorKind::InvalidInput,
            RedisLock::new("sc", srv.client())
                .self_check_interval(Duration::from_millis(s))
                .unavailable_timeout(Duration::from_millis(u))
                .acquire(),
        )
        .await;
    }
    let g = RedisLock::new("sc", srv.client())
        .self_check_interval(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    g.release().await.unwrap();
}

/// A half-open link (the proxy stops forwarding, keeps the sockets open):
/// nothing arrives and no error is raised. The self-check notices before a
/// rival, which has to wait `unavailable_timeout` and reap, acquires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_notices_a_half_open_link_before_any_rival_acquires() {
    let srv = Arc::new(RedisServer::start());
    let trials: Vec<_> = (0..10)
        .map(|group| {
            let srv = srv.clone();
            tokio::spawn(async move {
                for round in 0..5 {
                    let ch = format!("ho-{group}-{round}");
                    let proxy = Proxy::start(srv.port).await;
                    let client = portalocker::redis::Client::open(proxy.url()).unwrap();
                    let holder = RedisLock::new(&ch, client)
                        .self_check_interval(Duration::from_millis(200))
                        .acquire()
                        .await
                        .unwrap();
                    proxy.blackhole();
                    let rival = RedisLock::new(&ch, srv.client()).timeout(Duration::from_secs(30));
                    let (lost_at, rival_at) = tokio::join!(
                        async {
                            holder.lost().await;
                            Instant::now()
                        },
                        async {
                            let g = rival.acquire().await.unwrap();
                            let at = Instant::now();
                            g.release().await.unwrap();
                            at
                        }
                    );
                    assert!(
                        lost_at < rival_at,
                        "{ch}: the rival acquired {:?} before the holder noticed",
                        lost_at - rival_at
                    );
                }
            })
        })
        .collect();
    for t in trials {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn loss_hooks_fire_once() {
    let srv = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let lock = RedisLock::new("hk", srv.client()).on_lost(move |e| {
        assert!(e.is_lock_lost());
        c.fetch_add(1, Ordering::SeqCst);
    });
    let g = lock.acquire().await.unwrap();
    let mut watch = g.watch_lost();
    assert!(!*watch.borrow());
    let work = g.run_while_held(async { 7 }).await.unwrap();
    assert_eq!(work, 7);
    // Kill the holder's connection while a long job runs under it.
    let name = format!("hk-lock-{}", g.holder_id());
    let job = g.run_while_held(std::future::pending::<()>());
    let kill = async {
        let id = srv.client_id(&name).await;
        let _: i64 = srv.cmd(&["CLIENT", "KILL", "ID", &id]).await;
    };
    let (res, ()) = tokio::join!(job, kill);
    let err = res.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockLost, "{err}");
    watch.changed().await.unwrap();
    assert!(*watch.borrow());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(g.run_while_held(async {}).await.unwrap_err().is_lock_lost());
    drop(g);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "dropping a lost guard is not a second loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_holds_a_thousand_locks() {
    let srv = RedisServer::start();
    let client = srv.client();
    let rss = || -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let before = rss();
    let mut guards = Vec::new();
    for i in 0..1000 {
        let g = RedisLock::new(format!("many-{i}"), client.clone())
            .acquire()
            .await
            .unwrap();
        guards.push(g);
    }
    let after = rss();
    eprintln!(
        "1000 held Redis locks: RSS +{} KiB, {:.1} KiB per lock",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / 1000.0
    );
    assert_eq!(srv.numsub_settled("many-999", 1).await, 1);
    assert!(guards.iter().all(|g| !g.is_lost()));
    for g in guards {
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_waiters_on_one_channel_all_get_their_turn() {
    let srv = RedisServer::start();
    let client = srv.client();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let lock = RedisLock::new("crowd", client)
                    .timeout(Duration::from_secs(300))
                    .check_interval(Duration::from_millis(100));
                let g = lock.acquire().await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
                g.release().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 100);
}
