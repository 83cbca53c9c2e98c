//! The real `portalocker` binary: exclusion between two CLIs and against
//! Python portalocker, exit codes, signal forwarding, descriptor
//! inheritance, the semaphore bound with 6 CLIs, pid files, `who`, atomic
//! writes, and a lost Redis lock stopping the command. Processes talk
//! through pipes and marker lines; children "work" with short sleeps, which
//! nothing waits on.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portalocker");

/// How long a child may run before the watchdog kills it: a marker line
/// that never comes (a broken signal forwarding, say) then fails the test
/// at EOF instead of hanging it.
const WATCHDOG: Duration = Duration::from_secs(120);

/// A running process whose stdout we read line by line.
struct Run {
    child: Child,
    out: BufReader<ChildStdout>,
    /// Tells the watchdog that the child was waited for.
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Run {
    fn start(mut cmd: Command) -> Self {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so the watchdog can kill the CLI and
            // the command it runs (which holds the pipe open) together.
            .process_group(0);
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pid, flag) = (child.id(), done.clone());
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + WATCHDOG;
            while std::time::Instant::now() < until {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("watchdog: killing process group {pid} after {WATCHDOG:?}");
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
        });
        Self { child, out, done }
    }

    fn cli(args: &[&str]) -> Self {
        let mut c = Command::new(BIN);
        c.args(args);
        Self::start(c)
    }

    /// Reads lines until one equals `line`; panics at EOF.
    fn expect(&mut self, line: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let mut l = String::new();
            if self.out.read_line(&mut l).unwrap() == 0 {
                let err = self.stderr();
                panic!("EOF before {line:?}; saw {seen:?}; stderr: {err}");
            }
            let l = l.trim_end().to_string();
            if l == line {
                return seen;
            }
            seen.push(l);
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// Waits for the exit; returns (code, stdout rest, stderr).
    fn finish(mut self) -> (i32, String, String) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        let err = self.stderr();
        let status = self.child.wait().unwrap();
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        (status.code().unwrap_or(-1), rest, err)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs the CLI to completion: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A holder: the CLI holding `path` while `sh` prints READY and waits for
/// a line on stdin.
fn holding(extra: &[&str], path: &Path) -> Run {
    let mut args = vec!["lock"];
    args.extend_from_slice(extra);
    let p = path.to_str().unwrap();
    args.extend_from_slice(&[p, "--", "sh", "-c", "echo READY; read line; exit 0"]);
    let mut r = Run::cli(&args);
    r.expect("READY");
    r
}

#[test]
fn two_clis_exclude_each_other_and_exit_codes_pass_through() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("job.lock");
    let ps = p.to_str().unwrap();
    let holder = holding(&[], &p);
    let (code, _, err) = cli(&["lock", "--nonblock", ps, "--", "true"]);
    assert_eq!(code, 1, "busy is 1, as flock(1): {err}");
    assert!(
        err.contains(&format!("pid {}", holder.pid())),
        "names the holder: {err}"
    );
    assert!(err.contains("portalocker who"), "says what to do: {err}");
    assert!(err.contains("--timeout SECONDS"), "no timeout given: {err}");
    let (code, _, _) = cli(&["lock", "-n", "-E", "42", ps, "--", "true"]);
    assert_eq!(code, 42, "-E sets the busy code");
    let (code, _, err) = cli(&["lock", "--timeout", "0.2", ps, "--", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("(waited 200 ms)"),
        "durations are rounded: {err}"
    );
    assert!(
        err.contains("give a longer --timeout") && !err.contains("--timeout SECONDS"),
        "a timeout was given: do not suggest one: {err}"
    );
    let (_, _, err) = cli(&["lock", "--timeout", "0.000435066", ps, "--", "true"]);
    assert!(
        err.contains("(waited 435 µs)"),
        "durations are rounded: {err}"
    );
    let (code, _, _) = cli(&["lock", "--shared", "-n", ps, "--", "true"]);
    assert_eq!(code, 1, "a shared lock is excluded by the exclusive holder");
    let (code, _, err) = holder.finish();
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["lock", ps, "--", "sh", "-c", "echo ran; exit 7"]);
    assert_eq!((code, out.as_str()), (7, "ran\n"), "the command's status");
    let (code, _, _) = cli(&["lock", ps, "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(code, 128 + 9, "death by signal N is 128 + N");
    let (code, _, err) = cli(&["lock", ps, "--", "/nonexistent/program"]);
    assert_eq!(code, 127, "{err}");
    let (code, _, err) = cli(&["lock", "--timeout", "-1", ps, "--", "true"]);
    assert_eq!(code, 2, "usage error: {err}");
}

fn python() -> PathBuf {
    let p = std::env::var_os("PORTALOCKER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python")
        });
    assert!(
        p.exists(),
        "Python portalocker 4.4.2 is needed at {} (scripts/test.sh creates the venv; or set \
         PORTALOCKER_PYTHON)",
        p.display()
    );
    p
}

#[test]
fn the_cli_and_python_portalocker_exclude_each_other() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("py.lock");
    let ps = p.to_str().unwrap();
    let hold = "import sys, portalocker\n\
                with portalocker.Lock(sys.argv[1], timeout=30):\n\
                \x20   print('READY', flush=True)\n\
                \x20   sys.stdin.readline()\n";
    let mut c = Command::new(python());
    c.args(["-c", hold, ps]);
    let mut py = Run::start(c);
    py.expect("READY");
    let (code, _, err) = cli(&["lock", "-n", ps, "--", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("pid {}", py.pid())), "{err}");
    let (code, out, _) = cli(&["who", ps]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("{} exclusive", py.pid())), "{out}");
    assert!(out.contains("python"), "{out}");
    py.send("");
    assert_eq!(py.finish().0, 0);

    let holder = holding(&[], &p);
    let try_py = "import sys, portalocker\n\
                  try:\n\
                  \x20   portalocker.Lock(sys.argv[1], fail_when_locked=True, timeout=0).acquire()\n\
                  \x20   print('GOT')\n\
                  except portalocker.AlreadyLocked:\n\
                  \x20   print('BUSY')\n";
    let out = Command::new(python())
        .args(["-c", try_py, ps])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "BUSY\n");
    holder.finish();
    let out = Command::new(python())
        .args(["-c", try_py, ps])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "GOT\n");
}

fn signal(name: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn sigint_and_sigterm_are_passed_on_and_the_lock_outlives_them() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sig.lock");
    let ps = p.to_str().unwrap();
    let lock = portalocker::Lock::new(&p);
    for sig in ["TERM", "INT"] {
        // The command takes its time to stop: the lock stays held until
        // it has exited.
        let script = format!(
            "trap 'echo GOT; read line; exit 9' {sig}; echo READY; while :; do sleep 0.05; done"
        );
        let mut r = Run::cli(&["lock", ps, "--", "sh", "-c", &script]);
        r.expect("READY");
        signal(sig, r.pid());
        r.expect("GOT");
        let err = lock.try_acquire().await.unwrap_err();
        assert!(
            err.is_already_locked(),
            "{sig}: held while the command stops: {err}"
        );
        r.send("");
        let (code, _, err) = r.finish();
        assert_eq!(
            code, 9,
            "{sig}: the command's status after the signal: {err}"
        );
        drop(
            lock.try_acquire()
                .await
                .expect("released once the command ended"),
        );
    }
}

/// The descriptors of process `pid` that point at `path`.
fn fds_on(pid: &str, path: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t == path)
                .count()
        })
        .unwrap_or(0)
}

#[cfg(target_os = "linux")]
#[test]
fn the_command_inherits_the_lock_unless_no_inherit() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fd.lock");
    let ps = p.to_str().unwrap();
    let script = "echo $$; echo fd=${PORTALOCKER_LOCK_FD:-none}; echo READY; read line";
    for (flag, want) in [(Some("--no-inherit"), 0), (None, 1), (Some("--inherit"), 1)] {
        let mut args = vec!["lock"];
        args.extend(flag);
        args.extend_from_slice(&[ps, "--", "sh", "-c", script]);
        let mut r = Run::cli(&args);
        let seen = r.expect("READY");
        assert_eq!(fds_on(&seen[0], &p), want, "{flag:?}: {seen:?}");
        assert_eq!(seen[1] == "fd=none", want == 0, "{seen:?}");
        r.send("");
        assert_eq!(r.finish().0, 0);
    }
}

#[test]
fn six_clis_share_a_two_slot_semaphore() {
    let d = tempfile::tempdir().unwrap();
    let slots = d.path().join("slots");
    let runs = d.path().join("runs");
    std::fs::create_dir_all(&slots).unwrap();
    std::fs::create_dir_all(&runs).unwrap();
    let script = "touch \"$R/run.$$\"; n=$(ls \"$R\" | grep -c '^run\\.'); \
                  echo \"$PORTALOCKER_SLOT $n\" >> \"$R/../log\"; sleep 0.2; rm \"$R/run.$$\"";
    let children: Vec<Child> = (0..6)
        .map(|_| {
            Command::new(BIN)
                .args(["semaphore", "--max", "2", "--name", "six", "--dir"])
                .arg(&slots)
                .args(["--timeout", "60", "--", "sh", "-c", script])
                .env("R", &runs)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let log = std::fs::read_to_string(d.path().join("log")).unwrap();
    let lines: Vec<(String, usize)> = log
        .lines()
        .map(|l| {
            let (slot, n) = l.split_once(' ').unwrap();
            (slot.to_string(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 6, "{log}");
    assert!(lines.iter().all(|(s, _)| s == "0" || s == "1"), "{log}");
    assert!(
        lines.iter().all(|(_, n)| (1..=2).contains(n)),
        "never more than 2 at once: {log}"
    );
}

#[test]
fn a_pid_file_admits_one_instance_and_names_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("daemon.pid");
    let ps = p.to_str().unwrap();
    // The command reloads on SIGHUP, as daemons do.
    // (It waits for a stop file: dash's `read` ends on a trapped signal.)
    let stop = d.path().join("stop");
    let script = format!(
        "trap 'echo GOT-HUP' HUP; echo $$; echo READY; \
         while [ ! -e {} ]; do sleep 0.02; done",
        stop.display()
    );
    let mut first = Run::cli(&["pidfile", ps, "--", "sh", "-c", &script]);
    let seen = first.expect("READY");
    let command = seen[0].clone();
    // The pid file names the command (what operators signal), written
    // once it runs.
    let named = (0..1000).any(|_| {
        if std::fs::read_to_string(&p).is_ok_and(|s| s.trim() == command) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    assert!(named, "the pid file never named the command {command}");
    // `kill -HUP $(cat app.pid)` reaches the command; the instance stays.
    let pid = std::fs::read_to_string(&p).unwrap();
    signal("HUP", pid.trim().parse().unwrap());
    first.expect("GOT-HUP");
    let (code, _, err) = cli(&["pidfile", ps, "--", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("another instance runs as pid {command}")),
        "{err}"
    );
    std::fs::write(&stop, b"").unwrap();
    assert_eq!(first.finish().0, 0);
    assert!(!p.exists(), "the pid file goes with the instance");
    assert_eq!(cli(&["pidfile", ps, "--", "true"]).0, 0);
}

#[test]
fn who_names_the_holder_and_says_when_nobody_holds() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("who.lock");
    let ps = p.to_str().unwrap();
    std::fs::write(&p, b"").unwrap();
    let (code, out, _) = cli(&["who", ps]);
    assert_eq!(code, 1);
    assert!(out.starts_with("nobody holds"), "{out}");
    let holder = holding(&["--shared"], &p);
    let (code, out, _) = cli(&["who", ps]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("{} shared ", holder.pid())),
        "{out}"
    );
    assert!(out.contains("portalocker lock --shared"), "{out}");
    holder.finish();
}

#[test]
fn write_is_atomic_and_refuses_to_replace_unless_asked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("config.toml");
    let ps = p.to_str().unwrap();
    let put = |args: &[&str], input: &str| {
        let mut c = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(put(&["write", ps], "a = 1\n").0, 0);
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 1\n");
    let (code, err) = put(&["write", ps], "a = 2\n");
    assert_eq!(code, 1);
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 1\n", "untouched");
    assert_eq!(
        put(
            &["write", "--replace", "--durability", "file", ps],
            "a = 3\n"
        )
        .0,
        0
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 3\n");
    assert_eq!(std::fs::metadata(&p).unwrap().nlink(), 1);
}

/// A redis-server of our own on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with `extra` arguments besides the defaults.
    fn start_with(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server =
            std::env::var("PORTALOCKER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{server} is needed for this test (apt-get install redis-server): {e}")
            });
        // Killed on drop, also if it never answers.
        let srv = Self { child, port };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return srv;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// A one-node Redis Cluster that serves every slot (no replicas), its
    /// node file in `dir`.
    fn start_cluster(dir: &Path) -> Self {
        let srv = Self::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            dir.join("nodes.conf").to_str().unwrap(),
        ]);
        let mut admin = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        admin
            .write_all(b"CLUSTER ADDSLOTSRANGE 0 16383\r\n")
            .unwrap();
        let mut ok = [0u8; 5];
        std::io::Read::read_exact(&mut admin, &mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
        srv
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis --cluster`: the command runs with a fencing token while the
/// cluster lock is held, a second `-n` contender is turned away with the
/// busy exit code, and the next holder gets a greater token. The cluster
/// is one node that serves every slot (no replicas, so nothing to wait
/// for). Several `--url`s without `--cluster` are a usage error.
#[test]
fn redis_cluster_locks_fence_and_exclude() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Redis::start_cluster(dir.path());
    let url = srv.url();
    let holder = |_: ()| {
        Run::cli(&[
            "redis",
            "--cluster",
            "--url",
            &url,
            "job",
            "--",
            "sh",
            "-c",
            "echo token=$PORTALOCKER_FENCING_TOKEN; echo READY; read line; exit 0",
        ])
    };
    let mut first = holder(());
    let seen = first.expect("READY");
    let token: u64 = seen[0].strip_prefix("token=").unwrap().parse().unwrap();
    let (code, _, err) = cli(&[
        "redis",
        "--cluster",
        "--url",
        &url,
        "-n",
        "job",
        "--",
        "true",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already locked by holder"), "{err}");
    first.send("done");
    assert_eq!(first.finish().0, 0);
    let mut second = holder(());
    let seen = second.expect("READY");
    let next: u64 = seen[0].strip_prefix("token=").unwrap().parse().unwrap();
    assert!(next > token, "{next} after {token}");
    second.send("done");
    assert_eq!(second.finish().0, 0);
    // A lease TTL means nothing to the Python-protocol lock: refused.
    let (code, _, err) = cli(&["redis", "--url", &url, "--ttl", "5", "job", "--", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cluster"), "{err}");
    let (code, _, err) = cli(&["redis", "--url", &url, "--url", &url, "job", "--", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cluster"), "{err}");
}

#[tokio::test]
async fn a_lost_redis_lock_stops_the_command() {
    let srv = Redis::start();
    let url = srv.url();
    // The command leaves a child of its own running: the whole group is
    // stopped, not only the command.
    let script = "trap 'echo GOT-TERM; exit 0' TERM; sleep 600 & echo $!; \
                  echo token=$PORTALOCKER_FENCING_TOKEN; echo READY; while :; do sleep 0.05; done";
    let mut r = Run::cli(&[
        "redis",
        "--url",
        &url,
        "--fencing",
        "--grace",
        "5",
        "nightly",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let seen = r.expect("READY");
    assert_eq!(seen[1..], ["token=1"], "the fencing token is passed on");
    let grandchild: u32 = seen[0].parse().unwrap();
    let (code, out, _) = cli(&["who", "--redis", &url, "nightly"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("holder ") && out.contains("client 127.0.0.1:"),
        "{out}"
    );
    // Kill the holder's subscription connection: the lock is lost.
    kill_holder_connection(&url, "nightly").await;
    r.expect("GOT-TERM");
    let (code, _, err) = r.finish();
    assert_eq!(code, 75, "lost: {err}");
    assert!(err.contains("lost"), "{err}");
    assert!(
        dead_soon(grandchild),
        "the command's own child ran on after the lock was lost"
    );
    let (code, out, _) = cli(&["who", "--redis", &url, "nightly"]);
    assert_eq!(
        (code, out.trim()),
        (1, "nobody holds Redis lock \"nightly\"")
    );
}

#[test]
fn a_terminal_shows_a_spinner_with_the_holder_and_a_pipe_shows_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a-lock-file-with-a-long-name.lock");
    let ps = p.to_str().unwrap();
    let holder = holding(&[], &p);
    let held_by = format!("held by pid {}", holder.pid());
    // util-linux script(1) gives the CLI a terminal, here 60 columns wide:
    // the message (path and holder: over 60 characters) is cut to fit and
    // redrawn in place, never wrapped, and the elapsed time stays in view.
    let line = format!("stty cols 60 rows 24; {BIN} lock --timeout 1.5 {ps} -- true");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("script(1) (util-linux, Debian's bsdutils) is needed for this test");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains(&format!("waiting: {held_by}")), "{tty}");
    assert!(format!("waiting: {held_by}: {ps}").chars().count() > 60);
    let frames: Vec<String> = tty
        .split(['\r', '\n'])
        .map(strip_escapes)
        .filter(|f| f.contains("waiting"))
        .collect();
    assert!(!frames.is_empty(), "{tty:?}");
    for f in &frames {
        assert!(
            f.chars().count() <= 60,
            "a frame wider than the terminal: {f:?}"
        );
        assert!(f.contains(" s "), "no elapsed time in {f:?}");
    }
    let (code, _, err) = cli(&["lock", "--timeout", "0.6", ps, "--", "true"]);
    assert_eq!(code, 1);
    assert!(!err.contains("waiting for"), "no progress on a pipe: {err}");
    let (_, _, err) = cli(&["--verbose", "lock", "--timeout", "0.6", ps, "--", "true"]);
    assert!(
        err.contains(&format!("waiting for {ps}, {held_by}")),
        "{err}"
    );
    holder.finish();
}

/// `s` without terminal escape sequences (`ESC [ … letter`).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The holder's connection to `channel` on `url`, killed (the lock is lost).
async fn kill_holder_connection(url: &str, channel: &str) {
    let client = portalocker::redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = portalocker::redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .unwrap();
    let name = format!("name={channel}-lock-");
    let id = list
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the holder's connection is named")
        .to_string();
    let _: i64 = portalocker::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut con)
        .await
        .unwrap();
}

/// A command that ignores SIGTERM is SIGKILLed after the grace period.
#[tokio::test]
async fn a_command_that_ignores_sigterm_is_killed_after_the_grace() {
    let srv = Redis::start();
    let url = srv.url();
    let script = "trap '' TERM; echo $$; echo READY; while :; do sleep 0.05; done";
    let mut r = Run::cli(&[
        "redis", "--url", &url, "--grace", "0.3", "stubborn", "--", "sh", "-c", script,
    ]);
    let seen = r.expect("READY");
    kill_holder_connection(&url, "stubborn").await;
    let (code, _, err) = r.finish();
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("SIGKILL"), "{err}");
    #[cfg(target_os = "linux")]
    assert!(
        !Path::new(&format!("/proc/{}", seen[0])).exists(),
        "the command is gone"
    );
    drop(seen);
}

/// `lock --stop-on-loss`: when someone removes the held lock file, the
/// command is stopped (SIGTERM) and the status is 75; without the flag the
/// loss is still reported when the command ends.
#[test]
fn a_removed_lock_file_stops_the_command_with_stop_on_loss() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("job.lock");
    let p = path.to_str().unwrap();
    let script = "trap 'echo GOT-TERM; exit 0' TERM; echo READY; while :; do sleep 0.05; done";
    let mut r = Run::cli(&[
        "lock",
        "--stop-on-loss",
        "--grace",
        "5",
        p,
        "--",
        "sh",
        "-c",
        script,
    ]);
    r.expect("READY");
    std::fs::remove_file(&path).unwrap();
    r.expect("GOT-TERM");
    let (code, _, err) = r.finish();
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("lost"), "{err}");
    // Without --stop-on-loss the command runs to its end; the loss is said.
    let mut r = Run::cli(&["lock", p, "--", "sh", "-c", "echo READY; read line"]);
    r.expect("READY");
    std::fs::remove_file(&path).unwrap();
    r.send("go");
    let (code, _, err) = r.finish();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("removed or replaced"), "{err}");
}

/// Scripts and cron: `-q` says nothing when the lock is busy (the status
/// tells); arguments that can never work are usage errors (2); `who` on a
/// directory or a missing file says so.
#[test]
fn quiet_busy_usage_errors_and_who_on_what_is_no_lock_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cron.lock");
    let ps = p.to_str().unwrap();
    let holder = holding(&[], &p);
    let (code, out, err) = cli(&["-q", "lock", "-n", ps, "--", "true"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", ""),
        "-q on a busy lock"
    );
    let (code, _, err) = cli(&["lock", "-n", "--quiet", ps, "--", "true"]);
    assert_eq!(
        (code, err.as_str()),
        (1, ""),
        "--quiet after the subcommand"
    );
    let (code, _, _) = holder.finish();
    assert_eq!(code, 0);
    let dir = d.path().to_str().unwrap();
    for args in [
        vec!["semaphore", "--max", "0", "--dir", dir, "--", "true"],
        vec![
            "semaphore",
            "--max",
            "2",
            "--name",
            "../x",
            "--dir",
            dir,
            "--",
            "true",
        ],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) = cli(&["who", dir]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a directory"), "{err}");
    let missing = d.path().join("missing.lock");
    let (code, out, _) = cli(&["who", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no such file"), "{out}");
}

/// A Redis server that cannot be reached is an error at once (71, the
/// cause, what to check, the address but never the password), not a wait
/// as if the lock were busy. (Before,
/// the default timeout made it wait forever without a word; here the
/// watchdog would fail the test.)
#[test]
fn an_unreachable_redis_is_an_error_not_a_wait() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // With credentials, which the message must not show.
    let url = format!("redis://user:hunter2@127.0.0.1:{port}/");
    // However long it would wait for a busy lock, an unreachable server is
    // an error at once: the bound is only far below the timeout, so that
    // a busy machine cannot fail it.
    let started = std::time::Instant::now();
    let r = Run::cli(&[
        "redis",
        "--url",
        &url,
        "--timeout",
        "600",
        "job",
        "--",
        "true",
    ]);
    let (code, _, err) = r.finish();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 71, "{err}");
    assert!(
        err.contains("cannot reach Redis") && err.contains("check"),
        "{err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "the password was shown: {err}");
}

/// The lock's lifetime is the command's. SIGKILL of `portalocker` (the OOM
/// killer, a CI runner) leaves the command holding the lock through the
/// descriptor it inherited, so a second `lock -n` is busy until the command
/// ends; and a background child the command left running keeps the lock
/// after the command and `portalocker` exit (the wrapper never unlocks
/// what they share). Before, the second `lock -n` got the lock while the
/// first command still ran.
#[test]
fn the_lock_lives_as_long_as_the_command_whatever_happens_to_the_wrapper() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("life.lock");
    let ps = p.to_str().unwrap();
    let mut r = Run::cli(&[
        "lock",
        ps,
        "--",
        "sh",
        "-c",
        "echo $$; echo READY; read line",
    ]);
    let seen = r.expect("READY");
    let command = seen[0].clone();
    signal("KILL", r.pid());
    // Dead (a zombie until reaped): its descriptors are closed.
    assert!(dead_soon(r.pid()), "the wrapper did not die");
    let (code, _, err) = cli(&["lock", "-n", ps, "--", "true"]);
    assert_eq!(code, 1, "the command ran on without the lock: {err}");
    // The command ends: the lock is free once the kernel closed its files.
    signal("KILL", command.parse().unwrap());
    let _ = r.finish();
    assert!(free_soon(ps), "the lock outlived the command");
    // A background child keeps the lock after the command and the wrapper.
    let (code, out, err) = cli(&[
        "lock",
        ps,
        "--",
        "sh",
        "-c",
        "sleep 600 </dev/null >/dev/null 2>&1 & echo $!",
    ]);
    assert_eq!(code, 0, "{err}");
    let child: u32 = out.trim().parse().unwrap();
    let (code, _, err) = cli(&["lock", "-n", ps, "--", "true"]);
    assert_eq!(
        code, 1,
        "the wrapper unlocked what the background child holds: {err}"
    );
    signal("KILL", child);
    assert!(free_soon(ps), "the lock outlived the background child");
}

/// Whether `lock -n` gets `path` within 10 s (a killed holder's files are
/// closed by the kernel a moment after the signal).
fn free_soon(path: &str) -> bool {
    (0..1000).any(|_| {
        if cli(&["lock", "-n", path, "--", "true"]).0 == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    })
}

/// Off a terminal the command runs in its own process group, and every
/// signal a supervisor sends the wrapper reaches the command once: HUP,
/// INT, QUIT, USR1, USR2, WINCH, then TERM; a child the command started
/// gets TERM too (the whole group).
#[test]
fn supervisor_signals_reach_the_command_group_once() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sig.lock");
    let script = "for s in HUP INT QUIT USR1 USR2 WINCH; do trap \"echo GOT-$s\" $s; done; \
                  trap 'echo GOT-TERM; exit 0' TERM; sleep 600 & echo $!; echo READY; \
                  while :; do sleep 0.05; done";
    let mut r = Run::cli(&["lock", p.to_str().unwrap(), "--", "sh", "-c", script]);
    let seen = r.expect("READY");
    let grandchild: u32 = seen[0].parse().unwrap();
    for s in ["HUP", "INT", "QUIT", "USR1", "USR2", "WINCH"] {
        signal(s, r.pid());
        let between = r.expect(&format!("GOT-{s}"));
        assert!(between.is_empty(), "{s}: {between:?}");
    }
    signal("TERM", r.pid());
    r.expect("GOT-TERM");
    let (code, rest, err) = r.finish();
    assert_eq!(code, 0, "{err}");
    assert!(!rest.contains("GOT-"), "a signal arrived twice: {rest}");
    assert!(
        dead_soon(grandchild),
        "the command's child did not get the TERM"
    );
}

/// On a terminal the command stays in the terminal's foreground group, so
/// a Ctrl-C reaches it from the terminal itself; the wrapper must not pass
/// it on as well (it did: the command got SIGINT twice).
#[test]
fn ctrl_c_on_a_terminal_reaches_the_command_once() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tty.lock");
    let ps = p.to_str().unwrap();
    // util-linux script(1) runs the line on a pty; our stdin is its
    // keyboard. Each SIGINT prints GOT-INT; "go" ends the command. The
    // trap is slow (not a synchronisation: a second SIGINT sent while it
    // runs stays pending and runs it again, instead of merging with the
    // first).
    let command = "trap \"echo GOT-INT; sleep 0.3\" INT; echo READY; \
                   until read line; do :; done; echo DONE";
    let line = format!("stty -echo; exec {BIN} lock {ps} -- sh -c '{command}'");
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]);
    let mut r = Run::start(c);
    r.expect("READY");
    {
        let stdin = r.child.stdin.as_mut().unwrap();
        stdin.write_all(b"\x03").unwrap();
        stdin.flush().unwrap();
    }
    let between = r.expect("GOT-INT");
    assert!(between.is_empty(), "{between:?}");
    r.send("go");
    let between = r.expect("DONE");
    assert!(
        !between.iter().any(|l| l.contains("GOT-INT")),
        "SIGINT arrived twice: {between:?}"
    );
    let (code, rest, err) = r.finish();
    assert_eq!(code, 0, "{rest} {err}");
    assert!(!rest.contains("GOT-INT"), "SIGINT arrived twice: {rest}");
}

/// Where the command cannot keep the lock itself (a Redis lock, a
/// semaphore slot), it never outlives `portalocker`: SIGKILL of the
/// wrapper kills the command too (the kernel's parent-death signal, and
/// the watcher), and the command's background children with it (the
/// watcher kills the command's process group; the parent-death signal
/// reaches the command's own process only). Before the parent-death
/// signal the command ran on without the lock; before the watcher its
/// background child did. In a `--cfg portalocker_portable` build the
/// watcher alone does it, as on macOS (`scripts/test.sh` runs this test
/// so too).
#[test]
fn a_command_whose_lock_cannot_outlive_the_wrapper_dies_with_it() {
    let srv = Redis::start();
    let url = srv.url();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let script = "sleep 1000 & echo $$ $!; echo READY; while :; do sleep 0.05; done";
    let cases: [Vec<&str>; 2] = [
        vec!["redis", "--url", &url, "tied", "--", "sh", "-c", script],
        vec![
            "semaphore",
            "--max",
            "1",
            "--dir",
            dir,
            "--",
            "sh",
            "-c",
            script,
        ],
    ];
    for args in cases {
        let mut r = Run::cli(&args);
        let seen = r.expect("READY");
        let pids: Vec<u32> = seen[0]
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        signal("KILL", r.pid());
        assert!(
            dead_soon(pids[0]),
            "{}: the command outlived the wrapper",
            args[0]
        );
        assert!(
            dead_soon(pids[1]),
            "{}: the command's background child outlived the wrapper",
            args[0]
        );
        let _ = r.finish();
    }
}

/// flock(1)'s habits: the command without `--`, `-c STRING`, `-x`, and
/// `-o` (the command does not inherit the lock).
#[test]
fn flock_forms_work() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("forms.lock");
    let ps = p.to_str().unwrap();
    let (code, out, err) = cli(&["lock", ps, "sh", "-c", "echo no-dashes"]);
    assert_eq!((code, out.as_str()), (0, "no-dashes\n"), "{err}");
    let (code, out, err) = cli(&["lock", "-x", "-c", "echo via-c; exit 3", ps]);
    assert_eq!((code, out.as_str()), (3, "via-c\n"), "{err}");
    let script = "echo $$; echo READY; read line";
    for (flag, want) in [("-o", 0), ("-x", 1)] {
        let mut r = Run::cli(&["lock", flag, ps, "sh", "-c", script]);
        let seen = r.expect("READY");
        assert_eq!(fds_on(&seen[0], &p), want, "{flag}: {seen:?}");
        r.send("");
        assert_eq!(r.finish().0, 0);
    }
    let (code, _, err) = cli(&["lock", "-x", "--shared", ps, "true"]);
    assert_eq!(code, 2, "-x and --shared conflict: {err}");
}

/// flock(1)'s third form: `( portalocker lock 9; … ) 9>FILE` locks the
/// shell's open file description and returns; the lock lasts as long as
/// the shell keeps descriptor 9 open. `--fd N` says the same, `-u`
/// unlocks, `-s` is shared, `-w` waits; a number with a COMMAND is refused
/// unless a file of that name exists (it was silently a file `./9`).
#[cfg(unix)]
#[test]
fn flock_descriptor_forms_work() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fd.lock");
    let ps = p.to_str().unwrap();
    // $0 is this program, $1 the lock file.
    let sh = |script: &str| {
        let out = Command::new("sh")
            .args(["-c", script, BIN, ps])
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = sh(
        r#"( "$0" lock 9 && echo locked; "$0" lock -n "$1" -- true; echo busy=$? ) 9>"$1"
        "$0" lock -n "$1" -- true; echo after=$?"#,
    );
    assert_eq!(out, "locked\nbusy=1\nafter=0\n", "{err}");
    let (out, err) = sh(
        r#"( "$0" lock --fd 9; "$0" lock -u 9; "$0" lock -n "$1" -- true; echo unlocked=$? ) 9>"$1""#,
    );
    assert_eq!(out, "unlocked=0\n", "{err}");
    let (out, err) = sh(
        r#"( "$0" lock -s 9; "$0" lock -s -n "$1" -- true; echo shared=$?
        "$0" lock -n "$1" -- true; echo exclusive=$? ) 9>"$1""#,
    );
    assert_eq!(out, "shared=0\nexclusive=1\n", "{err}");
    // Descriptors 8 and 9 are two open file descriptions: they contend.
    let (out, err) =
        sh(r#"( "$0" lock 9; ( "$0" lock -w 0.2 8; echo timeout=$? ) 8>"$1" ) 9>"$1""#);
    assert_eq!(out, "timeout=1\n", "{err}");
    let (code, _, err) = cli(&["lock", "--fd", "97"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("descriptor 97 is not open"), "{err}");
    let (code, _, err) = cli(&["lock", "97", "--", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("write ./97"), "{err}");
    let (code, _, err) = cli(&["lock", ps]);
    assert_eq!(code, 2, "a file and no command: {err}");
    let (code, _, err) = cli(&["lock", "-u", ps, "--", "true"]);
    assert_eq!(code, 2, "-u takes no command: {err}");
}

/// Whether process `pid` is dead (gone, or a zombie until reaped: its
/// descriptors are closed) within 10 s.
fn dead_soon(pid: u32) -> bool {
    (0..1000).any(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|f| f.chars().next());
        if matches!(state, Some('Z') | None) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    })
}

/// Whether this process runs as root; if not, says on stderr what was
/// skipped (a failure under `PORTALOCKER_ROOT_TESTS=required`, which
/// `scripts/test.sh` sets).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
fn needs_root(what: &str, why: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    if !root {
        assert!(
            std::env::var("PORTALOCKER_ROOT_TESTS").as_deref() != Ok("required"),
            "{what} needs root ({why}), and PORTALOCKER_ROOT_TESTS=required"
        );
        eprintln!(
            "portalocker tests: skipped {what}: it needs root ({why}); scripts/test.sh runs it"
        );
    }
    root
}

/// The command lines of the README's `portalocker` section run as
/// written: each one, in a private mount namespace with a fresh tmpfs on
/// `/run/lock` (`/var/lock`), from a directory holding the scripts the
/// lines name (each records that it ran), with `render-config` and this
/// `portalocker` on `PATH` and `$REDIS_URL` naming a server of this test.
#[cfg(feature = "etcd")]
#[test]
fn the_readme_command_lines_run_as_written() {
    if !needs_root(
        "the README's command lines",
        "a tmpfs on /run/lock in a mount namespace",
    ) {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme.split("## The `portalocker` command").nth(1).unwrap();
    let block = section
        .split("```sh")
        .nth(2)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let lines: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(lines.len() >= 10, "{lines:?}");
    let d = tempfile::tempdir().unwrap();
    let work = d.path();
    let ran = work.join("ran");
    let stub = |name: &str, extra: &str| {
        let path = work.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> '{}'\n{extra}",
                ran.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    for name in [
        "backup.sh",
        "deploy.sh",
        "build.sh",
        "publish.sh",
        "step-one",
        "step-two",
        "sync.sh",
        "run-e2e.sh",
        "train",
        "worker",
        "report.sh",
    ] {
        stub(name, "");
    }
    let bin_dir = work.join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::fs::write(bin_dir.join("render-config"), "#!/bin/sh\necho 'key = 1'\n").unwrap();
    std::fs::set_permissions(
        bin_dir.join("render-config"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::copy(BIN, bin_dir.join("portalocker")).unwrap();
    let redis = Redis::start();
    let cluster_dir = tempfile::tempdir().unwrap();
    let cluster = Redis::start_cluster(cluster_dir.path());
    let etcd = Etcd::start();
    let mut script =
        String::from("mount --make-rprivate / && mount -t tmpfs tmpfs /run/lock || exit 99\n");
    for (i, line) in lines.iter().enumerate() {
        script.push_str(&format!(
            "( {line} ) > out.{i} 2>&1; echo \"$?\" > rc.{i}\n"
        ));
    }
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .current_dir(work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("REDIS_URL", redis.url())
        .env("REDIS_CLUSTER_NODE", cluster.url())
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("TMPDIR", work)
        .output()
        .expect("unshare(1) (util-linux) is needed for this test");
    assert!(out.status.success(), "{out:?}");
    for (i, line) in lines.iter().enumerate() {
        let rc = std::fs::read_to_string(work.join(format!("rc.{i}"))).unwrap();
        let said = std::fs::read_to_string(work.join(format!("out.{i}"))).unwrap();
        // `who` exits 1 when nobody holds the lock, as it does here.
        let ok = if line.contains(" who ") {
            rc.trim() == "1" && said.contains("nobody holds")
        } else {
            rc.trim() == "0"
        };
        assert!(ok, "{line}: exit {} and: {said}", rc.trim());
    }
    let ran = std::fs::read_to_string(&ran).unwrap();
    for name in [
        "backup.sh",
        "deploy.sh",
        "build.sh",
        "publish.sh",
        "step-one",
        "step-two",
        "sync.sh",
        "run-e2e.sh",
        "train",
        "worker --foreground",
        "report.sh",
    ] {
        assert!(
            ran.lines().any(|l| l.starts_with(name)),
            "{name} did not run: {ran}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(work.join("config.toml")).unwrap(),
        "key = 1\n"
    );
    // The tmpfs went with the namespace: nothing was left in /var/lock.
    assert!(!Path::new("/var/lock/backup.lock").exists());
}

/// `redis --url redis+sentinel://…` locks on the primary a sentinel names,
/// and `who --redis` with the same URL finds the holder there; sentinels
/// that do not know the service are an error at once (exit 71), a URL
/// without a service a usage error (exit 2).
#[test]
fn redis_through_sentinel() {
    let primary = Redis::start();
    let d = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = d.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor svc 127.0.0.1 {} 1\n",
            d.path().display(),
            primary.port
        ),
    )
    .unwrap();
    let server =
        std::env::var("PORTALOCKER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut sentinel = Command::new(server)
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the sentinel did not start");
    let url = format!("redis+sentinel://127.0.0.1:{port}/svc");
    let script = "echo token=$PORTALOCKER_FENCING_TOKEN; echo READY; read line";
    let mut r = Run::cli(&[
        "redis",
        "--url",
        &url,
        "--fencing",
        "jobs",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let seen = r.expect("READY");
    assert_eq!(seen, ["token=1"]);
    let (code, out, err) = cli(&["who", "--redis", &url, "jobs"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("holder ") && out.contains("client 127.0.0.1:"),
        "{out}"
    );
    r.send("");
    assert_eq!(r.finish().0, 0);
    let wrong = format!("redis+sentinel://127.0.0.1:{port}/nosuch");
    let (code, _, err) = cli(&[
        "redis",
        "--url",
        &wrong,
        "--timeout",
        "600",
        "jobs",
        "--",
        "true",
    ]);
    assert_eq!(code, 71, "{err}");
    assert!(err.contains("could not name a primary"), "{err}");
    let (code, _, err) = cli(&[
        "redis",
        "--url",
        &format!("redis+sentinel://127.0.0.1:{port}"),
        "jobs",
        "--",
        "true",
    ]);
    assert_eq!(code, 2, "{err}");
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

/// A one-member etcd on a free loopback port, killed on drop.
#[cfg(feature = "etcd")]
struct Etcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "etcd")]
impl Etcd {
    fn start() -> Self {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, peer) = (free(), free());
        let dir = tempfile::tempdir().unwrap();
        let etcd = std::env::var("PORTALOCKER_ETCD").unwrap_or_else(|_| "etcd".into());
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&etcd)
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{etcd} is needed (apt-get install etcd-server): {e}"));
        let e = Self {
            child,
            port,
            _dir: dir,
        };
        // Ready once etcdctl can write through it.
        for _ in 0..1000 {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    &format!("--endpoints={}", e.endpoint()),
                    "put",
                    "ready",
                    "1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return e;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("etcd did not start on port {port}");
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

#[cfg(feature = "etcd")]
impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portalocker etcd`: the command runs with the fencing token; a second
/// one is busy and points at `who --etcd`, which names the holder; a key
/// deleted under the holder stops the command (exit 75); then nobody holds.
#[cfg(feature = "etcd")]
#[test]
fn an_etcd_lock_runs_the_command_and_a_lost_one_stops_it() {
    let srv = Etcd::start();
    let ep = srv.endpoint();
    let script = "trap 'echo GOT-TERM; exit 0' TERM; echo token=$PORTALOCKER_FENCING_TOKEN; \
                  echo READY; while :; do sleep 0.05; done";
    let mut r = Run::cli(&[
        "etcd",
        "--endpoints",
        &ep,
        "--grace",
        "5",
        "nightly",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let seen = r.expect("READY");
    let token: u64 = seen[0].strip_prefix("token=").unwrap().parse().unwrap();
    assert!(token > 0, "{seen:?}");
    let (code, _, err) = cli(&["etcd", "--endpoints", &ep, "-n", "nightly", "--", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("portalocker who --etcd"), "{err}");
    let (code, out, _) = cli(&["who", "--etcd", &ep, "nightly"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("holds exclusive holder "), "{out}");
    assert!(out.contains(&format!("(revision {token})")), "{out}");
    let del = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={ep}"), "del", "--prefix", "nightly/"])
        .output()
        .unwrap();
    assert!(del.status.success());
    r.expect("GOT-TERM");
    let (code, _, err) = r.finish();
    assert_eq!(code, 75, "lost: {err}");
    assert!(err.contains("lost") && err.contains("deleted"), "{err}");
    let (code, out, _) = cli(&["who", "--etcd", &ep, "nightly"]);
    assert_eq!(
        (code, out.trim()),
        (1, "nobody holds etcd lock \"nightly\"")
    );
    // An unreachable cluster is an error at once, not a wait.
    let (code, _, err) = cli(&["etcd", "--endpoints", "127.0.0.1:1", "x", "--", "true"]);
    assert_eq!(code, 71, "{err}");
    assert!(err.contains("cannot reach etcd"), "{err}");
}

/// `portalocker lease`: the command runs with the fencing token; a second
/// one is busy and points at `who`, which names the holder; the claim
/// removed under the holder stops the command (exit 75); then nobody
/// holds, and the next claim's token is larger. SIGKILL of the wrapper
/// stops the command (it cannot keep the lease).
#[cfg(unix)]
#[test]
fn a_lease_lock_runs_the_command_and_a_lost_one_stops_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("nightly.lease");
    let ds = dir.to_str().unwrap();
    let script = "trap 'echo GOT-TERM; exit 0' TERM; echo token=$PORTALOCKER_FENCING_TOKEN; \
                  echo READY; while :; do sleep 0.05; done";
    // A TTL long enough that, on a loaded machine, the claim's removal is
    // what the holder's next renewal finds, not a renewal late past its
    // TTL (with 0.3 s a busy CI run saw the expiry first).
    let mut r = Run::cli(&[
        "lease", "--ttl", "3", "--grace", "5", ds, "--", "sh", "-c", script,
    ]);
    let seen = r.expect("READY");
    let token: u64 = seen[0].strip_prefix("token=").unwrap().parse().unwrap();
    assert_eq!(token, 1, "{seen:?}");
    let (code, _, err) = cli(&["lease", "-n", ds, "--", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("portalocker who {ds}")), "{err}");
    let (code, out, _) = cli(&["who", ds]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("holder ") && out.contains("(generation 1)"),
        "{out}"
    );
    std::fs::remove_file(dir.join(format!("{token:020}"))).unwrap();
    r.expect("GOT-TERM");
    let (code, _, err) = r.finish();
    assert_eq!(code, 75, "lost: {err}");
    assert!(err.contains("lost") && err.contains("removed"), "{err}");
    let token_of = || {
        let (code, out, err) = cli(&[
            "lease",
            ds,
            "--",
            "sh",
            "-c",
            "echo $PORTALOCKER_FENCING_TOKEN",
        ]);
        assert_eq!(code, 0, "{err}");
        out.trim().parse::<u64>().unwrap()
    };
    let next = token_of();
    let (code, out, _) = cli(&["who", ds]);
    assert_eq!(
        (code, out.trim()),
        (1, format!("nobody holds lease lock {ds}").as_str())
    );
    assert_eq!(token_of(), next + 1);
    // The wrapper SIGKILLed: the command (and its background child) die.
    let mut r = Run::cli(&[
        "lease",
        ds,
        "--",
        "sh",
        "-c",
        "sleep 1000 & echo $$ $!; echo READY; while :; do sleep 0.05; done",
    ]);
    let seen = r.expect("READY");
    let pids: Vec<u32> = seen[0]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    signal("KILL", r.pid());
    assert!(dead_soon(pids[0]), "the command outlived the wrapper");
    assert!(
        dead_soon(pids[1]),
        "its background child outlived the wrapper"
    );
    let _ = r.finish();
}

/// `portalocker doctor`: the filesystem, the probes, and the advice; on a
/// path that does not exist yet, its nearest existing directory.
#[test]
fn doctor_names_the_filesystem_and_the_lock_to_use() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = cli(&["doctor", d.path().join("not/yet").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for want in ["filesystem ", "flock ", "hard links ", "use "] {
        assert!(out.contains(want), "{want}: {out}");
    }
    if cfg!(target_os = "linux") {
        assert!(out.contains("enforced between processes"), "{out}");
        assert!(out.contains("(local)"), "{out}");
    }
    assert!(entries_in(d.path()).is_empty(), "doctor left scratch files");
}

fn entries_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
