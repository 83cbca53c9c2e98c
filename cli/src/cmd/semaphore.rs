//! `portalocker semaphore`: a slot of a lock-file semaphore.

use portalocker::BoundedSemaphore;

use crate::args::SemaphoreArgs;
use crate::exit::{busy_hint, failed, say, Outcome};
use crate::progress::{human, waiting};
use crate::supervise::run_plain;
use crate::timeout_of;

pub(crate) async fn semaphore(a: SemaphoreArgs, verbose: bool) -> Outcome {
    let sem = BoundedSemaphore::new(a.max).name(&a.name).directory(&a.dir);
    let what = format!(
        "semaphore {:?} ({} slots in {})",
        a.name,
        a.max,
        a.dir.display()
    );
    let r = waiting(
        &what,
        verbose,
        sem.acquire_timeout(timeout_of(&a.wait)),
        || async { None },
    )
    .await;
    let permit = match r {
        Ok(p) => p,
        Err(e) => {
            return failed(
                &what,
                &e,
                a.wait.conflict_exit_code,
                &busy_hint(&a.wait, None),
            );
        }
    };
    if verbose {
        say(format!(
            "slot {} of {what} after {}",
            permit.slot(),
            human(permit.waited())
        ));
    }
    let env = [("PORTALOCKER_SLOT".to_string(), permit.slot().to_string())];
    let code = run_plain(&a.command, &env, true).await;
    if let Err(e) = permit.release().await {
        say(e);
    }
    Outcome { code }
}
