//! `portalocker lock`: a file lock, like flock(1).

use std::ffi::OsString;
use std::path::PathBuf;

use portalocker::{Lock, LockFlags};

use crate::args::LockArgs;
use crate::exit::{busy_hint, failed, say, Outcome, EXIT_FAILED, EXIT_LOST, EXIT_USAGE};
use crate::progress::{file_holder, human, waiting};
use crate::supervise::{run, run_plain};
use crate::timeout_of;

pub(crate) async fn lock(
    a: LockArgs,
    path: PathBuf,
    command: Vec<OsString>,
    verbose: bool,
) -> Outcome {
    let flags = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    let lock = Lock::new(&path).flags(flags);
    let what = path.display().to_string();
    let r = waiting(
        &what,
        verbose,
        lock.acquire_timeout(timeout_of(&a.wait)),
        || file_holder(&path),
    )
    .await;
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let hint = busy_hint(&a.wait, Some(format!("portalocker who {what}")));
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!("locked {what} after {}", human(guard.waited())));
    }
    let mut env = Vec::new();
    let inherited = a.inherit || (cfg!(unix) && !a.no_inherit && !a.close);
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

/// flock(1)'s third form: locks (or with `-u` unlocks) the open file
/// description of descriptor `fd`, which this program inherited, and
/// returns: the lock stays with whoever keeps the descriptor open (the
/// shell of `( portalocker lock 9; … ) 9>FILE`). Waits by trying again,
/// up to the timeout.
///
/// Must run before this program opens any descriptor of its own (before
/// the runtime is built), so that `fd` can only be an inherited one.
#[cfg(unix)]
pub(crate) fn lock_descriptor(a: &LockArgs, fd: u32, verbose: bool) -> Outcome {
    use std::os::fd::BorrowedFd;
    use std::time::{Duration, Instant};
    let what = format!("descriptor {fd}");
    let Some(raw) = i32::try_from(fd).ok().filter(|&n| n != -1) else {
        say(format!("{fd} is not a descriptor number"));
        return Outcome { code: EXIT_USAGE };
    };
    // SAFETY: nothing in this process has opened a descriptor yet (the
    // runtime is not built), so descriptor `raw`, if it is open at all, is
    // one this process inherited and nothing here closes while it is
    // borrowed; if it is not open, `fcntl` below fails with EBADF and it
    // is not used further.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    if rustix::io::fcntl_getfd(borrowed).is_err() {
        say(format!(
            "{what} is not open; open it in the shell first, e.g. `( portalocker lock {fd}; …) \
             {fd}>FILE`"
        ));
        return Outcome { code: EXIT_USAGE };
    }
    // A duplicate shares the open file description, and with it the lock.
    let file = match borrowed.try_clone_to_owned() {
        Ok(owned) => std::fs::File::from(owned),
        Err(e) => {
            say(format!("{what}: {e}"));
            return Outcome { code: EXIT_FAILED };
        }
    };
    if a.unlock {
        return match portalocker::unlock(&file) {
            Ok(()) => Outcome { code: 0 },
            Err(e) => failed(&what, &e, a.wait.conflict_exit_code, ""),
        };
    }
    let mode = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    let started = Instant::now();
    let deadline = started.checked_add(timeout_of(&a.wait));
    let mut pause = Duration::from_millis(1);
    loop {
        match portalocker::lock(&file, mode | LockFlags::NON_BLOCKING) {
            Ok(()) => {
                if verbose {
                    say(format!("locked {what} after {}", human(started.elapsed())));
                }
                return Outcome { code: 0 };
            }
            Err(e) if e.is_already_locked() && deadline.is_none_or(|d| Instant::now() < d) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                let hint = busy_hint(&a.wait, None);
                return failed(&what, &e, a.wait.conflict_exit_code, &hint);
            }
        }
    }
}

#[cfg(not(unix))]
pub(crate) fn lock_descriptor(_a: &LockArgs, fd: u32, _verbose: bool) -> Outcome {
    say(format!(
        "descriptor {fd}: locking an inherited descriptor is a Unix form; give a FILE"
    ));
    Outcome { code: EXIT_USAGE }
}
