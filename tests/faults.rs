//! Faults: stopped and killed holders, a Redis server killed and
//! restarted, a link that is delayed or cut.
//!
//! Unix only: it stops holders with SIGSTOP and needs a Redis server from the Linux CI host.
#![cfg(unix)]
mod support;

use std::time::Duration;

use portalocker::Lock;
use support::Proc;

support::child_entry!();

/// A SIGSTOPped file-lock holder keeps its lock (there is no lease):
/// waiters time out, and after SIGCONT the holder still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_file_lock_holder_keeps_the_lock() {
    let (_d, path) = support::temp_path("stop.lock");
    let mut holder = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    holder.expect("LOCKED");
    holder.signal("STOP");
    for t in [0, 50, 300] {
        support::busy(
            Lock::new(&path)
                .timeout(Duration::from_millis(t))
                .check_interval(support::ms(20))
                .acquire(),
        )
        .await;
    }
    holder.signal("CONT");
    support::busy(Lock::new(&path).try_acquire()).await;
    holder.close_stdin();
    holder.expect("RELEASED");
    holder.finish();
    drop(Lock::new(&path).try_acquire().await.unwrap());
}

#[cfg(feature = "redis")]
mod redis_faults {
    use std::time::{Duration, Instant};

    use portalocker::RedisLock;

    use super::support::{self, Proc, Proxy, RedisServer};

    /// A SIGSTOPped Redis holder cannot answer pings: a contender reaps it
    /// and takes the lock; resumed, the old holder learns it lost the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_redis_holder_is_reaped_and_learns_of_it() {
        let srv = RedisServer::start();
        let mut holder = Proc::role("child_entry", "redis-hold-report", &[&srv.url(), "st"]);
        holder.expect("LOCKED");
        holder.signal("STOP");
        let t = Instant::now();
        let g = RedisLock::new("st", srv.client())
            .timeout(Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "acquired before reaping: {:?}",
            t.elapsed()
        );
        holder.signal("CONT");
        holder.close_stdin();
        assert_eq!(
            holder.expect("LOST"),
            "true",
            "the reaped holder did not learn of its loss"
        );
        holder.finish();
        assert!(!g.is_lost());
        g.release().await.unwrap();
    }

    /// Killing and restarting the server: every holder learns of the loss,
    /// and after the restart there is exactly one new exclusive holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_restart_loses_every_holder_and_allows_one_new_one() {
        let mut srv = RedisServer::start();
        let a = RedisLock::new("r1", srv.client()).acquire().await.unwrap();
        let b = RedisLock::new("r2", srv.client()).acquire().await.unwrap();
        srv.kill();
        for g in [&a, &b] {
            tokio::time::timeout(Duration::from_secs(10), g.lost())
                .await
                .expect("loss not noticed");
        }
        srv.restart();
        let new = RedisLock::new("r1", srv.client()).acquire().await.unwrap();
        support::busy(
            RedisLock::new("r1", srv.client())
                .fail_when_locked(true)
                .acquire(),
        )
        .await;
        assert!(a.is_lost() && !new.is_lost());
        new.release().await.unwrap();
    }

    /// A slow link (50 ms each way) still holds: replies arrive within
    /// `unavailable_timeout`, so contenders see the lock busy and nobody
    /// is reaped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delayed_link_keeps_the_lock() {
        let srv = RedisServer::start();
        let proxy = Proxy::start(srv.port).await;
        let client = portalocker::redis::Client::open(proxy.url()).unwrap();
        let g = RedisLock::new("dl", client).acquire().await.unwrap();
        proxy.delay(Duration::from_millis(50));
        for _ in 0..3 {
            support::busy(
                RedisLock::new("dl", srv.client())
                    .fail_when_locked(true)
                    .acquire(),
            )
            .await;
        }
        assert!(!g.is_lost());
        assert_eq!(srv.numsub_settled("dl", 1).await, 1);
    }

    /// A cut link: the holder notices at once and the lock is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_link_is_noticed_and_frees_the_lock() {
        let srv = RedisServer::start();
        let proxy = Proxy::start(srv.port).await;
        let client = portalocker::redis::Client::open(proxy.url()).unwrap();
        let g = RedisLock::new("cut", client).acquire().await.unwrap();
        proxy.cut();
        tokio::time::timeout(Duration::from_secs(5), g.lost())
            .await
            .expect("cut not noticed");
        let other = RedisLock::new("cut", srv.client())
            .timeout(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        other.release().await.unwrap();
    }
}
