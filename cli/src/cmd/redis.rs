//! `portalocker redis`: a Redis lock.

use std::time::Duration;

use portalocker::{LockFlags, RedisClusterLock, RedisLock};

use crate::args::RedisArgs;
use crate::exit::{busy_hint, failed, say, Outcome, EXIT_FAILED, EXIT_LOST, EXIT_USAGE};
use crate::progress::{human, waiting};
use crate::supervise::run;
use crate::timeout_of;

pub(crate) async fn redis_lock(a: RedisArgs, verbose: bool) -> Outcome {
    if a.cluster {
        return cluster_lock(a, verbose).await;
    }
    let [url] = a.url.as_slice() else {
        say("more than one --url is only for --cluster (the nodes of one Redis Cluster)");
        return Outcome { code: EXIT_USAGE };
    };
    let url = url.clone();
    let lock = match RedisLock::from_url(a.channel.clone(), &url) {
        Ok(l) => l,
        Err(e) => {
            say(e);
            return Outcome { code: EXIT_USAGE };
        }
    };
    let flags = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    // A server that cannot be reached is an error now, not a wait: only a
    // busy lock is waited for. (Through Sentinel the library says so at
    // once itself: sentinels that cannot name a primary.)
    if !url.contains("+sentinel://") {
        let client = portalocker::redis::Client::open(url.as_str());
        if let Err(why) = match &client {
            Ok(c) => reachable(c).await,
            Err(e) => Err(e.to_string()),
        } {
            say(format!(
                "cannot reach Redis at {}: {why}\n  check that the server runs and the URL (host, \
                 port, password, rediss:// for TLS)",
                client.as_ref().map_or_else(
                    |_| "the --url".to_string(),
                    |c| c.get_connection_info().addr().to_string()
                )
            ));
            return Outcome { code: EXIT_FAILED };
        }
    }
    let lock = lock.flags(flags).fencing(a.fencing);
    let what = format!("Redis lock {:?}", a.channel);
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
            let who = format!("portalocker who --redis {} {}", url, a.channel);
            let hint = busy_hint(&a.wait, Some(who));
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!(
            "locked {what} as holder {} after {}",
            guard.holder_id(),
            human(guard.waited())
        ));
    }
    let mut env = vec![(
        "PORTALOCKER_HOLDER_ID".to_string(),
        guard.holder_id().to_string(),
    )];
    if let Some(t) = guard.fence_token() {
        env.push(("PORTALOCKER_FENCING_TOKEN".to_string(), t.to_string()));
    }
    let code = run(&a.command, &env, Some(guard.lost()), a.grace, None, true).await;
    let lost = guard.is_lost();
    if let Err(e) = guard.release().await {
        if !lost {
            say(e);
        }
    }
    if lost {
        say(format!(
            "{what} was lost while the command ran; it was stopped"
        ));
        return Outcome { code: EXIT_LOST };
    }
    Outcome { code }
}

/// `portalocker redis --cluster`: a [`RedisClusterLock`] on the cluster
/// the seeds belong to.
async fn cluster_lock(a: RedisArgs, verbose: bool) -> Outcome {
    let client = match portalocker::redis::cluster::ClusterClient::new(a.url.clone()) {
        Ok(c) => c,
        Err(e) => {
            say(format!("bad --url for --cluster: {e}"));
            return Outcome { code: EXIT_USAGE };
        }
    };
    // An unreachable cluster is an error now, not a wait.
    let within = Duration::from_secs(2);
    match tokio::time::timeout(within, client.get_async_connection()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            say(format!(
                "cannot reach the Redis Cluster at {}: {e}",
                seeds(&a.url)
            ));
            return Outcome { code: EXIT_FAILED };
        }
        Err(_) => {
            say(format!(
                "cannot reach the Redis Cluster at {}: no answer within {}",
                seeds(&a.url),
                human(within)
            ));
            return Outcome { code: EXIT_FAILED };
        }
    }
    let lock = RedisClusterLock::new(a.channel.clone(), client).lease_ttl(a.ttl);
    let what = format!("Redis Cluster lock {:?}", a.channel);
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
            let hint = busy_hint(&a.wait, None);
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!(
            "locked {what} as holder {} (token {}) after {}",
            guard.holder_id(),
            guard.fence_token(),
            human(guard.waited())
        ));
    }
    let env = super::held::fenced_env(guard.holder_id(), guard.fence_token());
    super::held::run_held(
        &what,
        guard,
        portalocker::RedisClusterLockGuard::release,
        &a.command,
        &env,
        a.grace,
    )
    .await
}

/// One `PING` within 2 s.
pub(crate) async fn reachable(client: &portalocker::redis::Client) -> Result<(), String> {
    let within = Duration::from_secs(2);
    let ping = async {
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        portalocker::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(within, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {}", human(within))),
    }
}

/// The cluster seeds as error messages show them: where each points (host
/// and port, or the socket path), never the credentials a URL may carry.
fn seeds(urls: &[String]) -> String {
    urls.iter()
        .map(|u| {
            portalocker::redis::IntoConnectionInfo::into_connection_info(u.as_str()).map_or_else(
                |_| "an unreadable --url".to_string(),
                |i| i.addr().to_string(),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
