//! Exit codes, and how a failure is said.

use portalocker::Error;

/// Exit code: the lock is busy (as flock(1); change it with `-E`).
pub(crate) const EXIT_BUSY: u8 = 1;
/// Exit code: a command-line error (clap's).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: the lock was lost while the command ran, and it was stopped
/// (a Redis lock, or a file lock with `--stop-on-loss`).
pub(crate) const EXIT_LOST: u8 = 75;
/// Exit code: an error of this program (I/O, an unreachable server).
pub(crate) const EXIT_FAILED: u8 = 71;
/// Exit code: the command could not be run (as shells: not found 127,
/// not executable 126).
pub(crate) const EXIT_NOT_FOUND: u8 = 127;
pub(crate) const EXIT_NOT_EXECUTABLE: u8 = 126;

/// How the lock was taken, for the child's run.
pub(crate) struct Outcome {
    pub(crate) code: u8,
}

pub(crate) fn say(msg: impl std::fmt::Display) {
    eprintln!("portalocker: {msg}");
}

/// The message and exit code for a failed acquisition.
/// `-q`: nothing on standard error when the lock is busy.
pub(crate) static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What to do about a busy lock: wait (longer, if a timeout was given),
/// or see who holds it (`who`: the command that tells).
pub(crate) fn busy_hint(wait: &crate::args::WaitArgs, who: Option<String>) -> String {
    let wait = match wait.timeout {
        Some(t) if !wait.nonblock => format!(
            "it stayed busy for {}; give a longer --timeout",
            crate::progress::human(t)
        ),
        _ => "wait for it with --timeout SECONDS".to_string(),
    };
    match who {
        Some(cmd) => format!("{wait}, or see who holds it: {cmd}"),
        None => wait,
    }
}

pub(crate) fn failed(what: &str, e: &Error, busy_code: u8, hint: &str) -> Outcome {
    if e.is_already_locked() {
        if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            say(format!("{e}\n  {what} is busy; {hint}"));
        }
        Outcome { code: busy_code }
    } else if e.kind() == portalocker::ErrorKind::InvalidInput {
        // Arguments that can never work: a usage error, as clap's.
        say(e);
        Outcome { code: EXIT_USAGE }
    } else {
        say(e);
        Outcome { code: EXIT_FAILED }
    }
}

pub(crate) fn exit_code(s: std::process::ExitStatus) -> u8 {
    if let Some(c) = s.code() {
        return u8::try_from(c & 0xff).unwrap_or(EXIT_FAILED);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return u8::try_from(128 + sig).unwrap_or(EXIT_FAILED);
        }
    }
    EXIT_FAILED
}
