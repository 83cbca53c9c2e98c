//! `EtcdLock` against a real 3-member etcd cluster on loopback.
#![cfg(all(feature = "etcd", unix))]

mod support;

use std::time::Duration;

use portalocker::etcd_client::{GetOptions, LeaseClient};
use portalocker::{ErrorKind, EtcdLock, HeldLock, LockFlags};
use support::etcd::EtcdCluster;
use support::Proc;

support::child_entry!();

/// The keys under `name/`, in etcd.
async fn keys(cluster: &EtcdCluster, name: &str) -> Vec<String> {
    let mut c = cluster.client().await;
    let r = c
        .get(
            format!("{name}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn lease_count(cluster: &EtcdCluster) -> usize {
    let c = cluster.client().await;
    let mut l: LeaseClient = c.lease_client();
    l.leases().await.unwrap().leases().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_acquire_puts_one_key_and_release_removes_it_and_its_lease() {
    let cluster = EtcdCluster::start(3).await;
    let lock = EtcdLock::new("jobs", cluster.client().await);
    let g = lock.acquire().await.unwrap();
    assert_eq!(keys(&cluster, "jobs").await, vec![g.key().to_string()]);
    assert!(g.key().starts_with("jobs/"));
    assert!(g.fence_token() > 0);
    assert!(!g.is_lost());
    g.ensure_held().unwrap();
    assert_eq!(HeldLock::fence_token(&g), Some(g.fence_token()));
    let holders = lock.holders().await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].holder_id.as_deref(), Some(g.holder_id()));
    assert_eq!(holders[0].pid, Some(std::process::id()));
    assert_eq!(holders[0].revision, g.fence_token());
    g.release().await.unwrap();
    assert!(keys(&cluster, "jobs").await.is_empty());
    assert_eq!(lease_count(&cluster).await, 0);
}

/// Waits until `name` has `n` keys (a contender's key is in place).
async fn wait_keys(cluster: &EtcdCluster, name: &str, n: usize) {
    for _ in 0..2000 {
        if keys(cluster, name).await.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{name} never had {n} keys: {:?}", keys(cluster, name).await);
}

/// Waits until etcd lists `n` leases (revokes run on tasks of their own).
async fn wait_leases(cluster: &EtcdCluster, n: usize) {
    for _ in 0..2000 {
        if lease_count(cluster).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("etcd never had {n} leases: {}", lease_count(cluster).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_writers_are_served_in_arrival_order_with_growing_tokens() {
    let cluster = EtcdCluster::start(3).await;
    let lock = EtcdLock::new("order", cluster.client().await).timeout(Duration::from_secs(60));
    let first = lock.acquire().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (lock, tx) = (lock.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let g = lock.acquire().await.unwrap();
            tx.send((i, g.fence_token())).unwrap();
            // Held until the test says.
            g
        }));
        // The next one comes after this one's key exists.
        wait_keys(&cluster, "order", i + 2).await;
    }
    let mut last = first.fence_token();
    first.release().await.unwrap();
    for (want, task) in tasks.into_iter().enumerate() {
        let (i, token) = rx.recv().await.unwrap();
        assert_eq!(i, want, "served out of arrival order");
        assert!(token > last, "token {token} after {last}");
        last = token;
        task.await.unwrap().release().await.unwrap();
    }
    assert!(keys(&cluster, "order").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_lock_names_its_holder_and_a_failed_try_leaves_nothing() {
    let cluster = EtcdCluster::start(3).await;
    let lock = EtcdLock::new("busy", cluster.client().await);
    let g = lock.acquire().await.unwrap();
    let e = lock.try_acquire().await.unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    assert_eq!(e.holder_id(), Some(g.holder_id()));
    assert_eq!(e.lock_name(), Some("busy"));
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    // With a timeout: the same error at the deadline.
    support::busy(lock.acquire_timeout(support::ms(300))).await;
    // The failed attempts' leases were revoked: only the holder's is left.
    wait_leases(&cluster, 1).await;
    assert_eq!(keys(&cluster, "busy").await, vec![g.key().to_string()]);
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_a_waiting_writer_keeps_later_readers_out() {
    let cluster = EtcdCluster::start(3).await;
    let client = cluster.client().await;
    let reader = EtcdLock::new("rw", client.clone())
        .flags(LockFlags::SHARED)
        .timeout(Duration::from_secs(60));
    let writer = EtcdLock::new("rw", client).timeout(Duration::from_secs(60));
    let r1 = reader.acquire().await.unwrap();
    let r2 = reader.acquire().await.unwrap();
    assert!(r1.is_shared() && r2.is_shared());
    assert!(r2.key().starts_with("rw/read/"));
    let w = tokio::spawn({
        let writer = writer.clone();
        async move { writer.acquire().await.unwrap() }
    });
    wait_keys(&cluster, "rw", 3).await;
    // A reader after the waiting writer waits too (no writer starvation).
    assert!(reader.try_acquire().await.unwrap_err().is_already_locked());
    let late = tokio::spawn({
        let reader = reader.clone();
        async move { reader.acquire().await.unwrap() }
    });
    wait_keys(&cluster, "rw", 4).await;
    r1.release().await.unwrap();
    assert!(!w.is_finished() && !late.is_finished());
    r2.release().await.unwrap();
    let w = w.await.unwrap();
    assert!(!w.is_shared());
    assert!(!late.is_finished(), "a reader shared with the writer");
    let wt = w.fence_token();
    w.release().await.unwrap();
    let late = late.await.unwrap();
    assert!(late.fence_token() > wt);
    late.release().await.unwrap();
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_before_any_request() {
    // No server: an InvalidInput error proves nothing was sent.
    let client = portalocker::etcd_client::Client::connect(["127.0.0.1:1"], None)
        .await
        .unwrap();
    let cases = [
        EtcdLock::new("", client.clone()),
        EtcdLock::new("x", client.clone()).flags(LockFlags::SHARED | LockFlags::EXCLUSIVE),
        EtcdLock::new("x", client.clone()).lease_ttl(Duration::ZERO),
        EtcdLock::new("x", client.clone()).lease_ttl(Duration::MAX),
    ];
    for lock in cases {
        let e = lock.try_acquire().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{lock:?}: {e}");
    }
    // An unreachable cluster: an etcd error at the deadline, not a hang,
    // whatever the pause between retries.
    for pause in [Duration::ZERO, Duration::MAX] {
        support::fails_with(
            ErrorKind::Etcd,
            EtcdLock::new("x", client.clone())
                .check_interval(pause)
                .acquire_timeout(support::ms(200)),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_by_someone_else_makes_the_holder_lost() {
    let cluster = EtcdCluster::start(3).await;
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = lost.clone();
    let g = EtcdLock::new("del", cluster.client().await)
        .on_lost(move |e| {
            assert!(e.is_lock_lost());
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .acquire()
        .await
        .unwrap();
    let mut rx = g.watch_lost();
    cluster.client().await.delete(g.key(), None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| *l))
        .await
        .expect("the deletion was not noticed")
        .unwrap();
    assert!(g.is_lost());
    assert!(lost.load(std::sync::atomic::Ordering::SeqCst));
    let e = g.ensure_held().unwrap_err();
    assert!(e.is_lock_lost() && e.to_string().contains("deleted"), "{e}");
    assert!(g.run_while_held(async {}).await.unwrap_err().is_lock_lost());
    assert!(g.release().await.unwrap_err().is_lock_lost());
}

/// Acquisitions cancelled at random points (before the lease, between the
/// lease and the key, while waiting) leave no key and no lease behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquisitions_leave_no_key_and_no_lease() {
    let cluster = EtcdCluster::start(3).await;
    let client = cluster.client().await;
    let lock = EtcdLock::new("cancel", client).timeout(Duration::from_secs(60));
    let holder = lock.acquire().await.unwrap();
    let n: u64 = std::env::var("PORTALOCKER_ETCD_CANCELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut granted = 0;
    for i in 0..n {
        // Up to 3 ms: about the time of a grant plus a transaction here.
        let delay = Duration::from_micros(portalocker_test_rand(i) % 3000);
        let contended = i % 2 == 0;
        let attempt = async {
            if contended {
                lock.acquire().await
            } else {
                EtcdLock::new("cancel-free", cluster.client().await)
                    .acquire()
                    .await
            }
        };
        if let Ok(Ok(g)) = tokio::time::timeout(delay, attempt).await {
            granted += 1;
            drop(g);
        }
    }
    // Only the holder's lease and key stay, once the revokes ran.
    wait_leases(&cluster, 1).await;
    assert_eq!(
        keys(&cluster, "cancel").await,
        vec![holder.key().to_string()]
    );
    assert!(keys(&cluster, "cancel-free").await.is_empty());
    eprintln!("{n} cancellations, {granted} completed before their cancellation");
    holder.release().await.unwrap();
    wait_leases(&cluster, 0).await;
}

/// A small deterministic spread of numbers (splitmix64).
fn portalocker_test_rand(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A holder SIGSTOPped past its lease TTL: another contender is granted
/// with a larger token, and the stopped one, resumed, reports the loss on
/// its first look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_past_its_ttl_is_replaced_and_learns_it_lost() {
    let cluster = EtcdCluster::start(3).await;
    let mut child = Proc::role(
        "child_entry",
        "etcd-hold",
        &[&cluster.endpoint_list(), "paused", "2"],
    );
    let token: u64 = child.expect("GOT").parse().unwrap();
    support::kill("-STOP", child.pid());
    let g = EtcdLock::new("paused", cluster.client().await)
        .timeout(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    assert!(g.fence_token() > token);
    support::kill("-CONT", child.pid());
    child.send("check");
    assert_eq!(child.expect("LOST"), "true");
    child.close_stdin();
    child.finish();
    g.release().await.unwrap();
}

/// A quorum loss (2 of 3 members stopped): the holder reports the loss
/// within its TTL, and an acquisition fails with an etcd error at its
/// deadline; nothing is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_loss_makes_holders_lost_and_grants_nothing() {
    let cluster = EtcdCluster::start(3).await;
    // Clients of the member that stays up only, so that requests go to it.
    let survivor = 0;
    let client = portalocker::etcd_client::Client::connect([cluster.endpoint(survivor)], None)
        .await
        .unwrap();
    let g = EtcdLock::new("quorum", client.clone())
        .lease_ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    for i in 1..3 {
        support::kill("-STOP", cluster.pid(i));
    }
    tokio::time::timeout(Duration::from_secs(30), g.lost())
        .await
        .expect("the holder never learned of the loss");
    let e = g.ensure_held().unwrap_err();
    assert!(e.is_lock_lost(), "{e}");
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        EtcdLock::new("quorum", client)
            .lease_ttl(Duration::from_secs(3))
            .acquire_timeout(Duration::from_secs(3)),
    )
    .await
    .expect("the acquisition outlived its deadline by far");
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Etcd, "{e}");
    for i in 1..3 {
        support::kill("-CONT", cluster.pid(i));
    }
    drop(g);
}

/// Four processes loop acquire/release while the leader, then a follower,
/// is SIGKILLed (each restarted before the next kill): no two recorded
/// critical sections overlap, tokens only grow, no acquire fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_holds_through_leader_and_follower_kills() {
    let mut cluster = EtcdCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let eps = cluster.endpoint_list();
    let procs = support::start_fleet(
        dir.path(),
        "etcd-fleet",
        4,
        Duration::from_secs(16),
        |_, out| vec![eps.clone(), "fleet".into(), out.into(), "3".into()],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader().await;
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(leader).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(follower).await;
    let (workers, all) = support::finish_fleet(procs);
    for w in &workers {
        assert!(w.failed.is_empty(), "{}: {:?}", w.who, w.failed);
        assert!(!w.sections.is_empty(), "{} was never served", w.who);
    }
    eprintln!("{} grants through two member kills", all.len());
}

/// `etcdctl lock <name>` (etcd's `concurrency.Mutex`) and a writer of this
/// crate exclude each other, both ways: same key layout, same rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_etcdctl_lock_exclude_each_other() {
    use std::io::BufRead;
    let cluster = EtcdCluster::start(3).await;
    let etcdctl = std::env::var("PORTALOCKER_ETCDCTL").unwrap_or_else(|_| "etcdctl".into());
    let spawn = || {
        let mut child = std::process::Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.endpoint_list()))
            .args(["lock", "ctl"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcdctl (Debian's etcd-client) is needed");
        let out = child.stdout.take().unwrap();
        // The key line etcdctl prints once it holds the lock.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line.trim().to_string());
        });
        (child, rx)
    };
    let lock = EtcdLock::new("ctl", cluster.client().await).timeout(Duration::from_secs(60));
    // etcdctl first: this crate's writer waits until it is gone.
    let (mut ctl, held) = spawn();
    let key = held.recv().unwrap();
    assert!(key.starts_with("ctl/"), "{key}");
    let e = lock.try_acquire().await.unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    support::kill("-TERM", ctl.id());
    ctl.wait().unwrap();
    let g = lock.acquire().await.unwrap();
    // This crate first: etcdctl queues behind it and holds only after.
    let (mut ctl, held) = spawn();
    wait_keys(&cluster, "ctl", 2).await;
    assert!(
        held.try_recv().is_err(),
        "etcdctl holds the lock beside this crate's writer"
    );
    let token = g.fence_token();
    g.release().await.unwrap();
    let key = held.recv().unwrap();
    let mut c = cluster.client().await;
    let kv = c.get(key.as_str(), None).await.unwrap();
    assert!(kv.kvs()[0].create_revision() as u64 > token);
    support::kill("-TERM", ctl.id());
    ctl.wait().unwrap();
}

/// Every `Duration` setter with `ZERO`, a small value and `MAX`, against
/// a holder (busy) and on a free lock: a typed answer, never a panic or a
/// hang. `lease_ttl` below 1 s rounds up; `ZERO` and `MAX` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_from_zero_to_max_is_handled() {
    let cluster = EtcdCluster::start(3).await;
    let client = cluster.client().await;
    let base = EtcdLock::new("durations", client);
    for d in [Duration::ZERO, Duration::from_millis(30), Duration::MAX] {
        // Free: every timeout and retry pause gets the lock.
        let g = base
            .clone()
            .timeout(d)
            .check_interval(d)
            .acquire()
            .await
            .unwrap_or_else(|e| panic!("{d:?}: {e}"));
        // Busy: a zero or small timeout fails at once or at its deadline.
        if d != Duration::MAX {
            support::busy(base.clone().timeout(d).check_interval(d).acquire()).await;
        }
        g.release().await.unwrap();
    }
    // A MAX timeout waits until the holder releases.
    let g = base.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let l = base
            .clone()
            .timeout(Duration::MAX)
            .check_interval(Duration::MAX);
        async move { l.acquire().await }
    });
    wait_keys(&cluster, "durations", 2).await;
    g.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
    let g = base
        .clone()
        .lease_ttl(Duration::from_millis(1))
        .acquire()
        .await
        .unwrap();
    assert!(!g.is_lost());
    g.release().await.unwrap();
    for ttl in [Duration::ZERO, Duration::MAX] {
        let e = base.clone().lease_ttl(ttl).acquire().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{ttl:?}: {e}");
    }
}

/// `release()` dropped before it is polled, and dropped mid-flight, still
/// frees the lock: the revoke runs on a task of its own (the guard's drop
/// for the unpolled one), so another contender gets the lock and no lease
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_release_still_frees_the_lock() {
    let cluster = EtcdCluster::start(3).await;
    let lock = EtcdLock::new("rel", cluster.client().await).timeout(Duration::from_secs(30));
    // Never polled.
    let g = lock.acquire().await.unwrap();
    drop(g.release());
    wait_leases(&cluster, 0).await;
    assert!(keys(&cluster, "rel").await.is_empty());
    // Polled once, then dropped.
    let g = lock.acquire().await.unwrap();
    let mut release = Box::pin(g.release());
    assert!(futures_poll_once(release.as_mut()).await.is_none());
    drop(release);
    wait_leases(&cluster, 0).await;
    lock.acquire().await.unwrap().release().await.unwrap();
}

/// Polls `fut` once: its output if it was ready at once.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut fut: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
