//! `portalocker pidfile`: a locked pid file.

use std::time::Duration;

use portalocker::PidFileLock;

use crate::args::PidfileArgs;
use crate::exit::{failed, say, Outcome};
use crate::progress::waiting;
use crate::supervise::run;

pub(crate) async fn pidfile(a: PidfileArgs, verbose: bool) -> Outcome {
    let lock = PidFileLock::new(&a.path);
    let what = a.path.display().to_string();
    let r = match a.timeout {
        Some(t) => {
            let l = lock.clone().fail_when_locked(false);
            waiting(&what, verbose, l.acquire_timeout(t), || async {
                PidFileLock::new(&a.path)
                    .read_pid()
                    .await
                    .map(|p| format!("pid {p}"))
            })
            .await
        }
        None => lock.try_acquire().await,
    };
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let hint = match e.holder_pid() {
                Some(pid) => format!("another instance runs as pid {pid}"),
                None => "another instance runs".to_string(),
            };
            return failed(&what, &e, a.conflict_exit_code, &hint);
        }
    };
    let code = run(
        &a.command,
        &[],
        None::<std::future::Pending<()>>,
        Duration::ZERO,
        Some(&guard),
        true,
    )
    .await;
    if verbose {
        say(format!("single instance: {what} ended"));
    }
    if let Err(e) = guard.release().await {
        say(e);
    }
    Outcome { code }
}
