//! Contended file locks, side by side in one run on one machine: this
//! crate, Python portalocker 4.4.2 (default `check_interval` and 0.001 s),
//! and a blocking-`flock` loop, for P = 2, 4, 8 processes (and P tasks in
//! one process) × K iterations of lock → read counter → write +1 → unlock.
//!
//! ```text
//! cargo bench --bench contention                # K = 500
//! CONTENTION_K=2000 cargo bench --bench contention
//! ```
//!
//! Prints a Markdown table (throughput, wait median / p99 / max, handoffs
//! between processes, CPU per grant, counter check) and writes it, with an
//! SVG plot of the maximum waits, to `docs/contention.md` and
//! `docs/contention.svg`. Python comes from `$PORTALOCKER_PYTHON`, else
//! `target/py-venv` (made by `scripts/test.sh`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portalocker::Lock;

const ROLE: &str = "PORTALOCKER_CONTENTION_WORKER";

const PY_WORKER: &str = r#"
import os, sys, time, portalocker
lock_path, counter, last, k, out, interval = sys.argv[1:7]
k = int(k)
kw = {} if interval == "default" else {"check_interval": float(interval)}
waits, handoffs = [], 0
me = str(os.getpid())
t0 = os.times()
for _ in range(k):
    s = time.perf_counter()
    with portalocker.Lock(lock_path, timeout=600, **kw):
        waits.append(time.perf_counter() - s)
        with open(counter, "a+") as f:
            f.seek(0); v = int(f.read() or 0)
        with open(counter, "w") as f:
            f.write(str(v + 1))
        with open(last, "a+") as f:
            f.seek(0); prev = f.read()
        if prev != me:
            handoffs += 1
            with open(last, "w") as f:
                f.write(me)
t1 = os.times()
cpu = (t1.user - t0.user) + (t1.system - t0.system)
with open(out, "w") as f:
    f.write("%d %f\n" % (handoffs, cpu))
    f.write(" ".join("%d" % (w * 1e6) for w in waits))
"#;

fn python() -> PathBuf {
    std::env::var_os("PORTALOCKER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"))
}

/// This process's CPU time (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn read_num(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The critical section: a non-atomic counter bump plus handoff tracking.
fn critical(counter: &Path, last: &Path, me: &str) -> bool {
    let v = read_num(counter);
    std::fs::write(counter, (v + 1).to_string()).unwrap();
    let prev = std::fs::read_to_string(last).unwrap_or_default();
    if prev != me {
        std::fs::write(last, me).unwrap();
        true
    } else {
        false
    }
}

fn write_out(out: &Path, handoffs: u64, cpu: f64, waits: &[u64]) {
    let mut f = std::fs::File::create(out).unwrap();
    writeln!(f, "{handoffs} {cpu}").unwrap();
    let w: Vec<String> = waits.iter().map(u64::to_string).collect();
    write!(f, "{}", w.join(" ")).unwrap();
}

fn worker(args: &[String]) {
    let (mode, lock, counter, last, k, out) = (
        &args[0],
        Path::new(&args[1]),
        Path::new(&args[2]),
        Path::new(&args[3]),
        args[4].parse::<usize>().unwrap(),
        Path::new(&args[5]),
    );
    let me = std::process::id().to_string();
    let cpu0 = cpu_seconds();
    let mut waits = Vec::with_capacity(k);
    let mut handoffs = 0;
    match mode.as_str() {
        "flock" => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(lock)
                .unwrap();
            for _ in 0..k {
                let s = Instant::now();
                f.lock().unwrap();
                waits.push(s.elapsed().as_micros() as u64);
                handoffs += u64::from(critical(counter, last, &me));
                f.unlock().unwrap();
            }
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let l = Lock::new(lock).timeout(Duration::from_secs(600));
                for _ in 0..k {
                    let s = Instant::now();
                    let g = l.acquire().await.unwrap();
                    waits.push(s.elapsed().as_micros() as u64);
                    handoffs += u64::from(critical(counter, last, &me));
                    drop(g);
                }
            });
        }
    }
    write_out(out, handoffs, cpu_seconds() - cpu0, &waits);
}

struct Outcome {
    grants: u64,
    wall: f64,
    waits: Vec<u64>,
    handoffs: u64,
    cpu: f64,
    exact: bool,
}

fn run_processes(dir: &Path, who: &str, p: usize, k: usize) -> Outcome {
    let lock = dir.join(format!("{who}-{p}.lock"));
    let counter = dir.join(format!("{who}-{p}.counter"));
    let last = dir.join(format!("{who}-{p}.last"));
    let outs: Vec<PathBuf> = (0..p)
        .map(|i| dir.join(format!("{who}-{p}-{i}.out")))
        .collect();
    let t = Instant::now();
    let children: Vec<_> = outs
        .iter()
        .map(|out| {
            let args = [
                lock.to_str().unwrap(),
                counter.to_str().unwrap(),
                last.to_str().unwrap(),
                &k.to_string(),
                out.to_str().unwrap(),
            ];
            let mut cmd = match who {
                "python-default" | "python-0.001" => {
                    let mut c = Command::new(python());
                    c.arg("-c")
                        .arg(PY_WORKER)
                        .args(args)
                        .arg(if who == "python-default" {
                            "default"
                        } else {
                            "0.001"
                        });
                    c
                }
                mode => {
                    let mut c = Command::new(std::env::current_exe().unwrap());
                    c.env(ROLE, "1")
                        .arg(if mode == "flock" {
                            "flock"
                        } else {
                            "portalocker"
                        })
                        .args(args);
                    c
                }
            };
            cmd.stdout(Stdio::null()).spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "{who} worker failed");
    }
    let wall = t.elapsed().as_secs_f64();
    let (mut waits, mut handoffs, mut cpu) = (Vec::new(), 0, 0.0);
    for out in &outs {
        let text = std::fs::read_to_string(out).unwrap();
        let mut lines = text.lines();
        let mut head = lines.next().unwrap().split_whitespace();
        handoffs += head.next().unwrap().parse::<u64>().unwrap();
        cpu += head.next().unwrap().parse::<f64>().unwrap();
        waits.extend(
            lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|w| w.parse::<u64>().unwrap()),
        );
    }
    let grants = (p * k) as u64;
    Outcome {
        grants,
        wall,
        waits,
        handoffs,
        cpu,
        exact: read_num(&counter) == grants,
    }
}

fn run_tasks(dir: &Path, p: usize, k: usize) -> Outcome {
    let lock = dir.join(format!("tasks-{p}.lock"));
    let counter = dir.join(format!("tasks-{p}.counter"));
    let last = dir.join(format!("tasks-{p}.last"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let results: Vec<(Vec<u64>, u64)> = rt.block_on(async {
        let tasks: Vec<_> = (0..p)
            .map(|i| {
                let (lock, counter, last) = (lock.clone(), counter.clone(), last.clone());
                tokio::spawn(async move {
                    let l = Lock::new(&lock).timeout(Duration::from_secs(600));
                    let me = format!("task{i}");
                    let (mut waits, mut handoffs) = (Vec::new(), 0);
                    for _ in 0..k {
                        let s = Instant::now();
                        let g = l.acquire().await.unwrap();
                        waits.push(s.elapsed().as_micros() as u64);
                        handoffs += u64::from(critical(&counter, &last, &me));
                        drop(g);
                    }
                    (waits, handoffs)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let wall = t.elapsed().as_secs_f64();
    let grants = (p * k) as u64;
    Outcome {
        grants,
        wall,
        handoffs: results.iter().map(|r| r.1).sum(),
        waits: results.into_iter().flat_map(|r| r.0).collect(),
        cpu: cpu_seconds() - cpu0,
        exact: read_num(&counter) == grants,
    }
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn main() {
    if std::env::var_os(ROLE).is_some() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        worker(&args);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let k: usize = std::env::var("CONTENTION_K")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let who = [
        "portalocker",
        "python-default",
        "python-0.001",
        "flock",
        "portalocker-tasks",
    ];
    let mut rows = Vec::new();
    let mut table = String::new();
    table.push_str(&format!("| lock ({k} iterations each) | P | grants/s | wait median | p99 | max | handoffs | CPU µs/grant | counter |\n"));
    table.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for p in [2usize, 4, 8] {
        for w in who {
            let mut o = if w == "portalocker-tasks" {
                run_tasks(dir.path(), p, k)
            } else {
                run_processes(dir.path(), w, p, k)
            };
            let (med, p99, max) = (
                pct(&mut o.waits, 0.5),
                pct(&mut o.waits, 0.99),
                pct(&mut o.waits, 1.0),
            );
            let line = format!(
                "| {w} | {p} | {:.0} | {med:.2} ms | {p99:.2} ms | {max:.2} ms | {} | {:.1} | {} |",
                o.grants as f64 / o.wall,
                o.handoffs,
                o.cpu * 1e6 / o.grants as f64,
                if o.exact { "exact" } else { "LOST UPDATES" }
            );
            println!("{line}");
            table.push_str(&line);
            table.push('\n');
            rows.push((w, p, max, o.grants as f64 / o.wall));
        }
    }
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("contention.md"), &table).unwrap();
    std::fs::write(docs.join("contention.svg"), svg(&rows)).unwrap();
    println!("\nwrote docs/contention.md and docs/contention.svg");
}

/// A bar chart of the maximum wait (log scale) per lock and P.
fn svg(rows: &[(&str, usize, f64, f64)]) -> String {
    let colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"];
    let names: Vec<&str> = {
        let mut n: Vec<&str> = rows.iter().map(|r| r.0).collect();
        n.dedup();
        n.truncate(5);
        n
    };
    let (w, h, left, bottom) = (760.0, 360.0, 70.0, 300.0);
    let y = |ms: f64| bottom - (ms.max(0.01).log10() + 2.0) / 6.0 * 260.0; // 0.01 ms .. 10 s
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r#"<text x="380" y="20" text-anchor="middle" font-size="14">Maximum wait for a contended file lock (log scale)</text>"#);
    for (i, label) in [
        "0.01 ms", "0.1 ms", "1 ms", "10 ms", "100 ms", "1 s", "10 s",
    ]
    .iter()
    .enumerate()
    {
        let yy = bottom - i as f64 / 6.0 * 260.0;
        s.push_str(&format!(r##"<line x1="{left}" y1="{yy}" x2="740" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##, left - 5.0, yy + 4.0));
    }
    for (gi, p) in [2usize, 4, 8].iter().enumerate() {
        let gx = left + 20.0 + gi as f64 * 220.0;
        s.push_str(&format!(
            r#"<text x="{}" y="{}" text-anchor="middle">P = {p}</text>"#,
            gx + 90.0,
            bottom + 18.0
        ));
        for (bi, n) in names.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.0 == *n && r.1 == *p) {
                let x = gx + bi as f64 * 36.0;
                let top = y(r.2);
                s.push_str(&format!(
                    r#"<rect x="{x}" y="{top:.1}" width="30" height="{:.1}" fill="{}"/>"#,
                    bottom - top,
                    colors[bi]
                ));
            }
        }
    }
    for (bi, n) in names.iter().enumerate() {
        let x = left + bi as f64 * 135.0;
        s.push_str(&format!(r#"<rect x="{x}" y="330" width="12" height="12" fill="{}"/><text x="{}" y="341">{n}</text>"#, colors[bi], x + 16.0));
    }
    s.push_str("</svg>\n");
    s
}
