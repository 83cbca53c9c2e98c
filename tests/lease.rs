//! `LeaseLock`: claims, renewals, take-over of dead and stopped holders,
//! hostile directories, and two FUSE "hosts" of one directory on which
//! `flock` does not exclude. The tests in one process run everywhere
//! (Windows under Wine too); those with processes, signals, symlinks and
//! mounts on Unix.

mod support;

use std::path::Path;
use std::time::Duration;

use portalocker::{ErrorKind, HeldLock, LeaseLock};
#[cfg(unix)]
use support::lease::{on_fuse, TwoHosts};
#[cfg(unix)]
use support::{FleetSection, FleetWorker, Proc};

support::child_entry!();

#[cfg(unix)]
const ENTRY: &str = "child_entry";

fn claims(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn claim_text(dir: &Path, generation: u64) -> String {
    std::fs::read_to_string(dir.join(format!("{generation:020}"))).unwrap()
}

/// Polls `f` every 10 ms until it is true, for up to 30 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_made_renewed_refused_to_others_and_freed() {
    let (_d, path) = support::temp_path("job.lease");
    // A TTL a busy machine (or Wine under load) does not outlast by a
    // stall: with 300 ms, one stall made the holder lost, its heartbeat
    // stopped, and the record never changed again.
    let lock = LeaseLock::new(&path).lease_ttl(Duration::from_secs(3));
    assert!(lock.holder().await.unwrap().is_none());
    let g = lock.acquire().await.unwrap();
    let token = g.fence_token();
    assert_eq!(token, 1);
    assert_eq!(HeldLock::fence_token(&g), Some(token));
    assert_eq!(claims(&path), vec![format!("{token:020}")]);
    assert_eq!(g.claim_path(), path.join(format!("{token:020}")));
    let first = claim_text(&path, token);
    assert!(first.contains("state held"), "{first}");
    assert!(first.contains(g.holder_id()), "{first}");
    assert!(
        first.contains(&format!("pid {}", std::process::id())),
        "{first}"
    );
    // The heartbeat rewrites the record (every second here).
    eventually("a heartbeat", || claim_text(&path, token) != first).await;
    let holder = lock.holder().await.unwrap().expect("held");
    assert_eq!(holder.holder_id, g.holder_id());
    assert_eq!(holder.generation, token);
    let e = LeaseLock::new(&path).try_acquire().await.unwrap_err();
    assert!(e.is_already_locked(), "{e}");
    assert_eq!(e.holder_id(), Some(g.holder_id()));
    assert_eq!(e.holder_pid(), Some(std::process::id()));
    assert!(e.to_string().contains("generation 1"), "{e}");
    g.release().await.unwrap();
    assert!(claim_text(&path, token).contains("state free"));
    assert!(lock.holder().await.unwrap().is_none());
    let g2 = lock.try_acquire().await.unwrap();
    assert_eq!(g2.fence_token(), token + 1);
    drop(g2);
    // Dropping released too.
    let g3 = lock.acquire_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(g3.fence_token(), token + 2);
}

/// Every `Duration` from `ZERO` to `MAX`: TTLs out of range are refused
/// (typed, before any I/O); timeouts and intervals of either extreme work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_from_zero_to_max() {
    let (_d, path) = support::temp_path("d.lease");
    for ttl in [Duration::ZERO, Duration::from_millis(99), Duration::MAX] {
        let e = support::fails_with(
            ErrorKind::InvalidInput,
            LeaseLock::new(&path).lease_ttl(ttl).acquire(),
        )
        .await;
        assert!(e.to_string().contains("lease_ttl"), "{e}");
    }
    assert!(!path.exists(), "a refused TTL made the directory");
    let held = LeaseLock::new(&path).acquire().await.unwrap();
    for (timeout, interval) in [
        (Duration::ZERO, Duration::ZERO),
        (Duration::ZERO, Duration::MAX),
    ] {
        support::busy(
            LeaseLock::new(&path)
                .timeout(timeout)
                .check_interval(interval)
                .acquire(),
        )
        .await;
    }
    // Timeout MAX, interval ZERO: waits (1 ms pauses) until the release.
    let patient = LeaseLock::new(&path)
        .timeout(Duration::MAX)
        .check_interval(Duration::ZERO);
    let waiter = tokio::spawn(async move { patient.acquire().await });
    tokio::task::yield_now().await;
    held.release().await.unwrap();
    let g = waiter.await.unwrap().unwrap();
    assert_eq!(g.fence_token(), 2);
}

/// A dropped acquisition leaves no claim behind: with a 60 s TTL a left
/// claim would block the next acquisition for 75 s, far past its 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquisition_or_release_leaves_nothing_held() {
    let (_d, path) = support::temp_path("c.lease");
    let lock = LeaseLock::new(&path).lease_ttl(Duration::from_secs(60));
    for i in 0..60u32 {
        let acquire = lock.acquire();
        tokio::select! {
            r = acquire => drop(r.unwrap()),
            () = async { for _ in 0..(i % 6) { tokio::task::yield_now().await } } => {}
        }
        let g = lock
            .acquire_timeout(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("round {i}: a dropped acquisition left a claim: {e}"));
        // A release dropped at its first poll still frees the claim.
        let release = g.release();
        tokio::select! {
            r = release => r.unwrap(),
            () = std::future::ready(()) => {}
        }
    }
    let last = lock.acquire_timeout(Duration::from_secs(5)).await.unwrap();
    assert!(last.fence_token() >= 61);
}

#[cfg(unix)]
/// A holder SIGKILLed: its claim is taken over once its TTL × 5/4 has
/// passed, by exactly one of three waiters, with the next token; the
/// dead holder's claim file is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_claim_is_taken_over_once_by_one_waiter() {
    let (_d, path) = support::temp_path("k.lease");
    let ps = path.to_str().unwrap();
    let mut holder = Proc::role(ENTRY, "lease-hold", &[ps, "400", "5000"]);
    let token: u64 = holder.expect("GOT").trim().parse().unwrap();
    let lock = LeaseLock::new(&path);
    let linux = cfg!(target_os = "linux");
    let h = lock.holder().await.unwrap().expect("held");
    assert_eq!(h.pid, holder.pid());
    assert_eq!(h.runs_here(), linux.then_some(true));
    holder.kill();
    // The record still says held; this host can tell its process is gone.
    let h = lock.holder().await.unwrap().expect("still claimed");
    assert_eq!(h.runs_here(), linux.then_some(false));
    let dead = claim_text(&path, token);
    let mut waiters: Vec<Proc> = (0..3)
        .map(|_| Proc::role(ENTRY, "lease-hold", &[ps, "60000", "6000"]))
        .collect();
    let mut got = Vec::new();
    let mut busy = 0;
    for w in &mut waiters {
        match w.expect_any(&["GOT", "BUSY"]) {
            (m, rest) if m == "GOT" => got.push(rest.parse::<u64>().unwrap()),
            (_, rest) => {
                assert!(rest.contains("held by holder"), "{rest}");
                busy += 1;
            }
        }
    }
    assert_eq!(got, vec![token + 1], "takers: {got:?}");
    assert_eq!(busy, 2);
    assert_eq!(claim_text(&path, token), dead, "the dead claim was touched");
    for w in waiters {
        w.finish();
    }
}

#[cfg(unix)]
/// A holder SIGSTOPped past its TTL: another is granted with a larger
/// token; the stopped one, resumed, reports the loss on its first look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_holder_is_taken_over_and_learns_it_on_resume() {
    let (_d, path) = support::temp_path("s.lease");
    let ps = path.to_str().unwrap();
    let mut holder = Proc::role(ENTRY, "lease-hold", &[ps, "400", "5000"]);
    let token: u64 = holder.expect("GOT").trim().parse().unwrap();
    holder.signal("STOP");
    support::wait_stopped(holder.pid());
    let g = LeaseLock::new(&path)
        .timeout(Duration::from_secs(30))
        .check_interval(Duration::from_millis(20))
        .acquire()
        .await
        .unwrap();
    assert!(g.fence_token() > token);
    holder.signal("CONT");
    holder.send("check");
    assert_eq!(holder.expect("LOST").trim(), "true");
    holder.finish();
    assert!(!g.is_lost());
    g.release().await.unwrap();
}

/// A claim removed from outside while held: the guard reports the loss.
/// (Unix: on Windows a file open in this process stays at its name until
/// it is closed, so no other claim can take the name meanwhile.)
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_removed_from_outside_is_a_loss() {
    let (_d, path) = support::temp_path("r.lease");
    let g = LeaseLock::new(&path)
        .lease_ttl(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    let mut lost = g.watch_lost();
    std::fs::remove_file(g.claim_path()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), lost.wait_for(|l| *l))
        .await
        .expect("the loss was reported")
        .unwrap();
    let e = g.ensure_held().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LockLost);
    assert!(e.to_string().contains("removed or replaced"), "{e}");
    assert_eq!(g.release().await.unwrap_err().kind(), ErrorKind::LockLost);
}

#[cfg(unix)]
/// Hostile directories: a symlink or a file at the lease path, a planted
/// claim that is not a record or is a symlink, another user's directory:
/// typed errors, no grant, and nothing planted is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_directories_get_typed_errors_and_no_grant() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = d.path().join("link.lease");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = LeaseLock::new(&link).try_acquire().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(claims(&real).is_empty());

    let file = d.path().join("file.lease");
    std::fs::write(&file, "x").unwrap();
    let e = LeaseLock::new(&file).try_acquire().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("not a directory"), "{e}");

    let planted = d.path().join("planted.lease");
    std::fs::create_dir(&planted).unwrap();
    let claim = planted.join(format!("{:020}", 7));
    std::fs::write(&claim, "rm -rf /\n").unwrap();
    // Planted by another user, where this test may change owners.
    if support::is_root() {
        std::os::unix::fs::chown(&claim, Some(65534), Some(65534)).unwrap();
    }
    let e = support::fails_with(
        ErrorKind::InvalidInput,
        LeaseLock::new(&planted).timeout(support::ms(200)).acquire(),
    )
    .await;
    assert_eq!(e.path(), Some(claim.as_path()));
    assert!(e.to_string().contains("not a lease record"), "{e}");
    assert_eq!(std::fs::read_to_string(&claim).unwrap(), "rm -rf /\n");
    assert_eq!(claims(&planted).len(), 1);

    let sym = d.path().join("sym.lease");
    std::fs::create_dir(&sym).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", sym.join(format!("{:020}", 1))).unwrap();
    let e = LeaseLock::new(&sym).try_acquire().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[cfg(unix)]
/// A directory this user may not write, and a full filesystem: `Io`
/// errors naming the path, and no claim left.
#[test]
fn unwritable_and_full_directories_are_io_errors() {
    if !support::needs_root(
        "unwritable_and_full_directories",
        "runs as nobody, mounts a tmpfs",
    ) {
        return;
    }
    let (d, path) = support::temp_path("root-owned.lease");
    std::fs::create_dir(&path).unwrap();
    let mut p = Proc::role_as_nobody(
        d.path(),
        ENTRY,
        "lease-hold",
        &[path.to_str().unwrap(), "1000", "0"],
    );
    let why = p.expect("BUSY");
    assert!(why.contains("ermission denied"), "{why}");
    p.finish();
    assert!(claims(&path).is_empty());

    let small = support::SmallFs::mount("64k");
    let filler = small.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 128 * 1024]);
    let path = small.path().join("full.lease");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(LeaseLock::new(&path).try_acquire())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    if path.exists() {
        assert!(claims(&path).is_empty(), "{:?}", claims(&path));
    }
    // A read-only mount with a released claim on it: an `Io` error, and
    // the claim as it was.
    let ro = support::SmallFs::mount("1m");
    let path = ro.path().join("ro.lease");
    rt.block_on(async {
        let g = LeaseLock::new(&path).acquire().await.unwrap();
        g.release().await.unwrap();
    });
    let before = claim_text(&path, 1);
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(ro.path())
        .status()
        .unwrap();
    assert!(status.success(), "remount,ro: {status}");
    let e = rt
        .block_on(LeaseLock::new(&path).try_acquire())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("ead-only"), "{e}");
    assert_eq!(claim_text(&path, 1), before);
    assert_eq!(claims(&path).len(), 1);
}

#[cfg(unix)]
/// Two FUSE mounts of one directory: first `flock` is shown not to
/// exclude across them (so this test can fail), then 4 lease workers per
/// mount run for 20 s: recorded sections never overlap and tokens
/// strictly increase.
#[test]
fn the_lease_lock_excludes_across_two_hosts_where_flock_does_not() {
    if !support::needs_root("two_hosts", "mounts two bindfs FUSE filesystems") {
        return;
    }
    let hosts = TwoHosts::mount();
    assert!(on_fuse(&hosts.a) && on_fuse(&hosts.b));
    let (fa, fb) = hosts.both("plain.lock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = portalocker::Lock::new(&fa).try_acquire().await.unwrap();
        let b = portalocker::Lock::new(&fb).try_acquire().await;
        assert!(
            b.is_ok(),
            "flock excluded across the two mounts: this test could not tell the lease lock apart"
        );
        drop((a, b));
    });
    let (la, lb) = hosts.both("job.lease");
    let workers = run_fleet(
        &[(&la, 4, None), (&lb, 4, None)],
        Duration::from_secs(20),
        "1000",
    );
    let all = sections_exclusive(&workers);
    eprintln!("{} grants across two hosts", all.len());
}

#[cfg(unix)]
/// Wall clocks stepped on one side (libfaketime: hours ahead on one
/// "host", days behind on the other, stepped again mid-run) change
/// nothing: the lease lock compares no wall clock.
#[test]
fn stepped_wall_clocks_do_not_grant_two_holders() {
    if !support::needs_root("stepped_clocks", "mounts two bindfs FUSE filesystems") {
        return;
    }
    let lib = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libfaketime is needed (Debian: apt-get install faketime)");
    let hosts = TwoHosts::mount();
    let step_dir = tempfile::tempdir().unwrap();
    let ahead = step_dir.path().join("ahead");
    let behind = step_dir.path().join("behind");
    std::fs::write(&ahead, "+3h\n").unwrap();
    std::fs::write(&behind, "-2d\n").unwrap();
    let (la, lb) = hosts.both("clock.lease");
    let workers = run_fleet_with(
        &[
            (&la, 2, Some((lib, &ahead))),
            (&lb, 2, Some((lib, &behind))),
        ],
        Duration::from_secs(8),
        // Long enough that a holder stalled by a busy machine (CI runs
        // this beside two CPU hogs, through FUSE) still renews in time: a
        // loss here must come from the clocks, not from load.
        "2000",
        |_| {
            // Mid-run: step both clocks the other way.
            std::thread::sleep(Duration::from_secs(3));
            std::fs::write(&ahead, "-5h\n").unwrap();
            std::fs::write(&behind, "+1d\n").unwrap();
        },
    );
    let all = sections_exclusive(&workers);
    eprintln!("{} grants with stepped clocks", all.len());
}

#[cfg(unix)]
type Side<'a> = (&'a Path, usize, Option<(&'a str, &'a Path)>);

#[cfg(unix)]
fn run_fleet(sides: &[Side<'_>], run: Duration, ttl_ms: &str) -> Vec<FleetWorker> {
    run_fleet_with(sides, run, ttl_ms, |_| {})
}

#[cfg(unix)]
/// Starts `n` `lease-fleet` workers per side (under libfaketime with the
/// given step file, if any), runs them for `run` (calling `during` once
/// they are going), and reads what they recorded.
fn run_fleet_with(
    sides: &[Side<'_>],
    run: Duration,
    ttl_ms: &str,
    during: impl FnOnce(&mut Vec<(String, std::path::PathBuf, Proc)>),
) -> Vec<FleetWorker> {
    let out = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    for (s, (dir, n, fake)) in sides.iter().enumerate() {
        for i in 0..*n {
            let who = format!("side{s}-w{i}");
            let file = out.path().join(&who);
            let args = [dir.to_str().unwrap(), file.to_str().unwrap(), ttl_ms];
            let p = match fake {
                None => Proc::role(ENTRY, "lease-fleet", &args),
                Some((lib, step)) => {
                    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
                    cmd.args([ENTRY, "--exact", "--nocapture", "--test-threads=1", "-q"])
                        .env(support::ROLE_ENV, "lease-fleet")
                        .env(support::ARGS_ENV, args.join("\n"))
                        .env("LD_PRELOAD", lib)
                        .env("FAKETIME_TIMESTAMP_FILE", step)
                        .env("FAKETIME_NO_CACHE", "1")
                        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                    Proc::command(cmd)
                }
            };
            procs.push((who, file, p));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (who, _, p) in &mut procs {
        let wall: u64 = p.expect("READY").parse().unwrap();
        let side: usize = who[4..5].parse().unwrap();
        // Where a clock is stepped, the worker must see it stepped (by
        // an hour at least), or the test would show nothing.
        assert_eq!(
            sides[side].2.is_some(),
            wall.abs_diff(now) > 3600,
            "{who} sees the wall clock at {wall}, this process at {now}"
        );
    }
    for (_, _, p) in &mut procs {
        p.send(&format!("go {}", run.as_millis()));
    }
    during(&mut procs);
    let mut workers = Vec::new();
    for (who, file, mut p) in procs {
        p.expect("DONE");
        p.finish();
        workers.push(support::read_fleet_worker(&who, false, &file));
    }
    for w in &workers {
        assert!(w.failed.is_empty(), "{}: {:?}", w.who, w.failed);
        assert!(!w.sections.is_empty(), "{} was never served", w.who);
    }
    workers
}

#[cfg(unix)]
/// Every section, checked: none overlaps another (on the system-wide
/// monotonic clock), tokens strictly increase.
fn sections_exclusive(workers: &[FleetWorker]) -> Vec<FleetSection> {
    support::fleet_sections_exclusive(workers)
}

/// `filesystem_of` tells a FUSE mount, a tmpfs, an overlayfs and the
/// temporary directory's filesystem apart; a `Lock` told to stay on local
/// filesystems refuses the FUSE mount (naming it and `LeaseLock`) and
/// locks on the others.
#[cfg(target_os = "linux")]
#[test]
fn filesystems_are_told_apart_and_a_local_only_lock_refuses_fuse() {
    use portalocker::{filesystem_of, FilesystemKind, Lock};
    if !support::needs_root("filesystems", "mounts bindfs, tmpfs and overlayfs") {
        return;
    }
    let hosts = TwoHosts::mount();
    let tmpfs = support::SmallFs::mount("1m");
    let base = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = (
        base.path().join("lower"),
        base.path().join("upper"),
        base.path().join("work"),
        base.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success(), "mount -t overlay: {status}");
    let fuse = filesystem_of(&hosts.a).unwrap();
    assert_eq!(fuse.kind, FilesystemKind::Fuse, "{fuse:?}");
    assert!(fuse.name.starts_with("fuse"), "{fuse:?}");
    assert_eq!(fuse.mount_point.as_deref(), Some(hosts.a.as_path()));
    let t = filesystem_of(tmpfs.path().join("not/yet/there.lock")).unwrap();
    assert_eq!(
        (t.kind, t.name.as_str()),
        (FilesystemKind::Local, "tmpfs"),
        "{t:?}"
    );
    assert!(
        t.mount_options.iter().any(|o| o.starts_with("size=")),
        "{t:?}"
    );
    let o = filesystem_of(&merged).unwrap();
    assert_eq!(
        (o.kind, o.name.as_str()),
        (FilesystemKind::Local, "overlay"),
        "{o:?}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let e = support::fails_with(
            ErrorKind::Unsupported,
            Lock::new(hosts.a.join("x.lock"))
                .local_filesystem_only(true)
                .try_acquire(),
        )
        .await;
        assert!(e.to_string().contains("LeaseLock"), "{e}");
        assert!(
            !hosts.a.join("x.lock").exists(),
            "the refused lock made its file"
        );
        for dir in [tmpfs.path(), merged.as_path()] {
            let g = Lock::new(dir.join("x.lock"))
                .local_filesystem_only(true)
                .try_acquire()
                .await
                .unwrap();
            drop(g);
        }
    });
    let _ = std::process::Command::new("umount").arg(&merged).status();
}
