//! `portalocker etcd`: an etcd lock; and `who --etcd`.

use std::time::Duration;

use portalocker::etcd_client::{Client, ConnectOptions};
use portalocker::{EtcdLock, LockFlags};

use crate::args::EtcdArgs;
use crate::exit::{busy_hint, failed, say, Outcome, EXIT_FAILED};
use crate::progress::{human, waiting};
use crate::timeout_of;

/// A client of `endpoints` that has answered once (a member's status)
/// within 2 s: an unreachable cluster is an error now, not a wait.
async fn connect(endpoints: &[String]) -> Result<Client, String> {
    let within = Duration::from_secs(2);
    let opts = ConnectOptions::new().with_connect_timeout(within);
    let try_it = async {
        let mut c = Client::connect(endpoints, Some(opts))
            .await
            .map_err(|e| e.to_string())?;
        c.status().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(c)
    };
    match tokio::time::timeout(within, try_it).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", human(within))),
    }
}

pub(crate) async fn etcd_lock(a: EtcdArgs, verbose: bool) -> Outcome {
    let list = a.endpoints.join(",");
    let client = match connect(&a.endpoints).await {
        Ok(c) => c,
        Err(why) => {
            say(format!(
                "cannot reach etcd at {list}: {why}\n  check that the members run and their \
                 client addresses (HOST:PORT)"
            ));
            return Outcome { code: EXIT_FAILED };
        }
    };
    let flags = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    let lock = EtcdLock::new(a.name.clone(), client)
        .flags(flags)
        .lease_ttl(a.ttl);
    let what = format!("etcd lock {:?}", a.name);
    let r = waiting(
        &what,
        verbose,
        lock.acquire_timeout(timeout_of(&a.wait)),
        || async { None },
    )
    .await;
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let who = format!("portalocker who --etcd {list} {}", a.name);
            let hint = busy_hint(&a.wait, Some(who));
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!(
            "locked {what} as holder {} (key {}) after {}",
            guard.holder_id(),
            guard.key(),
            human(guard.waited())
        ));
    }
    let env = super::held::fenced_env(guard.holder_id(), guard.fence_token());
    super::held::run_held(
        &what,
        guard,
        portalocker::EtcdLockGuard::release,
        &a.command,
        &env,
        a.grace,
    )
    .await
}

/// `portalocker who --etcd ENDPOINTS NAME`.
pub(crate) async fn who(endpoints: &[String], name: &str) -> Outcome {
    let list = endpoints.join(",");
    let client = match connect(endpoints).await {
        Ok(c) => c,
        Err(why) => {
            say(format!("cannot reach etcd at {list}: {why}"));
            return Outcome { code: EXIT_FAILED };
        }
    };
    match EtcdLock::new(name, client).holders().await {
        Ok(list) if list.is_empty() => {
            println!("nobody holds etcd lock {name:?}");
            Outcome { code: 1 }
        }
        Ok(list) => {
            // Served in this order: the first holds, and so do the
            // readers before the first writer; the rest wait.
            let mut readers_only = true;
            for (i, h) in list.iter().enumerate() {
                let holds = i == 0 || (readers_only && h.shared);
                readers_only &= h.shared;
                let mode = if h.shared { "shared" } else { "exclusive" };
                let state = if holds { "holds" } else { "waits" };
                println!("{state} {mode} {h}");
            }
            Outcome { code: 0 }
        }
        Err(e) => {
            say(format!("cannot ask {list}: {e}"));
            Outcome { code: EXIT_FAILED }
        }
    }
}
