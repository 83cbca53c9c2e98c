//! Soaks: many grants across processes, each guarding a deliberately
//! non-atomic read-modify-write, with zero lost updates allowed.
//!
//! Sized for CI by default. `PORTALOCKER_SOAK_SCALE=10` (or more) runs a
//! longer soak by hand; see RELIABILITY.md.
//!
//! Unix only: it includes a Redis soak, and the Redis server comes from the Linux CI host.
#![cfg(unix)]
mod support;

use std::time::Instant;

use support::Proc;

support::child_entry!();

fn scale() -> usize {
    std::env::var("PORTALOCKER_SOAK_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// 4 processes × 25,000 grants = 100,000 file-lock grants.
#[test]
fn file_lock_soak_across_processes() {
    let d = tempfile::tempdir().unwrap();
    let lock = d.path().join("soak.lock");
    let counter = d.path().join("counter");
    let per = (25_000 * scale()).to_string();
    let t = Instant::now();
    let mut procs: Vec<_> = (0..4)
        .map(|_| {
            Proc::role(
                "child_entry",
                "soak",
                &[lock.to_str().unwrap(), counter.to_str().unwrap(), &per],
            )
        })
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    for mut p in procs {
        assert_eq!(p.expect("DONE"), per);
        p.finish();
    }
    let total: usize = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
    eprintln!("{total} file-lock grants in {:?}", t.elapsed());
    assert_eq!(total, 4 * 25_000 * scale(), "lost updates");
}

/// 4 processes × 2,500 grants = 10,000 Redis-lock grants, with fencing
/// tokens checked to increase in every process.
#[cfg(feature = "redis")]
#[test]
fn redis_lock_soak_across_processes() {
    let rt = support::current_thread();
    let srv = support::RedisServer::start();
    let url = srv.url();
    let per = (2_500 * scale()).to_string();
    let t = Instant::now();
    let procs: Vec<_> = (0..4)
        .map(|_| Proc::role("child_entry", "redis-counter", &[&url, "soak", "n", &per]))
        .collect();
    for mut p in procs {
        assert_eq!(p.expect("DONE"), per);
        p.finish();
    }
    let total: u64 = rt.block_on(srv.cmd(&["GET", "n"]));
    eprintln!("{total} Redis-lock grants in {:?}", t.elapsed());
    assert_eq!(total, 4 * 2_500 * scale() as u64, "lost updates");
    // Every grant took a token; an attempt whose subscription died between
    // taking its token and the grant burns one (tokens only increase, gaps
    // are allowed), so a few more than the grants, never fewer.
    let fence: u64 = rt.block_on(srv.cmd(&["GET", "soak-fence"]));
    assert!(
        fence >= total && fence <= total + total / 100,
        "{fence} tokens for {total} grants"
    );
}

/// A mixed fleet under the new waiting rules: 4 Rust and 4 Python
/// processes take turns on one channel, each round a non-atomic GET/SET:
/// no lost update, and fencing tokens only increase in every process.
#[cfg(feature = "redis")]
#[test]
fn redis_lock_soak_with_a_mixed_fleet() {
    let rt = support::current_thread();
    let srv = support::RedisServer::start();
    let url = srv.url();
    let rust = (250 * scale()).to_string();
    let python = (15 * scale()).to_string();
    let t = Instant::now();
    let mut procs = Vec::new();
    for _ in 0..4 {
        procs.push((
            rust.clone(),
            Proc::role("child_entry", "redis-counter", &[&url, "mixed", "n", &rust]),
        ));
        procs.push((
            python.clone(),
            Proc::python(support::PY_REDIS_COUNTER, &[&url, "mixed", "n", &python]),
        ));
    }
    for (n, mut p) in procs {
        assert_eq!(p.expect("DONE"), n);
        p.finish();
    }
    let total: u64 = rt.block_on(srv.cmd(&["GET", "n"]));
    eprintln!("{total} mixed Redis-lock grants in {:?}", t.elapsed());
    assert_eq!(total, 4 * (250 + 15) * scale() as u64, "lost updates");
    let fence: u64 = rt.block_on(srv.cmd(&["GET", "mixed-fence"]));
    assert!(
        fence >= total && fence <= total + total / 100,
        "{fence} tokens for {total} grants"
    );
}
