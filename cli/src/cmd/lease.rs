//! `portalocker lease`: a lease lock directory; and `who` on one.

use std::path::Path;

use portalocker::LeaseLock;

use crate::args::LeaseArgs;
use crate::exit::{busy_hint, failed, say, Outcome, EXIT_FAILED};
use crate::progress::{human, waiting};
use crate::timeout_of;

pub(crate) async fn lease_lock(a: LeaseArgs, verbose: bool) -> Outcome {
    let lock = LeaseLock::new(&a.path).lease_ttl(a.ttl);
    let what = format!("lease lock {}", a.path.display());
    let holder = lock.clone();
    let r = waiting(
        &what,
        verbose,
        lock.acquire_timeout(timeout_of(&a.wait)),
        || {
            let holder = holder.clone();
            async move { holder.holder().await.ok().flatten().map(|h| h.to_string()) }
        },
    )
    .await;
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let who = format!("portalocker who {}", a.path.display());
            let hint = busy_hint(&a.wait, Some(who));
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!(
            "locked {what} as holder {} (claim {}) after {}",
            guard.holder_id(),
            guard.claim_path().display(),
            human(guard.waited())
        ));
    }
    let env = super::held::fenced_env(guard.holder_id(), guard.fence_token());
    super::held::run_held(
        &what,
        guard,
        portalocker::LeaseLockGuard::release,
        &a.command,
        &env,
        a.grace,
    )
    .await
}

/// Whether `dir` holds lease claims (files named by 20 digits).
pub(crate) fn is_lease_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// `portalocker who DIR` on a lease lock directory.
pub(crate) async fn who(dir: &Path) -> Outcome {
    match LeaseLock::new(dir).holder().await {
        Ok(None) => {
            println!("nobody holds lease lock {}", dir.display());
            Outcome { code: 1 }
        }
        Ok(Some(h)) => {
            let gone = if h.runs_here() == Some(false) {
                " (its process no longer runs: the claim goes stale after its TTL)"
            } else {
                ""
            };
            println!("{h}, lease TTL {}{gone}", human(h.ttl));
            Outcome { code: 0 }
        }
        Err(e) => {
            say(format!("cannot read lease lock {}: {e}", dir.display()));
            Outcome { code: EXIT_FAILED }
        }
    }
}
