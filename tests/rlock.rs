//! `RLock`: counting per owner, contention between owners.
mod support;

use support::ms;

use std::time::Duration;

use portalocker::RLock;

support::child_entry!();

#[tokio::test]
async fn nested_acquisitions_count_and_unlock_at_the_last() {
    let (_d, path) = support::temp_path("r.lock");
    let r = RLock::new(&path);
    let mut guards = Vec::new();
    for k in 1..=50 {
        guards.push(r.acquire().await.unwrap());
        assert_eq!(r.count(), k);
    }
    let probe = RLock::new(&path).fail_when_locked(true);
    while guards.len() > 1 {
        drop(guards.pop());
        assert!(probe.acquire().await.unwrap_err().is_already_locked());
    }
    guards.pop().unwrap().release().await.unwrap();
    assert_eq!(r.count(), 0);
    drop(probe.acquire().await.unwrap());
}

#[tokio::test]
async fn clones_share_one_count() {
    let d = tempfile::tempdir().unwrap();
    let r = RLock::new(d.path().join("r.lock"));
    let c = r.clone();
    let g1 = r.acquire().await.unwrap();
    let g2 = c.acquire().await.unwrap();
    assert_eq!(r.count(), 2);
    assert_eq!(c.count(), 2);
    drop(g1);
    assert_eq!(c.count(), 1);
    g2.release().await.unwrap();
    assert_eq!(r.count(), 0);
}

#[tokio::test]
async fn a_second_rlock_on_the_same_path_contends() {
    let (_d, path) = support::temp_path("r.lock");
    let a = RLock::new(&path);
    let _g = a.acquire().await.unwrap();
    let other = RLock::new(&path).timeout(ms(50)).check_interval(ms(10));
    support::busy(other.acquire()).await;
    // Also from another process.
    let mut child = support::Proc::role("child_entry", "try", &[path.to_str().unwrap()]);
    assert_eq!(child.expect("RESULT"), "AlreadyLocked None");
    child.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guards_move_between_tasks_and_threads() {
    let (_d, path) = support::temp_path("r.lock");
    let r = RLock::new(&path);
    let outer = r.acquire().await.unwrap();
    let r2 = r.clone();
    let inner = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        r2.acquire().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(r.count(), 2);
    let handle = tokio::spawn(async move { outer.release().await });
    handle.await.unwrap().unwrap();
    support::busy(RLock::new(&path).fail_when_locked(true).acquire()).await;
    drop(inner);
    drop(
        RLock::new(&path)
            .fail_when_locked(true)
            .acquire()
            .await
            .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_acquisitions_take_the_file_lock_once() {
    let d = tempfile::tempdir().unwrap();
    let r = RLock::new(d.path().join("r.lock"));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.acquire().await })
        })
        .collect();
    let mut guards = Vec::new();
    for t in tasks {
        guards.push(t.await.unwrap().unwrap());
    }
    assert_eq!(r.count(), 16);
    drop(guards);
    assert_eq!(r.count(), 0);
}

#[tokio::test]
async fn cancelled_first_acquire_leaves_the_count_at_zero() {
    let (_d, path) = support::temp_path("r.lock");
    let holder = portalocker::Lock::new(&path).acquire().await.unwrap();
    let r = RLock::new(&path).check_interval(Duration::from_millis(5));
    let res = tokio::time::timeout(Duration::from_millis(30), r.acquire()).await;
    assert!(res.is_err(), "acquired a held lock");
    assert_eq!(r.count(), 0);
    drop(holder);
    let g = r.acquire().await.unwrap();
    assert_eq!(r.count(), 1);
    drop(g);
}

/// Concurrent first acquirers of one owner share its deadline: each fails
/// at about the timeout, not one timeout after the other (the owner's
/// internal queue counts against the timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_acquirers_each_honour_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.lock");
    let mut holder = support::Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    holder.expect("LOCKED");
    let timeout = Duration::from_millis(300);
    let rlock = RLock::new(&path).timeout(timeout);
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let r = rlock.clone();
            tokio::spawn(async move { (r.acquire().await.map(drop), std::time::Instant::now()) })
        })
        .collect();
    for t in tasks {
        let (r, end) = t.await.unwrap();
        let err = r.unwrap_err();
        assert!(err.is_already_locked(), "{err}");
        // Serialised, the 8th would fail after 8 × 300 ms; a generous
        // bound for a busy machine still tells the two apart.
        let took = end - start;
        assert!(took < timeout * 4, "a first acquirer failed after {took:?}");
    }
    assert_eq!(rlock.count(), 0);
    holder.finish();
}
