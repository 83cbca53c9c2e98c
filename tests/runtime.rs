//! On a runtime without the time driver, an acquisition that must wait
//! panics with tokio's own message (naming `enable_time`), as
//! `tokio::time::sleep` does — documented under `# Panics` — while an
//! uncontended one works. The holder is another process.
mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use portalocker::{BoundedSemaphore, Lock, PidFileLock, RLock, TemporaryFileLock};
use support::Proc;

support::child_entry!();

/// A runtime with the blocking pool but no timers.
fn timerless() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Runs `fut` on a timer-less runtime; returns the panic message, if any.
fn panic_of<F: Future>(fut: F) -> Option<String> {
    let rt = timerless();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(fut)));
    r.err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn assert_timer_panic(what: &str, msg: Option<String>) {
    let msg = msg.unwrap_or_else(|| panic!("{what}: waited without a timer and did not panic"));
    assert!(msg.contains("enable_time"), "{what}: {msg}");
}

#[test]
fn waiting_without_a_time_driver_panics_as_tokio_documents() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let wait = Duration::from_secs(5);

    // Uncontended: no timer needed.
    assert_eq!(
        panic_of(async { drop(Lock::new(p("free")).acquire().await.unwrap()) }),
        None
    );
    assert_eq!(
        panic_of(async {
            drop(
                BoundedSemaphore::new(1)
                    .name("free")
                    .directory(d.path())
                    .acquire()
                    .await
                    .unwrap(),
            );
        }),
        None
    );

    let mut file_holder = Proc::role("child_entry", "hold", &[p("held").to_str().unwrap()]);
    file_holder.expect("LOCKED");
    let mut pid_holder = Proc::role(
        "child_entry",
        "pid-hold",
        &[p("held.pid").to_str().unwrap()],
    );
    pid_holder.expect("LOCKED");
    let dir = d.path().to_str().unwrap();
    let mut sem_holder = Proc::role("child_entry", "sem-hold", &["busy", dir, "1"]);
    sem_holder.expect("LOCKED");

    // A zero timeout never waits: a typed error, no panic.
    let r = panic_of(async {
        let e = Lock::new(p("held")).try_acquire().await.unwrap_err();
        assert!(e.is_already_locked());
    });
    assert_eq!(r, None);

    assert_timer_panic(
        "Lock",
        panic_of(async { drop(Lock::new(p("held")).timeout(wait).acquire().await) }),
    );
    assert_timer_panic(
        "RLock",
        panic_of(async { drop(RLock::new(p("held")).timeout(wait).acquire().await) }),
    );
    assert_timer_panic(
        "TemporaryFileLock",
        panic_of(async {
            drop(
                TemporaryFileLock::new(p("held"))
                    .fail_when_locked(false)
                    .timeout(wait)
                    .acquire()
                    .await,
            );
        }),
    );
    assert_timer_panic(
        "PidFileLock",
        panic_of(async {
            drop(
                PidFileLock::new(p("held.pid"))
                    .fail_when_locked(false)
                    .timeout(wait)
                    .acquire()
                    .await,
            );
        }),
    );
    assert_timer_panic(
        "BoundedSemaphore",
        panic_of(async {
            drop(
                BoundedSemaphore::new(1)
                    .name("busy")
                    .directory(d.path())
                    .timeout(wait)
                    .acquire()
                    .await,
            );
        }),
    );
    file_holder.finish();
    pid_holder.finish();
    sem_holder.finish();
}

#[cfg(all(feature = "redis", unix))] // the Redis server comes from the Linux CI host
#[test]
fn redis_without_a_time_driver_panics_as_documented() {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let client = server.client();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            drop(
                portalocker::RedisLock::new("no-timer", client)
                    .acquire()
                    .await,
            );
        });
    }));
    let p = r.expect_err("a Redis acquire without timers did not panic");
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("enable_time"), "{msg}");
}
