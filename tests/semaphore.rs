//! `BoundedSemaphore` / `NamedBoundedSemaphore`: naming, bounds, errors,
//! processes (Rust and Python) sharing one semaphore.
mod support;

use std::collections::HashSet;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(unix)]
use portalocker::Lock;
use portalocker::{BoundedSemaphore, ErrorKind, NamedBoundedSemaphore};
#[cfg(unix)]
use support::Proc;

support::child_entry!();

#[test]
fn slot_files_are_named_as_python_names_them() {
    let sem = BoundedSemaphore::new(3)
        .name("jobs")
        .directory("/srv/locks");
    let dir = std::path::absolute("/srv/locks").unwrap();
    let names: Vec<_> = sem
        .get_filenames()
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["jobs.00.lock", "jobs.01.lock", "jobs.02.lock"]
            .map(|n| dir.join(n).to_string_lossy().into_owned())
    );
    let big = BoundedSemaphore::new(101)
        .name("j")
        .directory("/d")
        .get_filenames();
    assert!(big[100].ends_with("j.100.lock"));
    let custom = BoundedSemaphore::new(2)
        .name("q")
        .directory("/d")
        .filename_pattern("slot-{number:03d}-{name}");
    assert!(custom.get_filenames()[1].ends_with("slot-001-q"));
    let mut random = BoundedSemaphore::new(50).name("r").get_random_filenames();
    let mut ordered = BoundedSemaphore::new(50).name("r").get_filenames();
    assert_ne!(
        random, ordered,
        "50 slots shuffled into slot order: 1 in 50!"
    );
    random.sort();
    ordered.sort();
    assert_eq!(random, ordered);
    assert!(BoundedSemaphore::new(2).get_filenames()[0].starts_with(std::env::temp_dir()));
}

#[tokio::test]
async fn at_most_maximum_permits_and_drop_frees() {
    let d = tempfile::tempdir().unwrap();
    let sem = BoundedSemaphore::new(3).name("n").directory(d.path());
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(sem.acquire().await.unwrap());
    }
    let slots: HashSet<_> = permits.iter().map(|p| p.slot()).collect();
    assert_eq!(slots, HashSet::from([0, 1, 2]));
    let err = support::busy(
        sem.clone()
            .timeout(support::ms(50))
            .check_interval(support::ms(5))
            .acquire(),
    )
    .await;
    assert!(err.to_string().contains("all 3 slots"), "{err}");
    support::busy(sem.clone().fail_when_locked(true).acquire()).await;
    let freed = permits.remove(1);
    assert_eq!(freed.slot(), 1);
    assert!(freed.path().ends_with("n.01.lock"));
    freed.release().await.unwrap();
    let again = sem.acquire().await.unwrap();
    assert_eq!(again.slot(), 1);
    drop(permits);
    drop(again);
    // Slot files are never deleted.
    for p in sem.get_filenames() {
        assert!(p.is_file(), "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_the_slot_released_in_this_process_at_once() {
    let d = tempfile::tempdir().unwrap();
    let sem = BoundedSemaphore::new(1)
        .name("w")
        .directory(d.path())
        .timeout(Duration::from_secs(120))
        .check_interval(Duration::from_secs(60));
    let held = sem.acquire().await.unwrap();
    let s2 = sem.clone();
    let waiter = tokio::spawn(async move { s2.acquire().await });
    tokio::task::yield_now().await;
    let t = std::time::Instant::now();
    drop(held);
    let p = waiter.await.unwrap().unwrap();
    assert_eq!(p.slot(), 0);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "woke only by polling"
    );
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let d = tempfile::tempdir().unwrap();
    let base = || BoundedSemaphore::new(2).name("x").directory(d.path());
    let cases = [
        (
            BoundedSemaphore::new(0).name("x").directory(d.path()),
            ErrorKind::InvalidInput,
        ),
        (
            BoundedSemaphore::new(portalocker::MAX_SLOTS + 1).name("x"),
            ErrorKind::InvalidInput,
        ),
        (base().name(""), ErrorKind::InvalidInput),
        (base().name("../escape"), ErrorKind::InvalidInput),
        (base().name("a\0b"), ErrorKind::InvalidInput),
        (
            base().filename_pattern("{name}.lock"),
            ErrorKind::InvalidInput,
        ),
        (
            base().filename_pattern("{number:x}"),
            ErrorKind::InvalidInput,
        ),
        (
            base().filename_pattern("../{number}"),
            ErrorKind::InvalidInput,
        ),
        (base().directory(d.path().join("missing")), ErrorKind::Io),
    ];
    for (sem, kind) in cases {
        let err = sem.acquire().await.unwrap_err();
        assert_eq!(err.kind(), kind, "{sem:?}: {err}");
    }
    // Windows separates with `\` too, and has drive prefixes: a name or
    // pattern with one never reaches outside the directory.
    #[cfg(windows)]
    for sem in [
        base().name("..\\escape"),
        base().filename_pattern("..\\{number}"),
        base().filename_pattern("C:{number}"),
    ] {
        let err = sem.acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{sem:?}: {err}");
    }
    let err = base()
        .directory(d.path().join("missing"))
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.io_error().unwrap().kind(), std::io::ErrorKind::NotFound);
    assert!(BoundedSemaphore::new(0).get_filenames().is_empty());
}

#[tokio::test]
async fn named_semaphore_gets_a_random_private_name() {
    let d = tempfile::tempdir().unwrap();
    let a = NamedBoundedSemaphore::new(1).directory(d.path());
    let b = NamedBoundedSemaphore::new(1).directory(d.path());
    let (fa, fb) = (a.get_filenames(), b.get_filenames());
    let name = fa[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("bounded_semaphore.") && name.ends_with(".00.lock"),
        "{name}"
    );
    assert_ne!(fa, fb, "two random names collided (1 in a million)");
    let p = a.acquire().await.unwrap();
    // The same value (or a clone) shares the name; another does not.
    support::busy(a.clone().fail_when_locked(true).acquire()).await;
    drop(b.acquire().await.unwrap());
    drop(p);
    let named = NamedBoundedSemaphore::new(1)
        .name("given")
        .directory(d.path());
    assert!(named.get_filenames()[0].ends_with("given.00.lock"));
}

struct Capture(Arc<Mutex<Vec<String>>>);
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

#[tokio::test]
async fn the_default_name_works_but_warns() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    log::set_logger(Box::leak(Box::new(Capture(seen.clone())))).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let d = tempfile::tempdir().unwrap();
    let sem = BoundedSemaphore::new(1).directory(d.path());
    let p = sem.acquire().await.unwrap();
    assert!(p.path().ends_with("bounded_semaphore.00.lock"));
    let logs = seen.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains("default name")),
        "{logs:?}"
    );
}

// Linux only: the wake-up comes from inotify; elsewhere (and with
// `--cfg portalocker_portable`) a waiter of another process's lock polls.
#[cfg(all(target_os = "linux", not(portalocker_portable)))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_slot() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let mut child = Proc::role("child_entry", "sem-hold", &["k", dir, "1"]);
    assert_eq!(child.expect("LOCKED"), "0");
    let sem = BoundedSemaphore::new(1)
        .name("k")
        .directory(d.path())
        .timeout(Duration::from_secs(120))
        .check_interval(Duration::from_secs(60));
    support::busy(sem.clone().fail_when_locked(true).acquire()).await;
    let waiter = support::spawn_started(async move { sem.acquire().await }).await;
    let t = std::time::Instant::now();
    child.kill();
    let p = waiter.await.unwrap().0.unwrap();
    assert_eq!(p.slot(), 0);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "woke only by polling"
    );
}

/// Python workers for the mixed test: same marker protocol as the Rust
/// `sem-worker` role.
#[cfg(unix)]
const PY_WORKER: &str = r#"
import os, sys, time, portalocker
name, directory, maximum, rounds, markers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sem = portalocker.BoundedSemaphore(maximum, name=name, directory=directory, timeout=120, check_interval=0.005)
print("@@READY", flush=True)
for i in range(rounds):
    sem.acquire()
    mine = os.path.join(markers, "inside.%d" % os.getpid())
    open(mine, "x").close()
    inside = len(os.listdir(markers))
    if inside > maximum:
        print("@@VIOLATION round %d: %d holders" % (i, inside), flush=True)
        sys.exit(3)
    time.sleep(0.001)
    os.remove(mine)
    sem.release()
print("@@DONE", rounds, flush=True)
"#;

/// Six processes, three Rust and three Python, on one 2-slot semaphore:
/// never more than two holders at once.
// Unix only: Python portalocker's venv is built on the Linux CI host.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_processes_share_one_bound() {
    let d = tempfile::tempdir().unwrap();
    let markers = d.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let (dir, m) = (d.path().to_str().unwrap(), markers.to_str().unwrap());
    let rounds = "40";
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(Proc::role(
            "child_entry",
            "sem-worker",
            &["mixed", dir, "2", rounds, m],
        ));
        procs.push(Proc::python(PY_WORKER, &["mixed", dir, "2", rounds, m]));
    }
    for p in &mut procs {
        p.expect("READY");
    }
    for mut p in procs {
        assert_eq!(p.expect("DONE"), rounds);
        p.finish();
    }
    // Python and Rust used the very same files.
    let mut files: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["markers", "mixed.00.lock", "mixed.01.lock"]);
}

#[cfg(unix)]
const PY_HOLD_SLOT: &str = r#"
import sys, portalocker
sem = portalocker.BoundedSemaphore(2, name=sys.argv[1], directory=sys.argv[2])
lock = sem.acquire()
print("@@LOCKED", lock.filename, flush=True)
sys.stdin.read()
sem.release()
"#;

// Unix only: Python portalocker's venv is built on the Linux CI host.
#[cfg(unix)]
#[tokio::test]
async fn a_python_holder_takes_a_slot_rust_gets_the_other() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let mut py = Proc::python(PY_HOLD_SLOT, &["py", dir]);
    let held = py.expect("LOCKED");
    assert!(held.ends_with("py.00.lock"), "{held}");
    let sem = BoundedSemaphore::new(2).name("py").directory(d.path());
    let p = sem.acquire().await.unwrap();
    assert_eq!(p.slot(), 1);
    support::busy(sem.clone().fail_when_locked(true).acquire()).await;
    support::busy(Lock::new(d.path().join("py.00.lock")).try_acquire()).await;
    drop(p);
    py.finish();
}

/// Python sweeps slots in ascending order; so does this crate: an empty
/// semaphore always hands out slot 0, then 1, … (fresh values, so no slot
/// file is open yet and every open races).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lowest_free_slot_wins() {
    let d = tempfile::tempdir().unwrap();
    for round in 0..30 {
        let sem = BoundedSemaphore::new(8)
            .name(format!("low{round}"))
            .directory(d.path());
        let mut held = Vec::new();
        for want in 0..8 {
            let permit = BoundedSemaphore::new(8)
                .name(format!("low{round}"))
                .directory(d.path())
                .acquire()
                .await
                .unwrap();
            assert_eq!(permit.slot(), want, "round {round}");
            held.push(permit);
        }
        // Freeing a middle slot makes it the lowest free one again.
        drop(held.remove(3));
        assert_eq!(sem.acquire().await.unwrap().slot(), 3, "round {round}");
    }
}

/// Slots that cannot be used are skipped, deterministically, while
/// another slot is free; only when none is usable does acquire fail, with
/// the first slot's error and the others named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_slots_are_skipped_while_another_is_free() {
    let d = tempfile::tempdir().unwrap();
    for n in 0..7 {
        std::fs::create_dir(d.path().join(format!("skip.{n:02}.lock"))).unwrap();
    }
    for round in 0..30 {
        let sem = BoundedSemaphore::new(8).name("skip").directory(d.path());
        let permit = sem
            .acquire()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(permit.slot(), 7);
        // The only usable slot held: busy, and the message says why the
        // other seven do not count.
        let err = support::busy(sem.clone().timeout(support::ms(20)).acquire()).await;
        let msg = err.to_string();
        assert!(
            msg.contains("every usable slot of \"skip\" is held (1 of 8)"),
            "{msg}"
        );
        assert!(
            msg.contains("slot 0:") && msg.contains("4 more unusable"),
            "{msg}"
        );
    }
    let sem = BoundedSemaphore::new(7).name("skip").directory(d.path());
    let err = sem.acquire().await.unwrap_err();
    assert_eq!(err.kind(), portalocker::ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().contains("no slot of \"skip\" is usable"),
        "{err}"
    );
}

/// A slot file left by another user at 0600 cannot be opened by this user:
/// it is skipped, and the next slot is used. (At 0644 it is usable: a lock
/// needs only read access.)
// Unix only: a root-owned slot file and a `nobody` child.
#[cfg(unix)]
#[test]
fn another_users_slot_file_is_skipped() {
    if !support::needs_root(
        "another_users_slot_file_is_skipped",
        "it creates a slot file owned by root and runs a process as nobody",
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let slots = d.path().join("slots");
    std::fs::create_dir(&slots).unwrap();
    std::fs::set_permissions(&slots, std::fs::Permissions::from_mode(0o777)).unwrap();
    let root_file = slots.join("other.00.lock");
    std::fs::write(&root_file, b"").unwrap();
    for (mode, slot) in [(0o600, "1"), (0o644, "0")] {
        std::fs::set_permissions(&root_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut child = Proc::role_as_nobody(
            d.path(),
            "child_entry",
            "sem-hold",
            &["other", slots.to_str().unwrap(), "2"],
        );
        assert_eq!(child.expect("LOCKED"), slot, "slot file mode {mode:o}");
        child.finish();
    }
}
