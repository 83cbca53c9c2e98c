//! `portalocker`: run a command while holding a lock — a file lock (like
//! flock(1), with timeouts in seconds everywhere), a lock-file semaphore
//! slot, a pid file, or a Redis lock — and see who holds one. Built on the
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

use crate::args::{Cli, Cmd, WaitArgs};
use crate::cmd::{
    lock::lock, pidfile::pidfile, redis::redis_lock, semaphore::semaphore, who::who, write::write,
};
use crate::exit::{EXIT_FAILED, EXIT_USAGE, QUIET};
use crate::supervise::{supervised, SUPERVISED};

fn main() -> ExitCode {
    // The re-executed intermediate of a command tied to this program's life.
    let raw: Vec<OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == SUPERVISED) {
        return supervised(&raw[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
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
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    let out = rt.block_on(async move {
        match cli.cmd {
            Cmd::Lock(a) => lock(a, verbose).await,
            Cmd::Semaphore(a) => semaphore(a, verbose).await,
            Cmd::Pidfile(a) => pidfile(a, verbose).await,
            Cmd::Redis(a) => redis_lock(a, verbose).await,
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
