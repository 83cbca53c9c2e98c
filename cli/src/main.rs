//! `portalocker`: run a command while holding a lock — a file lock (like
//! flock(1), with timeouts in seconds everywhere), a lock-file semaphore
//! slot, a pid file, or a Redis lock — and see who holds one. Built on the
//! `portalocker` library, so its locks exclude the library's users and
//! Python portalocker's on the same files and channels.

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use portalocker::{
    AtomicOptions, BoundedSemaphore, Durability, Error, Lock, LockFlags, PidFileLock, RedisLock,
};

/// Exit code: the lock is busy (as flock(1); change it with `-E`).
const EXIT_BUSY: u8 = 1;
/// Exit code: a command-line error (clap's).
const EXIT_USAGE: u8 = 2;
/// Exit code: the lock was lost while the command ran, and it was stopped
/// (a Redis lock, or a file lock with `--stop-on-loss`).
const EXIT_LOST: u8 = 75;
/// Exit code: an error of this program (I/O, an unreachable server).
const EXIT_FAILED: u8 = 71;
/// Exit code: the command could not be run (as shells: not found 127,
/// not executable 126).
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_NOT_EXECUTABLE: u8 = 126;

const EXAMPLES: &str = "\
Examples:
  # cron: run the backup only once at a time; skip this run (quietly) if one is going
  portalocker -q lock --nonblock /var/lock/backup.lock -- /usr/local/bin/backup
  # CI: at most 4 of these jobs in parallel on this machine
  portalocker semaphore --max 4 --name e2e -- ./run-e2e.sh
  # one GPU per job: the slot number is in $PORTALOCKER_SLOT
  portalocker semaphore --max 2 --name gpu -- sh -c 'CUDA_VISIBLE_DEVICES=$PORTALOCKER_SLOT ./train'
  # a container entrypoint: one instance of the daemon
  portalocker pidfile /run/worker.pid -- worker --foreground
  # one of these across all hosts, stopped if the lock is lost
  portalocker redis --url redis://redis:6379/ --fencing nightly-report -- ./report.sh
  # who holds it?
  portalocker who /var/lock/backup.lock
  # replace a config file atomically
  render-config | portalocker write --replace /etc/app/config.toml

Exit status: the command's own status (128 + N if it died of signal N);
1 if the lock is busy (-E/--conflict-exit-code to change it; -q to say
nothing then); 2 for a usage error; 75 if the lock was lost while the command ran (Redis, or
lock --stop-on-loss: the lock file removed or replaced); 71 for
other errors of this program; 126/127 if the command cannot be run.
Off a terminal the command runs in its own process group and HUP, INT,
QUIT, TERM, USR1, USR2, WINCH and CONT are passed on to it; the lock is
released only once it has exited. `pidfile` writes the command's pid.";

#[derive(Parser)]
#[command(
    name = "portalocker",
    version,
    about = "Run a command while holding a lock: files, semaphores, pid files, Redis",
    after_help = EXAMPLES
)]
struct Cli {
    /// Say what happens: waits, the holder, when the lock is taken and released.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Say nothing on standard error when the lock is busy (for cron: the
    /// exit status tells). Errors are still reported.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold a file lock (flock) while COMMAND runs.
    Lock(LockArgs),
    /// Hold one of --max lock-file slots while COMMAND runs ($PORTALOCKER_SLOT).
    Semaphore(SemaphoreArgs),
    /// Run COMMAND as the single instance of a pid file (holding the command's pid).
    Pidfile(PidfileArgs),
    /// Hold a Redis lock (Python portalocker's protocol) while COMMAND runs.
    Redis(RedisArgs),
    /// Say who holds a file lock, or a Redis lock with --redis.
    Who(WhoArgs),
    /// Write standard input to PATH atomically: all of it or nothing.
    Write(WriteArgs),
}

#[derive(Args)]
struct WaitArgs {
    /// Give up after SECONDS (fractions allowed). Default: wait as long as it takes.
    #[arg(short = 'w', long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Do not wait: fail at once if the lock is busy.
    #[arg(short = 'n', long, conflicts_with = "timeout")]
    nonblock: bool,
    /// Exit code when the lock is busy.
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = EXIT_BUSY)]
    conflict_exit_code: u8,
}

#[derive(Args)]
struct LockArgs {
    /// Take a shared lock (many shared holders, no exclusive one).
    #[arg(short, long)]
    shared: bool,
    /// COMMAND inherits the locked descriptor ($PORTALOCKER_LOCK_FD); the
    /// default on Unix, as with flock(1). The lock lasts as long as COMMAND
    /// or anything it left running keeps the descriptor open, also if this
    /// program is killed; this program never unlocks what they still hold.
    #[arg(long, conflicts_with = "no_inherit")]
    inherit: bool,
    /// COMMAND does not inherit the lock: it is released when this program
    /// ends, also if it is killed while COMMAND still runs (which then runs
    /// on without the lock). Background children cannot keep the lock.
    #[arg(long)]
    no_inherit: bool,
    /// Stop COMMAND if the lock is lost while it runs: someone else
    /// removed the lock file or renamed another over it, so another
    /// process can take "the" lock. SIGTERM, then SIGKILL after --grace;
    /// the exit status is then 75.
    #[arg(long)]
    stop_on_loss: bool,
    /// With --stop-on-loss: SIGKILL this long after SIGTERM.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_seconds,
        requires = "stop_on_loss"
    )]
    grace: Duration,
    /// An exclusive lock (the default; flock(1)'s -x).
    #[arg(short = 'x', long, conflicts_with = "shared")]
    exclusive: bool,
    /// flock(1)'s -o: the command does not inherit the lock (as --no-inherit).
    #[arg(short = 'o', long = "close", conflicts_with = "inherit")]
    close: bool,
    /// Run STRING with `sh -c` instead of COMMAND (flock(1)'s -c).
    #[arg(
        short = 'c',
        long = "command",
        value_name = "STRING",
        conflicts_with = "command"
    )]
    shell: Option<OsString>,
    #[command(flatten)]
    wait: WaitArgs,
    /// The lock file (created if missing).
    path: PathBuf,
    /// The command and its arguments (`--` before them is optional).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell",
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

#[derive(Args)]
struct SemaphoreArgs {
    /// How many may hold a slot at once.
    #[arg(long, value_name = "N")]
    max: usize,
    /// The semaphore's name: every program using the same name and
    /// directory shares it.
    #[arg(long, default_value = "portalocker")]
    name: String,
    /// Where the slot files live.
    #[arg(long, value_name = "DIR", default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    #[command(flatten)]
    wait: WaitArgs,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct PidfileArgs {
    /// Wait up to SECONDS for the other instance to end (default: fail at once).
    #[arg(short = 'w', long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Exit code when another instance runs.
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = EXIT_BUSY)]
    conflict_exit_code: u8,
    /// The pid file (its lock file is PATH.lock).
    path: PathBuf,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct RedisArgs {
    /// The Redis server, e.g. redis://host:6379/0 or unix:///run/redis.sock.
    #[arg(long, value_name = "URL")]
    url: String,
    /// Take a fencing token ($PORTALOCKER_FENCING_TOKEN for COMMAND).
    #[arg(long)]
    fencing: bool,
    /// Take a shared (reader) lock.
    #[arg(short, long)]
    shared: bool,
    /// When the lock is lost: SIGTERM, then SIGKILL after SECONDS.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    grace: Duration,
    #[command(flatten)]
    wait: WaitArgs,
    /// The lock's channel name (the same as Python portalocker's).
    channel: String,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct WhoArgs {
    /// Look up a Redis lock on this server; the argument is then its channel.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The lock file (or, with --redis, the channel).
    target: OsString,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// fsync the file and its directory.
    Full,
    /// fsync the file.
    File,
    /// No fsync.
    None,
}

#[derive(Args)]
struct WriteArgs {
    /// Replace PATH if it exists (default: refuse).
    #[arg(long)]
    replace: bool,
    /// How durable the write is once this program exits.
    #[arg(long, value_enum, default_value = "full")]
    durability: DurabilityArg,
    /// The destination.
    path: PathBuf,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_nan() || v < 0.0 {
        return Err(format!("{s:?}: seconds must be zero or more"));
    }
    Ok(Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}

/// How the lock was taken, for the child's run.
struct Outcome {
    code: u8,
}

fn main() -> ExitCode {
    // The re-executed intermediate of a command tied to this program's life.
    let raw: Vec<OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == SUPERVISED) {
        return supervised(&raw[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portalocker: cannot start: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let verbose = cli.verbose;
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    let out = rt.block_on(async move {
        match cli.cmd {
            Cmd::Lock(a) => lock(a, verbose).await,
            Cmd::Semaphore(a) => semaphore(a, verbose).await,
            Cmd::Pidfile(a) => pidfile(a, verbose).await,
            Cmd::Redis(a) => redis_lock(a, verbose).await,
            Cmd::Who(a) => who(a).await,
            Cmd::Write(a) => write(a).await,
        }
    });
    ExitCode::from(out.code)
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("portalocker: {msg}");
}

fn timeout_of(w: &WaitArgs) -> Duration {
    if w.nonblock {
        Duration::ZERO
    } else {
        w.timeout.unwrap_or(Duration::MAX)
    }
}

/// Runs `acquire`, drawing a spinner with the elapsed time and the holder
/// on a terminal (stderr and stdout both terminals), and with `verbose`
/// saying who holds it when the first attempt finds it busy.
async fn waiting<T, F, H, HF>(what: &str, verbose: bool, acquire: F, holder: H) -> T
where
    F: Future<Output = T>,
    H: Fn() -> HF,
    HF: Future<Output = Option<String>>,
{
    let tty = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut acquire = std::pin::pin!(acquire);
    // A first look without waiting: most locks are free.
    let first = tokio::time::timeout(Duration::from_millis(100), acquire.as_mut()).await;
    if let Ok(v) = first {
        return v;
    }
    let mut who = holder().await;
    if verbose {
        match &who {
            Some(h) => say(format!("waiting for {what}, held by {h}")),
            None => say(format!("waiting for {what}")),
        }
    }
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0usize;
    loop {
        tokio::select! {
            v = acquire.as_mut() => {
                if tty {
                    eprint!("\r\x1b[2K");
                }
                return v;
            }
            _ = tick.tick() => {
                n += 1;
                if n.is_multiple_of(10) {
                    who = holder().await;
                }
                if tty {
                    let held = who.as_deref().map(|h| format!(" (held by {h})")).unwrap_or_default();
                    eprint!(
                        "\r\x1b[2K{} waiting for {what}: {:.1} s{held}",
                        frames[n % frames.len()],
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}

async fn file_holder(path: &std::path::Path) -> Option<String> {
    let holders = Lock::new(path).holders().await;
    let first = holders.first()?;
    Some(match holders.len() {
        1 => first.to_string(),
        n => format!("{first} and {} more", n - 1),
    })
}

/// The message and exit code for a failed acquisition.
/// `-q`: nothing on standard error when the lock is busy.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn failed(what: &str, e: &Error, busy_code: u8, hint: &str) -> Outcome {
    if e.is_already_locked() {
        if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            say(format!("{e}\n  {what} is busy; {hint}"));
        }
        Outcome { code: busy_code }
    } else if e.kind() == portalocker::ErrorKind::InvalidInput {
        // Arguments that can never work: a usage error, as clap's.
        say(e);
        Outcome { code: EXIT_USAGE }
    } else {
        say(e);
        Outcome { code: EXIT_FAILED }
    }
}

async fn lock(a: LockArgs, verbose: bool) -> Outcome {
    let flags = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    let lock = Lock::new(&a.path).flags(flags);
    let what = a.path.display().to_string();
    let r = waiting(
        &what,
        verbose,
        lock.acquire_timeout(timeout_of(&a.wait)),
        || file_holder(&a.path),
    )
    .await;
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let hint = format!(
                "wait for it with --timeout SECONDS, or see who holds it: portalocker who {what}"
            );
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!("locked {what} after {:?}", guard.waited()));
    }
    let mut env = Vec::new();
    let inherited = a.inherit || (cfg!(unix) && !a.no_inherit && !a.close);
    let command = match a.shell {
        Some(line) => vec!["sh".into(), "-c".into(), line],
        None => a.command,
    };
    if inherited {
        match inherit(&guard) {
            Ok(fd) => env.push(("PORTALOCKER_LOCK_FD".to_string(), fd.to_string())),
            Err(e) => {
                say(format!("cannot pass the lock to the command: {e}"));
                return Outcome { code: EXIT_FAILED };
            }
        }
    }
    let code = if a.stop_on_loss {
        run(
            &command,
            &env,
            Some(guard.lost()),
            a.grace,
            None,
            !inherited,
        )
        .await
    } else {
        run_plain(&command, &env, !inherited).await
    };
    // A loss is reported whether or not the command was stopped for it.
    let lost = guard.is_lost();
    if inherited {
        // Something the command left running may hold the lock through the
        // inherited descriptor, and an unlock would release it for them too
        // (it is one open file description): only close ours, at exit.
        if lost {
            say(format!(
                "{what} was removed or replaced while the command ran: another process could \
                 take the lock meanwhile"
            ));
        }
        std::mem::forget(guard);
    } else if let Err(e) = guard.release().await {
        say(e);
    }
    if lost && a.stop_on_loss {
        say(format!(
            "{what} was lost while the command ran; it was stopped"
        ));
        return Outcome { code: EXIT_LOST };
    }
    if verbose {
        say(format!("released {what}"));
    }
    Outcome { code }
}

/// Clears close-on-exec on the guard's descriptor; returns its number.
#[cfg(unix)]
fn inherit(guard: &portalocker::LockGuard) -> std::io::Result<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = guard.as_fd();
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    Ok(fd.as_raw_fd())
}

#[cfg(not(unix))]
fn inherit(_guard: &portalocker::LockGuard) -> std::io::Result<i32> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "--inherit needs Unix descriptors",
    ))
}

async fn semaphore(a: SemaphoreArgs, verbose: bool) -> Outcome {
    let sem = BoundedSemaphore::new(a.max).name(&a.name).directory(&a.dir);
    let what = format!(
        "semaphore {:?} ({} slots in {})",
        a.name,
        a.max,
        a.dir.display()
    );
    let r = waiting(
        &what,
        verbose,
        sem.acquire_timeout(timeout_of(&a.wait)),
        || async { None },
    )
    .await;
    let permit = match r {
        Ok(p) => p,
        Err(e) => {
            return failed(
                &what,
                &e,
                a.wait.conflict_exit_code,
                "wait with --timeout SECONDS",
            );
        }
    };
    if verbose {
        say(format!(
            "slot {} of {what} after {:?}",
            permit.slot(),
            permit.waited()
        ));
    }
    let env = [("PORTALOCKER_SLOT".to_string(), permit.slot().to_string())];
    let code = run_plain(&a.command, &env, true).await;
    if let Err(e) = permit.release().await {
        say(e);
    }
    Outcome { code }
}

async fn pidfile(a: PidfileArgs, verbose: bool) -> Outcome {
    let lock = PidFileLock::new(&a.path);
    let what = a.path.display().to_string();
    let r = match a.timeout {
        Some(t) => {
            let l = lock.clone().fail_when_locked(false);
            waiting(&what, verbose, l.acquire_timeout(t), || async {
                PidFileLock::new(&a.path)
                    .read_pid()
                    .await
                    .map(|p| format!("pid {p}"))
            })
            .await
        }
        None => lock.try_acquire().await,
    };
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let hint = match e.holder_pid() {
                Some(pid) => format!("another instance runs as pid {pid}"),
                None => "another instance runs".to_string(),
            };
            return failed(&what, &e, a.conflict_exit_code, &hint);
        }
    };
    let code = run(
        &a.command,
        &[],
        None::<std::future::Pending<()>>,
        Duration::ZERO,
        Some(&guard),
        true,
    )
    .await;
    if verbose {
        say(format!("single instance: {what} ended"));
    }
    if let Err(e) = guard.release().await {
        say(e);
    }
    Outcome { code }
}

async fn redis_lock(a: RedisArgs, verbose: bool) -> Outcome {
    let client = match portalocker::redis::Client::open(a.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            say(format!("bad Redis URL {:?}: {e}", a.url));
            return Outcome { code: EXIT_USAGE };
        }
    };
    let flags = if a.shared {
        LockFlags::SHARED
    } else {
        LockFlags::EXCLUSIVE
    };
    // A server that cannot be reached is an error now, not a wait: only a
    // busy lock is waited for.
    if let Err(why) = reachable(&client).await {
        say(format!(
            "cannot reach Redis at {}: {why}\n  check that the server runs and the URL (host, \
             port, password, rediss:// for TLS)",
            a.url
        ));
        return Outcome { code: EXIT_FAILED };
    }
    let lock = RedisLock::new(a.channel.clone(), client)
        .flags(flags)
        .fencing(a.fencing);
    let what = format!("Redis lock {:?}", a.channel);
    let r = waiting(
        &what,
        verbose,
        lock.acquire_timeout(timeout_of(&a.wait)),
        || async { None },
    )
    .await;
    let guard = match r {
        Ok(g) => g,
        Err(e) => {
            let hint = format!(
                "wait with --timeout SECONDS, or see who holds it: portalocker who --redis {} {}",
                a.url, a.channel
            );
            return failed(&what, &e, a.wait.conflict_exit_code, &hint);
        }
    };
    if verbose {
        say(format!(
            "locked {what} as holder {} after {:?}",
            guard.holder_id(),
            guard.waited()
        ));
    }
    let mut env = vec![(
        "PORTALOCKER_HOLDER_ID".to_string(),
        guard.holder_id().to_string(),
    )];
    if let Some(t) = guard.fence_token() {
        env.push(("PORTALOCKER_FENCING_TOKEN".to_string(), t.to_string()));
    }
    let code = run(&a.command, &env, Some(guard.lost()), a.grace, None, true).await;
    let lost = guard.is_lost();
    if let Err(e) = guard.release().await {
        if !lost {
            say(e);
        }
    }
    if lost {
        say(format!(
            "{what} was lost while the command ran; it was stopped"
        ));
        return Outcome { code: EXIT_LOST };
    }
    Outcome { code }
}

/// One `PING` within 2 s.
async fn reachable(client: &portalocker::redis::Client) -> Result<(), String> {
    let within = Duration::from_secs(2);
    let ping = async {
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        portalocker::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(within, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {within:?}")),
    }
}

async fn who(a: WhoArgs) -> Outcome {
    match a.redis {
        Some(url) => {
            let channel = a.target.to_string_lossy().into_owned();
            match redis_holders(&url, &channel).await {
                Ok(list) if list.is_empty() => {
                    println!("nobody holds Redis lock {channel:?}");
                    Outcome { code: 1 }
                }
                Ok(list) => {
                    for h in list {
                        println!("{h}");
                    }
                    Outcome { code: 0 }
                }
                Err(e) => {
                    say(format!("cannot ask {url}: {e}"));
                    Outcome { code: EXIT_FAILED }
                }
            }
        }
        None => {
            let path = PathBuf::from(&a.target);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    say(format!(
                        "{} is a directory, not a lock file: name the file that is locked",
                        path.display()
                    ));
                    return Outcome { code: EXIT_USAGE };
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("nobody holds {}: there is no such file", path.display());
                    return Outcome { code: 1 };
                }
                _ => {}
            }
            let holders = Lock::new(&path).holders().await;
            if holders.is_empty() {
                println!(
                    "nobody holds {} (as far as this system can tell)",
                    path.display()
                );
                return Outcome { code: 1 };
            }
            for h in holders {
                let mode = if h.is_shared() { "shared" } else { "exclusive" };
                match h.command() {
                    Some(cmd) => println!("{} {mode} {cmd}", h.pid()),
                    None => println!("{} {mode}", h.pid()),
                }
            }
            Outcome { code: 0 }
        }
    }
}

/// The subscribers of `channel` whose connection names say they hold it
/// (`<channel>-lock-<id>`), as `holder <id> client <addr>` — a passive
/// look (`CLIENT LIST`), which pings nobody.
async fn redis_holders(
    url: &str,
    channel: &str,
) -> Result<Vec<String>, portalocker::redis::RedisError> {
    let client = portalocker::redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let list: String = portalocker::redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con)
        .await?;
    let prefix = format!("name={channel}-lock-");
    let mut out = Vec::new();
    for line in list.lines() {
        let mut id = None;
        let mut addr = "?";
        for f in line.split(' ') {
            if let Some(rest) = f.strip_prefix(&prefix) {
                id = Some(rest);
            } else if let Some(a) = f.strip_prefix("addr=") {
                addr = a;
            }
        }
        if let Some(id) = id.filter(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())) {
            out.push(format!("holder {id} client {addr}"));
        }
    }
    Ok(out)
}

async fn write(a: WriteArgs) -> Outcome {
    use tokio::io::AsyncWriteExt;
    let durability = match a.durability {
        DurabilityArg::Full => Durability::Full,
        DurabilityArg::File => Durability::File,
        DurabilityArg::None => Durability::None,
    };
    let opts = AtomicOptions::new()
        .replace(a.replace)
        .durability(durability);
    let what = a.path.display();
    let mut file = match opts.open(&a.path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            say(format!("{what} exists; pass --replace to replace it"));
            return Outcome { code: EXIT_BUSY };
        }
        Err(e) => {
            say(format!("cannot write {what}: {e}"));
            return Outcome { code: EXIT_FAILED };
        }
    };
    let copied = tokio::io::copy(&mut tokio::io::stdin(), &mut file).await;
    let r = match copied {
        Ok(_) => match file.flush().await {
            Ok(()) => file.commit().await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Outcome { code: 0 },
        Err(e) => {
            say(format!("{what} was not written (nothing changed): {e}"));
            Outcome { code: EXIT_FAILED }
        }
    }
}

/// [`run`] without a lock that can be lost.
async fn run_plain(command: &[OsString], env: &[(String, String)], tie: bool) -> u8 {
    run(
        command,
        env,
        None::<std::future::Pending<()>>,
        Duration::ZERO,
        None,
        tie,
    )
    .await
}

/// The hidden first argument of the intermediate that ties a command's
/// life to this program's (see [`supervised`]).
const SUPERVISED: &str = "__supervised";

/// `__supervised PARENT PROGRAM ARGS…`: asks the kernel to SIGKILL this
/// process when its parent (`portalocker`, pid PARENT) dies, makes sure
/// the parent did not die already, then becomes PROGRAM (`exec`: the same
/// pid, process group, descriptors and environment, and the death signal
/// stays). So a command whose lock cannot outlive `portalocker` (Redis,
/// semaphore, pid file, `lock --no-inherit`) never runs on without it, even
/// if `portalocker` is SIGKILLed. Linux and FreeBSD; elsewhere the command
/// is started directly.
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
fn supervised(args: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let parent = args.first().and_then(|p| p.to_str()?.parse::<i32>().ok());
    let (Some(parent), Some(program)) = (parent, args.get(1)) else {
        say("usage: portalocker __supervised PARENT PROGRAM [ARGS...] (internal)");
        return ExitCode::from(EXIT_USAGE);
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        say(format!(
            "cannot tie the command to this program's life: {e}"
        ));
        return ExitCode::from(EXIT_FAILED);
    }
    // Died before the line above: nothing would ever stop the command.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        return ExitCode::from(EXIT_LOST);
    }
    let e = std::process::Command::new(program).args(&args[2..]).exec();
    say(format!("cannot run {}: {e}", program.to_string_lossy()));
    ExitCode::from(match e.kind() {
        std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
fn supervised(_args: &[OsString]) -> ExitCode {
    say("__supervised is not available on this platform (internal)");
    ExitCode::from(EXIT_USAGE)
}

/// Whether commands can be tied to this program's life here.
const CAN_TIE: bool = cfg!(any(target_os = "linux", target_os = "freebsd"));

/// Runs the command under supervision; returns the exit code to report:
/// the command's, or 128 + the signal that killed it.
///
/// * Off a terminal (cron, CI, containers) the command runs in a process
///   group of its own, and every signal a supervisor sends this program
///   (HUP, INT, TERM, QUIT, USR1, USR2, WINCH, CONT) is passed on to that
///   whole group, once; so are the SIGTERM and, `grace` later, SIGKILL
///   that stop it when `lost` completes first.
/// * On a terminal (standard input is one) the command stays in this
///   program's foreground group, so it can read the terminal; the terminal
///   itself delivers Ctrl-C, Ctrl-\ and window changes to both, so only
///   the signals it does not send (TERM, HUP, USR1, USR2) are passed on,
///   and a lost lock stops the command's own process.
///
/// `pid_file`: a pid file to write the command's pid into once it runs.
/// `tie`: the command must not outlive this program (its lock cannot):
/// it is started through [`supervised`].
async fn run<L: Future<Output = ()>>(
    command: &[OsString],
    env: &[(String, String)],
    lost: Option<L>,
    grace: Duration,
    pid_file: Option<&portalocker::PidFileLockGuard>,
    tie: bool,
) -> u8 {
    let Some((program, args)) = command.split_first() else {
        return EXIT_USAGE;
    };
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut signals = Signals::new();
    let via = match std::env::current_exe() {
        Ok(me) if tie && CAN_TIE => Some(me),
        _ => None,
    };
    let mut cmd = match &via {
        Some(me) => {
            let mut c = tokio::process::Command::new(me);
            c.arg(SUPERVISED)
                .arg(std::process::id().to_string())
                .arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    cmd.args(args).envs(env.iter().cloned());
    #[cfg(unix)]
    if !interactive {
        cmd.process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            say(format!("cannot run {}: {e}", program.to_string_lossy()));
            return match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_NOT_EXECUTABLE,
            };
        }
    };
    let target = child.id().map(|pid| Target {
        pid,
        group: !interactive,
    });
    if let (Some(g), Some(t)) = (pid_file, target) {
        if let Err(e) = g.set_pid(t.pid).await {
            say(format!("cannot write the command's pid: {e}"));
        }
    }
    let mut lost = std::pin::pin!(async move {
        match lost {
            Some(l) => l.await,
            None => std::future::pending().await,
        }
    });
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let kill = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => exit_code(s),
                    Err(e) => {
                        say(format!("lost track of the command: {e}"));
                        EXIT_FAILED
                    }
                };
            }
            sig = signals.next() => {
                if let Some(t) = target {
                    if t.group || !sig.terminal_sends() {
                        t.send(sig);
                    }
                }
            }
            () = lost.as_mut(), if kill_at.is_none() => {
                say("the lock was lost: stopping the command (SIGTERM)");
                if let Some(t) = target {
                    t.send(Sig::Term);
                }
                kill_at = Some(tokio::time::Instant::now() + grace);
            }
            () = kill => {
                say("the command outlived its grace period: SIGKILL");
                match target {
                    Some(t) => t.send(Sig::Kill),
                    None => {
                        let _ = child.start_kill();
                    }
                }
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    }
}

/// The signals this program passes on (and KILL, which it only sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))]
enum Sig {
    Hup,
    Int,
    Quit,
    Term,
    Usr1,
    Usr2,
    Winch,
    Cont,
    Kill,
}

impl Sig {
    /// Whether a terminal sends it to its whole foreground group itself
    /// (Ctrl-C, Ctrl-\\, a window change, a job-control resume).
    fn terminal_sends(self) -> bool {
        matches!(self, Self::Int | Self::Quit | Self::Winch | Self::Cont)
    }
}

/// Whom the signals go to: the command's process, or its process group.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(unix), allow(dead_code))]
struct Target {
    pid: u32,
    group: bool,
}

impl Target {
    #[cfg(unix)]
    fn send(self, sig: Sig) {
        use rustix::process::Signal;
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return;
        };
        let s = match sig {
            Sig::Hup => Signal::HUP,
            Sig::Int => Signal::INT,
            Sig::Quit => Signal::QUIT,
            Sig::Term => Signal::TERM,
            Sig::Usr1 => Signal::USR1,
            Sig::Usr2 => Signal::USR2,
            Sig::Winch => Signal::WINCH,
            Sig::Cont => Signal::CONT,
            Sig::Kill => Signal::KILL,
        };
        let _ = if self.group {
            rustix::process::kill_process_group(pid, s)
        } else {
            rustix::process::kill_process(pid, s)
        };
    }

    #[cfg(not(unix))]
    fn send(self, _sig: Sig) {}
}

/// The signals received by this program that it passes on, listened for
/// from the moment the command starts.
struct Signals {
    #[cfg(unix)]
    streams: Vec<(Sig, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let wanted = [
                (Sig::Hup, SignalKind::hangup()),
                (Sig::Int, SignalKind::interrupt()),
                (Sig::Quit, SignalKind::quit()),
                (Sig::Term, SignalKind::terminate()),
                (Sig::Usr1, SignalKind::user_defined1()),
                (Sig::Usr2, SignalKind::user_defined2()),
                (Sig::Winch, SignalKind::window_change()),
                (
                    Sig::Cont,
                    SignalKind::from_raw(rustix::process::Signal::CONT.as_raw()),
                ),
            ];
            let streams = wanted
                .into_iter()
                .filter_map(|(sig, kind)| signal(kind).ok().map(|s| (sig, s)))
                .collect();
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal to pass on (never, where there are none to catch:
    /// on Windows the console delivers Ctrl-C to the command itself).
    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        if !self.streams.is_empty() {
            let polls = self.streams.iter_mut().map(|(sig, s)| {
                let sig = *sig;
                Box::pin(async move {
                    s.recv().await;
                    sig
                })
            });
            return futures_select_all(polls).await;
        }
        std::future::pending().await
    }
}

/// The first of `futures` to finish.
#[cfg(unix)]
async fn futures_select_all<F: Future<Output = Sig> + Unpin>(
    futures: impl Iterator<Item = F>,
) -> Sig {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in &mut futures {
            if let std::task::Poll::Ready(sig) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(sig);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn exit_code(s: std::process::ExitStatus) -> u8 {
    if let Some(c) = s.code() {
        return u8::try_from(c & 0xff).unwrap_or(EXIT_FAILED);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return u8::try_from(128 + sig).unwrap_or(EXIT_FAILED);
        }
    }
    EXIT_FAILED
}
