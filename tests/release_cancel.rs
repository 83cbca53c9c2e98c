//! Every guard's `release()` documents that dropping the future releases
//! exactly as dropping the guard does. Dropped unpolled (the guard is
//! already inside the future) and dropped mid-flight, it leaves nothing
//! held.
mod support;

use std::time::Duration;

use portalocker::{open_atomic, BoundedSemaphore, Lock, PidFileLock, RLock, TemporaryFileLock};
use tokio::io::AsyncWriteExt;

fn free(path: &std::path::Path) -> bool {
    std::fs::File::open(path).is_ok_and(|f| f.try_lock().is_ok())
}

/// Polls `fut` once (if `poll`), then drops it.
async fn drop_release<F: std::future::Future>(fut: F, poll: bool) {
    let mut fut = std::pin::pin!(fut);
    if poll {
        let _ = futures_util::poll!(fut.as_mut());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_release_futures_release() {
    let d = tempfile::tempdir().unwrap();
    for poll in [false, true] {
        let p = d.path().join("l.lock");
        let mut g = Lock::new(&p).truncate(true).acquire().await.unwrap();
        g.write_all(&[1u8; 100_000]).await.unwrap(); // a write may be in flight
        drop_release(g.release(), poll).await;
        assert!(
            support::eventually(Duration::from_secs(10), || free(&p)).await,
            "Lock, poll {poll}"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            100_000,
            "data written before the unlock"
        );

        let r = RLock::new(&p);
        let g = r.acquire().await.unwrap();
        drop_release(g.release(), poll).await;
        assert_eq!(r.count(), 0);
        assert!(
            support::eventually(Duration::from_secs(10), || free(&p)).await,
            "RLock, poll {poll}"
        );

        let t = d.path().join("t.lock");
        let g = TemporaryFileLock::new(&t).acquire().await.unwrap();
        drop_release(g.release(), poll).await;
        assert!(!t.exists(), "TemporaryFileLock, poll {poll}: file kept");

        let pid = d.path().join("p.pid");
        let g = PidFileLock::new(&pid).acquire().await.unwrap();
        drop_release(g.release(), poll).await;
        assert!(!pid.exists(), "PidFileLock, poll {poll}: pid file kept");
        let lock = PidFileLock::new(&pid);
        drop(lock.acquire().await.unwrap());

        let sem = BoundedSemaphore::new(1).name("s").directory(d.path());
        let permit = sem.acquire().await.unwrap();
        let slot = permit.path().to_path_buf();
        drop_release(permit.release(), poll).await;
        assert!(
            support::eventually(Duration::from_secs(10), || free(&slot)).await,
            "semaphore, poll {poll}"
        );

        let dir = d.path().join(format!("atomic-{poll}"));
        let mut f = open_atomic(dir.join("x")).await.unwrap();
        f.write_all(b"x").await.unwrap();
        drop_release(f.discard(), poll).await;
        // Polled once, the removal is already on the blocking pool and
        // finishes there after the future is dropped.
        assert!(
            support::eventually(Duration::from_secs(10), || std::fs::read_dir(&dir)
                .unwrap()
                .next()
                .is_none())
            .await,
            "discard, poll {poll}: litter"
        );
    }
}

#[cfg(all(feature = "redis", unix))] // the Redis server comes from the Linux CI host
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_redis_release_futures_release() {
    let srv = support::RedisServer::start();
    for poll in [false, true] {
        let g = portalocker::RedisLock::new("rc", srv.client())
            .acquire()
            .await
            .unwrap();
        drop_release(g.release(), poll).await;
        let freed = support::eventually_async(Duration::from_secs(10), || async {
            srv.numsub("rc").await == 0
        })
        .await;
        assert!(freed, "RedisLock, poll {poll}: subscriber left");
    }
}
