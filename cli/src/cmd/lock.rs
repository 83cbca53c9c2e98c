//! `portalocker lock`: a file lock, like flock(1).

use portalocker::{Lock, LockFlags};

use crate::args::LockArgs;
use crate::exit::{failed, say, Outcome, EXIT_FAILED, EXIT_LOST};
use crate::progress::{file_holder, human, waiting};
use crate::supervise::{run, run_plain};
use crate::timeout_of;

pub(crate) async fn lock(a: LockArgs, verbose: bool) -> Outcome {
    let flags = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    let lock = Lock::new(&a.path).flags(flags);
    let what = a.path.display().to_string();
    let r = waiting(
        &what,
        verbose,
        lock.acquire_timeout(timeout_of(&a.wait)),
        || file_holder(&a.path),
    )
    .await;
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let hint = format!(
                "wait for it with --timeout SECONDS, or see who holds it: portalocker who {what}"
            );
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!("locked {what} after {}", human(guard.waited())));
    }
    let mut env = Vec::new();
    let inherited = a.inherit || (cfg!(unix) && !a.no_inherit && !a.close);
    let command = match a.shell {
        Some(line) => vec!["sh".into(), "-c".into(), line],
        None => a.command,
    };
    if inherited {
        match inherit(&guard) {
            Ok(fd) => env.push(("PORTALOCKER_LOCK_FD".to_string(), fd.to_string())),
            Err(e) => {
                say(format!("cannot pass the lock to the command: {e}"));
                return Outcome { code: EXIT_FAILED };
            }
        }
    }
    let code = if a.stop_on_loss {
        run(
            &command,
            &env,
            Some(guard.lost()),
            a.grace,
            None,
            !inherited,
        )
        .await
    } else {
        run_plain(&command, &env, !inherited).await
    };
    // A loss is reported whether or not the command was stopped for it.
    let lost = guard.is_lost();
    if inherited {
        // Something the command left running may hold the lock through the
        // inherited descriptor, and an unlock would release it for them too
        // (it is one open file description): only close ours, at exit.
        if lost {
            say(format!(
                "{what} was removed or replaced while the command ran: another process could \
                 take the lock meanwhile"
            ));
        }
        std::mem::forget(guard);
    } else if let Err(e) = guard.release().await {
        say(e);
    }
    if lost && a.stop_on_loss {
        say(format!(
            "{what} was lost while the command ran; it was stopped"
        ));
        return Outcome { code: EXIT_LOST };
    }
    if verbose {
        say(format!("released {what}"));
    }
    Outcome { code }
}

/// Clears close-on-exec on the guard's descriptor; returns its number.
#[cfg(unix)]
pub(crate) fn inherit(guard: &portalocker::LockGuard) -> std::io::Result<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = guard.as_fd();
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    Ok(fd.as_raw_fd())
}

#[cfg(not(unix))]
pub(crate) fn inherit(_guard: &portalocker::LockGuard) -> std::io::Result<i32> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "--inherit needs Unix descriptors",
    ))
}
