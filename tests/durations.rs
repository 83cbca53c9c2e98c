//! Every `Duration` setter of every type saturates: `ZERO`, an in-between
//! value and `MAX`, each against a holder in another process (where the
//! waiting code runs), never panic.
mod support;

use std::future::Future;
use std::time::Duration;

use portalocker::{BoundedSemaphore, Lock, PidFileLock, RLock, TemporaryFileLock};
use support::Proc;

support::child_entry!();

const VALUES: [Duration; 3] = [Duration::ZERO, Duration::from_millis(30), Duration::MAX];
/// Short enough that a value under test, not the other setting, decides.
const SHORT: Duration = Duration::from_millis(60);

/// Runs one acquisition against a busy lock for at most `limit`: it must
/// report the lock busy (or still be waiting when `limit` is reached, for
/// a `MAX` timeout). A panic inside fails the test.
async fn busy_or_waiting<T, F>(case: &str, fut: F)
where
    F: Future<Output = portalocker::Result<T>>,
{
    // A MAX timeout waits on: watch it wait a little, then drop it.
    let limit = if case.contains("timeout=MAX") {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(10)
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(_)) => panic!("{case}: acquired a lock held by another process"),
        Ok(Err(e)) => assert!(e.is_already_locked(), "{case}: {e}"),
        Err(_) => assert!(case.contains("timeout=MAX"), "{case}: did not finish"),
    }
}

fn label(setter: &str, d: Duration) -> String {
    if d == Duration::MAX {
        format!("{setter}=MAX")
    } else {
        format!("{setter}={d:?}")
    }
}

#[tokio::test]
async fn file_lock_durations_saturate_against_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.lock");
    let mut holder = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    holder.expect("LOCKED");
    for d in VALUES {
        let case = label("timeout", d);
        let lock = Lock::new(&path).timeout(d).check_interval(SHORT);
        busy_or_waiting(&format!("Lock {case}"), lock.acquire()).await;
        let rlock = RLock::new(&path).timeout(d).check_interval(SHORT);
        busy_or_waiting(&format!("RLock {case}"), rlock.acquire()).await;

        let case = label("check_interval", d);
        let lock = Lock::new(&path).timeout(SHORT).check_interval(d);
        busy_or_waiting(&format!("Lock {case}"), lock.acquire()).await;
        let rlock = RLock::new(&path).timeout(SHORT).check_interval(d);
        busy_or_waiting(&format!("RLock {case}"), rlock.acquire()).await;
    }
    holder.finish();
}

#[tokio::test]
async fn temporary_and_pid_file_durations_saturate_against_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp.lock");
    let pid = dir.path().join("daemon.pid");
    let mut tmp_holder = Proc::role("child_entry", "hold", &[tmp.to_str().unwrap()]);
    tmp_holder.expect("LOCKED");
    let mut pid_holder = Proc::role("child_entry", "pid-hold", &[pid.to_str().unwrap()]);
    pid_holder.expect("LOCKED");
    for d in VALUES {
        for (setter, timeout, interval) in [("timeout", d, SHORT), ("check_interval", SHORT, d)] {
            let case = label(setter, d);
            let t = TemporaryFileLock::new(&tmp)
                .fail_when_locked(false)
                .timeout(timeout)
                .check_interval(interval);
            busy_or_waiting(&format!("TemporaryFileLock {case}"), t.acquire()).await;
            let p = PidFileLock::new(&pid)
                .fail_when_locked(false)
                .timeout(timeout)
                .check_interval(interval);
            busy_or_waiting(&format!("PidFileLock {case}"), p.acquire()).await;
        }
    }
    tmp_holder.finish();
    pid_holder.finish();
}

#[tokio::test]
async fn semaphore_durations_saturate_against_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let d_str = dir.path().to_str().unwrap();
    let mut holder = Proc::role("child_entry", "sem-hold", &["dur", d_str, "1"]);
    assert_eq!(holder.expect("LOCKED"), "0");
    for d in VALUES {
        for (setter, timeout, interval) in [("timeout", d, SHORT), ("check_interval", SHORT, d)] {
            let case = label(setter, d);
            let sem = BoundedSemaphore::new(1)
                .name("dur")
                .directory(dir.path())
                .timeout(timeout)
                .check_interval(interval);
            busy_or_waiting(&format!("BoundedSemaphore {case}"), sem.acquire()).await;
        }
    }
    holder.finish();
}

// Unix only: the Redis server comes from the Linux CI host.
#[cfg(all(feature = "redis", unix))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_durations_saturate_against_another_process() {
    use portalocker::RedisLock;

    let server = support::RedisServer::start();
    let url = server.url();
    let mut holder = Proc::role("child_entry", "redis-hold", &[&url, "dur-held"]);
    holder.expect("LOCKED");
    for d in VALUES {
        let cases = [
            ("timeout", d, SHORT, Duration::from_secs(1)),
            ("check_interval", SHORT, d, Duration::from_secs(1)),
            ("unavailable_timeout", SHORT, SHORT, d),
        ];
        for (setter, timeout, interval, unavailable) in cases {
            let case = format!("RedisLock {}", label(setter, d));
            let lock = RedisLock::new("dur-held", server.client())
                .timeout(timeout)
                .check_interval(interval)
                .unavailable_timeout(unavailable);
            if unavailable < Duration::from_secs(1) {
                // A holder must answer a ping within unavailable_timeout or
                // be reaped: with zero (or 30 ms), a busy machine makes a
                // holder late, and the contender may reap it and take the
                // lock.
                // That is the setting's meaning; it must still end at once.
                match tokio::time::timeout(Duration::from_secs(10), lock.acquire()).await {
                    Ok(Ok(guard)) => {
                        guard.release().await.unwrap();
                        holder.kill();
                        holder = Proc::role("child_entry", "redis-hold", &[&url, "dur-held"]);
                        holder.expect("LOCKED");
                    }
                    Ok(Err(e)) => assert!(e.is_already_locked(), "{case}: {e}"),
                    Err(_) => panic!("{case}: did not finish"),
                }
                continue;
            }
            busy_or_waiting(&case, lock.acquire()).await;
        }
        // The holder's own timers (keep-alive pings, self-checks) use these
        // too: hold an uncontended lock with each value, then release.
        let mut lock = RedisLock::new("dur-free", server.client()).unavailable_timeout(d);
        if d == Duration::MAX {
            lock = lock.self_check_interval(Duration::from_secs(3600));
        }
        let guard = lock.acquire().await.unwrap();
        guard.release().await.unwrap();
        // A self-check interval that cannot work (zero, or too long for
        // the default 1 s unavailable_timeout) is refused, never a panic.
        let r = RedisLock::new("dur-free", server.client())
            .self_check_interval(d)
            .acquire()
            .await;
        match r {
            Ok(guard) if d == Duration::from_millis(30) => guard.release().await.unwrap(),
            Ok(_) => panic!("self_check_interval {d:?} was accepted"),
            Err(e) => assert_eq!(e.kind(), portalocker::ErrorKind::InvalidInput, "{e}"),
        }
    }
    holder.finish();
}
