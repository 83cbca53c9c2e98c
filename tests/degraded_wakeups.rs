//! Without inotify (instances, watches or descriptors exhausted) waiters of
//! another process's lock fall back to polling: that is said once, as a
//! warning through `log` (or `tracing`, whose events reach `log` while no
//! subscriber is installed), never silently.
//!
//! One test per binary on purpose: it uses up this process's descriptors.
//!
//! Linux only: the other platforms have no wake-ups to lose (they poll, as
//! documented).
#![cfg(all(target_os = "linux", not(portalocker_portable)))]
mod support;

use std::sync::Mutex;
use std::time::Duration;

use portalocker::Lock;

static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            WARNINGS.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn warnings() -> Vec<String> {
    WARNINGS.lock().unwrap().clone()
}

#[test]
fn polling_for_want_of_inotify_is_said_once() {
    log::set_logger(&Recorder).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let rt = support::current_thread();
    rt.block_on(async {
        let (_d, path) = support::temp_path("p.lock");
        // Held through another open file description of this process: to
        // the lock it is another holder, and its release wakes nobody.
        let held = std::fs::File::create(&path).unwrap();
        held.lock().unwrap();
        let lock = Lock::new(&path)
            .timeout(Duration::from_millis(30))
            .check_interval(Duration::from_millis(10));
        // The first attempt opens the file and keeps its descriptor.
        assert!(lock.try_acquire().await.unwrap_err().is_already_locked());
        // Now no descriptor is left for an inotify instance.
        let me = std::process::id().to_string();
        let limited = std::process::Command::new("prlimit")
            .args(["--pid", &me, "--nofile=256:256"])
            .status()
            .expect("prlimit (util-linux) is needed");
        assert!(limited.success());
        let hoard = support::use_up_descriptors();
        assert!(warnings().is_empty(), "{:?}", warnings());
        for _ in 0..2 {
            let e = lock.acquire().await.unwrap_err();
            assert!(e.is_already_locked(), "{e}");
        }
        drop(hoard);
        let said = warnings();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("inotify") && said[0].contains("poll"),
            "{said:?}"
        );
    });
}
