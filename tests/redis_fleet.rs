//! A mixed fleet on one Redis lock: 4 processes of this crate and 4 of
//! Python portalocker 4.4.2 (its default 0.25 s check interval), all
//! fenced, each looping acquire → non-atomic bump of a key → 1 ms hold →
//! release for 20 s.
//!
//! From the critical sections every worker records (start, end, token): no
//! two overlap, tokens increase in the order the sections ran, no update is
//! lost; and the Python processes, which poll and do not queue, get their
//! share: every process is served, none fails, and each Python process gets
//! at least a quarter of a process of this crate's mean (before this crate
//! gave them places in its queue, they got 1–3 %). How long Python waits
//! with its default 5 s timeout is a timing claim, measured by
//! `benches/redis_fleet.rs`; here Python waits up to 60 s, so that a
//! loaded machine slows the fleet without failing it.
//!
//! Linux CI host (redis-server, the Python venv); Unix for the processes.
#![cfg(all(unix, feature = "redis"))]
mod support;

use std::time::Duration;

use support::{fleet_sections_exclusive, run_fleet, RedisServer};

support::child_entry!();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peers_get_their_share_beside_queued_rust_waiters() {
    let srv = RedisServer::start();
    let (begin, end, workers) = run_fleet(
        "child_entry",
        &srv.url(),
        "fleet",
        4,
        Duration::from_secs(20),
        "60",
    );
    let summary: Vec<String> = workers
        .iter()
        .map(|w| {
            let longest = w.gaps(begin, end).into_iter().max().unwrap_or(0);
            format!(
                "{}: {} grants, {} failed, longest gap {:.2} s",
                w.who,
                w.sections.len(),
                w.failed.len(),
                longest as f64 / 1e9
            )
        })
        .collect();
    let summary = summary.join("\n");
    eprintln!("{summary}");

    let all = fleet_sections_exclusive(&workers);
    if let Ok(p) = std::env::var("FLEET_DUMP") {
        let l: Vec<String> = all
            .iter()
            .map(|s| format!("{} {} {} {}", s.who, s.start, s.end, s.token))
            .collect();
        std::fs::write(p, l.join("\n")).unwrap();
    }
    let count: u64 = srv.cmd(&["GET", "fleet-count"]).await;
    assert_eq!(count, all.len() as u64, "an update was lost\n{summary}");

    for w in &workers {
        assert!(w.failed.is_empty(), "{}: {:?}\n{summary}", w.who, w.failed);
    }
    let ours: Vec<usize> = workers
        .iter()
        .filter(|w| !w.python)
        .map(|w| w.sections.len())
        .collect();
    let mean = ours.iter().sum::<usize>() as f64 / ours.len() as f64;
    assert!(
        mean >= 1.0,
        "this crate's processes were not served\n{summary}"
    );
    for w in workers.iter().filter(|w| w.python) {
        assert!(
            w.sections.len() as f64 >= mean / 4.0,
            "{} got {} grants, against {mean:.0} for a process of this crate\n{summary}",
            w.who,
            w.sections.len()
        );
    }
}
