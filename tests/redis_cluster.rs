//! `RedisClusterLock` against a real Redis Cluster on loopback: three
//! primaries with a replica each, started by the test.
#![cfg(all(feature = "redis-cluster", unix))]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portalocker::{ErrorKind, HeldLock, RedisClusterLock};
use support::cluster::{cli, RedisCluster};

support::child_entry!();

fn owner_key(name: &str) -> String {
    format!("portalocker:{{{name}}}:owner")
}

/// Four processes, each seeded with a different node, loop acquire / 2 ms
/// / release for 20 s while the slot of the lock is failed over
/// (`CLUSTER FAILOVER`), migrated to another primary, and its primary is
/// SIGKILLed: no two recorded critical sections overlap, tokens only grow,
/// no acquire fails, every process is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_holds_through_failover_migration_and_a_primary_kill() {
    let mut cluster = RedisCluster::started().await;
    let dir = tempfile::tempdir().unwrap();
    let key = owner_key("fleet");
    let procs = support::start_fleet(
        dir.path(),
        "cluster-fleet",
        4,
        Duration::from_secs(20),
        |i, out| {
            let seed = cluster.nodes[i].url();
            vec![seed, "fleet".into(), out.into(), "2000".into()]
        },
    );
    // The faults are scheduled by time; the verdict does not depend on it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primary = cluster.primary_of(&key);
    let replica = cluster.replica_of(primary);
    tokio::task::block_in_place(|| cluster.failover(replica));
    eprintln!("failed over {primary} -> {replica}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = cluster.primary_of(&key);
    let to = cluster
        .ports()
        .into_iter()
        .find(|p| *p != from && cli(*p, &["ROLE"]).starts_with("master"))
        .unwrap();
    tokio::task::block_in_place(|| cluster.migrate_slot_of(&key, to));
    eprintln!("migrated the slot {from} -> {to}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let doomed = cluster.primary_of(&key);
    cluster.kill(doomed);
    tokio::task::block_in_place(|| cluster.wait_promoted_after(&key, doomed));
    eprintln!("killed {doomed}; now {}", cluster.primary_of(&key));
    let (workers, all) = support::finish_fleet(procs);
    for w in &workers {
        let refused: Vec<_> = w.failed.iter().filter(|l| !l.contains("lost:")).collect();
        assert!(refused.is_empty(), "{}: {refused:?}", w.who);
        assert!(!w.sections.is_empty(), "{} was never served", w.who);
    }
    let lost: usize = workers.iter().map(|w| w.failed.len()).sum();
    eprintln!(
        "{} grants, {lost} holders told of a loss, through a failover, a migration and a kill",
        all.len()
    );
}

/// A busy lock names its holder; `try_acquire` and a timed-out acquire
/// leave no record of theirs, and neither does an acquisition dropped
/// while it waits; a release deletes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_names_the_holder_and_leaves_nothing_behind() {
    let cluster = RedisCluster::started().await;
    let key = owner_key("busy");
    let a = RedisClusterLock::new("busy", cluster.client_via(0));
    let b =
        RedisClusterLock::new("busy", cluster.client_via(4)).timeout(Duration::from_millis(300));
    let g = a.acquire().await.unwrap();
    let e = b.try_acquire().await.unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    assert!(e.to_string().contains(g.holder_id()), "{e}");
    let e = b.acquire().await.unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    {
        let fut = b.acquire();
        let _ = tokio::time::timeout(Duration::from_millis(50), fut).await;
    }
    let primary = cluster.primary_of(&key);
    let record = cli(primary, &["GET", &key]);
    assert!(record.starts_with(g.holder_id()), "{record}");
    let first = g.fence_token();
    g.release().await.unwrap();
    assert_eq!(cli(primary, &["EXISTS", &key]), "0");
    let g = b.acquire().await.unwrap();
    assert!(g.fence_token() > first);
    drop(g);
    // The drop deletes on a task of its own.
    let gone = support::eventually(Duration::from_secs(10), || {
        cli(primary, &["EXISTS", &key]) == "0"
    })
    .await;
    assert!(gone, "a dropped guard left its record");
}

/// A record deleted by someone else makes the holder lost at its next
/// renewal: `lost()` resolves, the `on_lost` callback has run, and
/// `release` reports the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_makes_the_holder_lost() {
    let cluster = RedisCluster::started().await;
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let lock = RedisClusterLock::new("gone", cluster.client_via(1))
        .lease_ttl(Duration::from_millis(900))
        .on_lost(move |_| flag.store(true, Ordering::SeqCst));
    let g = lock.acquire().await.unwrap();
    assert!(!g.is_lost());
    let key = owner_key("gone");
    assert_eq!(cli(cluster.primary_of(&key), &["DEL", &key]), "1");
    tokio::time::timeout(Duration::from_secs(10), g.lost())
        .await
        .expect("the loss was not noticed");
    assert!(called.load(Ordering::SeqCst));
    assert!(HeldLock::ensure_held(&g).unwrap_err().is_lock_lost());
    assert_eq!(g.release().await.unwrap_err().kind(), ErrorKind::LockLost);
}

/// A holder whose renewals the replicas cannot confirm (its primary's
/// replica is stopped: a partition of the kind a minority side sees)
/// counts itself lost before its record would expire on the server: the
/// record is still there, with time left, when the holder gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_without_confirmed_renewals_gives_up_before_its_record_expires() {
    let cluster = RedisCluster::started().await;
    let key = owner_key("cut");
    let lock =
        RedisClusterLock::new("cut", cluster.client_via(2)).lease_ttl(Duration::from_millis(3000));
    let g = lock.acquire().await.unwrap();
    let primary = cluster.primary_of(&key);
    let replica = cluster.replica_of(primary);
    let replica_pid = cluster.pid_of(replica);
    support::kill("-STOP", replica_pid);
    let r = tokio::time::timeout(Duration::from_secs(20), g.lost()).await;
    let left: i64 = cli(primary, &["PTTL", &key]).parse().unwrap();
    support::kill("-CONT", replica_pid);
    r.expect("the holder did not give up");
    assert!(
        left > 0,
        "the record had expired ({left}) before the holder counted itself lost"
    );
    let why = g.ensure_held().unwrap_err().to_string();
    assert!(why.contains("renew"), "{why}");
}

/// A grant that vanishes while its replication is awaited (what a
/// failover does to a grant its replica never saw) is asked for again
/// while time is left, not reported as an error: with the replica
/// stopped, the test deletes the pending record; the acquisition makes a
/// new grant (a new token), and succeeds with it once the replica runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lost_before_its_replicas_had_it_is_asked_for_again() {
    let cluster = RedisCluster::started().await;
    let key = owner_key("vanish");
    let fence = "portalocker:{vanish}:fence";
    let primary = cluster.primary_of(&key);
    let replica = cluster.replica_of(primary);
    let replica_pid = cluster.pid_of(replica);
    let lock =
        RedisClusterLock::new("vanish", cluster.client_via(1)).timeout(Duration::from_secs(120));
    support::kill("-STOP", replica_pid);
    let pending = tokio::spawn(async move { lock.acquire().await });
    // The acquisition cannot finish while the replica is stopped: the
    // record it wrote stays unconfirmed until the test lets it run.
    let granted = support::eventually(Duration::from_secs(30), || {
        cli(primary, &["EXISTS", &key]) == "1"
    })
    .await;
    assert!(granted, "no grant was made");
    let first: u64 = cli(primary, &["GET", fence]).parse().unwrap();
    assert_eq!(cli(primary, &["DEL", &key]), "1");
    let again = support::eventually(Duration::from_secs(30), || {
        cli(primary, &["EXISTS", &key]) == "1"
    })
    .await;
    support::kill("-CONT", replica_pid);
    if !again {
        let r = pending.await.unwrap();
        panic!(
            "the acquisition did not ask again: {:?}",
            r.map(|g| g.fence_token())
        );
    }
    let g = pending.await.unwrap().expect("the acquisition failed");
    assert!(g.fence_token() > first, "{} <= {first}", g.fence_token());
    assert!(cli(primary, &["GET", &key]).starts_with(g.holder_id()));
    g.release().await.unwrap();
}

/// Under an ACL (set on every node: a cluster does not share them): a
/// user with exactly the `ACL SETUSER` line of docs/redis-permissions.md
/// (read from the file) locks,
/// renews (the record's TTL is seen extended) and releases; a user
/// without `WAIT`, or without `SET` (refused inside the grant's script),
/// gets an error at once that says what the lock needs, and a grant made
/// is withdrawn. (Before, a command refused inside a script was retried
/// until the timeout: forever by default.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_suffices_and_a_refusal_is_an_error_at_once() {
    let cluster = RedisCluster::started().await;
    // The line the docs give, word for word (its password is "secret").
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/redis-permissions.md"),
    )
    .unwrap();
    let line = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER locker ") && l.contains("~portalocker:*"))
        .expect("docs/redis-permissions.md has the cluster lock's ACL line");
    let needs: Vec<&str> = line.split_whitespace().skip(3).collect();
    for p in cluster.ports() {
        let user = [&["ACL", "SETUSER", "locker"][..], &needs].concat();
        assert_eq!(cli(p, &user), "OK");
        for (name, without) in [("nowait", "-wait"), ("noset", "-set")] {
            let user = [&["ACL", "SETUSER", name][..], &needs, &[without]].concat();
            assert_eq!(cli(p, &user), "OK");
        }
    }
    let client = |user: &str| {
        let url = format!("redis://{user}:secret@127.0.0.1:{}/", cluster.nodes[0].port);
        portalocker::redis::cluster::ClusterClient::new(vec![url]).unwrap()
    };
    let key = owner_key("acl");
    let lock = RedisClusterLock::new("acl", client("locker")).lease_ttl(Duration::from_secs(2));
    let g = lock.acquire().await.unwrap();
    let primary = cluster.primary_of(&key);
    let pttl = || cli(primary, &["PTTL", &key]).parse::<i64>().unwrap();
    let mut last = pttl();
    let renewed = support::eventually(Duration::from_secs(20), || {
        let now = pttl();
        let up = now > last + 100;
        last = now;
        up
    })
    .await;
    assert!(renewed, "the record was not renewed");
    assert!(!g.is_lost());
    g.release().await.unwrap();
    assert_eq!(cli(primary, &["EXISTS", &key]), "0");

    // `WAIT` refused: the server names it. `SET` refused inside the
    // grant's script: the server names the script only, so the hint says
    // what the lock needs.
    for (user, named) in [("nowait", "'wait'"), ("noset", "+set")] {
        let t = std::time::Instant::now();
        let e = RedisClusterLock::new("acl", client(user))
            .timeout(Duration::from_secs(30))
            .acquire()
            .await
            .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{user}: took {:?}",
            t.elapsed()
        );
        let msg = e.to_string();
        assert!(
            msg.contains(named) && msg.contains("an ACL refused it"),
            "{user}: {msg}"
        );
        // The hint lists what the documented line allows.
        for allowed in needs
            .iter()
            .filter(|w| w.starts_with('+') || w.starts_with('~'))
        {
            assert!(
                msg.contains(allowed),
                "{user}: the hint lacks {allowed}: {msg}"
            );
        }
    }
    let withdrawn = support::eventually(Duration::from_secs(10), || {
        cli(primary, &["EXISTS", &key]) == "0"
    })
    .await;
    assert!(withdrawn, "the refused grant's record stayed");
}

/// Bad names and TTLs are typed errors before anything connects.
#[tokio::test]
async fn bad_input_is_refused_before_connecting() {
    // No server listens here: validation comes first.
    let client =
        portalocker::redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:1/"]).unwrap();
    for name in ["", "a b", "x{y}", "{"] {
        support::fails_with(
            ErrorKind::InvalidInput,
            RedisClusterLock::new(name, client.clone()).acquire(),
        )
        .await;
    }
    support::fails_with(
        ErrorKind::InvalidInput,
        RedisClusterLock::new("ok", client)
            .lease_ttl(support::ms(10))
            .acquire(),
    )
    .await;
}

/// `release()` is cancel safe: dropped unpolled or after one poll, the
/// record still goes (the deletion runs on a task of its own), and the
/// next contender gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_release_still_deletes_the_record() {
    let cluster = RedisCluster::started().await;
    let key = owner_key("rel");
    let lock = RedisClusterLock::new("rel", cluster.client_via(3));
    for poll in [false, true] {
        let g = lock.acquire().await.unwrap();
        {
            let mut fut = std::pin::pin!(g.release());
            if poll {
                let _ = futures_util::poll!(fut.as_mut());
            }
        }
        let primary = cluster.primary_of(&key);
        let gone = support::eventually(Duration::from_secs(10), || {
            cli(primary, &["EXISTS", &key]) == "0"
        })
        .await;
        assert!(gone, "poll {poll}: the record stayed");
        drop(lock.try_acquire().await.unwrap());
    }
}
