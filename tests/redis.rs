//! `RedisLock` against real `redis-server`s started per test.
//!
//! Unix only: the Redis server comes from Debian on the Linux CI host.
#![cfg(all(feature = "redis", unix))]
mod support;

use std::time::{Duration, Instant};

use portalocker::{ErrorKind, LockFlags, RedisLock};
use support::{ms, Proc, RedisServer};

support::child_entry!();

#[tokio::test]
async fn uncontended_acquire_names_the_connection_and_release_frees() {
    let srv = RedisServer::start();
    let lock = RedisLock::new("jobs", srv.client());
    let called = std::time::Instant::now();
    let g = lock.acquire().await.unwrap();
    // Connecting and confirming take time; never more than the call took.
    assert!(g.waited() > Duration::ZERO && g.waited() <= called.elapsed());
    let id = g.holder_id().to_string();
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(g.channel(), "jobs");
    assert_eq!(srv.numsub_settled("jobs", 1).await, 1);
    assert_eq!(srv.lock_clients("jobs").await, [format!("jobs-lock-{id}")]);
    assert!(!g.is_lost());
    g.ensure_held().unwrap();
    assert_eq!(g.fence_token(), None);
    g.release().await.unwrap();
    let freed = support::eventually_async(Duration::from_secs(5), || async {
        srv.numsub("jobs").await == 0
    })
    .await;
    assert!(freed, "the subscriber stayed after release");
    // Drop releases too.
    let g = lock.acquire().await.unwrap();
    drop(g);
    let freed = support::eventually_async(Duration::from_secs(5), || async {
        srv.numsub("jobs").await == 0
    })
    .await;
    assert!(freed, "the subscriber stayed after drop");
}

#[tokio::test]
async fn contention_fails_fast_or_after_the_timeout() {
    let srv = RedisServer::start();
    let holder = RedisLock::new("c", srv.client()).acquire().await.unwrap();
    let t = Instant::now();
    let err = support::assert_busy(&RedisLock::new("c", srv.other_client())).await;
    assert_eq!(err.channel(), Some("c"));
    assert!(t.elapsed() < Duration::from_secs(3));
    // The error names the holder the probe found, and its address.
    assert_eq!(err.holder_id(), Some(holder.holder_id()), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("holder {} (client 127.0.0.1:", holder.holder_id())),
        "{msg}"
    );
    let t = Instant::now();
    let err = support::busy(
        RedisLock::new("c", srv.other_client())
            .timeout(support::ms(400))
            .check_interval(support::ms(50))
            .acquire(),
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(err.holder_id(), Some(holder.holder_id()), "{err}");
    assert!(err.to_string().contains("(waited 400 ms)"), "{err}");
    // Waiters left nothing on the channel.
    let settled = support::eventually_async(Duration::from_secs(5), || async {
        srv.numsub("c").await == 1
    })
    .await;
    assert!(settled);
    assert_eq!(srv.lock_clients("c").await.len(), 1);
    holder.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_exclude_each_other() {
    let srv = RedisServer::start();
    let client = srv.client();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let lock = RedisLock::new("count", client.clone())
                    .timeout(Duration::from_secs(60))
                    .check_interval(Duration::from_millis(10));
                let mut con = client.get_multiplexed_async_connection().await.unwrap();
                for _ in 0..15 {
                    let g = lock.acquire().await.unwrap();
                    support::redis_bump(&mut con, "counter").await;
                    g.release().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n: u64 = srv.cmd(&["GET", "counter"]).await;
    assert_eq!(n, 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_exclude_each_other_with_increasing_fence_tokens() {
    let srv = RedisServer::start();
    let url = srv.url();
    let procs: Vec<_> = (0..3)
        .map(|_| Proc::role("child_entry", "redis-counter", &[&url, "pc", "k", "20"]))
        .collect();
    for mut p in procs {
        assert_eq!(p.expect("DONE"), "20");
        p.finish();
    }
    let n: u64 = srv.cmd(&["GET", "k"]).await;
    assert_eq!(n, 60);
    let fence: u64 = srv.cmd(&["GET", "pc-fence"]).await;
    assert_eq!(fence, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_process_frees_the_lock() {
    let srv = RedisServer::start();
    let mut child = Proc::role("child_entry", "redis-hold", &[&srv.url(), "k"]);
    child.expect("LOCKED");
    let lock = RedisLock::new("k", srv.client()).timeout(Duration::from_secs(30));
    support::busy(lock.clone().fail_when_locked(true).acquire()).await;
    let waiter = support::spawn_started(async move { lock.acquire().await }).await;
    let killed = Instant::now();
    child.kill();
    let (g, at) = waiter.await.unwrap();
    let g = g.unwrap();
    let took = at - killed;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    g.release().await.unwrap();
}

#[tokio::test]
async fn client_kill_of_the_holder_is_noticed_and_the_lock_moves_on() {
    let srv = RedisServer::start();
    let g = RedisLock::new("kk", srv.client()).acquire().await.unwrap();
    let name = format!("kk-lock-{}", g.holder_id());
    let id = srv.client_id(&name).await;
    let t = Instant::now();
    let killed: i64 = srv.cmd(&["CLIENT", "KILL", "ID", &id]).await;
    assert_eq!(killed, 1);
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .expect("loss not noticed");
    let noticed = t.elapsed();
    assert!(
        noticed < Duration::from_millis(500),
        "noticed after {noticed:?}"
    );
    assert!(g.is_lost());
    let err = g.ensure_held().unwrap_err();
    assert!(err.is_lock_lost(), "{err}");
    assert_eq!(err.kind(), ErrorKind::LockLost);
    // Someone else can take it now.
    let other = RedisLock::new("kk", srv.client())
        .fail_when_locked(true)
        .acquire()
        .await
        .unwrap();
    let err = g.release().await.unwrap_err();
    assert!(err.is_lock_lost());
    other.release().await.unwrap();
}

#[tokio::test]
async fn a_killed_server_is_noticed_by_the_holder() {
    let mut srv = RedisServer::start();
    let g = RedisLock::new("s", srv.client()).acquire().await.unwrap();
    srv.kill();
    tokio::time::timeout(Duration::from_secs(10), g.lost())
        .await
        .expect("a dead server was not noticed");
    assert!(g.ensure_held().unwrap_err().is_lock_lost());
    // After a restart the lock can be taken again; the old guard stays lost.
    srv.restart();
    let again = RedisLock::new("s", srv.client()).acquire().await.unwrap();
    assert!(g.is_lost());
    drop(g);
    again.release().await.unwrap();
}

#[tokio::test]
async fn hostile_messages_never_crash_or_unlock_a_holder() {
    let srv = RedisServer::start();
    let g = RedisLock::new("h", srv.client()).acquire().await.unwrap();
    let huge = "x".repeat(1 << 20);
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    for payload in [
        "not json",
        "",
        "[]",
        "{}",
        r#"{"response_channel": 123}"#,
        r#"{"response_channel": ""}"#,
        r#"{"response_channel": ["a"]}"#,
        "1716112345.123",
        huge.as_str(),
        deep.as_str(),
        "\u{0}\u{1}\u{ffff}",
    ] {
        let _: i64 = srv.cmd(&["PUBLISH", "h", payload]).await;
    }
    // Still held and still answering probes: a contender sees it busy.
    srv.assert_held_then_release(g, "h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leave_no_subscriber_and_no_connection() {
    let srv = RedisServer::start();
    let holder = RedisLock::new("x", srv.client()).acquire().await.unwrap();
    let lock = RedisLock::new("x", srv.client()).check_interval(Duration::from_millis(5));
    for i in 0..100u64 {
        let budget = Duration::from_micros((i * 397) % 20_000);
        let _ = tokio::time::timeout(budget, lock.acquire()).await;
    }
    let settled = support::eventually_async(Duration::from_secs(10), || async {
        srv.numsub("x").await == 1 && srv.lock_clients("x").await.len() == 1
    })
    .await;
    assert!(
        settled,
        "left behind: numsub {}, clients {:?}",
        srv.numsub("x").await,
        srv.lock_clients("x").await
    );
    holder.release().await.unwrap();
    // And with the lock free, cancellation racing success leaves nothing.
    for i in 0..50u64 {
        let budget = Duration::from_micros((i * 211) % 3000);
        if let Ok(Ok(g)) = tokio::time::timeout(budget, lock.acquire()).await {
            drop(g);
        }
    }
    let settled = support::eventually_async(Duration::from_secs(10), || async {
        srv.numsub("x").await == 0 && srv.lock_clients("x").await.is_empty()
    })
    .await;
    assert!(settled, "left behind: {:?}", srv.lock_clients("x").await);
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let srv = RedisServer::start();
    let long = "c".repeat(portalocker::MAX_CHANNEL_LEN + 1);
    for channel in ["", "has space", "new\nline", "tab\t", long.as_str()] {
        support::fails_with(
            ErrorKind::InvalidInput,
            RedisLock::new(channel, srv.client()).acquire(),
        )
        .await;
    }
    for flags in [
        LockFlags::SHARED | LockFlags::EXCLUSIVE,
        LockFlags::NON_BLOCKING,
        LockFlags::UNBLOCK,
    ] {
        let err = support::fails_with(
            ErrorKind::InvalidInput,
            RedisLock::new("ok", srv.client()).flags(flags).acquire(),
        )
        .await;
        assert!(err.to_string().contains("exactly one"), "{err}");
    }
    // Nothing listens on this port.
    let port = support::free_port();
    let client = portalocker::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let lock = RedisLock::new("ok", client).timeout(ms(300));
    let err = support::fails_with(ErrorKind::Redis, lock.acquire()).await;
    assert!(!err.is_already_locked());
    // An address this build cannot serve is refused before anything
    // connects: the listener never sees a connection.
    #[cfg(not(feature = "redis-tls"))]
    {
        use portalocker::redis::{ConnectionAddr, IntoConnectionInfo};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let info = format!("redis://127.0.0.1:{port}/")
            .into_connection_info()
            .unwrap()
            .set_addr(ConnectionAddr::TcpTls {
                host: "127.0.0.1".into(),
                port,
                insecure: false,
                tls_params: None,
            });
        let client = portalocker::redis::Client::open(info).unwrap();
        let err = RedisLock::new("ok", client).acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("`redis-tls` feature"), "{err}");
        assert!(!err.to_string().contains("TcpTls"), "a Debug dump: {err}");
        assert!(listener.accept().is_err(), "a connection was opened first");
    }
}

/// `NON_BLOCKING` means for `RedisLock` what it means for `Lock`: implied
/// and accepted; `timeout` and `fail_when_locked` decide whether to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_blocking_is_implied_as_for_file_locks() {
    let srv = RedisServer::start();
    let nb = LockFlags::NON_BLOCKING;
    let reader = RedisLock::new("nb", srv.client()).flags(LockFlags::SHARED | nb);
    let g = reader.acquire().await.unwrap();
    g.release().await.unwrap();
    let holder = RedisLock::new("nb", srv.other_client())
        .acquire()
        .await
        .unwrap();
    let writer = RedisLock::new("nb", srv.client()).flags(LockFlags::EXCLUSIVE | nb);
    // With fail_when_locked: at once, as contention.
    support::assert_busy(&writer).await;
    // Without: it waits for the holder within its timeout.
    let waiter = tokio::spawn({
        let w = writer.clone().timeout(Duration::from_secs(60));
        async move { w.acquire().await }
    });
    let queued = support::eventually_async(Duration::from_secs(30), || async {
        let queued: u64 = srv.cmd(&["ZCARD", "nb portalocker-queue"]).await;
        queued == 1
    })
    .await;
    assert!(
        queued && !waiter.is_finished(),
        "the NON_BLOCKING writer did not wait in the queue"
    );
    holder.release().await.unwrap();
    let g = waiter
        .await
        .unwrap()
        .expect("the waiter got the released lock");
    g.release().await.unwrap();
}
#[tokio::test]
async fn fencing_tokens_increase_and_only_for_exclusive_grants() {
    let srv = RedisServer::start();
    let lock = RedisLock::new("f", srv.client()).fencing(true);
    let mut last = 0;
    for _ in 0..5 {
        let g = lock.acquire().await.unwrap();
        let t = g.fence_token().unwrap();
        assert!(t > last);
        last = t;
        g.release().await.unwrap();
    }
    assert_eq!(last, 5);
    let r = lock
        .clone()
        .flags(LockFlags::SHARED)
        .acquire()
        .await
        .unwrap();
    assert_eq!(r.fence_token(), None);
    r.release().await.unwrap();
    let v: u64 = srv.cmd(&["GET", "f-fence"]).await;
    assert_eq!(v, 5);
}

#[tokio::test]
async fn readers_share_and_writers_exclude() {
    let srv = RedisServer::start();
    let reader = RedisLock::new("rw", srv.client()).flags(LockFlags::SHARED);
    let r1 = reader.acquire().await.unwrap();
    let r2 = reader.acquire().await.unwrap();
    assert_eq!(srv.numsub_settled("rw", 2).await, 2);
    let writer = RedisLock::new("rw", srv.client());
    support::assert_busy(&writer).await;
    drop((r1, r2));
    let w = writer.acquire().await.unwrap();
    support::assert_busy(&reader).await;
    w.release().await.unwrap();
}

/// Acquires with a 20 s timeout and returns the error, which must come
/// within `limit`: a clear error at once, not retries until the timeout.
async fn fails_within(limit: Duration, lock: RedisLock) -> portalocker::Error {
    let t = Instant::now();
    let err = lock
        .timeout(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap_err();
    assert!(t.elapsed() < limit, "took {:?}: {err}", t.elapsed());
    err
}

/// A subscriber on `channel` named `name` that never answers pings, or
/// (with `answer`) answers every ping with that payload.
async fn fake_holder(
    srv: &RedisServer,
    channel: &str,
    name: &str,
    answer: Option<&'static str>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", srv.port))
        .await
        .unwrap();
    if !name.is_empty() {
        sock.write_all(format!("CLIENT SETNAME {name}\r\n").as_bytes())
            .await
            .unwrap();
        let mut ok = [0u8; 5];
        sock.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    }
    let client = srv.client();
    let mut ps =
        portalocker::redis::aio::PubSub::new(client.get_connection_info().redis_settings(), sock)
            .await
            .unwrap();
    ps.subscribe(channel).await.unwrap();
    let mut cmd = client.get_multiplexed_async_connection().await.unwrap();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = ps.into_on_message();
        while let Some(msg) = stream.next().await {
            let Some(reply) = answer else { continue };
            let v: serde_json::Value = match serde_json::from_slice(msg.get_payload_bytes()) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(rc) = v.get("response_channel").and_then(|r| r.as_str()) {
                let _: i64 = portalocker::redis::AsyncCommands::publish(&mut cmd, rc, reply)
                    .await
                    .unwrap();
            }
        }
    })
}

/// A Python-shaped record of a waiting writer with the highest id there
/// is, so that any writer of this crate would win an election against it.
const FOREIGN_PENDING: &str = r#"{"holder_id": "ffffffffffffffffffffffffffffffff", "mode": "pending", "protocol": 1, "elected": false}"#;

/// A writer of this crate that the queue put behind a foreign (Python)
/// contender, and that counts while that contender, given its turn, has
/// subscribed but not yet decided, leaves the turn to it instead of
/// winning the election on a lower id. The foreign contender here is a
/// fake that stays undecided, so the writer must time out; once the fake
/// has gone, the writer gets the lock. (Before, it took the lock at once:
/// under CI load a Python writer queued first was served after a later
/// writer of this crate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_leaves_a_foreign_contender_its_turn_while_it_decides() {
    let srv = RedisServer::start();
    let ch = "turn";
    let member = format!("foreign:{}", "f".repeat(32));
    let queue = || async {
        srv.cmd::<Vec<String>>(&["ZRANGE", &format!("{ch} portalocker-queue"), "0", "-1"])
            .await
    };
    let holder = RedisLock::new(ch, srv.client()).acquire().await.unwrap();
    // The foreign contender's attempts on the busy channel: its replies
    // ("pending") give it a place in the queue, and keep it there.
    let refresh = tokio::spawn({
        let srv = srv.client();
        async move {
            let mut con = srv.get_multiplexed_async_connection().await.unwrap();
            let reply_channel = format!("{ch}-{}", "0".repeat(32));
            loop {
                let _: i64 = portalocker::redis::AsyncCommands::publish(
                    &mut con,
                    &reply_channel,
                    FOREIGN_PENDING,
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let queued = support::eventually_async(Duration::from_secs(20), || async {
        queue().await == [member.clone()]
    })
    .await;
    assert!(
        queued,
        "the foreign contender got no place: {:?}",
        queue().await
    );
    let writer = RedisLock::new(ch, srv.other_client())
        .timeout(Duration::from_secs(3))
        .check_interval(Duration::from_millis(50));
    let waiting =
        tokio::spawn(async move { writer.acquire().await.map(|g| g.holder_id().to_string()) });
    let behind = support::eventually_async(Duration::from_secs(20), || async {
        let q = queue().await;
        q.len() == 2 && q[0] == member
    })
    .await;
    assert!(
        behind,
        "the writer did not queue behind it: {:?}",
        queue().await
    );
    // Released with the foreign contender between attempts: its turn.
    holder.release().await.unwrap();
    let turn = support::eventually_async(Duration::from_secs(20), || async {
        srv.cmd::<Option<String>>(&["GET", &format!("{ch} portalocker-turn")])
            .await
            .as_deref()
            == Some(member.as_str())
    })
    .await;
    assert!(
        turn,
        "the queue did not give the foreign contender its turn"
    );
    refresh.abort();
    // It subscribes to take its turn, and stays undecided.
    let fake = fake_holder(
        &srv,
        ch,
        &format!("{ch}-lock-{}", "f".repeat(32)),
        Some(FOREIGN_PENDING),
    )
    .await;
    let r = waiting.await.unwrap();
    fake.abort();
    let e = r.expect_err("the writer took the foreign contender's turn");
    assert!(e.is_already_locked(), "{e}");
    // The deference lasts only while that contender stays: gone, the
    // channel is the writer's.
    let g = RedisLock::new(ch, srv.other_client())
        .timeout(Duration::from_secs(30))
        .acquire()
        .await
        .expect("the writer still deferred to a contender that had gone");
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_with_a_conforming_name_is_reaped() {
    let srv = RedisServer::start();
    let name = format!("rp-lock-{}", "0123456789abcdef0123456789abcdef");
    let fake = fake_holder(&srv, "rp", &name, None).await;
    assert_eq!(srv.numsub_settled("rp", 1).await, 1);
    let g = RedisLock::new("rp", srv.client())
        .timeout(Duration::from_secs(10))
        .unavailable_timeout(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    assert!(
        !srv.lock_clients("rp").await.contains(&name),
        "the silent holder was not killed"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), fake)
            .await
            .is_ok(),
        "its stream did not end"
    );
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_subscribers_with_other_names_are_never_reaped() {
    let srv = RedisServer::start();
    // A holder of channel `nr-lock-x` (named nr-lock-x-lock-<id>) and an
    // unnamed subscriber: neither is ours to kill (#142).
    let _a = fake_holder(
        &srv,
        "nr",
        "nr-lock-x-lock-0123456789abcdef0123456789abcdef",
        None,
    )
    .await;
    let _b = fake_holder(&srv, "nr", "", None).await;
    let lock = RedisLock::new("nr", srv.client()).timeout(ms(1500));
    support::busy(lock.unavailable_timeout(ms(200)).acquire()).await;
    // Our own subscription may still be counted for a moment after the
    // error (the server drops it asynchronously, slower on a busy
    // machine): wait until the count settles at most at 2 — foreign
    // subscribers never come back — then check none of them was killed.
    let settled = support::eventually_async(Duration::from_secs(10), || async {
        srv.numsub("nr").await <= 2
    })
    .await;
    assert!(settled, "our subscription was never dropped");
    assert_eq!(
        srv.numsub_settled("nr", 2).await,
        2,
        "a foreign subscriber was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_responder_counts_as_an_exclusive_holder() {
    let srv = RedisServer::start();
    // portalocker <= 3.2: named `<channel>-lock`, answers with a timestamp.
    let _legacy = fake_holder(&srv, "lg", "lg-lock", Some("1716112345.123456")).await;
    for flags in [LockFlags::EXCLUSIVE, LockFlags::SHARED] {
        support::busy(
            RedisLock::new("lg", srv.client())
                .flags(flags)
                .fail_when_locked(true)
                .acquire(),
        )
        .await;
    }
    // It answered, so it was not reaped. (Our own subscription may still
    // be listed for a moment after the error: wait for it to go.)
    let settled = support::eventually_async(Duration::from_secs(10), || async {
        srv.lock_clients("lg").await.len() <= 1
    })
    .await;
    assert!(settled, "our subscription was never dropped");
    assert_eq!(srv.lock_clients("lg").await, ["lg-lock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_noticed_by_the_holder() {
    let srv = RedisServer::start();
    let g = RedisLock::new("hung", srv.client())
        .unavailable_timeout(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    let stop = || {
        std::process::Command::new("kill")
            .args(["-STOP", &srv.pid().to_string()])
            .status()
            .unwrap()
    };
    assert!(stop().success());
    // A server that answers nobody may be stalled: the holder waits
    // 2 × unavailable_timeout plus the 5 s stall margin before it gives up.
    let noticed = tokio::time::timeout(Duration::from_secs(20), g.lost()).await;
    let cont = std::process::Command::new("kill")
        .args(["-CONT", &srv.pid().to_string()])
        .status()
        .unwrap();
    assert!(cont.success());
    noticed.expect("a hung server (unanswered pings) was not noticed");
    assert!(g.ensure_held().unwrap_err().is_lock_lost());
}

/// The number of `AUTH` commands the server has run since the last
/// `CONFIG RESETSTAT`.
async fn auth_calls(srv: &RedisServer) -> u64 {
    let info: String = srv.cmd(&["INFO", "commandstats"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// With an ACL user, each connection authenticates exactly once (the
/// named subscription used to send `AUTH` by hand and again through
/// redis-rs), and a wrong password is a `Redis` error at once, naming the
/// failed step, not a timeout.
#[tokio::test]
async fn acl_users_authenticate_once_per_connection_and_bad_passwords_fail_fast() {
    let srv = RedisServer::start();
    let _: String = srv
        .cmd(&[
            "ACL", "SETUSER", "locker", "on", ">s3cret", "~*", "&*", "+@all",
        ])
        .await;
    let url = format!("redis://locker:s3cret@127.0.0.1:{}/", srv.port);
    let client = portalocker::redis::Client::open(url).unwrap();
    let lock = RedisLock::new("acl", client);
    let _: String = srv.cmd(&["CONFIG", "RESETSTAT"]).await;
    let guard = lock.acquire().await.unwrap();
    assert_eq!(srv.lock_clients("acl").await.len(), 1);
    // One command connection and one subscription connection.
    assert_eq!(auth_calls(&srv).await, 2);
    guard.release().await.unwrap();

    let url = format!("redis://locker:wrong@127.0.0.1:{}/", srv.port);
    let bad = RedisLock::new("acl", portalocker::redis::Client::open(url).unwrap())
        .timeout(Duration::from_secs(30));
    let started = Instant::now();
    let err = bad.acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "retried until the timeout: {err}"
    );
}

/// `try_acquire` and `acquire_timeout` on `RedisLock`: one attempt, or this
/// call's timeout instead of the configured one.
#[tokio::test]
async fn try_acquire_and_acquire_timeout_use_this_calls_budget() {
    let srv = RedisServer::start();
    let held = RedisLock::new("uni", srv.client()).acquire().await.unwrap();
    let lock = RedisLock::new("uni", srv.client()).timeout(Duration::from_secs(3600));
    let e = lock.try_acquire().await.unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    let started = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        lock.acquire_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("acquire_timeout used the configured hour")
    .unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    assert!(e.to_string().contains("waited 300 ms"), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    held.release().await.unwrap();
    assert_eq!(srv.numsub_settled("uni", 0).await, 0);
    drop(lock.try_acquire().await.unwrap());
}

/// A waiter whose subscription connection dies while it waits (here
/// `CLIENT KILL`; in the field an idle timeout or a failed ping under load)
/// still gets the lock once it is free. (Before, the dead subscription's
/// "ended" state stuck to the acquisition: every later attempt took a
/// fencing token and was then refused, until the timeout.)
#[tokio::test]
async fn a_waiter_whose_subscription_died_still_gets_the_lock() {
    let srv = RedisServer::start();
    let holder = RedisLock::new("w", srv.client()).acquire().await.unwrap();
    let mine = format!("w-lock-{}", holder.holder_id());
    let lock = RedisLock::new("w", srv.other_client())
        .fencing(true)
        .check_interval(Duration::from_millis(20));
    let waiter = tokio::spawn(async move { lock.acquire_timeout(Duration::from_secs(20)).await });
    // The waiter's subscription appears beside the holder's; kill it
    // (it comes and goes between attempts: retry until one is killed).
    let mut killed = 0;
    for _ in 0..10_000 {
        let list: String = srv.cmd(&["CLIENT", "LIST"]).await;
        let victim = list
            .lines()
            .find(|l| l.contains("name=w-lock-") && !l.contains(&format!("name={mine} ")))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string);
        if let Some(id) = victim {
            killed = srv.cmd(&["CLIENT", "KILL", "ID", &id]).await;
            if killed == 1 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(killed, 1, "the waiter's subscription was killed");
    holder.release().await.unwrap();
    let g = waiter
        .await
        .unwrap()
        .expect("the waiter gets the free lock");
    assert!(g.fence_token().is_some());
    g.release().await.unwrap();
}

/// `release()` returns only once the server no longer counts the holder:
/// no polling is needed after it.
#[tokio::test]
async fn release_returns_once_the_server_no_longer_counts_the_holder() {
    let srv = RedisServer::start();
    let lock = RedisLock::new("rel", srv.client());
    // One open connection, so the count is asked the moment release returns.
    let mut con = srv
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut numsub = async move || -> usize {
        let v: Vec<(String, usize)> = portalocker::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("rel")
            .query_async(&mut con)
            .await
            .unwrap();
        v[0].1
    };
    for i in 0..300 {
        let g = lock.acquire().await.unwrap();
        assert_eq!(numsub().await, 1);
        g.release().await.unwrap();
        assert_eq!(
            numsub().await,
            0,
            "release {i} returned before the server let go"
        );
    }
    // A stopped server cannot confirm: release waits for it (a release
    // that only closed the socket would return at once).
    let g = lock.acquire().await.unwrap();
    let pid = srv.pid();
    support::kill("-STOP", pid);
    let release = tokio::spawn(g.release());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = release.is_finished();
    support::kill("-CONT", pid);
    assert!(
        !early,
        "release returned while the server could not have let go"
    );
    release.await.unwrap().unwrap();
    assert_eq!(numsub().await, 0);
}

/// The server drops every normal (non-pub/sub) client, the holder's
/// command connection among them: the holder reconnects it and keeps
/// answering pings, so a contender sees the lock busy and reaps nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_survives_the_loss_of_its_command_connection() {
    let srv = RedisServer::start();
    let g = RedisLock::new("ck", srv.client()).acquire().await.unwrap();
    for _ in 0..3 {
        let killed: i64 = srv
            .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .await;
        assert!(
            killed >= 1,
            "the holder's command connection was not there to kill"
        );
        support::assert_busy(&RedisLock::new("ck", srv.other_client())).await;
        assert!(!g.is_lost());
    }
    srv.assert_held_then_release(g, "ck").await;
}

/// A reconnect that hangs does not silence a holder whose connection
/// still works: its command connection stalls past the response timeout
/// (so the holder opens another), new connections hang, then the stall
/// ends. Contenders that probe the holder get their answers through the
/// old connection, and nobody reaps it. (Before, the late connection was
/// dropped and every answer waited for a connect that could not finish:
/// the first contender reaped the holder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_reconnect_does_not_cost_the_holder_its_lock() {
    let srv = RedisServer::start();
    let proxy = support::StallProxy::start(srv.port).await;
    let g = RedisLock::new("stall", proxy.client())
        .acquire()
        .await
        .unwrap();
    proxy.slow_new(true);
    let before = proxy.accepted();
    proxy.stall(true);
    // The holder's keep-alive finds its command connection late and tries
    // a new one (which hangs).
    let tried = support::eventually(Duration::from_secs(60), || proxy.accepted() > before).await;
    assert!(tried, "the holder never tried another connection");
    proxy.stall(false);
    for _ in 0..3 {
        support::assert_busy(&RedisLock::new("stall", srv.client())).await;
        assert!(!g.is_lost());
    }
    proxy.slow_new(false);
    srv.assert_held_then_release(g, "stall").await;
}

/// Through the `HeldLock` trait a Redis guard speaks as a file guard does:
/// its fencing token, and work stopped when its subscription is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_guard_is_a_held_lock() {
    use portalocker::HeldLock;
    let srv = RedisServer::start();
    let g = RedisLock::new("held", srv.client())
        .fencing(true)
        .acquire()
        .await
        .unwrap();
    assert_eq!(HeldLock::fence_token(&g), Some(1));
    assert!(!HeldLock::is_lost(&g));
    let mut work = std::pin::pin!(HeldLock::run_while_held(&g, std::future::pending::<()>()));
    assert!(futures_util::FutureExt::now_or_never(work.as_mut()).is_none());
    let id = srv.client_id(&format!("held-lock-{}", g.holder_id())).await;
    let killed: i64 = srv.cmd(&["CLIENT", "KILL", "ID", &id]).await;
    assert_eq!(killed, 1);
    let r = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("the work was not stopped");
    assert!(r.is_err_and(|e| e.is_lock_lost()));
    assert!(HeldLock::ensure_held(&g).is_err() && *HeldLock::watch_lost(&g).borrow());
}

/// A lock pointed at a replica, or at a Redis Cluster node, is refused
/// with a typed error that says what to use instead, before anything is
/// subscribed or granted. (Before, the replica granted the lock while a
/// holder on the primary held it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_cluster_nodes_are_refused() {
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let holder = RedisLock::new("topo", primary.client())
        .acquire()
        .await
        .unwrap();
    let e = RedisLock::new("topo", replica.client())
        .timeout(Duration::from_secs(1))
        .acquire()
        .await
        .expect_err("a replica granted a lock its primary's holder holds");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("replica") && msg.contains(&format!("127.0.0.1:{port}")),
        "{msg}"
    );
    assert_eq!(
        replica.numsub("topo").await,
        0,
        "something subscribed on the replica"
    );
    holder.release().await.unwrap();
    let node = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let e = RedisLock::new("topo", node.client())
        .acquire()
        .await
        .expect_err("a cluster node granted a lock");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("Cluster"), "{e}");
    assert_eq!(node.numsub("topo").await, 0);
}

/// Fencing tokens of this crate never repeat or go back across database
/// numbers: a channel is the same for every database, so holders on
/// databases 0, 5 and 3 take turns on one lock. A peer that increments
/// database 5's own counter (as Python portalocker on that database does)
/// draws a token above every one drawn there, and the next holder on
/// database 5 draws one above the peer's. (Before, a db 5 holder got token
/// 1 again after a db 0 holder's token 1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_never_repeat_across_databases() {
    let srv = RedisServer::start();
    let on = |db: u8| {
        portalocker::redis::Client::open(format!("redis://127.0.0.1:{}/{db}", srv.port)).unwrap()
    };
    let (mut last, mut peer) = (0, 0);
    for round in 0..4 {
        for db in [0u8, 5, 3] {
            let g = RedisLock::new("fdb", on(db))
                .fencing(true)
                .acquire()
                .await
                .unwrap();
            let t = g.fence_token().unwrap();
            assert!(t > last, "round {round}, db {db}: token {t} after {last}");
            if db == 5 {
                assert!(
                    t > peer,
                    "round {round}: token {t} after the db 5 peer's {peer}"
                );
            }
            last = t;
            g.release().await.unwrap();
        }
        // A peer on database 5 that increments only that database's
        // counter: its token is above every one drawn there before.
        let mut db5 = on(5).get_multiplexed_async_connection().await.unwrap();
        peer = portalocker::redis::cmd("INCRBY")
            .arg("fdb-fence")
            .arg(10)
            .query_async(&mut db5)
            .await
            .unwrap();
        assert!(peer > last, "round {round}: the db 5 counter was behind");
    }
    // Without script permission, fencing off database 0 is refused rather
    // than drawn from a counter that could repeat.
    let client = srv.client_without_scripts(5).await;
    let e = RedisLock::new("fdb", client)
        .fencing(true)
        .acquire()
        .await
        .expect_err("a token was drawn that could repeat");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("database 5"), "{e}");
    assert_eq!(srv.numsub_settled("fdb", 0).await, 0);
}

/// A failover's answers are passing states. A fencing waiter whose server
/// is demoted to a replica meets `READONLY` on its token's `INCR` when the
/// lock frees; it keeps trying, and once the server is a primary again it
/// gets the lock and a token within its timeout, and its wait queue was
/// not switched off. (Before, `READONLY` failed the acquisition with time
/// left, and one `READONLY` answer to the queue script turned the queue
/// off for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_server_is_waited_out_not_fatal() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let holder = RedisLock::new("fo", a.other_client())
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let l = RedisLock::new("fo", a.client())
            .fencing(true)
            .timeout(Duration::from_secs(60))
            .check_interval(Duration::from_millis(20));
        async move { l.acquire().await }
    });
    let queued = support::eventually_async(Duration::from_secs(30), || async {
        let n: u64 = a.cmd(&["ZCARD", "fo portalocker-queue"]).await;
        n == 1
    })
    .await;
    assert!(queued, "the waiter did not queue");
    // Demote A: every write is refused with READONLY from now on.
    let _: () = a
        .cmd(&["REPLICAOF", "127.0.0.1", &b.port.to_string()])
        .await;
    let _ = holder.release().await;
    let rejected = || async {
        let info: String = a.cmd(&["INFO", "commandstats"]).await;
        info.lines()
            .find(|l| l.starts_with("cmdstat_incr:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("rejected_calls=")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let met =
        support::eventually_async(Duration::from_secs(30), || async { rejected().await >= 1 })
            .await;
    assert!(met, "the waiter never drew a token from the demoted server");
    let _: () = a.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    let g = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter hung")
        .unwrap()
        .expect("READONLY ended the acquisition with time left");
    assert!(g.fence_token().is_some());
    g.release().await.unwrap();
    // The queue is still used: a second waiter behind a new holder queues.
    let holder = RedisLock::new("fo", a.other_client())
        .acquire()
        .await
        .unwrap();
    let lock = RedisLock::new("fo", a.client()).timeout(Duration::from_secs(60));
    let second = tokio::spawn(async move { lock.acquire().await });
    let queued = support::eventually_async(Duration::from_secs(30), || async {
        let n: u64 = a.cmd(&["ZCARD", "fo portalocker-queue"]).await;
        n == 1
    })
    .await;
    assert!(queued, "the queue was switched off");
    holder.release().await.unwrap();
    second.await.unwrap().unwrap().release().await.unwrap();
}

/// With `timeout 1` the server closes clients idle for over a second, but
/// never subscribed ones: a holder idle for several seconds still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_survives_a_server_that_closes_idle_clients() {
    let srv = RedisServer::start();
    let _: () = srv.cmd(&["CONFIG", "SET", "timeout", "1"]).await;
    let g = RedisLock::new("idle", srv.client())
        .acquire()
        .await
        .unwrap();
    // The holder's command connection only answers pings: idle. Wait until
    // the server has had three chances to close it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..3 {
        support::assert_busy(&RedisLock::new("idle", srv.other_client())).await;
    }
    assert!(!g.is_lost());
    g.release().await.unwrap();
}

/// A 2.5 s Lua busy loop stalls the server: nobody can take the lock
/// meanwhile, so the holder keeps it (as Python's does) and answers once
/// the server runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stall_shorter_than_the_margin_keeps_the_holder() {
    let srv = RedisServer::start();
    let g = RedisLock::new("stall", srv.client())
        .acquire()
        .await
        .unwrap();
    let busy = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
                while true do local n = redis.call('TIME') \
                if n[1] * 1000000 + n[2] - s > 2500000 then return 1 end end";
    let mut con = srv
        .client()
        .get_multiplexed_async_connection_with_config(
            &portalocker::redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let ran: i64 = portalocker::redis::cmd("EVAL")
        .arg(busy)
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(ran, 1);
    support::assert_busy(&RedisLock::new("stall", srv.other_client())).await;
    assert!(!g.is_lost(), "a stall made the holder give up");
    g.release().await.unwrap();
}

/// A connection that stays open for the whole test (the helpers open one
/// per command, which a full server refuses).
async fn admin(srv: &RedisServer) -> portalocker::redis::aio::MultiplexedConnection {
    srv.client()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn run<T: portalocker::redis::FromRedisValue>(
    con: &mut portalocker::redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut c = portalocker::redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await.unwrap()
}

/// A server at its `maxclients` limit: whichever connection of the lock
/// meets the limit first (the command connection, or the subscription
/// after the command connection took the last slot), the acquisition
/// fails at once with one error naming the limit — not a "broken pipe"
/// after the whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_a_clear_error_at_once() {
    let srv = RedisServer::start();
    let mut con = admin(&srv).await;
    for spare in [0, 1] {
        let clients: String = run(&mut con, &["CLIENT", "LIST"]).await;
        let limit = clients.lines().count() + spare;
        let _: () = run(
            &mut con,
            &["CONFIG", "SET", "maxclients", &limit.to_string()],
        )
        .await;
        let err = fails_within(
            Duration::from_secs(5),
            RedisLock::new(format!("full{spare}"), srv.client()),
        )
        .await;
        assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
        assert!(
            err.to_string().contains("maxclients"),
            "{spare} spare: {err}"
        );
        let _: () = run(&mut con, &["CONFIG", "SET", "maxclients", "10000"]).await;
    }
    // Behind a holder, a waiter opens its command, side-channel and
    // subscription connections; the probe's is the one refused (a "broken
    // pipe" to redis-rs, retried until the timeout before). A fresh server,
    // and a client count taken once it holds still: connections of the
    // runs above that are still closing would leave the waiter more room
    // than the limit means to.
    drop(con);
    let srv = RedisServer::start();
    let mut con = admin(&srv).await;
    let holder = RedisLock::new("fullp", srv.other_client())
        .acquire()
        .await
        .unwrap();
    let mut count = 0;
    let mut same = 0;
    for _ in 0..500 {
        if same == 5 {
            break;
        }
        let clients: String = run(&mut con, &["CLIENT", "LIST"]).await;
        let n = clients.lines().count();
        same = if n == count { same + 1 } else { 0 };
        count = n;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limit = count + 3;
    let _: () = run(
        &mut con,
        &["CONFIG", "SET", "maxclients", &limit.to_string()],
    )
    .await;
    let err = fails_within(
        Duration::from_secs(5),
        RedisLock::new("fullp", srv.client()).check_interval(Duration::from_millis(20)),
    )
    .await;
    assert!(
        err.to_string().contains("maxclients"),
        "behind a holder: {err}"
    );
    let _: () = run(&mut con, &["CONFIG", "SET", "maxclients", "10000"]).await;
    holder.release().await.unwrap();
}

/// A user that may not run `CLIENT LIST`/`CLIENT KILL` cannot reap a
/// silent holder: the acquisition fails at once, naming the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_reaping_permissions_gets_a_clear_error() {
    let srv = RedisServer::start();
    let _: () = srv
        .cmd(&[
            "ACL",
            "SETUSER",
            "noreap",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-client|list",
            "-client|kill",
        ])
        .await;
    let fake = fake_holder(&srv, "acl", &format!("acl-lock-{}", "ab".repeat(16)), None).await;
    let client =
        portalocker::redis::Client::open(format!("redis://noreap:pw@127.0.0.1:{}/", srv.port))
            .unwrap();
    let err = fails_within(
        Duration::from_secs(5),
        RedisLock::new("acl", client).unavailable_timeout(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("client|list") && msg.contains("reap"), "{msg}");
    assert_eq!(
        srv.numsub_settled("acl", 1).await,
        1,
        "only the silent holder stays"
    );
    fake.abort();
}

/// A server busy running a script answers `BUSY`: one error at once, not
/// retries until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_a_clear_error_at_once() {
    let srv = RedisServer::start();
    let _: () = srv
        .cmd(&["CONFIG", "SET", "busy-reply-threshold", "50"])
        .await;
    let mut busy = srv
        .client()
        .get_multiplexed_async_connection_with_config(
            &portalocker::redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let script = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
                  while true do local n = redis.call('TIME') \
                  if n[1] * 1000000 + n[2] - s > 3000000 then return 1 end end";
    let looping = tokio::spawn(async move {
        portalocker::redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .query_async::<i64>(&mut busy)
            .await
    });
    // Wait until the server says BUSY.
    let busy_now = support::eventually_async(Duration::from_secs(5), || async {
        let mut c = match srv.client().get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => return e.code() == Some("BUSY"),
        };
        matches!(
            portalocker::redis::cmd("PING").query_async::<String>(&mut c).await,
            Err(e) if e.code() == Some("BUSY")
        )
    })
    .await;
    assert!(busy_now, "the server never got busy");
    let err = fails_within(Duration::from_secs(2), RedisLock::new("busy", srv.client())).await;
    assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
    assert!(err.to_string().contains("BUSY"), "{err}");
    assert_eq!(looping.await.unwrap().unwrap(), 1);
}

/// Waits (bounded) until `primary` lists `n` replicas online.
async fn replicas_online(primary: &RedisServer, n: usize) {
    for _ in 0..3000 {
        let info: String = primary.cmd(&["INFO", "replication"]).await;
        let up = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count();
        if up >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} replicas never came online");
}

/// A fencing token is granted only once the primary's replicas have it
/// (`WAIT`), so a failover to one of them cannot hand it out again. With
/// the only replica stopped, a fenced grant is let go and fails saying
/// how many replicas acknowledged; `FenceReplicas::AtLeast(0)` grants
/// without waiting. (Before, nothing waited: a grant could return with
/// the token on the primary alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_wait_for_the_replicas() {
    use portalocker::FenceReplicas;
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    replicas_online(&primary, 1).await;
    let lock = RedisLock::new("waited", primary.client())
        .fencing(true)
        .timeout(Duration::from_secs(5));
    for _ in 0..20 {
        let guard = lock.acquire().await.unwrap();
        let token = guard.fence_token().unwrap();
        // Read at once, on the replica: the draw is already there.
        let seen: u64 = replica.cmd(&["GET", "waited-fence"]).await;
        assert_eq!(
            seen, token,
            "the grant returned before the replica had the token"
        );
        guard.release().await.unwrap();
    }
    support::kill("-STOP", replica.pid());
    let started = Instant::now();
    let e = lock
        .clone()
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .expect_err("granted with the only replica stopped");
    support::kill("-CONT", replica.pid());
    assert_eq!(e.kind(), ErrorKind::Redis, "{e}");
    assert!(
        e.to_string()
            .contains("acknowledged by 0 of the 1 replicas"),
        "{e}"
    );
    // The replicas got at least unavailable_timeout (1 s), however short
    // the timeout.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(primary.numsub("waited").await, 0, "the lock was not let go");
    support::kill("-STOP", replica.pid());
    let guard = lock
        .clone()
        .fence_replicas(FenceReplicas::AtLeast(0))
        .acquire()
        .await
        .unwrap();
    support::kill("-CONT", replica.pid());
    guard.release().await.unwrap();
}

/// The ACL line in `docs/redis-permissions.md` (channels `jobs`, `jobs-*` and the side
/// channel; keys `jobs-fence` and the queue's; the commands listed) is all
/// a contended, fenced, queued lock needs: two users of it take turns,
/// the waiter queued server-side and listening on the side channel, with
/// tokens 1 and 2. A user allowed only the lock channel fails under
/// contention with an error naming the reply channel it may not use and
/// the rule that allows it (before: Redis's message, naming no channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_and_a_missing_channel_is_named() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/redis-permissions.md"),
    )
    .unwrap();
    let line = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER locker "))
        .expect("docs/redis-permissions.md has the ACL line");
    // Shell-like words: a quoted rule is one argument.
    let mut words: Vec<String> = Vec::new();
    for (i, part) in line.split('"').enumerate() {
        if i % 2 == 1 {
            words.push(part.to_string());
        } else {
            words.extend(part.split_whitespace().map(str::to_string));
        }
    }
    let srv = RedisServer::start();
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let ok: String = srv.cmd(&args).await;
    assert_eq!(ok, "OK");
    // Two addresses of one server: two clients, so the two locks contend
    // on the server rather than in this process.
    let client = |host: &str| {
        portalocker::redis::Client::open(format!("redis://locker:secret@{host}:{}/", srv.port))
            .unwrap()
    };
    let holder = RedisLock::new("jobs", client("127.0.0.1"))
        .fencing(true)
        .acquire()
        .await
        .unwrap();
    assert_eq!(holder.fence_token(), Some(1));
    let second = RedisLock::new("jobs", client("127.0.0.2"))
        .fencing(true)
        .timeout(Duration::from_secs(30));
    let waiter = tokio::spawn(async move { second.acquire().await });
    // Waiting as designed: in the server-side queue (kept by the whole
    // script: its last steps set the expiry), on the side channel, and
    // watching the replies to pings (a pattern subscription).
    let mut seen = (0, 0, false, 0);
    for _ in 0..2000 {
        let q: u64 = srv.cmd(&["ZCARD", "jobs portalocker-queue"]).await;
        let side = srv.numsub("jobs portalocker-released").await;
        let ttl: i64 = srv.cmd(&["PTTL", "jobs portalocker-queue"]).await;
        let patterns: u64 = srv.cmd(&["PUBSUB", "NUMPAT"]).await;
        seen = (q, side, ttl > 0, patterns);
        if seen == (1, 1, true, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen,
        (1, 1, true, 1),
        "(queued, side-channel subscribers, queue kept, patterns watched)"
    );
    holder.release().await.unwrap();
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(second.fence_token(), Some(2));

    // Only the lock channel: refused under contention, naming the channel.
    let narrow: String = srv
        .cmd(&[
            "ACL",
            "SETUSER",
            "narrow",
            "on",
            ">secret",
            "~*",
            "+@all",
            "resetchannels",
            "&jobs",
        ])
        .await;
    assert_eq!(narrow, "OK");
    let e = RedisLock::new(
        "jobs",
        portalocker::redis::Client::open(format!("redis://narrow:secret@127.0.0.1:{}/", srv.port))
            .unwrap(),
    )
    .timeout(Duration::from_secs(2))
    .acquire()
    .await
    .expect_err("granted while held");
    let msg = e.to_string();
    assert!(
        msg.contains("may not use the channel \"jobs-") && msg.contains("allow &jobs-*"),
        "{msg}"
    );
    second.release().await.unwrap();
}

/// A lock built on a client factory asks it for the server when it first
/// needs one and again when the server went away: with the first server
/// SIGKILLed while a waiter waits, the factory (now naming the second
/// server) is asked again and the waiter is granted there. A factory that
/// fails at the start is the acquisition's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_factory_is_asked_again_when_the_server_goes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut first = RedisServer::start();
    let second = RedisServer::start();
    let urls = Arc::new(std::sync::Mutex::new(first.url()));
    let calls = Arc::new(AtomicUsize::new(0));
    let factory = {
        let (urls, calls) = (urls.clone(), calls.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let url = urls.lock().unwrap().clone();
            Box::pin(async move { portalocker::redis::Client::open(url) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        }
    };
    let holder = RedisLock::new("fac", first.client())
        .acquire()
        .await
        .unwrap();
    let lock = RedisLock::with_client_factory("fac", factory).timeout(Duration::from_secs(30));
    let waiter = tokio::spawn(async move { lock.acquire().await });
    assert_eq!(
        first.numsub_settled("fac portalocker-released", 1).await,
        1,
        "the waiter never waited on the first server"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "asked once while the server stayed"
    );
    *urls.lock().unwrap() = second.url();
    first.kill();
    let guard = waiter.await.unwrap().unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        second.numsub("fac").await,
        1,
        "granted on the second server"
    );
    guard.release().await.unwrap();
    drop(holder);

    let failing = RedisLock::with_client_factory("fac", || {
        Box::pin(async {
            Err(portalocker::redis::RedisError::from((
                portalocker::redis::ErrorKind::InvalidClientConfig,
                "no server registered",
            )))
        })
    });
    let e = failing
        .acquire()
        .await
        .expect_err("granted without a server");
    assert!(e.to_string().contains("no server registered"), "{e}");
}

/// `holders()` names the holder as the server lists it (its id and client
/// address), and nobody once it released; futures of it dropped at any
/// point leave nothing behind (the next call answers the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_are_listed_and_dropped_calls_leave_nothing() {
    let srv = RedisServer::start();
    let lock = RedisLock::new("who", srv.client());
    assert!(lock.holders().await.unwrap().is_empty());
    let guard = RedisLock::new("who", srv.other_client())
        .acquire()
        .await
        .unwrap();
    for i in 0..50u64 {
        let _ = tokio::time::timeout(Duration::from_micros(i * 20), lock.holders()).await;
    }
    let holders = lock.holders().await.unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].id, guard.holder_id());
    assert!(holders[0].addr.starts_with("127.0.0."), "{holders:?}");
    assert_eq!(
        holders[0].to_string(),
        format!("holder {} client {}", holders[0].id, holders[0].addr)
    );
    guard.release().await.unwrap();
    assert!(lock.holders().await.unwrap().is_empty());
}

/// The `id=` of each connection `CLIENT LIST` shows whose fields match
/// `pick`.
async fn client_ids(srv: &RedisServer, pick: impl Fn(&str) -> bool) -> Vec<u64> {
    let list: String = srv.cmd(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| l.split(' ').any(&pick))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The one connection that has not sent a command yet (the lock's spare),
/// once it is open.
async fn spare_client(srv: &RedisServer) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let silent = client_ids(srv, |f| f == "cmd=NULL").await;
        match silent.as_slice() {
            [id] => return *id,
            [] if Instant::now() < deadline => tokio::time::sleep(ms(5)).await,
            other => panic!("expected one connection opened ahead, found {other:?}"),
        }
    }
}

/// The id of the subscription connection of `g`.
async fn holder_client(srv: &RedisServer, channel: &str, g: &portalocker::RedisLockGuard) -> u64 {
    let name = format!("name={channel}-lock-{}", g.holder_id());
    let ids = client_ids(srv, |f| f == name).await;
    assert_eq!(ids.len(), 1, "{name}: {ids:?}");
    ids[0]
}

/// A lock that acquired before has the next subscription connection open
/// before it is asked again, so the acquisition does not wait for a
/// connect; one the server closed costs nothing but a fresh connection,
/// not the attempt (a zero timeout: one attempt only).
#[tokio::test]
async fn a_warm_lock_subscribes_on_a_connection_it_opened_ahead() {
    let srv = RedisServer::start();
    let lock = RedisLock::new("warm", srv.client()).timeout(Duration::ZERO);
    // The first acquisition of a value opens nothing ahead (it may be the
    // only one); the second opens the connection for the third.
    for _ in 0..2 {
        lock.acquire().await.unwrap().release().await.unwrap();
    }
    let spare = spare_client(&srv).await;
    let g = lock.acquire().await.unwrap();
    assert_eq!(holder_client(&srv, "warm", &g).await, spare);
    g.release().await.unwrap();
    // The server closes the next spare (an idle timeout, a restart of a
    // proxy on the way): the one attempt still succeeds.
    let spare = spare_client(&srv).await;
    let killed: i64 = srv.cmd(&["CLIENT", "KILL", "ID", &spare.to_string()]).await;
    assert_eq!(killed, 1);
    let g = lock
        .acquire()
        .await
        .expect("a spare the server closed cost the attempt");
    assert!(holder_client(&srv, "warm", &g).await > spare);
    g.release().await.unwrap();
}

/// With `preconnect(false)` every attempt connects when it starts.
#[tokio::test]
async fn without_preconnect_the_attempt_connects_itself() {
    let srv = RedisServer::start();
    let lock = RedisLock::new("cold", srv.client())
        .preconnect(false)
        .timeout(Duration::ZERO);
    lock.acquire().await.unwrap().release().await.unwrap();
    let before: u64 = srv.cmd(&["CLIENT", "ID"]).await;
    let g = lock.acquire().await.unwrap();
    assert!(holder_client(&srv, "cold", &g).await > before);
    g.release().await.unwrap();
}

/// A lock value made for one acquisition (`RedisLock::new(..).acquire()`
/// each time) opens its command connection and its subscription, and no
/// connection ahead that it would only throw away.
#[tokio::test]
async fn a_lock_value_used_once_opens_no_spare_connection() {
    let srv = RedisServer::start();
    let opened = || async {
        let info: String = srv.cmd(&["INFO", "stats"]).await;
        support::info_field(&info, "total_connections_received")
    };
    let before = opened().await;
    for _ in 0..20 {
        RedisLock::new("once", srv.client())
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    // Two per value, and the connection that reads the count.
    let n = opened().await - before;
    assert!(n <= 2 * 20 + 3, "{n} connections for 20 one-shot values");
}
