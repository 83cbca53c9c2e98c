//! Windows: a command whose lock cannot outlive `portalocker` (on Windows
//! no lock passes to the command) dies with it. `portalocker` puts itself
//! in a job object that kills its processes when its last handle closes,
//! so killing `portalocker` (`TerminateProcess`) kills the command too.
//! The command is this test binary re-executed, holding a file lock on a
//! marker: the marker's lock is free again only once the command is gone.
#![cfg(windows)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portalocker");
const ROLE: &str = "PORTALOCKER_CLI_TEST_MARKER";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The command: holds the marker's lock until it is killed.
#[test]
fn child_entry() {
    let Ok(marker) = std::env::var(ROLE) else {
        return;
    };
    let rt = runtime();
    let guard = rt
        .block_on(portalocker::Lock::new(&marker).acquire())
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    // Ends by itself if the test failed (a stop file beside the temporary
    // directory), so that a command that wrongly outlives `portalocker`
    // does not outlive the test run too.
    let stop = stop_file(std::path::Path::new(&marker));
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&stop);
    drop(guard);
}

/// Where a failed test tells a command that outlived `portalocker` to
/// end: outside the test's temporary directory, which would be removed.
fn stop_file(marker: &std::path::Path) -> std::path::PathBuf {
    let dir = marker.parent().unwrap();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    dir.with_file_name(format!("{name}.stop"))
}

/// Creates the stop file on drop unless the test passed.
struct Stop(std::path::PathBuf, bool);

impl Drop for Stop {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::write(&self.0, b"");
        }
    }
}

#[test]
fn a_command_dies_with_a_killed_portalocker() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("marker.lock");
    let mut stop = Stop(stop_file(&marker), true);
    let me = std::env::current_exe().unwrap();
    let mut wrapper = Command::new(BIN)
        .args(["semaphore", "--max", "1", "--name", "tie", "--dir"])
        .arg(d.path())
        .arg("--")
        .arg(&me)
        .args([
            "child_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE, &marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(wrapper.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if line.trim() == "READY" {
            break;
        }
        seen.push(line);
    }
    assert!(
        seen.len() < 1000 && wrapper.try_wait().unwrap().is_none(),
        "the command never held the marker: {seen:?}"
    );
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    // Free once the command is gone; a command that ran on would hold it.
    let rt = runtime();
    let freed = rt.block_on(
        portalocker::Lock::new(&marker)
            .timeout(Duration::from_secs(60))
            .acquire(),
    );
    assert!(
        freed.is_ok(),
        "the command outlived the killed portalocker: {:?}",
        freed.err()
    );
    stop.1 = false;
}
