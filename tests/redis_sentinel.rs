//! `RedisLock` through Redis Sentinel (`redis+sentinel://`): a primary, a
//! replica and three sentinels of this test's own on loopback; the primary
//! is SIGKILLed while a fenced lock is held and another process's waiter
//! waits. The holder learns of the loss, the sentinels promote the
//! replica, the waiter is granted on it within its timeout with a larger
//! token, and the critical sections (recorded start and end) never overlap.
//!
//! Linux CI host only (redis-server, which runs as a sentinel with
//! `--sentinel`); Unix for the signals.
#![cfg(all(unix, feature = "redis"))]
mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portalocker::RedisLock;
use support::RedisServer;

const SERVICE: &str = "locks";

/// A sentinel of this test, killed on drop.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let conf = dir.path().join("sentinel.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        writeln!(
            f,
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {SERVICE} 500\n\
             sentinel failover-timeout {SERVICE} 5000\n\
             sentinel parallel-syncs {SERVICE} 1",
            dir.path().display()
        )
        .unwrap();
        drop(f);
        let server =
            std::env::var("PORTALOCKER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(server)
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (in --sentinel mode) is needed for this test");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    async fn ask(&self, args: &[&str]) -> Option<portalocker::redis::Value> {
        let client =
            portalocker::redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let mut c = portalocker::redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut con).await.ok()
    }

    /// How many entries the reply to `SENTINEL <what> SERVICE` lists.
    async fn count(&self, what: &str) -> usize {
        match self.ask(&["SENTINEL", what, SERVICE]).await {
            Some(portalocker::redis::Value::Array(v)) => v.len(),
            _ => 0,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded, on what the servers say) until the replica is online
/// and every sentinel knows it and the two other sentinels.
async fn settled(primary: &RedisServer, sentinels: &[Sentinel]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = primary.cmd(&["INFO", "replication"]).await;
        let online = info
            .lines()
            .any(|l| l.starts_with("slave0") && l.contains("state=online"));
        let mut known = online;
        for s in sentinels {
            known &= s.count("replicas").await == 1 && s.count("sentinels").await == 2;
        }
        if known {
            return;
        }
        assert!(Instant::now() < deadline, "the sentinels never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_through_sentinel_survives_the_primary_s_death() {
    let mut primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
    settled(&primary, &sentinels).await;
    let addrs: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/{SERVICE}", addrs.join(","));
    // The same sentinels listed in another order: another name, so the
    // waiter contends on the server as another process would.
    let mut reversed = addrs.clone();
    reversed.reverse();
    let other_url = format!("redis+sentinel://{}/{SERVICE}", reversed.join(","));

    let lock = RedisLock::from_url("fo", &url).unwrap().fencing(true);
    let holder = lock.acquire().await.unwrap();
    let first = holder.fence_token().unwrap();
    let held_from = Instant::now();
    let waiter_lock = RedisLock::from_url("fo", &other_url)
        .unwrap()
        .fencing(true)
        .timeout(Duration::from_secs(60));
    let waiter = tokio::spawn(async move {
        let g = waiter_lock.acquire().await;
        (Instant::now(), g)
    });
    // The waiter waits on the primary (subscribed to the side channel).
    assert_eq!(
        primary.numsub_settled("fo portalocker-released", 1).await,
        1,
        "the waiter never waited"
    );

    primary.kill();
    let lost = tokio::time::timeout(Duration::from_secs(30), holder.lost()).await;
    let held_until = Instant::now();
    assert!(
        lost.is_ok(),
        "the holder never learned that the primary died"
    );
    assert!(holder.is_lost());
    drop(holder);

    let (granted_at, second) = waiter.await.unwrap();
    let second = second.unwrap_or_else(|e| panic!("the waiter was not granted: {e}"));
    // Exclusion, from the recorded sections: the holder's ended (it
    // learned of the loss) before the waiter's began.
    assert!(held_from < held_until && held_until <= granted_at);
    let token = second.fence_token().unwrap();
    assert!(token > first, "token {token} after {first}");
    // Granted on the promoted replica.
    let role: portalocker::redis::Value = replica.cmd(&["ROLE"]).await;
    assert!(format!("{role:?}").contains("master"), "{role:?}");
    assert_eq!(replica.numsub("fo").await, 1);
    second.release().await.unwrap();
    assert_eq!(replica.numsub("fo").await, 0);

    // A new lock value finds the new primary at once.
    let again = RedisLock::from_url("fo", &url)
        .unwrap()
        .fencing(true)
        .acquire()
        .await
        .unwrap();
    assert!(again.fence_token().unwrap() > token);
    again.release().await.unwrap();
}

/// Sentinels that cannot name a primary (a wrong service name) are an
/// error at once, naming the sentinels, not a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_without_the_service_are_an_error_at_once() {
    let primary = RedisServer::start();
    let sentinel = Sentinel::start(primary.port);
    for _ in 0..2000 {
        if sentinel.ask(&["PING"]).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = format!("redis+sentinel://127.0.0.1:{}/nosuchservice", sentinel.port);
    let started = Instant::now();
    let e = RedisLock::from_url("x", &url)
        .unwrap()
        .timeout(Duration::from_secs(600))
        .acquire()
        .await
        .expect_err("granted without a primary");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(e.kind(), portalocker::ErrorKind::Redis, "{e}");
    assert!(e.to_string().contains("could not name a primary"), "{e}");
}
