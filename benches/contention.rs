//! Contended file locks, side by side in one run on one machine: this
//! crate, Python portalocker 4.4.2 (default `check_interval` and 0.001 s),
//! and a blocking-`flock` loop, for P = 2, 4, 8, 16 processes (and P tasks
//! in one process), each looping lock → read counter → write +1 → unlock
//! for the same few seconds; then this crate in the field's conditions
//! (a holder that reads its lock file on a relatime mount, tmpfs, waiters
//! that do not own the lock file, a waiter killed while announced), and
//! the CPU a waiting process burns while the holder reads its lock file
//! 10,000 times a second.
//!
//! ```text
//! cargo bench --bench contention                  # K = 2000, 2 s runs
//! CONTENTION_K=500 CONTENTION_SECS=5 cargo bench --bench contention
//! CONTENTION_ONLY=8,16 cargo bench --bench contention  # prints, writes nothing
//! CONTENTION_ONLY=field cargo bench --bench contention # the field's rows only
//! ```
//!
//! Prints Markdown tables (throughput, wait median / p99 / max, handoffs
//! between processes, grants of the least and most served process, CPU per
//! grant, counter check) and writes them, with an SVG plot of the maximum
//! waits, to `docs/contention.md` and `docs/contention.svg`. Python comes
//! from `$PORTALOCKER_PYTHON`, else `target/py-venv` (made by
//! `scripts/test.sh`). The scenarios that mount a tmpfs or run processes as
//! `nobody` need root; without it they are left out of the table (and it
//! says so).

// Linux only: it reads /proc (CPU times, the lock table) and mounts tmpfs.
#[cfg(target_os = "linux")]
mod imp {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use portalocker::Lock;

    const ROLE: &str = "PORTALOCKER_CONTENTION_WORKER";

    const PY_WORKER: &str = r#"
import os, sys, time, portalocker
lock_path, counter, last, start, end, out, interval = sys.argv[1:8]
start = float(start)
count = int(end[1:]) if end.startswith("n") else None
end = float(end) if count is None else 0.0
kw = {} if interval == "default" else {"check_interval": float(interval)}
waits, handoffs = [], 0
me = str(os.getpid())
while time.time() < start:
    time.sleep(0.001)
t0 = os.times()
while (len(waits) < count) if count is not None else (time.time() < end):
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
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python")
            })
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

    fn epoch() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    /// Sleeps until the wall-clock time `t` (seconds since the epoch), so that
    /// every worker of a run starts together.
    fn sleep_until_epoch(t: f64) {
        let now = epoch();
        if t > now {
            std::thread::sleep(Duration::from_secs_f64(t - now));
        }
    }

    /// Reads 5 bytes of the lock file through a fresh descriptor, as a holder
    /// that keeps data in its lock file does.
    fn read_lock_file(lock: &Path) {
        let mut buf = [0u8; 5];
        let mut f = std::fs::File::open(lock).unwrap();
        let _ = std::io::Read::read(&mut f, &mut buf).unwrap();
    }

    /// How long a worker loops: until a wall-clock time, or for a number of
    /// grants (`n500`).
    #[derive(Clone, Copy)]
    enum Span {
        Until(f64),
        Grants(usize),
    }

    impl Span {
        fn parse(s: &str) -> Self {
            match s.strip_prefix('n') {
                Some(n) => Self::Grants(n.parse().unwrap()),
                None => Self::Until(s.parse().unwrap()),
            }
        }

        fn arg(self) -> String {
            match self {
                Self::Until(t) => format!("{t:.6}"),
                Self::Grants(n) => format!("n{n}"),
            }
        }

        fn more(self, done: usize) -> bool {
            match self {
                Self::Until(t) => epoch() < t,
                Self::Grants(n) => done < n,
            }
        }
    }

    /// Opens (creating) a lock file for a plain `flock`.
    fn open_lock(lock: &Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(lock)
            .unwrap()
    }

    /// A worker process: `mode lock counter last start span out [reads]`.
    fn worker(args: &[String]) {
        let mode = args[0].as_str();
        if mode == "wait" {
            return wait_worker(args);
        }
        let (lock, counter, last, start, end, out) = (
            Path::new(&args[1]),
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4].parse::<f64>().unwrap(),
            Span::parse(&args[5]),
            Path::new(&args[6]),
        );
        let reads = args.get(7).map(String::as_str) == Some("reads");
        let me = std::process::id().to_string();
        let mut waits = Vec::new();
        let mut handoffs = 0;
        sleep_until_epoch(start);
        let cpu0 = cpu_seconds();
        match mode {
            "flock" => {
                let f = open_lock(lock);
                while end.more(waits.len()) {
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
                    while end.more(waits.len()) {
                        let s = Instant::now();
                        let g = l.acquire().await.unwrap();
                        waits.push(s.elapsed().as_micros() as u64);
                        handoffs += u64::from(critical(counter, last, &me));
                        if reads {
                            read_lock_file(lock);
                        }
                        drop(g);
                    }
                });
            }
        }
        write_out(out, handoffs, cpu_seconds() - cpu0, &waits);
    }

    /// `wait lock secs out`: waits for the lock for `secs` (it stays held),
    /// then writes the CPU seconds it used meanwhile.
    fn wait_worker(args: &[String]) {
        let (lock, secs, out) = (
            Path::new(&args[1]),
            args[2].parse::<f64>().unwrap(),
            Path::new(&args[3]),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cpu0 = cpu_seconds();
        let r = rt.block_on(
            Lock::new(lock)
                .timeout(Duration::from_secs_f64(secs))
                .acquire(),
        );
        assert!(r.is_err(), "the lock stays held");
        std::fs::write(out, format!("{}", cpu_seconds() - cpu0)).unwrap();
    }

    struct Outcome {
        grants: u64,
        wall: f64,
        waits: Vec<u64>,
        handoffs: u64,
        cpu: f64,
        exact: bool,
        /// Grants per process (or task).
        per: Vec<u64>,
    }

    /// How the processes of a run are started.
    #[derive(Clone, Copy, PartialEq)]
    enum Setup {
        Plain,
        /// The holder reads its lock file inside each grant.
        Reads,
        /// Every other process runs as `nobody` (the files are root's).
        HalfNobody,
    }

    #[allow(clippy::too_many_arguments)]
    /// `secs`: loop for that long; `None`: `k` grants each.
    fn run_processes(
        dir: &Path,
        who: &str,
        p: usize,
        run: Run,
        setup: Setup,
        exe: &Path,
    ) -> Outcome {
        let lock = dir.join(format!("{who}-{p}.lock"));
        let counter = dir.join(format!("{who}-{p}.counter"));
        let last = dir.join(format!("{who}-{p}.last"));
        if setup == Setup::HalfNobody {
            use std::os::unix::fs::PermissionsExt;
            for f in [&lock, &counter, &last] {
                std::fs::write(f, b"").unwrap();
            }
            // The lock file is root's and read-only for others; the counter
            // files are writable by everyone.
            std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
            for f in [&counter, &last] {
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o666)).unwrap();
            }
        }
        let outs: Vec<PathBuf> = (0..p)
            .map(|i| dir.join(format!("{who}-{p}-{i}.out")))
            .collect();
        // Start together, a moment after every process has been spawned.
        let start = epoch() + 0.3 + 0.03 * p as f64;
        let end = match run {
            Run::Secs(secs) => Span::Until(start + secs),
            Run::Grants(k) => Span::Grants(k),
        };
        let children: Vec<_> =
            outs.iter()
                .enumerate()
                .map(|(i, out)| {
                    let args = [
                        lock.to_str().unwrap().to_string(),
                        counter.to_str().unwrap().to_string(),
                        last.to_str().unwrap().to_string(),
                        format!("{start:.6}"),
                        end.arg(),
                        out.to_str().unwrap().to_string(),
                    ];
                    let mut cmd = match who {
                        "python-default" | "python-0.001" => {
                            let mut c = Command::new(python());
                            c.arg("-c").arg(PY_WORKER).args(&args).arg(
                                if who == "python-default" {
                                    "default"
                                } else {
                                    "0.001"
                                },
                            );
                            c
                        }
                        mode => {
                            let mut c = Command::new(exe);
                            c.env(ROLE, "1")
                                .arg(if mode == "flock" {
                                    "flock"
                                } else {
                                    "portalocker"
                                })
                                .args(&args)
                                .arg(if setup == Setup::Reads {
                                    "reads"
                                } else {
                                    "plain"
                                });
                            if setup == Setup::HalfNobody && i % 2 == 1 {
                                use std::os::unix::process::CommandExt;
                                c.uid(65534).gid(65534);
                            }
                            c
                        }
                    };
                    cmd.stdout(Stdio::null()).spawn().unwrap()
                })
                .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "{who} worker failed");
        }
        let wall = match run {
            Run::Secs(secs) => secs,
            Run::Grants(_) => epoch() - start,
        };
        let (mut waits, mut handoffs, mut cpu, mut per) = (Vec::new(), 0, 0.0, Vec::new());
        for out in &outs {
            let text = std::fs::read_to_string(out).unwrap();
            let mut lines = text.lines();
            let mut head = lines.next().unwrap().split_whitespace();
            handoffs += head.next().unwrap().parse::<u64>().unwrap();
            cpu += head.next().unwrap().parse::<f64>().unwrap();
            let w: Vec<u64> = lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|w| w.parse::<u64>().unwrap())
                .collect();
            per.push(w.len() as u64);
            waits.extend(w);
        }
        let grants = per.iter().sum();
        Outcome {
            grants,
            wall,
            waits,
            handoffs,
            cpu,
            exact: read_num(&counter) == grants,
            per,
        }
    }

    /// A run's length: a time, or a number of grants per process.
    #[derive(Clone, Copy)]
    enum Run {
        Secs(f64),
        Grants(usize),
    }

    fn run_tasks(dir: &Path, p: usize, run: Run) -> Outcome {
        let lock = dir.join(format!("tasks-{p}.lock"));
        let counter = dir.join(format!("tasks-{p}.counter"));
        let last = dir.join(format!("tasks-{p}.last"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let more = move |done: usize| match run {
            Run::Secs(secs) => t0.elapsed() < Duration::from_secs_f64(secs),
            Run::Grants(k) => done < k,
        };
        let results: Vec<(Vec<u64>, u64)> = rt.block_on(async {
            let tasks: Vec<_> = (0..p)
                .map(|i| {
                    let (lock, counter, last) = (lock.clone(), counter.clone(), last.clone());
                    tokio::spawn(async move {
                        let l = Lock::new(&lock).timeout(Duration::from_secs(600));
                        let me = format!("task{i}");
                        let (mut waits, mut handoffs) = (Vec::new(), 0);
                        while more(waits.len()) {
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
        let wall = t0.elapsed().as_secs_f64();
        let per: Vec<u64> = results.iter().map(|r| r.0.len() as u64).collect();
        let grants = per.iter().sum();
        Outcome {
            grants,
            wall,
            handoffs: results.iter().map(|r| r.1).sum(),
            waits: results.into_iter().flat_map(|r| r.0).collect(),
            cpu: cpu_seconds() - cpu0,
            exact: read_num(&counter) == grants,
            per,
        }
    }

    fn pct(v: &mut [u64], p: f64) -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    }

    /// A tmpfs mounted on a fresh directory, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount() -> Option<Self> {
            let d = tempfile::tempdir().unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
                .arg(d.path())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Self(d))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    /// A directory every user may enter and write, holding a copy of this
    /// binary every user may run (for workers started as `nobody`).
    fn shared_dir() -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let exe = d.path().join("contention-worker");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (d, exe)
    }

    /// Whether a waiter's announcement (an open-file-description lock) is on
    /// the file `ino`, from `/proc/locks`.
    fn announced(ino: u64) -> bool {
        std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
    }

    /// Starts a waiter on `lock` while this process holds it, waits until the
    /// waiter has announced itself, and SIGKILLs it.
    fn kill_an_announced_waiter(lock: &Path, exe: &Path) {
        use std::os::unix::fs::MetadataExt;
        let f = open_lock(lock);
        f.lock().unwrap();
        let out = lock.with_extension("killed-out");
        let mut w = Command::new(exe)
            .env(ROLE, "1")
            .args(["wait", lock.to_str().unwrap(), "600", out.to_str().unwrap()])
            .spawn()
            .unwrap();
        let ino = f.metadata().unwrap().ino();
        let t = Instant::now();
        while !announced(ino) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the waiter never announced"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        w.kill().unwrap();
        w.wait().unwrap();
        drop(f);
    }

    /// The CPU share of one core a waiting process uses for `secs` while this
    /// process holds the lock and reads the lock file 10,000 times a second,
    /// through its own descriptor (`reopen` false) or opening it each time.
    fn waiter_cpu(dir: &Path, reopen: bool, secs: f64) -> f64 {
        use std::os::unix::fs::FileExt;
        let lock = dir.join(format!("cpu-{reopen}.lock"));
        std::fs::write(&lock, b"hello world").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&lock)
            .unwrap();
        f.lock().unwrap();
        let out = dir.join(format!("cpu-{reopen}.out"));
        let mut w = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "1")
            .args([
                "wait",
                lock.to_str().unwrap(),
                &secs.to_string(),
                out.to_str().unwrap(),
            ])
            .spawn()
            .unwrap();
        let t = Instant::now();
        let mut n = 0u64;
        let mut buf = [0u8; 5];
        while w.try_wait().unwrap().is_none() {
            // 10,000 reads a second, evenly spread.
            let due = t + Duration::from_micros(100 * n);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            if reopen {
                std::fs::File::open(&lock)
                    .unwrap()
                    .read_at(&mut buf, 0)
                    .unwrap();
            } else {
                f.read_at(&mut buf, 0).unwrap();
            }
            n += 1;
        }
        let cpu: f64 = std::fs::read_to_string(&out)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        cpu / secs
    }

    fn fairness(per: &[u64]) -> (u64, f64, u64) {
        let least = per.iter().copied().min().unwrap_or(0);
        let most = per.iter().copied().max().unwrap_or(0);
        let mean = per.iter().sum::<u64>() as f64 / per.len().max(1) as f64;
        (least, mean, most)
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
        let secs: f64 = std::env::var("CONTENTION_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let exe = std::env::current_exe().unwrap();
        // The blocking-`flock` loop first: every row's "vs flock" column is
        // its throughput over that loop's at the same P, in this run.
        let who = [
            "flock",
            "portalocker",
            "python-default",
            "python-0.001",
            "portalocker-tasks",
        ];
        let k: usize = std::env::var("CONTENTION_K")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        // `CONTENTION_ONLY=P1,P2,...` measures the comparison tables at
        // those P only (flock, this crate and its tasks), prints them and
        // writes nothing: a quick look at one change. `CONTENTION_ONLY=field`
        // measures the field's conditions and the waiter's CPU only.
        let only_var = std::env::var("CONTENTION_ONLY").ok();
        let field_only = only_var.as_deref() == Some("field");
        let only: Option<Vec<usize>> =
            only_var.map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect());
        let mut rows = Vec::new();
        let mut table = String::new();
        let runs = if field_only {
            Vec::new()
        } else {
            vec![Run::Grants(k), Run::Secs(secs)]
        };
        for run in runs {
            match run {
            Run::Grants(k) => table.push_str(&format!(
                "Throughput and waits: P processes (or tasks) each take the lock {k} times; \
                 grants/s counts until the last one is done.\n\n\
                 | lock | P | grants/s | vs flock | wait median | p99 | max | handoffs | CPU µs/grant | counter |\n\
                 | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
            )),
            Run::Secs(secs) => table.push_str(&format!(
                "\nFairness: P processes (or tasks) loop for {secs} s; how many grants the least \
                 and the most served got.\n\n\
                 | lock | P | grants/s | vs flock | max wait | least / most served | counter |\n\
                 | --- | --- | --- | --- | --- | --- | --- |\n"
            )),
        }
            // Fresh files (counters) for each kind of run.
            let run_dir = dir.path().join(match run {
                Run::Grants(_) => "grants",
                Run::Secs(_) => "secs",
            });
            std::fs::create_dir_all(&run_dir).unwrap();
            for p in [2usize, 4, 8, 16] {
                if only.as_ref().is_some_and(|o| !o.contains(&p)) {
                    continue;
                }
                let mut flock_rate = f64::NAN;
                for w in who {
                    if only.is_some() && w.starts_with("python") {
                        continue;
                    }
                    let mut o = if w == "portalocker-tasks" {
                        run_tasks(&run_dir, p, run)
                    } else {
                        run_processes(&run_dir, w, p, run, Setup::Plain, &exe)
                    };
                    let (med, p99, max) = (
                        pct(&mut o.waits, 0.5),
                        pct(&mut o.waits, 0.99),
                        pct(&mut o.waits, 1.0),
                    );
                    let exact = if o.exact { "exact" } else { "LOST UPDATES" };
                    let rate = o.grants as f64 / o.wall;
                    if w == "flock" {
                        flock_rate = rate;
                    }
                    let vs = format!("{:.0} %", 100.0 * rate / flock_rate);
                    let line = match run {
                        Run::Grants(_) => {
                            rows.push((w, p, max, rate));
                            format!(
                            "| {w} | {p} | {rate:.0} | {vs} | {med:.2} ms | {p99:.2} ms | {max:.2} ms | {} | {:.1} | {exact} |",
                            o.handoffs,
                            o.cpu * 1e6 / o.grants.max(1) as f64,
                        )
                        }
                        Run::Secs(_) => {
                            let (least, _, most) = fairness(&o.per);
                            format!(
                            "| {w} | {p} | {rate:.0} | {vs} | {max:.2} ms | {least} / {most} | {exact} |"
                        )
                        }
                    };
                    println!("{line}");
                    table.push_str(&line);
                    table.push('\n');
                }
            }
        }

        if only.is_some() && !field_only {
            return;
        }

        // The field's conditions, this crate only.
        table.push_str(
        "\nThis crate in the field's conditions (P processes, each looping for the same time):\n\n\
         | scenario | P | grants/s | max wait | least / mean / most served | all served ≤ 50 ms | least ≥ ½ mean | counter |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
        let root = is_root();
        let mut skipped = Vec::new();
        let tmpfs = if root { Tmpfs::mount() } else { None };
        let (shared, shared_exe) = shared_dir();
        let killed_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        for p in [4usize, 8] {
            let mut scenarios: Vec<(&str, PathBuf, Setup, PathBuf)> = vec![(
                "ext4 (relatime), each grant also reads the lock file",
                dir.path().to_path_buf(),
                Setup::Reads,
                exe.clone(),
            )];
            if let Some(t) = &tmpfs {
                let d = t.0.path().to_path_buf();
                scenarios.push(("tmpfs", d, Setup::Plain, exe.clone()));
            } else {
                skipped.push("tmpfs (needs root to mount)");
            }
            if root {
                scenarios.push((
                    "half the processes are `nobody` (read-only access to root's lock file)",
                    shared.path().to_path_buf(),
                    Setup::HalfNobody,
                    shared_exe.clone(),
                ));
            } else {
                skipped.push("non-owner waiters (needs root to run processes as nobody)");
            }
            scenarios.push((
                "after a waiter was SIGKILLed while announced",
                killed_dir.path().to_path_buf(),
                Setup::Plain,
                exe.clone(),
            ));
            for (name, d, setup, worker_exe) in scenarios {
                let who = format!("scenario{}", name.len());
                if name.starts_with("after a waiter") {
                    kill_an_announced_waiter(&d.join(format!("{who}-{p}.lock")), &exe);
                }
                let mut o = run_processes(&d, &who, p, Run::Secs(secs), setup, &worker_exe);
                let max = pct(&mut o.waits, 1.0);
                let (least, mean, most) = fairness(&o.per);
                let line = format!(
                "| {name} | {p} | {:.0} | {max:.2} ms | {least} / {mean:.0} / {most} | {} | {} | {} |",
                o.grants as f64 / o.wall,
                if max <= 50.0 { "yes" } else { "**no**" },
                if least as f64 >= mean / 2.0 { "yes" } else { "**no**" },
                if o.exact { "exact" } else { "LOST UPDATES" }
            );
                println!("{line}");
                table.push_str(&line);
                table.push('\n');
            }
        }
        skipped.dedup();
        if !skipped.is_empty() {
            table.push_str(&format!(
                "\nLeft out in this run: {}.\n",
                skipped.join("; ")
            ));
        }

        table.push_str(
        "\nA waiting process's CPU while the holder (another process) reads its lock file 10,000 times a second:\n\n\
         | holder reads | waiter CPU (share of one core) | target |\n| --- | --- | --- |\n",
    );
        for (label, reopen) in [
            ("through its locked descriptor", false),
            ("opening the file each time (open + read + close)", true),
        ] {
            let share = waiter_cpu(dir.path(), reopen, 3.0);
            let line = format!("| {label} | {:.2} % | < 2 % |", share * 100.0);
            println!("{line}");
            table.push_str(&line);
            table.push('\n');
        }

        if field_only {
            return;
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
        let (w, h, left, bottom) = (860.0, 360.0, 70.0, 300.0);
        let y = |ms: f64| bottom - (ms.max(0.01).log10() + 2.0) / 6.0 * 260.0; // 0.01 ms .. 10 s
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        s.push_str(r#"<text x="430" y="20" text-anchor="middle" font-size="14">Maximum wait for a contended file lock (log scale)</text>"#);
        for (i, label) in [
            "0.01 ms", "0.1 ms", "1 ms", "10 ms", "100 ms", "1 s", "10 s",
        ]
        .iter()
        .enumerate()
        {
            let yy = bottom - i as f64 / 6.0 * 260.0;
            s.push_str(&format!(r##"<line x1="{left}" y1="{yy}" x2="840" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##, left - 5.0, yy + 4.0));
        }
        for (gi, p) in [2usize, 4, 8, 16].iter().enumerate() {
            let gx = left + 10.0 + gi as f64 * 190.0;
            s.push_str(&format!(
                r#"<text x="{}" y="{}" text-anchor="middle">P = {p}</text>"#,
                gx + 85.0,
                bottom + 18.0
            ));
            for (bi, n) in names.iter().enumerate() {
                if let Some(r) = rows.iter().find(|r| r.0 == *n && r.1 == *p) {
                    let x = gx + bi as f64 * 34.0;
                    let top = y(r.2);
                    s.push_str(&format!(
                        r#"<rect x="{x}" y="{top:.1}" width="28" height="{:.1}" fill="{}"/>"#,
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
}

fn main() {
    #[cfg(target_os = "linux")]
    imp::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("the contention bench runs on Linux only (it reads /proc)");
}
