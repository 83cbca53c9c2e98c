//! A daemon that refuses to start twice and names the running instance.
//!
//! ```text
//! cargo run --example single_instance            # runs for 30 s (or Ctrl-C)
//! cargo run --example single_instance            # in a second terminal: refused
//! ```
//!
//! The pid file is `$PORTALOCKER_DEMO_DIR/single_instance.pid` (default:
//! the temporary directory). A Python daemon using
//! `portalocker.PidFileLock` on the same path excludes this one and vice
//! versa.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use portalocker::PidFileLock;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let dir = std::env::var_os("PORTALOCKER_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let lock = PidFileLock::new(dir.join("single_instance.pid"));

    let guard = match lock.acquire().await {
        Ok(guard) => guard,
        Err(e) if e.is_already_locked() => {
            match e.holder_pid() {
                Some(pid) => eprintln!("already running as pid {pid}"),
                None => eprintln!("already running (its pid file is unreadable)"),
            }
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "running as pid {} (pid file {})",
        std::process::id(),
        guard.path().display()
    );

    let run_for = std::env::var("SINGLE_INSTANCE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(run_for)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    match guard.release().await {
        Ok(()) => {
            println!("stopped; pid file removed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stopped, but cleanup failed: {e}");
            ExitCode::from(3)
        }
    }
}
