//! A mixed fleet on one Redis lock, as issue #25 item 5 describes it: 4
//! processes of this crate and 4 of Python portalocker 4.4.2 with its
//! default settings (5 s timeout, 0.25 s check interval), all fenced, each
//! looping acquire → non-atomic bump of a key → 1 ms hold → release.
//! Prints per process the grants, the failed (timed out) acquires and the
//! longest time without a grant, checks exclusion and fencing from the
//! recorded sections, and writes `docs/redis-fleet.md`.
//!
//! ```text
//! cargo bench --features redis --bench redis_fleet
//! FLEET_SECS=60 cargo bench --features redis --bench redis_fleet
//! ```
//!
//! Starts its own `redis-server`. Python comes from `$PORTALOCKER_PYTHON`,
//! else `target/py-venv` (made by `scripts/test.sh`). Unix only.

#[cfg(unix)]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(unix)]
fn main() {
    use std::time::Duration;

    if support::child_role().is_some() {
        support::child_main();
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("PORTALOCKER_PYTHON").is_none() {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/py-venv/bin/python");
        std::env::set_var("PORTALOCKER_PYTHON", venv);
    }
    let secs: u64 = std::env::var("FLEET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let srv = support::RedisServer::start();
    let (begin, end, workers) = support::run_fleet(
        "child_entry",
        &srv.url(),
        "bench-fleet",
        4,
        Duration::from_secs(secs),
        "default",
    );
    let sections = support::fleet_sections_exclusive(&workers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counted: u64 = rt.block_on(srv.cmd(&["GET", "bench-fleet-count"]));
    let mut table = format!(
        "A mixed fleet on one Redis lock: 4 processes of this crate and 4 of Python \
         portalocker 4.4.2 (default settings: 5 s timeout, 0.25 s check interval), all \
         fenced, each looping acquire → non-atomic bump of a key → hold 1 ms → release for \
         {secs} s (one run of `benches/redis_fleet.rs`, {} cores). Sections never overlapped, \
         tokens only increased, and the key counted {counted} of {} grants.\n\n\
         | process | grants | failed acquires (Python: timed out) | longest time without a grant |\n\
         | --- | --- | --- | --- |\n",
        std::thread::available_parallelism().map_or(1, usize::from),
        sections.len()
    );
    for w in &workers {
        let longest = w.gaps(begin, end).into_iter().max().unwrap_or(0);
        let line = format!(
            "| {} | {} | {} | {:.2} s |",
            w.who,
            w.sections.len(),
            w.failed.len(),
            longest as f64 / 1e9
        );
        println!("{line}");
        table.push_str(&line);
        table.push('\n');
    }
    assert_eq!(counted, sections.len() as u64, "an update was lost");
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::write(docs.join("redis-fleet.md"), &table).unwrap();
    println!("\nwrote docs/redis-fleet.md");
}

#[cfg(not(unix))]
fn main() {}
