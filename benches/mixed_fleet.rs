//! A mixed fleet on one file lock: 4 processes of this crate and 4 of
//! Python portalocker 4.4.2, each looping acquire (default 5 s timeout) →
//! read-modify-write of a counter file → hold 1 ms → release, for the same
//! seconds. Python's default `check_interval` (0.25 s) and 0.001 s. How
//! many grants each side gets, how often a Python acquire times out, the
//! longest Python wait, and whether the counter is exact (exclusion held).
//!
//! ```text
//! cargo bench --bench mixed_fleet          # 10 s per run
//! MIXED_SECS=20 cargo bench --bench mixed_fleet
//! ```
//!
//! Writes `docs/mixed-fleet.md`. Python comes from `$PORTALOCKER_PYTHON`,
//! else `target/py-venv` (made by `scripts/test.sh`). Linux only (the
//! other platforms' waiters poll, as Python's do).

#[cfg(target_os = "linux")]
mod imp {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use portalocker::Lock;

    const ROLE: &str = "PORTALOCKER_MIXED_WORKER";
    const EACH: usize = 4;

    const PY_WORKER: &str = r#"
import sys, time, portalocker
lock, counter, start, end, out, interval = sys.argv[1:7]
start, end = float(start), float(end)
kw = {} if interval == "default" else {"check_interval": float(interval)}
grants = timeouts = 0
longest = 0.0
while time.time() < start:
    time.sleep(0.001)
while time.time() < end:
    s = time.perf_counter()
    try:
        with portalocker.Lock(lock, timeout=5, **kw):
            longest = max(longest, time.perf_counter() - s)
            with open(counter, "a+") as f:
                f.seek(0); v = int(f.read() or 0)
            with open(counter, "w") as f:
                f.write(str(v + 1))
            time.sleep(0.001)
            grants += 1
    except portalocker.exceptions.LockException:
        longest = max(longest, time.perf_counter() - s)
        timeouts += 1
with open(out, "w") as f:
    f.write("%d %d %f\n" % (grants, timeouts, longest * 1000))
"#;

    fn epoch() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    fn python() -> PathBuf {
        std::env::var_os("PORTALOCKER_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python")
            })
    }

    fn bump(counter: &Path) {
        let v: u64 = std::fs::read_to_string(counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(counter, (v + 1).to_string()).unwrap();
    }

    /// `lock counter start end out`: the Rust side of the fleet.
    fn worker(args: &[String]) {
        let (lock, counter) = (Path::new(&args[0]), Path::new(&args[1]));
        let (start, end): (f64, f64) = (args[2].parse().unwrap(), args[3].parse().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (mut grants, mut timeouts, mut longest) = (0u64, 0u64, Duration::ZERO);
        while epoch() < start {
            std::thread::sleep(Duration::from_millis(1));
        }
        rt.block_on(async {
            let l = Lock::new(lock);
            while epoch() < end {
                let s = Instant::now();
                match l.acquire().await {
                    Ok(g) => {
                        longest = longest.max(s.elapsed());
                        bump(counter);
                        std::thread::sleep(Duration::from_millis(1));
                        drop(g);
                        grants += 1;
                    }
                    Err(e) if e.is_already_locked() => {
                        longest = longest.max(s.elapsed());
                        timeouts += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
        std::fs::write(
            &args[4],
            format!("{grants} {timeouts} {}\n", longest.as_secs_f64() * 1000.0),
        )
        .unwrap();
    }

    struct Side {
        grants: Vec<u64>,
        timeouts: u64,
        longest_ms: f64,
    }

    fn side(outs: &[PathBuf]) -> Side {
        let mut s = Side {
            grants: Vec::new(),
            timeouts: 0,
            longest_ms: 0.0,
        };
        for o in outs {
            let text = std::fs::read_to_string(o).unwrap();
            let f: Vec<&str> = text.split_whitespace().collect();
            s.grants.push(f[0].parse().unwrap());
            s.timeouts += f[1].parse::<u64>().unwrap();
            s.longest_ms = s.longest_ms.max(f[2].parse().unwrap());
        }
        s
    }

    fn run(dir: &Path, interval: &str, secs: f64) -> (Side, Side, bool) {
        let lock = dir.join(format!("mixed-{interval}.lock"));
        let counter = dir.join(format!("mixed-{interval}.counter"));
        let start = epoch() + 1.0;
        let end = start + secs;
        let (start_s, end_s) = (format!("{start:.6}"), format!("{end:.6}"));
        let exe = std::env::current_exe().unwrap();
        let mut children = Vec::new();
        let (mut rust_outs, mut py_outs) = (Vec::new(), Vec::new());
        for i in 0..EACH {
            let out = dir.join(format!("mixed-{interval}-rust-{i}.out"));
            let mut c = Command::new(&exe);
            c.env(ROLE, "1")
                .args([lock.to_str().unwrap(), counter.to_str().unwrap()])
                .args([&start_s, &end_s])
                .arg(&out);
            children.push(c.stdout(Stdio::null()).spawn().unwrap());
            rust_outs.push(out);
            let out = dir.join(format!("mixed-{interval}-python-{i}.out"));
            let mut c = Command::new(python());
            c.args([
                "-c",
                PY_WORKER,
                lock.to_str().unwrap(),
                counter.to_str().unwrap(),
            ])
            .args([&start_s, &end_s])
            .arg(&out)
            .arg(interval);
            children.push(c.stdout(Stdio::null()).spawn().unwrap());
            py_outs.push(out);
        }
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a worker failed");
        }
        let (rust, py) = (side(&rust_outs), side(&py_outs));
        let total: u64 = rust.grants.iter().chain(&py.grants).sum();
        let counted: u64 = std::fs::read_to_string(&counter)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (rust, py, counted == total)
    }

    fn span(v: &[u64]) -> String {
        format!(
            "{}–{}",
            v.iter().min().unwrap_or(&0),
            v.iter().max().unwrap_or(&0)
        )
    }

    pub(crate) fn main() {
        if std::env::var_os(ROLE).is_some() {
            let args: Vec<String> = std::env::args().skip(1).collect();
            worker(&args);
            return;
        }
        if std::env::args().any(|a| a == "--list") {
            return;
        }
        let secs: f64 = std::env::var("MIXED_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10.0);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut table = format!(
            "A mixed fleet on one file lock: {EACH} processes of this crate and {EACH} of Python \
             portalocker 4.4.2, each looping acquire (5 s timeout) → counter +1 → hold 1 ms → \
             release for {secs} s (one run of `benches/mixed_fleet.rs`).\n\n\
             | Python check_interval | this crate: grants per process | Python: grants per process | \
             Python timeouts | longest Python wait | this crate's timeouts | counter |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n"
        );
        for interval in ["default", "0.001"] {
            let (rust, py, exact) = run(dir.path(), interval, secs);
            let label = if interval == "default" {
                "0.25 s (default)"
            } else {
                "0.001 s"
            };
            let line = format!(
                "| {label} | {} | {} | {} | {:.0} ms | {} | {} |",
                span(&rust.grants),
                span(&py.grants),
                py.timeouts,
                py.longest_ms,
                rust.timeouts,
                if exact { "exact" } else { "LOST UPDATES" }
            );
            println!("{line}");
            table.push_str(&line);
            table.push('\n');
        }
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("mixed-fleet.md"), &table).unwrap();
        println!("\nwrote docs/mixed-fleet.md");
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    imp::main();
}
