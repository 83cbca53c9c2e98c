//! The tail every lease-based subcommand shares (etcd, lease files): run
//! the command while the lock is held, stop it if the lock is lost,
//! release, and say how it ended.

use std::ffi::OsString;
use std::future::Future;
use std::time::Duration;

use portalocker::HeldLock;

use crate::exit::{say, Outcome, EXIT_LOST};
use crate::supervise::run;

/// The variables a command under a fenced lock gets: its holder id and
/// fencing token.
pub(crate) fn fenced_env(holder_id: &str, token: u64) -> Vec<(String, String)> {
    vec![
        ("PORTALOCKER_HOLDER_ID".to_string(), holder_id.to_string()),
        ("PORTALOCKER_FENCING_TOKEN".to_string(), token.to_string()),
    ]
}

/// Runs `command` with `env` under `guard` (tied to this program's life:
/// the lock cannot pass to the command), stopping it (SIGTERM, SIGKILL
/// `grace` later) if the lock is lost; then releases with `release`.
/// `what` names the lock in messages.
pub(crate) async fn run_held<G, F, R>(
    what: &str,
    guard: G,
    release: R,
    command: &[OsString],
    env: &[(String, String)],
    grace: Duration,
) -> Outcome
where
    G: HeldLock,
    R: FnOnce(G) -> F,
    F: Future<Output = portalocker::Result<()>>,
{
    let code = run(command, env, Some(guard.lost()), grace, None, true).await;
    let lost = guard.is_lost();
    let why = guard.ensure_held().err();
    if let Err(e) = release(guard).await {
        if !lost {
            say(e);
        }
    }
    if lost {
        let why = why.map(|e| format!(": {e}")).unwrap_or_default();
        say(format!(
            "{what} was lost while the command ran; it was stopped{why}"
        ));
        return Outcome { code: EXIT_LOST };
    }
    Outcome { code }
}
