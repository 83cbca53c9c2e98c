//! Shared test helpers: child processes (re-executed test binary or Python
//! portalocker), descriptor counting, the Python venv.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

pub const ROLE_ENV: &str = "PORTALOCKER_TEST_ROLE";
pub const ARGS_ENV: &str = "PORTALOCKER_TEST_ARGS";

/// A throwaway etcd cluster and the etcd lock's child roles.
#[cfg(all(feature = "etcd", unix))]
pub mod etcd;

/// A throwaway Redis Cluster and the cluster lock's child roles.
#[cfg(all(feature = "redis-cluster", unix))]
pub mod cluster;

/// The lease lock's child roles and two FUSE "hosts" of one directory.
#[cfg(unix)]
pub mod lease;

/// `n` milliseconds: keeps short lock settings on one line.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A free 127.0.0.1 port, for a server about to be started. Another
/// process may take it before the server binds, so starters retry.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Awaits an acquisition that must be refused because someone holds the
/// lock; the error, for more checks.
pub async fn busy<T>(
    attempt: impl std::future::Future<Output = portalocker::Result<T>>,
) -> portalocker::Error {
    fails_with(portalocker::ErrorKind::AlreadyLocked, attempt).await
}

/// Awaits an acquisition (or any call) that must fail with `kind`; the
/// error, for more checks.
pub async fn fails_with<T>(
    kind: portalocker::ErrorKind,
    attempt: impl std::future::Future<Output = portalocker::Result<T>>,
) -> portalocker::Error {
    let Err(e) = attempt.await else {
        panic!("it succeeded, but it should have failed with {kind:?}")
    };
    assert_eq!(e.kind(), kind, "{e}");
    e
}

/// The number of open descriptors of this process.
#[cfg(unix)]
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// How many of this process's descriptors point at `path`.
#[cfg(target_os = "linux")]
pub fn open_count(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t == path)
        .count()
}

/// Every entry of `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Whether the tests run under Wine (`scripts/wine/run.sh` says so), for
/// the few places where Wine is known to differ from Windows.
pub fn under_wine() -> bool {
    std::env::var_os("PORTALOCKER_UNDER_WINE").is_some()
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
/// For conditions that settle asynchronously (a blocking-pool task that
/// finishes after its future was dropped), never as a substitute for
/// synchronising on an event.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Spawns `fut` and returns once it has started running, so the caller can
/// act (kill a holder, release a lock) knowing the task is under way. The
/// handle yields the output and the instant the future completed.
pub async fn spawn_started<F>(fut: F) -> tokio::task::JoinHandle<(F::Output, std::time::Instant)>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let _ = tx.send(());
        let out = fut.await;
        (out, std::time::Instant::now())
    });
    rx.await.unwrap();
    handle
}

/// As [`eventually`], for a condition that must itself await.
pub async fn eventually_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A child process that talks through marker lines on stdout (`@@NAME`)
/// and is told to finish by closing its stdin.
pub struct Proc {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
    seen: Vec<String>,
}

impl Proc {
    fn start(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        // A binary just copied (`role_as_nobody`) can be "busy" for a
        // moment: a child another test thread forked meanwhile holds the
        // copy's write descriptor until it execs. That passes; retry.
        // Under Wine, creating a process on a loaded machine now and then
        // fails with ERROR_INTERNAL_ERROR (1359); that passes too.
        let transient = |e: &std::io::Error| {
            let code = e.raw_os_error();
            code == Some(26) || (cfg!(windows) && code == Some(1359))
        };
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if transient(&e) && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Self {
            child,
            stdout,
            stdin,
            seen: Vec::new(),
        }
    }

    /// Re-executes this test binary, running `role` in the test named
    /// `entry` (which must call [`child_main`]).
    pub fn role(entry: &str, role: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            .env(ARGS_ENV, args.join("\n"));
        Self::start(cmd)
    }

    /// As [`role`](Self::role), with a command wrapper such as
    /// `sh -c 'umask 0; exec "$0" "$@"'`.
    pub fn role_via(shell: &str, entry: &str, role: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(shell)
            .arg(std::env::current_exe().unwrap())
            .args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            .env(ARGS_ENV, args.join("\n"));
        Self::start(cmd)
    }

    /// As [`role`](Self::role), as user `nobody`, from a copy of this
    /// binary in `dir` (made world-readable), so that the permissions of
    /// the directories above the build do not matter. For tests of
    /// permission errors when running as root, which ignores permissions.
    #[cfg(unix)]
    pub fn role_as_nobody(dir: &Path, entry: &str, role: &str, args: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("as-nobody");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.uid(65534)
            .args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(ROLE_ENV, role)
            .env(ARGS_ENV, args.join("\n"));
        Self::start(cmd)
    }

    /// Runs a Python script with Python portalocker 4.4.2.
    pub fn python(script: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg("-c").arg(script).args(args);
        Self::start(cmd)
    }

    /// A command built by the caller.
    pub fn command(cmd: Command) -> Self {
        Self::start(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one starts with `@@{marker}`; returns the rest of
    /// that line. Panics with everything seen if the child ends first.
    pub fn expect(&mut self, marker: &str) -> String {
        self.expect_any(&[marker]).1
    }

    /// Reads lines until one starts with `@@` and one of `markers`;
    /// returns that marker and the rest of the line.
    pub fn expect_any(&mut self, markers: &[&str]) -> (String, String) {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            if n == 0 {
                let status = self.child.wait().unwrap();
                panic!(
                    "child ended ({status}) before any of {markers:?}; it said: {:#?}",
                    self.seen
                );
            }
            let line = line.trim_end().to_string();
            for m in markers {
                if let Some(rest) = line.strip_prefix(&format!("@@{m}")) {
                    let rest = rest.trim().to_string();
                    self.seen.push(line.clone());
                    return (m.to_string(), rest);
                }
            }
            self.seen.push(line);
        }
    }

    /// Sends one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the child's stdin: by convention, "release and exit".
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Panics, with what the child said, if it has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
            panic!(
                "the child exited ({status}); it said: {:#?}\n{rest}",
                self.seen
            );
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) with kill(1).
    #[cfg(unix)]
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
        if name == "STOP" {
            wait_stopped(self.child.id());
        }
    }

    /// Closes stdin and waits for a successful exit.
    pub fn finish(mut self) {
        self.close_stdin();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "child failed ({status}); it said: {:#?}\n{rest}",
            self.seen
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The role and arguments this process was started with, if it is a
/// child started by [`Proc::role`].
pub fn child_role() -> Option<(String, Vec<String>)> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let args = std::env::var(ARGS_ENV).unwrap_or_default();
    let args = if args.is_empty() {
        Vec::new()
    } else {
        args.split('\n').map(str::to_string).collect()
    };
    Some((role, args))
}

/// The test a child process of this test binary runs: `Proc::role`
/// re-executes the binary with only this test selected, and the role in
/// the environment.
#[allow(unused_macros)]
macro_rules! child_entry {
    () => {
        #[test]
        fn child_entry() {
            support::child_main();
        }
    };
}
#[allow(unused_imports)]
pub(crate) use child_entry;

/// A new temporary directory and the path of `name` in it (not created).
#[allow(dead_code)]
pub fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(name);
    (d, path)
}

/// A current-thread runtime with I/O and time enabled.
#[allow(dead_code)]
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Prints a marker line for the parent.
pub fn say(marker: &str, rest: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{marker} {rest}").unwrap();
    out.flush().unwrap();
}

/// Blocks until the parent closes our stdin.
pub fn wait_for_parent() {
    let mut sink = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
}

/// The Python interpreter with portalocker 4.4.2: `$PORTALOCKER_PYTHON`,
/// else a venv under the target directory, created on first use.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTALOCKER_PYTHON") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join("py-venv");
    let py = venv.join("bin/python");
    // Serialise creation across the test binaries running in parallel.
    std::fs::create_dir_all(root).unwrap();
    let guard = std::fs::File::create(root.join("py-venv.lock")).unwrap();
    guard.lock().unwrap();
    if !has_portalocker(&py) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&py)
                .args(["-m", "pip", "install", "-q", "portalocker==4.4.2", "redis"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok && has_portalocker(&py),
            "the Python interop tests need python3 (with venv and pip) and PyPI access to \
             install portalocker==4.4.2, or PORTALOCKER_PYTHON set to a Python that has it; \
             scripts/test.sh sets this up"
        );
    }
    py
}

fn has_portalocker(py: &Path) -> bool {
    Command::new(py)
        .args([
            "-c",
            "import portalocker, sys; sys.exit(portalocker.__version__ != '4.4.2')",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (permission checks do not apply).
#[cfg(unix)]
/// Whether a test that needs root (to mount a tmpfs, to run a process as
/// `nobody`) can run. As root: yes. Otherwise it says on this process's
/// standard error (not captured by the test harness, so `cargo test` shows
/// it) that `what` was skipped and why, and the test returns early, unless
/// `PORTALOCKER_ROOT_TESTS=required` (set by `scripts/test.sh`, which runs
/// as root): then a skip is a failure.
pub fn needs_root(what: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("PORTALOCKER_ROOT_TESTS").as_deref() != Ok("required"),
        "{what} needs root ({why}), and PORTALOCKER_ROOT_TESTS=required"
    );
    let _ = writeln!(
        std::io::stderr(),
        "portalocker tests: skipped {what}: it needs root ({why}); scripts/test.sh runs it"
    );
    false
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// The entry point of re-executed children. Each test file that spawns
/// children has a `#[test] fn child_entry()` that calls this; in a normal
/// test run (no role in the environment) it returns at once.
pub fn child_main() {
    let Some((role, args)) = child_role() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run_role(&role, &args));
    drop(rt);
    // Exit before libtest prints its summary into our marker stream.
    std::process::exit(0);
}

async fn run_role(role: &str, args: &[String]) {
    use portalocker::{Lock, LockFlags};
    match role {
        // Hold the lock until the parent closes stdin.
        "hold" => {
            let flags = match args.get(1).map(String::as_str) {
                Some("sh") => LockFlags::SHARED,
                _ => LockFlags::EXCLUSIVE,
            };
            let lock = Lock::new(&args[0])
                .flags(flags)
                .timeout(Duration::from_secs(30));
            let guard = lock.acquire().await.unwrap();
            say("LOCKED", std::process::id());
            tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
            guard.release().await.unwrap();
            say("RELEASED", "");
        }
        // Take and release the lock in a loop until the parent closes stdin
        // (after "reads": reading 5 bytes of the lock file through the
        // guard and through a fresh descriptor inside each grant); report
        // the grants.
        "loop" => {
            let reads = args.get(1).map(String::as_str) == Some("reads");
            let lock = Lock::new(&args[0]).timeout(Duration::from_secs(60));
            let parent = tokio::task::spawn_blocking(wait_for_parent);
            let mut grants = 0u64;
            while !parent.is_finished() {
                let guard = lock.acquire().await.unwrap();
                #[cfg(not(unix))]
                let _ = reads;
                // Unix only: the reads go through a duplicated descriptor.
                #[cfg(unix)]
                if reads {
                    // Some work while holding, then reads of the lock file
                    // just before the release: through the guard's
                    // descriptor and through a fresh one.
                    let t = std::time::Instant::now();
                    while t.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop();
                    }
                    let mut buf = [0u8; 5];
                    let fd = std::os::fd::AsFd::as_fd(&*guard)
                        .try_clone_to_owned()
                        .unwrap();
                    std::os::unix::fs::FileExt::read_at(&std::fs::File::from(fd), &mut buf, 0)
                        .unwrap();
                    let mut f = std::fs::File::open(&args[0]).unwrap();
                    let _ = std::io::Read::read(&mut f, &mut buf).unwrap();
                }
                grants += 1;
                if grants == 100 {
                    say("LOOPING", std::process::id());
                }
                drop(guard);
            }
            say("GRANTS", grants);
        }
        // `n` acquisitions, each with a timeout of `ms` milliseconds;
        // report how many were served, and the first failure.
        "serve" | "serve-on-go" => {
            if role == "serve-on-go" {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
            }
            let n: u32 = args[1].parse().unwrap();
            let ms: u64 = args[2].parse().unwrap();
            let lock = Lock::new(&args[0]);
            let mut served = 0;
            let mut failure = String::from("none");
            for _ in 0..n {
                match lock.acquire_timeout(Duration::from_millis(ms)).await {
                    Ok(g) => {
                        served += 1;
                        g.release().await.unwrap();
                    }
                    Err(e) if failure == "none" => failure = e.to_string(),
                    Err(_) => {}
                }
            }
            say(
                "SERVED",
                format!("{served} of {n}; first failure: {failure}"),
            );
        }
        // Wait for the lock (announced to its holder) until killed.
        // Wait for the lock; with `wake-only`, never polling (the only
        // scheduled attempt is after 600 s), and giving up after 60 s: only
        // a wake-up serves it.
        "wait" => {
            say("WAITING", std::process::id());
            let wake_only = args.get(1).map(String::as_str) == Some("wake-only");
            let lock = Lock::new(&args[0]).timeout(Duration::from_secs(600));
            let lock = if wake_only {
                lock.check_interval(Duration::from_secs(600))
            } else {
                lock
            };
            let bound = Duration::from_secs(if wake_only { 60 } else { 3600 });
            let acquired = tokio::time::timeout(bound, lock.acquire()).await;
            let acquired = acquired.unwrap_or_else(|_| {
                say("FAILED", "no wake-up within 60 s");
                std::process::exit(1)
            });
            match acquired {
                Ok(_) => say("ACQUIRED", ""),
                Err(e) => say("FAILED", e),
            }
        }
        // Hold the lock and start a long-running child (exec'd) meanwhile.
        "hold-spawn" => {
            let guard = Lock::new(&args[0]).acquire().await.unwrap();
            // The parent kills us with SIGKILL and `sleep` itself.
            #[allow(clippy::zombie_processes)]
            let child = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap();
            say("LOCKED", child.id());
            tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
            drop(guard);
        }
        // A writer with plain blocking `flock` (std `File::lock`: a waiter
        // the kernel itself wakes), until the parent closes stdin: open,
        // lock, a 50 µs section, unlock, close. Says "LOOPING" after the
        // first section; at the end writes the sections ("start end",
        // epoch ns, a line each) to args[1] and says "DONE <count>".
        "flock-writer" => {
            let parent = std::thread::spawn(wait_for_parent);
            let mut sections = String::new();
            let mut n = 0u64;
            while !parent.is_finished() {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&args[0])
                    .unwrap();
                f.lock().unwrap();
                let start = epoch_ns();
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_micros(50) {
                    std::hint::spin_loop();
                }
                let end = epoch_ns();
                f.unlock().unwrap();
                drop(f);
                sections.push_str(&format!("{start} {end}\n"));
                n += 1;
                if n == 1 {
                    say("LOOPING", "");
                }
            }
            std::fs::write(&args[1], sections).unwrap();
            say("DONE", n);
        }
        // One attempt; report the outcome.
        "try" => {
            let r = Lock::new(&args[0]).try_acquire().await;
            match r {
                Ok(g) => {
                    say("RESULT", "ok");
                    drop(g);
                }
                Err(e) => say(
                    "RESULT",
                    format!(
                        "{:?} {:?}",
                        e.kind(),
                        e.io_error().map(std::io::Error::kind)
                    ),
                ),
            }
        }
        // A soak worker: n grants of the file lock, each a non-atomic
        // read-modify-write of the counter file.
        "soak" => {
            let n: usize = args[2].parse().unwrap();
            let lock = Lock::new(&args[0])
                .timeout(Duration::from_secs(600))
                .check_interval(Duration::from_millis(1));
            say("READY", "");
            for _ in 0..n {
                let guard = lock.acquire().await.unwrap();
                bump_counter(Path::new(&args[1]));
                drop(guard);
            }
            say("DONE", n);
        }
        // lock -> read counter -> write +1 -> unlock, n times.
        "counter" => {
            let n: usize = args[2].parse().unwrap();
            let lock = Lock::new(&args[0])
                .timeout(Duration::from_secs(120))
                .check_interval(Duration::from_millis(5));
            for _ in 0..n {
                let guard = lock.acquire().await.unwrap();
                bump_counter(Path::new(&args[1]));
                guard.release().await.unwrap();
            }
            say("DONE", n);
        }
        // Hold a PidFileLock until the parent closes stdin.
        "pid-hold" => {
            let guard = portalocker::PidFileLock::new(&args[0])
                .acquire()
                .await
                .unwrap();
            say("LOCKED", std::process::id());
            tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
            guard.release().await.unwrap();
            say("RELEASED", "");
        }
        // Acquire and release a PidFileLock forever (until killed).
        "pid-loop" => {
            let lock = portalocker::PidFileLock::new(&args[0])
                .fail_when_locked(false)
                .timeout(Duration::from_secs(30))
                .check_interval(Duration::from_millis(1));
            for round in 0u64.. {
                lock.acquire().await.unwrap().release().await.unwrap();
                if round == 20 {
                    say("LOOPING", "");
                }
            }
        }
        // Wait (briefly) for a TemporaryFileLock; report; hold if we got it.
        "tmp-wait" => {
            let lock = portalocker::TemporaryFileLock::new(&args[0])
                .fail_when_locked(false)
                .timeout(Duration::from_millis(args[1].parse().unwrap()))
                .check_interval(Duration::from_millis(1));
            say("STARTED", "");
            match lock.acquire().await {
                Ok(g) => {
                    say("RESULT", "ok");
                    tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
                    g.release().await.unwrap();
                }
                Err(e) if e.is_already_locked() => say("RESULT", "busy"),
                Err(e) => say("RESULT", e),
            }
        }
        // TemporaryFileLock rounds; inside, an O_EXCL marker proves that
        // no one else is inside at the same time.
        "tmp-soak" => {
            let n: usize = args[2].parse().unwrap();
            let marker = Path::new(&args[1]);
            let lock = portalocker::TemporaryFileLock::new(&args[0])
                .fail_when_locked(false)
                .timeout(Duration::from_secs(120))
                .check_interval(Duration::from_millis(1));
            say("READY", "");
            for i in 0..n {
                let guard = lock.acquire().await.unwrap();
                if let Err(e) = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(marker)
                {
                    say("VIOLATION", format!("round {i}: {e}"));
                    std::process::exit(3);
                }
                std::thread::yield_now();
                std::fs::remove_file(marker).unwrap();
                if i % 2 == 0 {
                    guard.release().await.unwrap();
                } else {
                    drop(guard);
                }
            }
            say("DONE", n);
        }
        // Hold one semaphore slot until the parent closes stdin.
        // Lock the slot files FROM..TO of a semaphore (pattern
        // "{name}.{number:02d}.lock") with plain std locks, until the
        // parent closes stdin.
        "slots-hold" => {
            let (dir, name) = (Path::new(&args[0]), &args[1]);
            let (from, to): (usize, usize) = (args[2].parse().unwrap(), args[3].parse().unwrap());
            let held: Vec<std::fs::File> = (from..to)
                .map(|n| {
                    let f = std::fs::File::create(dir.join(format!("{name}.{n:02}.lock"))).unwrap();
                    f.try_lock().unwrap();
                    f
                })
                .collect();
            say("HELD", held.len());
            tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
            drop(held);
        }
        "sem-hold" => {
            let sem = portalocker::BoundedSemaphore::new(args[2].parse().unwrap())
                .name(&args[0])
                .directory(&args[1]);
            let permit = sem.acquire().await.unwrap();
            say("LOCKED", permit.slot());
            tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
            drop(permit);
        }
        // Semaphore rounds; inside, a marker file per holder proves that
        // there are never more than `max` holders at once.
        "sem-worker" => {
            let max: usize = args[2].parse().unwrap();
            let rounds: usize = args[3].parse().unwrap();
            let markers = Path::new(&args[4]);
            let sem = portalocker::BoundedSemaphore::new(max)
                .name(&args[0])
                .directory(&args[1])
                .timeout(Duration::from_secs(120))
                .check_interval(Duration::from_millis(5));
            say("READY", "");
            for i in 0..rounds {
                let permit = sem.acquire().await.unwrap();
                let mine = markers.join(format!("inside.{}", std::process::id()));
                std::fs::File::create_new(&mine).unwrap();
                let inside = std::fs::read_dir(markers).unwrap().count();
                if inside > max {
                    say("VIOLATION", format!("round {i}: {inside} holders"));
                    std::process::exit(3);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                std::fs::remove_file(&mine).unwrap();
                drop(permit);
            }
            say("DONE", rounds);
        }
        // open_atomic once; report the outcome.
        "atomic-try" => match portalocker::open_atomic(&args[0]).await {
            Ok(f) => {
                f.commit().await.unwrap();
                say("RESULT", "ok");
            }
            Err(e) => say("RESULT", format!("{:?}", e.kind())),
        },
        // Write a known payload in chunks, reporting progress, then commit.
        "atomic-write" => {
            use tokio::io::AsyncWriteExt;
            let chunks: usize = args[1].parse().unwrap();
            let mut f = portalocker::open_atomic(&args[0]).await.unwrap();
            say("OPEN", "");
            for i in 0..chunks {
                f.write_all(&atomic_chunk(i)).await.unwrap();
                say("CHUNK", i);
            }
            say("COMMITTING", "");
            f.commit().await.unwrap();
            say("COMMITTED", "");
        }
        // Hold a RedisLock until the parent closes stdin; then release it,
        // or (`redis-hold-report`) report whether it was lost meanwhile.
        #[cfg(all(feature = "redis", unix))]
        "redis-hold" | "redis-hold-report" => {
            let client = portalocker::redis::Client::open(args[0].as_str()).unwrap();
            let guard = portalocker::RedisLock::new(&args[1], client)
                .timeout(Duration::from_secs(30))
                .acquire()
                .await
                .unwrap();
            say("LOCKED", guard.holder_id());
            tokio::task::spawn_blocking(wait_for_parent).await.unwrap();
            if role == "redis-hold" {
                guard.release().await.unwrap();
                say("RELEASED", "");
            } else {
                // Give the keep-alive task a moment to read what happened
                // while we were stopped (the closed socket is already there).
                let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
                    .await
                    .is_ok();
                say("LOST", lost);
            }
        }
        // n rounds of a deliberately non-atomic GET/SET under the lock.
        #[cfg(all(feature = "redis", unix))]
        "redis-counter" => {
            let client = portalocker::redis::Client::open(args[0].as_str()).unwrap();
            let n: usize = args[3].parse().unwrap();
            // This soak checks exclusion and fencing, not fairness: with four
            // contenders one waiter can starve for most of the run (the
            // Redis protocol has no queue; that is issue #16's work), so the
            // timeout is the whole run's budget, not a per-grant bound.
            // Optional fifth argument: the check interval in ms (20).
            let ci = args.get(4).map_or(20, |s| s.parse().unwrap());
            let lock = portalocker::RedisLock::new(&args[1], client.clone())
                .timeout(Duration::from_secs(900))
                .check_interval(Duration::from_millis(ci))
                .fencing(true);
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let mut last = 0;
            for _ in 0..n {
                let g = lock.acquire().await.unwrap();
                let t = g.fence_token().unwrap();
                assert!(t > last, "fence token went backwards: {t} after {last}");
                last = t;
                redis_bump(&mut con, &args[2]).await;
                g.release().await.unwrap();
            }
            say("DONE", n);
        }
        // A worker of the mixed fleet (tests/redis_fleet.rs): says READY,
        // reads "go <end, ns since the epoch>" from stdin, then until the
        // end loops a fenced acquire, a non-atomic bump of the key, a 1 ms
        // hold and a release, and writes to the output file one line per
        // grant ("G <start ns> <end ns> <token>", the section as recorded
        // inside the lock) and per failed acquire ("T <asked ns> <failed
        // ns> <error>"). Arguments: url, channel, key, output file.
        #[cfg(all(feature = "redis", unix))]
        "redis-fleet" => {
            use std::fmt::Write as _;
            let client = portalocker::redis::Client::open(args[0].as_str()).unwrap();
            let lock = portalocker::RedisLock::new(&args[1], client.clone())
                .timeout(Duration::from_secs(60))
                .fencing(true);
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            say("READY", std::process::id());
            let end = read_go().await;
            let mut out = String::new();
            while epoch_ns() < end {
                let asked = epoch_ns();
                match lock.acquire().await {
                    Ok(g) => {
                        let start = epoch_ns();
                        redis_bump(&mut con, &args[2]).await;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let stop = epoch_ns();
                        let token = g.fence_token().unwrap();
                        g.release().await.unwrap();
                        writeln!(out, "G {start} {stop} {token}").unwrap();
                    }
                    Err(e) => writeln!(out, "T {asked} {} {e}", epoch_ns()).unwrap(),
                }
            }
            std::fs::write(&args[3], out).unwrap();
            say("DONE", "");
        }
        #[cfg(all(feature = "etcd", unix))]
        r if r.starts_with("etcd-") => etcd::run_role(r, args).await,
        #[cfg(unix)]
        r if r.starts_with("lease-") || r == "flock-fleet" => lease::run_role(r, args).await,
        #[cfg(all(feature = "redis-cluster", unix))]
        r if r.starts_with("cluster-") => cluster::run_role(r, args).await,
        other => panic!("unknown role {other}"),
    }
}

/// A holding child's dialogue: until the parent closes stdin, answers
/// each line "check" with "@@LOST <is_lost()>".
#[cfg(unix)]
#[allow(dead_code)]
pub async fn answer_checks(is_lost: impl Fn() -> bool) {
    loop {
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|n| (n, line))
        })
        .await
        .unwrap();
        match line {
            Ok((0, _)) | Err(_) => break,
            Ok((_, l)) if l.trim() == "check" => say("LOST", is_lost()),
            Ok(_) => {}
        }
    }
}

/// Reads the fleet workers' start line `go <end, ns since the epoch>` from
/// stdin (off the runtime's thread) and returns the end.
#[cfg(unix)]
pub async fn read_go() -> u128 {
    read_go_line().await.parse().unwrap()
}

/// Reads the line "go <what>" from stdin; returns what follows "go ".
pub async fn read_go_line() -> String {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    line.trim().strip_prefix("go ").unwrap().to_string()
}

/// A fleet worker's loop for a lock that can be lost: until `run_out()`,
/// acquire, hold for `section`, check inside the section that the lock is
/// still held (a holder that had lost it would not count as exclusive),
/// release. One line per grant ("G <start> <end> <token>") and per failed
/// acquire or lost section ("T <asked> <failed> <error>"), times from
/// `now`.
#[cfg(unix)]
#[allow(dead_code)]
pub async fn fleet_loop<G, A, AF, R, RF>(
    mut run_out: impl FnMut() -> bool,
    now: fn() -> u128,
    section: Duration,
    mut acquire: A,
    mut release: R,
) -> String
where
    G: portalocker::HeldLock,
    A: FnMut() -> AF,
    AF: std::future::Future<Output = portalocker::Result<G>>,
    R: FnMut(G) -> RF,
    RF: std::future::Future<Output = portalocker::Result<()>>,
{
    use std::fmt::Write as _;
    let mut out = String::new();
    while !run_out() {
        let asked = now();
        match acquire().await {
            Ok(g) => {
                let start = now();
                tokio::time::sleep(section).await;
                let held = g.ensure_held();
                let stop = now();
                let token = g.fence_token().unwrap_or(0);
                match (held, release(g).await) {
                    (Ok(()), Ok(())) => writeln!(out, "G {start} {stop} {token}").unwrap(),
                    (Err(e), _) | (_, Err(e)) => {
                        writeln!(out, "T {asked} {} lost: {e}", now()).unwrap();
                    }
                }
            }
            Err(e) => writeln!(out, "T {asked} {} {e}", now()).unwrap(),
        }
    }
    out
}

/// Nanoseconds since the Unix epoch (the clock Python's `time.time_ns()`
/// reads, so sections recorded by both can be compared).
#[allow(dead_code)]
pub fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The numeric `field` of a Redis `INFO` reply.
#[cfg(all(feature = "redis", unix))]
#[allow(dead_code)]
pub fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO"))
}

/// One `fail_when_locked` attempt of `lock`, which must find it busy: the
/// error, for more checks.
#[cfg(all(feature = "redis", unix))]
#[allow(dead_code)]
pub async fn assert_busy(lock: &portalocker::RedisLock) -> portalocker::Error {
    let err = lock
        .clone()
        .fail_when_locked(true)
        .acquire()
        .await
        .expect_err("the lock was free");
    assert!(err.is_already_locked(), "{err}");
    err
}

/// The end of a Python script that has set up `lock`: one acquire,
/// reported as `@@RESULT acquired` (then released) or `@@RESULT
/// AlreadyLocked`.
#[cfg(all(feature = "redis", unix))]
pub const PY_REPORT_ONE_ACQUIRE: &str = r#"
try:
    lock.acquire()
    print("@@RESULT acquired", flush=True)
    lock.release()
except portalocker.AlreadyLocked:
    print("@@RESULT AlreadyLocked", flush=True)
"#;

/// A Python portalocker 4.4.2 worker: `n` rounds of a non-atomic GET/SET
/// of `key` under the Redis lock on `channel`, with fencing tokens checked
/// to increase. Arguments: url, channel, key, n. Prints `@@DONE n`.
#[cfg(all(feature = "redis", unix))]
#[allow(dead_code)]
pub const PY_REDIS_COUNTER: &str = r#"
import sys, redis, portalocker
url, channel, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = redis.Redis.from_url(url)
lock = portalocker.RedisLock(channel, connection=conn, timeout=300, check_interval=0.02, fencing=True, interrupt_on_lost=False)
last = 0
for i in range(n):
    lock.acquire()
    t = lock.fence_token
    assert t is not None and t > last, (t, last)
    last = t
    v = conn.get(key)
    conn.set(key, int(v or 0) + 1)
    lock.release()
print('@@DONE', n, flush=True)
"#;

/// A deliberately non-atomic read-modify-write of a Redis key.
#[cfg(all(feature = "redis", unix))]
pub async fn redis_bump(con: &mut portalocker::redis::aio::MultiplexedConnection, key: &str) {
    let old: Option<u64> = portalocker::redis::cmd("GET")
        .arg(key)
        .query_async(con)
        .await
        .unwrap();
    tokio::task::yield_now().await;
    let _: () = portalocker::redis::cmd("SET")
        .arg(key)
        .arg(old.unwrap_or(0) + 1)
        .query_async(con)
        .await
        .unwrap();
}

/// A deliberately non-atomic read-modify-write of a decimal counter file.
pub fn bump_counter(path: &Path) {
    let old: u64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::thread::yield_now();
    std::fs::write(path, (old + 1).to_string()).unwrap();
}

/// Chunk `i` of the `atomic-write` role's payload: 16 KiB of a pattern.
pub fn atomic_chunk(i: usize) -> Vec<u8> {
    (0..16 * 1024).map(|j| ((i * 31 + j) % 251) as u8).collect()
}

/// A throwaway `redis-server` on a free loopback port, killed by pid on
/// drop. The binary is `$PORTALOCKER_REDIS_SERVER` or `redis-server`.
#[cfg(all(feature = "redis", unix))]
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Arguments given to the server besides the defaults.
    extra: Vec<String>,
}

#[cfg(all(feature = "redis", unix))]
impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with `extra` arguments besides the defaults (e.g.
    /// `--replicaof 127.0.0.1 PORT`).
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..20 {
            // The port may be taken between this probe and the server's
            // bind: then the server exits and another port is tried.
            let port = free_port();
            let mut s = Self {
                child: None,
                port,
                dir: tempfile::tempdir().unwrap(),
                extra: extra.iter().map(ToString::to_string).collect(),
            };
            s.spawn();
            if s.wait_ready() {
                return s;
            }
            s.kill();
        }
        panic!("redis-server did not start on any of 20 ports");
    }

    fn binary() -> String {
        std::env::var("PORTALOCKER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
    }

    fn spawn(&mut self) {
        let child = Command::new(Self::binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "127.0.0.2",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): the Redis tests need redis-server \
                     (scripts/test.sh installs it, or set PORTALOCKER_REDIS_SERVER)",
                    Self::binary()
                )
            });
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false; // exited: port in use
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Read;
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> portalocker::redis::Client {
        portalocker::redis::Client::open(self.url()).unwrap()
    }

    /// A client for the same server by another address (127.0.0.2): the
    /// crate cannot know that it is the same server, so a lock through it
    /// contends as another process would, not as a task of this one.
    pub fn other_client(&self) -> portalocker::redis::Client {
        portalocker::redis::Client::open(format!("redis://127.0.0.2:{}/", self.port)).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the server was started and not killed.
    #[allow(dead_code)]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs the server (holders' connections die with it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.spawn();
        assert!(self.wait_ready(), "redis-server did not restart");
    }

    /// Runs one command on a fresh synchronous-style async connection.
    pub async fn cmd<T: portalocker::redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut con = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut c = portalocker::redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut con).await.unwrap()
    }

    pub async fn numsub(&self, channel: &str) -> usize {
        let v: Vec<(String, usize)> = self.cmd(&["PUBSUB", "NUMSUB", channel]).await;
        v[0].1
    }

    /// A client of a user that may run everything but scripts (`-@scripting`),
    /// on database `db`.
    pub async fn client_without_scripts(&self, db: u8) -> portalocker::redis::Client {
        let _: () = self
            .cmd(&[
                "ACL",
                "SETUSER",
                "noscript",
                "on",
                ">pw",
                "~*",
                "&*",
                "+@all",
                "-@scripting",
            ])
            .await;
        portalocker::redis::Client::open(format!(
            "redis://noscript:pw@127.0.0.1:{}/{db}",
            self.port
        ))
        .unwrap()
    }

    /// `g` still holds `channel` here: not lost, a contender finds it
    /// busy, and only the holder is subscribed; then `g` is released.
    pub async fn assert_held_then_release(&self, g: portalocker::RedisLockGuard, channel: &str) {
        assert_busy(&portalocker::RedisLock::new(channel, self.other_client())).await;
        assert!(!g.is_lost(), "the holder of {channel:?} counts itself lost");
        assert_eq!(self.numsub_settled(channel, 1).await, 1);
        g.release().await.unwrap();
    }

    /// The subscriber count of `channel` once it is `want` (or what it is
    /// after 10 s): a contender that just gave up closes its subscription
    /// without waiting for the server, which may count it a moment longer
    /// on a busy machine.
    pub async fn numsub_settled(&self, channel: &str, want: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.numsub(channel).await;
            if n == want || std::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The `CLIENT LIST` id of the client named `name`.
    pub async fn client_id(&self, name: &str) -> String {
        let list: String = self.cmd(&["CLIENT", "LIST"]).await;
        list.lines()
            .find(|l| l.contains(&format!("name={name} ")))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .unwrap_or_else(|| panic!("no client named {name}"))
            .to_string()
    }

    /// Names of the clients whose name starts with `<channel>-lock`.
    pub async fn lock_clients(&self, channel: &str) -> Vec<String> {
        let list: String = self.cmd(&["CLIENT", "LIST"]).await;
        let prefix = format!("{channel}-lock");
        list.lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name=")))
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

#[cfg(all(feature = "redis", unix))]
impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy to a local port, for fault injection: it can delay every
/// chunk, become a black hole (keep every connection open but stop
/// forwarding: a half-open link, as a partition looks to each side), or
/// cut every connection.
#[cfg(all(feature = "redis", unix))]
pub struct Proxy {
    pub port: u16,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(all(feature = "redis", unix))]
impl Proxy {
    pub async fn start(target: u16) -> Self {
        Self::start_with(target, true).await
    }

    /// A proxy that passes a close on, as a router does (for benches that
    /// measure a slow link, where half-open leftovers would be ghosts).
    pub async fn start_relay(target: u16) -> Self {
        Self::start_with(target, false).await
    }

    async fn start_with(target: u16, half_open: bool) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (bh, dl, cs) = (blackhole.clone(), delay_ms.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                // As a router would: no Nagle delay of its own (it would
                // meet the peers' delayed ACKs and add 40 ms stalls).
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                // A real client's connect takes a round trip before its
                // first bytes can leave; here the kernel completes it at
                // once, so the first chunk towards the server waits for it.
                let accepted = tokio::time::Instant::now();
                for (mut r, mut w, handshake) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                        true,
                    ),
                    (Box::new(sr), Box::new(cw), false),
                ] {
                    // Each chunk is due its delay after it was read, as on
                    // a link (chunks in flight do not wait for each other).
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
                        tokio::time::Instant,
                        Option<Vec<u8>>,
                    )>();
                    let dl = dl.clone();
                    cs.lock().unwrap().push(tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        let mut first = handshake;
                        loop {
                            let n = r.read(&mut buf).await.unwrap_or(0);
                            let d = Duration::from_millis(dl.load(Ordering::SeqCst));
                            let mut due = tokio::time::Instant::now();
                            if std::mem::take(&mut first) {
                                due = due.max(accepted + 2 * d);
                            }
                            let chunk = (n > 0).then(|| buf[..n].to_vec());
                            if tx.send((due + d, chunk)).is_err() || n == 0 {
                                break;
                            }
                        }
                    }));
                    let bh = bh.clone();
                    cs.lock().unwrap().push(tokio::spawn(async move {
                        while let Some((due, chunk)) = rx.recv().await {
                            // (The timer would round even a due time
                            // already passed up to its next tick.)
                            if due > tokio::time::Instant::now() {
                                tokio::time::sleep_until(due).await;
                            }
                            let Some(chunk) = chunk else { break };
                            if !bh.load(Ordering::SeqCst) && w.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                        if half_open {
                            // Keep the other half open: half-open, not closed.
                            std::future::pending::<()>().await;
                        }
                        let _ = w.shutdown().await;
                    }));
                }
            }
        });
        Self {
            port,
            blackhole,
            delay_ms,
            conns,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stop forwarding (silently) from now on.
    pub fn blackhole(&self) {
        self.blackhole
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Delay every forwarded chunk by `d`.
    pub fn delay(&self, d: Duration) {
        self.delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Close every proxied connection now (both sides see the link die).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[cfg(all(feature = "redis", unix))]
impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A small tmpfs mounted on a fresh directory, unmounted on drop: the
/// field's full disk (`ENOSPC` once `size` is used).
#[cfg(unix)]
pub struct SmallFs {
    dir: Option<tempfile::TempDir>,
}

#[cfg(unix)]
impl SmallFs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. `"1m"`). Needs
    /// root, as the CI run (`scripts/test.sh`) has.
    pub fn mount(size: &str) -> Self {
        assert!(
            is_root(),
            "this test fills a {size} tmpfs, and mounting one needs root: run the suite as \
             root (scripts/test.sh does, in CI)"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount(8) is needed to mount a tmpfs");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

#[cfg(unix)]
impl Drop for SmallFs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (a Redis server of the
/// test), for links that stall: [`stall`](Self::stall) holds every byte of
/// the connections that are not pub/sub subscriptions (the command
/// connections; a connection is a subscription once it sent `SUBSCRIBE`),
/// and [`slow_new`](Self::slow_new) leaves new connections unanswered.
/// Traffic only to loopback; the proxy ends with the value.
#[cfg(all(feature = "redis", unix))]
pub struct StallProxy {
    pub port: u16,
    ctl: std::sync::Arc<ProxyCtl>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(all(feature = "redis", unix))]
#[derive(Default)]
struct ProxyCtl {
    stall: std::sync::atomic::AtomicBool,
    slow_new: std::sync::atomic::AtomicBool,
    /// Connections accepted so far.
    accepted: std::sync::atomic::AtomicUsize,
}

#[cfg(all(feature = "redis", unix))]
impl StallProxy {
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ctl = std::sync::Arc::new(ProxyCtl::default());
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                c.accepted.fetch_add(1, SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    while c.slow_new.load(SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let sub = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = pump(ri, wo, c.clone(), sub.clone(), true);
                    let down = pump(ro, wi, c, sub, false);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { port, ctl, task }
    }

    pub fn client(&self) -> portalocker::redis::Client {
        portalocker::redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap()
    }

    /// Holds (or lets through again) the bytes of command connections.
    pub fn stall(&self, on: bool) {
        self.ctl
            .stall
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Leaves new connections unanswered (or serves them again).
    pub fn slow_new(&self, on: bool) {
        self.ctl
            .slow_new
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn accepted(&self) -> usize {
        self.ctl.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(all(feature = "redis", unix))]
impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(all(feature = "redis", unix))]
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: std::sync::Arc<ProxyCtl>,
    sub: std::sync::Arc<std::sync::atomic::AtomicBool>,
    upstream: bool,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if upstream
            && buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
        {
            sub.store(true, SeqCst);
        }
        while ctl.stall.load(SeqCst) && !sub.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Opens `/dev/null` until this process has no descriptor left (`EMFILE`),
/// and returns them: dropping them gives the descriptors back.
#[cfg(unix)]
pub fn use_up_descriptors() -> Vec<std::fs::File> {
    let mut hoard = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hoard.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "{e}"); // EMFILE
                return hoard;
            }
        }
    }
}

/// Sends `sig` (as `kill` takes it: `-STOP`, `-CONT`, …) to process `pid`.
#[cfg(unix)]
pub fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
    if sig == "-STOP" {
        wait_stopped(pid);
    }
}

/// Waits until every thread of `pid` is stopped (Linux; elsewhere returns
/// at once). `kill -STOP` returns before its target's threads have all
/// stopped: one still running could take a lock it is about to be handed,
/// and then stop holding it.
pub fn wait_stopped(pid: u32) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let stopped = |task: std::fs::DirEntry| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with(['T', 't', 'Z', 'X']))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return; // gone
        };
        if tasks.filter_map(Result::ok).all(stopped) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Python's side of a mixed fleet on one Redis lock: the same loop and the
/// same output lines as the `redis-fleet` role. Arguments: url, channel,
/// key, output file, and the acquire timeout in seconds or `default`
/// (Python's, 5 s). Python's `check_interval` is its default (0.25 s).
#[cfg(all(feature = "redis", unix))]
#[allow(dead_code)]
pub const PY_REDIS_FLEET: &str = r#"
import sys, time, redis, portalocker
url, channel, key, out, timeout = sys.argv[1:6]
conn = redis.Redis.from_url(url)
kw = {} if timeout == "default" else {"timeout": float(timeout)}
lock = portalocker.RedisLock(channel, connection=conn, fencing=True, interrupt_on_lost=False, **kw)
print("@@READY", flush=True)
end = int(sys.stdin.readline().split()[1])
lines = []
while time.time_ns() < end:
    asked = time.time_ns()
    try:
        lock.acquire()
    except portalocker.exceptions.LockException as e:
        lines.append("T %d %d %s" % (asked, time.time_ns(), type(e).__name__))
        continue
    start = time.time_ns()
    v = conn.get(key)
    conn.set(key, int(v or 0) + 1)
    time.sleep(0.001)
    stop = time.time_ns()
    token = lock.fence_token
    lock.release()
    lines.append("G %d %d %d" % (start, stop, token))
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print("@@DONE", flush=True)
"#;

/// One critical section of a fleet worker, as it recorded it.
#[cfg(unix)]
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct FleetSection {
    pub who: String,
    pub start: u128,
    pub end: u128,
    pub token: u64,
}

/// What one fleet worker recorded.
#[cfg(unix)]
#[allow(dead_code)]
pub struct FleetWorker {
    pub who: String,
    pub python: bool,
    pub sections: Vec<FleetSection>,
    /// Failed acquires (their lines).
    pub failed: Vec<String>,
}

#[cfg(unix)]
#[allow(dead_code)]
impl FleetWorker {
    /// The times this worker went without a grant: from the start of the
    /// run to its first section, from each section's end to the next
    /// one's start, and from its last section's end to the end of the run.
    pub fn gaps(&self, begin: u128, end: u128) -> Vec<u128> {
        let mut at = begin;
        let mut gaps = Vec::new();
        for s in &self.sections {
            gaps.push(s.start.saturating_sub(at));
            at = s.end;
        }
        gaps.push(end.saturating_sub(at));
        gaps
    }
}

/// A run of a mixed fleet: `each` processes of this crate (the
/// `redis-fleet` role of `entry`) and `each` of Python portalocker 4.4.2
/// on the lock `channel` of `url`, for `run`; Python's acquire timeout is
/// `py_timeout` (`default`: its own). Returns the run's begin and end (ns
/// since the epoch) and the workers.
#[cfg(all(feature = "redis", unix))]
#[allow(dead_code)]
pub fn run_fleet(
    entry: &str,
    url: &str,
    channel: &str,
    each: usize,
    run: Duration,
    py_timeout: &str,
) -> (u128, u128, Vec<FleetWorker>) {
    let dir = tempfile::tempdir().unwrap();
    let out = |who: &str| dir.path().join(who).to_str().unwrap().to_string();
    let key = format!("{channel}-count");
    let mut procs = Vec::new();
    for i in 0..each {
        let who = format!("rust{i}");
        let p = Proc::role(entry, "redis-fleet", &[url, channel, &key, &out(&who)]);
        procs.push((who, false, p));
        let who = format!("python{i}");
        let p = Proc::python(
            PY_REDIS_FLEET,
            &[url, channel, &key, &out(&who), py_timeout],
        );
        procs.push((who, true, p));
    }
    for (_, _, p) in &mut procs {
        p.expect("READY");
    }
    let begin = epoch_ns();
    let end = begin + run.as_nanos();
    for (_, _, p) in &mut procs {
        p.send(&format!("go {end}"));
    }
    let mut workers = Vec::new();
    for (who, python, mut p) in procs {
        p.expect("DONE");
        p.finish();
        workers.push(read_fleet_worker(&who, python, &dir.path().join(&who)));
    }
    (begin, end, workers)
}

/// Fleet workers of this test binary, started and set going: `n`
/// children in `role`, child `i` given `args(i, out)` with `out` its
/// record file in `dir`; once every one said READY, each is told to run
/// for `run` from now.
#[cfg(unix)]
#[allow(dead_code)]
pub fn start_fleet(
    dir: &Path,
    role: &str,
    n: usize,
    run: Duration,
    args: impl Fn(usize, &str) -> Vec<String>,
) -> Vec<(String, PathBuf, Proc)> {
    let mut procs: Vec<_> = (0..n)
        .map(|i| {
            let out = dir.join(format!("w{i}"));
            let a = args(i, out.to_str().unwrap());
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            (format!("w{i}"), out, Proc::role("child_entry", role, &a))
        })
        .collect();
    for (_, _, p) in &mut procs {
        p.expect("READY");
    }
    let end = epoch_ns() + run.as_nanos();
    for (_, _, p) in &mut procs {
        p.send(&format!("go {end}"));
    }
    procs
}

/// Waits for each of [`start_fleet`]'s workers to say DONE and reads its
/// record; the sections of all of them must not overlap.
#[cfg(unix)]
#[allow(dead_code)]
pub fn finish_fleet(procs: Vec<(String, PathBuf, Proc)>) -> (Vec<FleetWorker>, Vec<FleetSection>) {
    let mut workers = Vec::new();
    for (who, out, mut p) in procs {
        p.expect("DONE");
        p.finish();
        workers.push(read_fleet_worker(&who, false, &out));
    }
    let all = fleet_sections_exclusive(&workers);
    (workers, all)
}

/// Reads what a fleet worker recorded in `path`: a line per grant (`G
/// <start ns> <end ns> <token>`) and per failed acquire (`T …`).
#[cfg(unix)]
#[allow(dead_code)]
pub fn read_fleet_worker(who: &str, python: bool, path: &Path) -> FleetWorker {
    let text = std::fs::read_to_string(path).unwrap();
    let mut w = FleetWorker {
        who: who.to_string(),
        python,
        sections: Vec::new(),
        failed: Vec::new(),
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        match f[0] {
            "G" => w.sections.push(FleetSection {
                who: who.to_string(),
                start: f[1].parse().unwrap(),
                end: f[2].parse().unwrap(),
                token: f[3].parse().unwrap(),
            }),
            "T" => w.failed.push(line.to_string()),
            _ => panic!("{who}: unexpected line {line:?}"),
        }
    }
    w
}

/// Every recorded section of a fleet, in the order they began; panics if
/// two overlap or a fencing token does not increase from one to the next.
#[cfg(unix)]
#[allow(dead_code)]
pub fn fleet_sections_exclusive(workers: &[FleetWorker]) -> Vec<FleetSection> {
    let mut all: Vec<FleetSection> = workers
        .iter()
        .flat_map(|w| w.sections.iter().cloned())
        .collect();
    all.sort_by_key(|s| s.start);
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            b.start >= a.end,
            "overlapping sections: {} ({}..{}) and {} ({}..{})",
            a.who,
            a.start,
            a.end,
            b.who,
            b.start,
            b.end
        );
        assert!(
            b.token > a.token,
            "fence token did not increase: {} had {}, then {} had {}",
            a.who,
            a.token,
            b.who,
            b.token
        );
    }
    all
}
