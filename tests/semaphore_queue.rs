//! A semaphore's waiters in other processes are woken a few at a time, in
//! the order they began to wait (Linux, local filesystems): a release
//! rings the doorbells of the first two waiters in the queue instead of
//! waking every waiter of every process.
//!
//! Each child is a re-executed waiter that says `@@waiting <place>` each
//! time it goes to sleep (from the crate's trace record, through a `log`
//! logger), appends `start k` / `end k` to a shared file around its
//! critical section, and says `@@done` at the end. Waiters are started one
//! at a time, each after the previous one sleeps, so the queue's order is
//! known. Their check interval is two minutes: a waiter that runs before
//! that was woken by a release, not by its timer.
#![cfg(all(target_os = "linux", not(portalocker_portable)))]
mod support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use portalocker::BoundedSemaphore;
use support::Proc;

struct Marker;

impl log::Log for Marker {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("portalocker")
    }
    fn log(&self, r: &log::Record<'_>) {
        let msg = r.args().to_string();
        if let Some((_, place)) = msg.split_once("waiting for a release (queue: ") {
            support::say("waiting", place.trim_end_matches(')'));
        }
    }
    fn flush(&self) {}
}

fn semaphore(dir: &Path) -> BoundedSemaphore {
    BoundedSemaphore::new(1)
        .name("q")
        .directory(dir)
        .timeout(Duration::from_secs(120))
        .check_interval(Duration::from_secs(120))
}

fn append(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

#[test]
fn child_entry() {
    let Some((role, args)) = support::child_role() else {
        return;
    };
    assert_eq!(role, "queue-waiter");
    log::set_logger(&Marker).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let rt = support::current_thread();
    rt.block_on(async {
        let permit = semaphore(Path::new(&args[0])).acquire().await.unwrap();
        append(&args[1], &format!("start {}\n", args[2]));
        // The critical section's work, so that the releases are apart.
        std::thread::sleep(Duration::from_millis(5));
        append(&args[1], &format!("end {}\n", args[2]));
        permit.release().await.unwrap();
    });
    support::say("done", "");
    // Exiting closes descriptors of the slot file, which would wake the
    // first waiter: exit when every waiter is done.
    support::wait_for_parent();
    std::process::exit(0);
}

/// Starts `n` waiters one after the other; each has gone to sleep when it
/// is returned, with the place in the queue it reported.
fn start_waiters(dir: &Path, log: &Path, n: usize) -> Vec<(Proc, String)> {
    (0..n)
        .map(|k| {
            let mut p = Proc::role(
                "child_entry",
                "queue-waiter",
                &[dir.to_str().unwrap(), log.to_str().unwrap(), &k.to_string()],
            );
            let place = p.expect("waiting");
            (p, place)
        })
        .collect()
}

/// Waits for each waiter to be done, then lets them exit; returns how
/// many times each slept.
fn finish(waiters: Vec<(Proc, String)>) -> Vec<usize> {
    let mut done = Vec::new();
    let sleeps = waiters
        .into_iter()
        .map(|(mut p, _)| {
            let mut sleeps = 1;
            loop {
                let said = p.expect("");
                if said.starts_with("done") {
                    break;
                }
                if said.starts_with("waiting") {
                    sleeps += 1;
                }
            }
            done.push(p);
            sleeps
        })
        .collect();
    done.into_iter().for_each(Proc::finish);
    sleeps
}

/// The critical sections from the shared record, checked never to
/// overlap (each `start k` is followed by its own `end k`); returns the
/// waiters in the order they were granted.
fn grant_order(log: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(log).unwrap();
    let events: Vec<(&str, usize)> = text
        .lines()
        .map(|l| {
            let (what, k) = l.split_once(' ').unwrap();
            (what, k.parse().unwrap())
        })
        .collect();
    let mut order = Vec::new();
    for pair in events.chunks(2) {
        match pair {
            [("start", a), ("end", b)] if a == b => order.push(*a),
            _ => panic!("critical sections overlap or are cut: {events:?}"),
        }
    }
    order
}

/// Checks that all `n` waiters were granted, each time one of the two
/// that had waited longest: a release rings the first two waiters in the
/// queue (the second in case the first cannot take its turn), and nobody
/// else wakes.
fn assert_queue_order(log: &Path, n: usize) {
    let order = grant_order(log);
    let mut waiting: Vec<usize> = (0..n).collect();
    for &k in &order {
        let at = waiting.iter().position(|&w| w == k);
        assert!(
            at.is_some_and(|i| i < 2),
            "waiter {k} was granted ahead of {waiting:?} (grant order {order:?})"
        );
        waiting.retain(|&w| w != k);
    }
    assert!(waiting.is_empty(), "never granted: {waiting:?}");
}

/// A runtime, and the one slot of the test's semaphore held through it.
fn held_slot(dir: &Path) -> (tokio::runtime::Runtime, portalocker::BoundedSemaphorePermit) {
    let rt = support::current_thread();
    let held = rt.block_on(semaphore(dir).acquire()).unwrap();
    (rt, held)
}

#[test]
fn waiters_of_other_processes_are_woken_a_few_at_a_time_in_the_order_they_came() {
    const N: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sections");
    let (rt, held) = held_slot(dir.path());
    let waiters = start_waiters(dir.path(), &log, N);
    let places: Vec<&str> = waiters.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(places[0], "first");
    assert!(
        places[1..].iter().all(|p| *p == "behind another"),
        "{places:?}"
    );
    rt.block_on(held.release()).unwrap();
    let sleeps = finish(waiters);
    assert_queue_order(&log, N);
    // Woken by every release (every close of a slot file), waiter k would
    // sweep and sleep again about k times: N²/2 in all. Rung as one of the
    // first two, then as first, then by its predecessor's release, each
    // sleeps a few times.
    assert!(
        sleeps.iter().sum::<usize>() <= 4 * N,
        "times each waiter slept: {sleeps:?}"
    );
}

#[test]
fn a_stopped_first_waiter_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sections");
    let (rt, held) = held_slot(dir.path());
    let mut waiters = start_waiters(dir.path(), &log, 2);
    waiters[0].0.signal("STOP");
    rt.block_on(held.release()).unwrap();
    // The second waiter is granted while the first is stopped.
    let second = waiters.pop().unwrap();
    finish(vec![second]);
    assert_eq!(grant_order(&log), [1]);
    waiters[0].0.signal("CONT");
    finish(waiters);
    assert_eq!(grant_order(&log), [1, 0]);
}

#[test]
fn a_release_by_another_program_reaches_every_waiter_in_turn() {
    const N: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sections");
    // The slot held as Python portalocker or flock(1) would: a plain
    // flock, released by closing, with no doorbell to ring.
    let slot = std::fs::File::create(dir.path().join("q.00.lock")).unwrap();
    slot.lock().unwrap();
    let waiters = start_waiters(dir.path(), &log, N);
    drop(slot);
    finish(waiters);
    assert_queue_order(&log, N);
}
