//! `portalocker`: run a command while holding a lock — a file lock (like
//! flock(1), with timeouts in seconds everywhere), a lock-file semaphore
//! slot, a pid file, a Redis lock or an etcd lock — and see who holds one. Built on the
//! `portalocker` library, so its locks exclude the library's users and
//! Python portalocker's on the same files and channels.

mod args;
mod cmd;
mod exit;
mod progress;
mod supervise;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::args::{Cli, Cmd, LockTarget, WaitArgs};
use crate::cmd::{
    lock::{lock, lock_descriptor},
    pidfile::pidfile,
    redis::redis_lock,
    semaphore::semaphore,
    who::who,
    write::write,
};
use crate::exit::{EXIT_FAILED, EXIT_USAGE, QUIET};
use crate::supervise::{supervised, watch, SUPERVISED, WATCH};

fn main() -> ExitCode {
    // The re-executed intermediate of a command tied to this program's life.
    let raw: Vec<OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == SUPERVISED) {
        return supervised(&raw[2..]);
    }
    if raw.get(1).is_some_and(|a| a == WATCH) {
        return watch();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let mut cli = cli;
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    // The forms of `lock` are sorted out here: a descriptor is locked
    // before the runtime opens descriptors of its own.
    let mut file_lock = None;
    if let Cmd::Lock(a) = &mut cli.cmd {
        match a.target() {
            Ok(LockTarget::Descriptor(fd)) => {
                return ExitCode::from(lock_descriptor(a, fd, cli.verbose).code);
            }
            Ok(LockTarget::File(path, command)) => file_lock = Some((path, command)),
            Err(e) => {
                eprintln!("portalocker: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portalocker: cannot start: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let verbose = cli.verbose;
    let out = rt.block_on(async move {
        match cli.cmd {
            Cmd::Lock(a) => match file_lock {
                Some((path, command)) => lock(a, path, command, verbose).await,
                // Sorted out above: every other form has returned.
                None => exit::Outcome { code: EXIT_USAGE },
            },
            Cmd::Semaphore(a) => semaphore(a, verbose).await,
            Cmd::Pidfile(a) => pidfile(a, verbose).await,
            Cmd::Redis(a) => redis_lock(a, verbose).await,
            #[cfg(feature = "etcd")]
            Cmd::Etcd(a) => cmd::etcd::etcd_lock(a, verbose).await,
            Cmd::Lease(a) => cmd::lease::lease_lock(a, verbose).await,
            Cmd::Doctor(a) => cmd::doctor::doctor(a).await,
            Cmd::Who(a) => who(a).await,
            Cmd::Write(a) => write(a).await,
        }
    });
    ExitCode::from(out.code)
}

pub(crate) fn timeout_of(w: &WaitArgs) -> Duration {
    if w.nonblock {
        Duration::ZERO
    } else {
        w.timeout.unwrap_or(Duration::MAX)
    }
}
