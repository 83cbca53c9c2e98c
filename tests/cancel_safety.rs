//! Cancel safety of every acquire future: dropped at random points (tiny
//! `timeout` budgets, `select!` against a sleep, `JoinHandle::abort`), it
//! leaves no lock held and no descriptor open. Over 10,000 cancellations
//! across every primitive (Lock 2,000, RLock 2,000, BoundedSemaphore
//! 2,000, TemporaryFileLock and PidFileLock 2,000, open_atomic 1,000, and
//! RedisLock 1,000 with the `redis` feature), descriptors, threads, Redis
//! connections and subscribers come back to their baseline.
//!
//! One test per binary on purpose: it counts this process's descriptors.
//!
//! Unix only: it proves that no descriptor leaks by counting /proc/self/fd.
#![cfg(unix)]
mod support;

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use portalocker::{BoundedSemaphore, Lock, PidFileLock, RLock, TemporaryFileLock};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Cancels one `acquire` of `lock` in one of three ways, after a random
/// budget of up to `max_us` microseconds. Returns whether it completed.
async fn cancel_one(rng: &mut Rng, lock: &Lock, max_us: u64) -> bool {
    let budget = Duration::from_micros(rng.below(max_us + 1));
    match rng.below(3) {
        0 => tokio::time::timeout(budget, lock.acquire()).await.is_ok(),
        1 => tokio::select! {
            r = lock.acquire() => { drop(r); true }
            _ = tokio::time::sleep(budget) => false,
        },
        _ => {
            let l = lock.clone();
            let h = tokio::spawn(async move { drop(l.acquire().await) });
            if rng.below(2) == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(budget).await;
            }
            h.abort();
            h.await.is_ok()
        }
    }
}

async fn cancel_rlock(rng: &mut Rng, r: &RLock, max_us: u64) {
    let budget = Duration::from_micros(rng.below(max_us + 1));
    drop(tokio::time::timeout(budget, r.acquire()).await);
    assert_eq!(
        r.count(),
        0,
        "a cancelled RLock acquire left a level counted"
    );
}

/// Whether nobody holds a lock on `path`. A file that is not there is
/// free: a rollback may remove it at any moment, so this never checks
/// for it first and opens it after.
fn free_now(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => f.try_lock().is_ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[test]
fn dropped_acquires_leave_no_lock_and_no_descriptor() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .unwrap();
    let (d, path) = support::temp_path("c.lock");
    std::fs::write(&path, "").unwrap();
    rt.block_on(async {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // The first contended wait starts the process-wide wake-up watcher
        // (one inotify descriptor on Linux): create it before the baseline.
        // The holder must not be a `Lock` of this process: a waiter behind
        // one queues at the in-process gate and never registers a watch.
        {
            let held = std::fs::File::open(&path).unwrap();
            held.lock().unwrap();
            support::busy(Lock::new(&path).timeout(support::ms(5)).acquire()).await;
        }
        // So do a semaphore's first wait (Linux: this process's doorbell,
        // a socket and its reader thread) and its first release (the
        // socket that rings other waiters' doorbells).
        {
            let sem = portalocker::BoundedSemaphore::new(1)
                .name("warm-up")
                .directory(d.path());
            let held = std::fs::File::create(d.path().join("warm-up.00.lock")).unwrap();
            held.lock().unwrap();
            support::busy(sem.clone().timeout(support::ms(5)).acquire()).await;
            drop(held);
            drop(sem.acquire().await.unwrap());
        }
        let baseline = support::fd_count();
        let thread_baseline = threads();

        // Phase 1: the lock is held by another owner; every acquire waits
        // and is cancelled mid-wait or mid-open.
        let holder = Lock::new(&path).acquire().await.unwrap();
        let reused = Lock::new(&path).check_interval(Duration::from_micros(200));
        let mut completed = 0;
        for i in 0..1000 {
            let fresh;
            let lock = if i % 2 == 0 {
                &reused
            } else {
                fresh = Lock::new(&path).check_interval(Duration::from_micros(200));
                &fresh
            };
            if cancel_one(&mut rng, lock, 3000).await {
                completed += 1; // timed out as AlreadyLocked: fine too
            }
        }
        drop(holder);
        assert!(free_now(&path), "a cancelled acquire holds the lock");
        eprintln!("phase 1: {completed} of 1000 completed before cancellation");

        // Phase 2: the lock is free; cancellation races with success. Right
        // after each cancellation the lock must be free.
        let mut won = 0;
        for i in 0..1000 {
            let fresh;
            let lock = if i % 2 == 0 {
                &reused
            } else {
                fresh = Lock::new(&path);
                &fresh
            };
            if cancel_one(&mut rng, lock, 200).await {
                won += 1;
            }
            assert!(free_now(&path), "iteration {i}: lock left held");
        }
        eprintln!("phase 2: {won} of 1000 acquired before cancellation");
        assert!(
            won > 0 && won < 1000,
            "the budgets did not exercise both outcomes"
        );

        // RLock: cancelled first acquisitions leave the count at zero.
        let holder = Lock::new(&path).acquire().await.unwrap();
        let r = RLock::new(&path).check_interval(Duration::from_micros(200));
        for _ in 0..2000 {
            cancel_rlock(&mut rng, &r, 2000).await;
        }
        drop(holder);
        let g = r.acquire().await.unwrap();
        drop(g);
        assert!(free_now(&path));

        // BoundedSemaphore: 3 slots, all held by another value; then free.
        let sem_dir = tempfile::tempdir().unwrap();
        let sem = BoundedSemaphore::new(3)
            .name("c")
            .directory(sem_dir.path())
            .check_interval(Duration::from_micros(300));
        let holders = BoundedSemaphore::new(3).name("c").directory(sem_dir.path());
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(holders.acquire().await.unwrap());
        }
        for _ in 0..1000 {
            let budget = Duration::from_micros(rng.below(2000));
            drop(tokio::time::timeout(budget, sem.acquire()).await);
        }
        drop(held);
        let all_free = |sem: &BoundedSemaphore| sem.get_filenames().iter().all(|p| free_now(p));
        assert!(all_free(&sem), "a cancelled semaphore acquire holds a slot");
        let mut won = 0;
        for i in 0..1000 {
            let budget = Duration::from_micros(rng.below(40));
            // A fresh value has no slot file open: its slots race as
            // futures that open their files on the blocking pool.
            let fresh = BoundedSemaphore::new(3).name("c").directory(sem_dir.path());
            let s = if i % 2 == 0 { &sem } else { &fresh };
            let got = if rng.below(2) == 0 {
                tokio::time::timeout(budget, s.acquire()).await.ok()
            } else {
                let s = s.clone();
                let h = tokio::spawn(async move { s.acquire().await });
                tokio::task::yield_now().await;
                h.abort();
                h.await.ok()
            };
            if let Some(p) = got {
                drop(p.unwrap());
                won += 1;
            }
            assert!(all_free(&sem), "iteration {i}: a slot was left held");
        }
        eprintln!("semaphore: {won} of 1000 acquired before cancellation");
        assert!(
            won > 0 && won < 1000,
            "the budgets did not exercise both outcomes"
        );

        // TemporaryFileLock and PidFileLock, held elsewhere, then free.
        let tmp_path = sem_dir.path().join("t.lock");
        let pid_path = sem_dir.path().join("p.pid");
        let tmp = TemporaryFileLock::new(&tmp_path)
            .fail_when_locked(false)
            .check_interval(Duration::from_micros(300));
        let pid = PidFileLock::new(&pid_path)
            .fail_when_locked(false)
            .check_interval(Duration::from_micros(300));
        for i in 0..2000 {
            let budget = Duration::from_micros(rng.below(1500));
            if i % 2 == 0 {
                if let Ok(Ok(g)) = tokio::time::timeout(budget, tmp.acquire()).await {
                    drop(g);
                }
                assert!(free_now(&tmp_path), "{i}: temporary lock held");
            } else {
                if let Ok(Ok(g)) = tokio::time::timeout(budget, pid.acquire()).await {
                    drop(g);
                }
                // A publication in flight finishes, then rolls back.
                let side = pid.lock_path().to_path_buf();
                let clean = support::eventually(Duration::from_secs(10), || free_now(&side)).await;
                assert!(clean, "{i}: pid lock held");
            }
        }
        // Atomic writes: nothing or the complete file, never litter.
        let atomic_dir = tempfile::tempdir().unwrap();
        for i in 0..1000 {
            let dest = atomic_dir.path().join(format!("a{i}"));
            let budget = Duration::from_micros(rng.below(2000));
            let _ = tokio::time::timeout(budget, async {
                let mut f = portalocker::open_atomic(&dest).await?;
                tokio::io::AsyncWriteExt::write_all(&mut f, b"payload").await?;
                f.commit().await
            })
            .await;
        }
        let litter_free = support::eventually(Duration::from_secs(10), || {
            std::fs::read_dir(atomic_dir.path()).unwrap().all(|e| {
                !e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".portalocker")
            })
        })
        .await;
        assert!(litter_free);
        for e in std::fs::read_dir(atomic_dir.path()).unwrap() {
            assert_eq!(std::fs::read(e.unwrap().path()).unwrap(), b"payload");
        }

        #[cfg(feature = "redis")]
        redis_cancellations(&mut rng).await;

        drop((reused, r, sem, holders, tmp, pid));
        // Opens still running on the blocking pool when their future was
        // dropped close their descriptor as soon as they finish.
        let settled =
            support::eventually(Duration::from_secs(10), || support::fd_count() == baseline).await;
        let open: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect();
        assert!(
            settled,
            "descriptors: {} now, {baseline} before: {open:?}",
            support::fd_count()
        );
        // Blocking-pool threads expire after their keep-alive (100 ms).
        let threads_settled =
            support::eventually(Duration::from_secs(10), || threads() <= thread_baseline).await;
        assert!(
            threads_settled,
            "threads: {} now, {thread_baseline} before",
            threads()
        );
    });
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// 1,000 cancelled Redis acquisitions against a held lock (another
/// process's, so they wait in the server-side queue and on the side
/// channel), 200 behind a holder of this process (waiting for its turn),
/// then 500 with the lock free: afterwards no subscriber, no queue entry,
/// no side-channel subscription and no named connection is left, and the
/// process's turn was not leaked.
#[cfg(feature = "redis")]
async fn redis_cancellations(rng: &mut Rng) {
    use portalocker::RedisLock;
    let srv = support::RedisServer::start();
    let clients_before: String = srv.cmd(&["CLIENT", "LIST"]).await;
    let baseline_clients = clients_before.lines().count();
    let holder = RedisLock::new("cx", srv.other_client())
        .acquire()
        .await
        .unwrap();
    let lock = RedisLock::new("cx", srv.client()).check_interval(Duration::from_millis(2));
    for _ in 0..500 {
        let budget = Duration::from_micros(rng.below(5000));
        let _ = tokio::time::timeout(budget, lock.acquire()).await;
    }
    holder.release().await.unwrap();
    let mine = lock.acquire().await.unwrap();
    for _ in 0..200 {
        let budget = Duration::from_micros(rng.below(3000));
        let _ = tokio::time::timeout(budget, lock.acquire()).await;
    }
    mine.release().await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), lock.acquire())
        .await
        .expect("the process's turn was leaked by a cancelled acquisition")
        .unwrap();
    again.release().await.unwrap();
    for _ in 0..500 {
        let budget = Duration::from_micros(rng.below(3000));
        if let Ok(Ok(g)) = tokio::time::timeout(budget, lock.acquire()).await {
            drop(g);
        }
    }
    drop(lock);
    let settled = support::eventually_async(Duration::from_secs(10), || async {
        let list: String = srv.cmd(&["CLIENT", "LIST"]).await;
        let queued: u64 = srv.cmd(&["ZCARD", "cx portalocker-queue"]).await;
        srv.numsub("cx").await == 0
            && srv.numsub("cx portalocker-released").await == 0
            && queued == 0
            && list.lines().count() <= baseline_clients + 1
    })
    .await;
    let list: String = srv.cmd(&["CLIENT", "LIST"]).await;
    let queue: Vec<(String, f64)> = srv
        .cmd(&["ZRANGE", "cx portalocker-queue", "0", "-1", "WITHSCORES"])
        .await;
    let seen: Vec<(String, f64)> = srv
        .cmd(&["ZRANGE", "cx portalocker-seen", "0", "-1", "WITHSCORES"])
        .await;
    assert!(
        settled,
        "left behind: numsub {}, side-channel numsub {}, queue {queue:?}, \
         heartbeats {seen:?}, clients:\n{list}",
        srv.numsub("cx").await,
        srv.numsub("cx portalocker-released").await
    );
}
