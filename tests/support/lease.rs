//! The lease lock's child roles, and two FUSE mounts of one directory
//! (`bindfs`, without lock forwarding): two "hosts" whose `flock` locks
//! do not see each other, as two NFS clients with client-local locks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portalocker::{LeaseLock, Lock};

use super::say;

/// The system-wide monotonic clock in ns: comparable across processes,
/// and not moved by a wall-clock step (nor by libfaketime with
/// `FAKETIME_DONT_FAKE_MONOTONIC=1`).
pub fn mono_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// Reads "go <ms>" from stdin: how long to run.
async fn read_run() -> Duration {
    Duration::from_millis(super::read_go_line().await.parse().unwrap())
}

/// The lease roles of `support::run_role`.
pub async fn run_role(role: &str, args: &[String]) {
    match role {
        // A fleet worker on a lease lock: says READY, reads "go <ms>",
        // then for that long loops acquire, a 2 ms section, release, and
        // writes one line per grant ("G <start> <end> <token>", monotonic
        // ns) and per failed acquire ("T …") to the output file.
        // Arguments: lease directory, output file, lease TTL (ms).
        "lease-fleet" => {
            let ttl = Duration::from_millis(args[2].parse().unwrap());
            let lock = LeaseLock::new(&args[0])
                .lease_ttl(ttl)
                .timeout(Duration::from_secs(60))
                .check_interval(Duration::from_millis(5));
            // The wall clock this process sees (libfaketime's, in the
            // clock-step test), in seconds since the epoch.
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            say("READY", wall);
            let run = read_run().await;
            let end = tokio::time::Instant::now() + run;
            let out = super::fleet_loop(
                || tokio::time::Instant::now() >= end,
                mono_ns,
                Duration::from_millis(2),
                || lock.acquire(),
                portalocker::LeaseLockGuard::release,
            )
            .await;
            std::fs::write(&args[1], out).unwrap();
            say("DONE", "");
        }
        // The same loop with plain `flock` locks (`Lock`) on a file:
        // arguments: lock file, output file. Records as `lease-fleet`,
        // token 0.
        "flock-fleet" => {
            let lock = Lock::new(&args[0]).timeout(Duration::from_secs(60));
            say("READY", std::process::id());
            let run = read_run().await;
            let end = tokio::time::Instant::now() + run;
            let mut out = String::new();
            while tokio::time::Instant::now() < end {
                let g = lock.acquire().await.unwrap();
                let start = mono_ns();
                tokio::time::sleep(Duration::from_millis(2)).await;
                let stop = mono_ns();
                drop(g);
                writeln!(out, "G {start} {stop} 0").unwrap();
                // Let the others in (a flock handoff is not fair).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            std::fs::write(&args[1], out).unwrap();
            say("DONE", "");
        }
        // Acquires (lease TTL args[1] ms, timeout args[2] ms), says "GOT
        // <token>" or "BUSY <error>", then for each line "check" on stdin
        // says "LOST <is_lost>"; releases at EOF. Arguments: lease
        // directory, TTL (ms), timeout (ms).
        "lease-hold" => {
            let ttl = Duration::from_millis(args[1].parse().unwrap());
            let timeout = Duration::from_millis(args[2].parse().unwrap());
            let lock = LeaseLock::new(&args[0])
                .lease_ttl(ttl)
                .timeout(timeout)
                .check_interval(Duration::from_millis(20));
            let g = match lock.acquire().await {
                Ok(g) => g,
                Err(e) => {
                    say("BUSY", e);
                    super::wait_for_parent();
                    return;
                }
            };
            say("GOT", g.fence_token());
            super::answer_checks(|| g.is_lost()).await;
            let _ = g.release().await;
        }
        other => panic!("unknown role {other}"),
    }
}

/// Two `bindfs` FUSE mounts of one directory, without lock forwarding:
/// what one mount's `flock` holds, the other's does not see. Needs root
/// and `bindfs` (Debian's package; `scripts/test.sh` installs it).
pub struct TwoHosts {
    _base: tempfile::TempDir,
    pub shared: PathBuf,
    pub a: PathBuf,
    pub b: PathBuf,
}

impl TwoHosts {
    pub fn mount() -> Self {
        assert!(
            super::is_root(),
            "mounting FUSE filesystems needs root: run the suite as root (scripts/test.sh does, \
             in CI)"
        );
        let base = tempfile::tempdir().unwrap();
        let shared = base.path().join("shared");
        let a = base.path().join("host-a");
        let b = base.path().join("host-b");
        for d in [&shared, &a, &b] {
            std::fs::create_dir(d).unwrap();
        }
        for m in [&a, &b] {
            // bindfs's defaults: FUSE caches attributes and names for a
            // second, as an NFS client caches them for a few.
            let status = Command::new("bindfs")
                .arg(&shared)
                .arg(m)
                .status()
                .expect("bindfs is needed (Debian: apt-get install bindfs)");
            assert!(status.success(), "bindfs {} failed: {status}", m.display());
        }
        Self {
            _base: base,
            shared,
            a,
            b,
        }
    }

    /// The same name under both mounts.
    pub fn both(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.a.join(name), self.b.join(name))
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for m in [&self.a, &self.b] {
            let _ = Command::new("fusermount")
                .args(["-u", "-z"])
                .arg(m)
                .status();
            let _ = Command::new("umount")
                .arg("-l")
                .arg(m)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Whether `path` is on a FUSE mount (for the test's own sanity).
pub fn on_fuse(path: &Path) -> bool {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("fuse")
}
