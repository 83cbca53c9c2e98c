//! Real contention between processes: the test binary re-executes itself
//! in a child role and the two sides talk through pipes.
mod support;

use std::time::{Duration, Instant};

use portalocker::Lock;
use support::{ms, Proc};

support::child_entry!();

#[tokio::test]
async fn a_lock_held_by_a_child_is_already_locked_here() {
    let (_d, path) = support::temp_path("p.lock");
    let mut child = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
    child.expect("LOCKED");
    let err = Lock::new(&path).try_acquire().await.unwrap_err();
    assert!(err.is_already_locked(), "{err}");
    let waiting = Lock::new(&path).timeout(ms(100)).check_interval(ms(10));
    support::busy(waiting.acquire()).await;
    child.close_stdin();
    child.expect("RELEASED");
    child.finish();
    drop(Lock::new(&path).try_acquire().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_frees_the_lock_within_one_check_interval() {
    let (_d, path) = support::temp_path("k.lock");
    let interval = portalocker::DEFAULT_CHECK_INTERVAL;
    for _ in 0..3 {
        let mut child = Proc::role("child_entry", "hold", &[path.to_str().unwrap()]);
        child.expect("LOCKED");
        let lock = Lock::new(&path).timeout(Duration::from_secs(30));
        let waiter = support::spawn_started(async move { lock.acquire().await }).await;
        let killed = Instant::now();
        child.kill();
        let (g, at) = waiter.await.unwrap();
        drop(g.unwrap());
        let took = at.saturating_duration_since(killed);
        assert!(
            took <= interval + Duration::from_millis(100),
            "took {took:?} after the holder died"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_count_exactly() {
    let d = tempfile::tempdir().unwrap();
    let lock = d.path().join("count.lock");
    let counter = d.path().join("counter");
    let (l, c) = (lock.to_str().unwrap(), counter.to_str().unwrap());
    let children: Vec<_> = (0..4)
        .map(|_| Proc::role("child_entry", "counter", &[l, c, "500"]))
        .collect();
    for mut child in children {
        assert_eq!(child.expect("DONE"), "500");
        child.finish();
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "2000");
}

// Unix only: it reads another process's descriptors in /proc.
#[cfg(unix)]
#[tokio::test]
async fn an_exec_child_of_the_holder_does_not_inherit_the_lock() {
    let (_d, path) = support::temp_path("cloexec.lock");
    let mut holder = Proc::role("child_entry", "hold-spawn", &[path.to_str().unwrap()]);
    let sleeper: u32 = holder.expect("LOCKED").parse().unwrap();
    // The grandchild (`sleep 60`) has no descriptor of the lock file...
    let fds = std::fs::read_dir(format!("/proc/{sleeper}/fd")).unwrap();
    for fd in fds {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, path, "the lock file leaked into an exec'd child");
    }
    // ...so killing the holder frees the lock although `sleep` lives on.
    holder.kill();
    let g = Lock::new(&path)
        .timeout(Duration::from_secs(10))
        .check_interval(Duration::from_millis(10))
        .acquire()
        .await;
    let _ = std::process::Command::new("kill")
        .args(["-9", &sleeper.to_string()])
        .status();
    drop(g.unwrap());
}
