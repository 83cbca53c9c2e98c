//! The command line: subcommands, their arguments, and the help text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::EXIT_BUSY;

pub(crate) const EXAMPLES: &str = "\
Examples:
  # cron: run the backup only once at a time; skip this run (quietly) if one is going
  portalocker -q lock --nonblock /var/lock/backup.lock -- /usr/local/bin/backup
  # a block of a shell script under one lock (flock(1)'s descriptor form; -u unlocks)
  ( portalocker lock -w 30 9 || exit 1; ./step-one; ./step-two ) 9>/var/lock/steps.lock
  # CI: at most 4 of these jobs in parallel on this machine
  portalocker semaphore --max 4 --name e2e -- ./run-e2e.sh
  # one GPU per job: the slot number is in $PORTALOCKER_SLOT
  portalocker semaphore --max 2 --name gpu -- sh -c 'CUDA_VISIBLE_DEVICES=$PORTALOCKER_SLOT ./train'
  # a container entrypoint: one instance of the daemon
  portalocker pidfile /run/worker.pid -- worker --foreground
  # one of these across all hosts, stopped if the lock is lost
  portalocker redis --url redis://redis:6379/ --fencing nightly-report -- ./report.sh
  # the same on a Redis Cluster (any nodes as seeds)
  portalocker redis --cluster --url redis://node1:7000 --url redis://node2:7000 nightly-report -- ./report.sh
  # the same on an etcd cluster (survives the loss of a member)
  portalocker etcd --endpoints etcd1:2379,etcd2:2379,etcd3:2379 nightly-report -- ./report.sh
  # on a filesystem shared between hosts (NFS, SMB, FUSE): a lease lock directory
  portalocker lease --ttl 30 /shared/locks/nightly.lease -- ./report.sh
  # what is this filesystem, and which lock holds on it?
  portalocker doctor /shared/locks
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
    about = "Run a command while holding a lock: files, semaphores, pid files, lease files, Redis, etcd",
    after_help = EXAMPLES
)]
pub(crate) struct Cli {
    /// Say what happens: waits, the holder, when the lock is taken and released.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub(crate) verbose: bool,
    /// Say nothing on standard error when the lock is busy (for cron: the
    /// exit status tells). Errors are still reported.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Hold a file lock (flock) while COMMAND runs.
    Lock(LockArgs),
    /// Hold one of --max lock-file slots while COMMAND runs ($PORTALOCKER_SLOT).
    Semaphore(SemaphoreArgs),
    /// Run COMMAND as the single instance of a pid file (holding the command's pid).
    Pidfile(PidfileArgs),
    /// Hold a Redis lock (Python portalocker's protocol) while COMMAND runs.
    Redis(RedisArgs),
    /// Hold an etcd lock (leases; etcdctl-lock compatible) while COMMAND runs.
    #[cfg(feature = "etcd")]
    Etcd(EtcdArgs),
    /// Hold a lease lock (a directory of claim files, for filesystems shared
    /// between hosts: NFS, SMB, FUSE) while COMMAND runs.
    Lease(LeaseArgs),
    /// Say which filesystem PATH is on, how locks behave there, and which to use.
    Doctor(DoctorArgs),
    /// Say who holds a file lock or lease lock directory, a Redis lock with
    /// --redis, an etcd lock with --etcd.
    Who(WhoArgs),
    /// Write standard input to PATH atomically: all of it or nothing.
    Write(WriteArgs),
}

#[derive(Args)]
pub(crate) struct WaitArgs {
    /// Give up after SECONDS (fractions allowed). Default: wait as long as it takes.
    #[arg(short = 'w', long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,
    /// Do not wait: fail at once if the lock is busy.
    #[arg(short = 'n', long, conflicts_with = "timeout")]
    pub(crate) nonblock: bool,
    /// Exit code when the lock is busy.
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = EXIT_BUSY)]
    pub(crate) conflict_exit_code: u8,
}

#[derive(Args)]
pub(crate) struct LockArgs {
    /// Take a shared lock (many shared holders, no exclusive one).
    #[arg(short, long)]
    pub(crate) shared: bool,
    /// COMMAND inherits the locked descriptor ($PORTALOCKER_LOCK_FD); the
    /// default on Unix, as with flock(1). The lock lasts as long as COMMAND
    /// or anything it left running keeps the descriptor open, also if this
    /// program is killed; this program never unlocks what they still hold.
    #[arg(long, conflicts_with = "no_inherit")]
    pub(crate) inherit: bool,
    /// COMMAND does not inherit the lock: it is released when this program
    /// ends, also if it is killed while COMMAND still runs (which then runs
    /// on without the lock). Background children cannot keep the lock.
    #[arg(long)]
    pub(crate) no_inherit: bool,
    /// Stop COMMAND if the lock is lost while it runs: someone else
    /// removed the lock file or renamed another over it, so another
    /// process can take "the" lock. SIGTERM, then SIGKILL after --grace;
    /// the exit status is then 75.
    #[arg(long)]
    pub(crate) stop_on_loss: bool,
    /// With --stop-on-loss: SIGKILL this long after SIGTERM.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        value_parser = parse_seconds,
        requires = "stop_on_loss"
    )]
    pub(crate) grace: Duration,
    /// An exclusive lock (the default; flock(1)'s -x).
    #[arg(short = 'x', long, conflicts_with = "shared")]
    pub(crate) exclusive: bool,
    /// flock(1)'s -o: the command does not inherit the lock (as --no-inherit).
    #[arg(short = 'o', long = "close", conflicts_with = "inherit")]
    pub(crate) close: bool,
    /// Run STRING with `sh -c` instead of COMMAND (flock(1)'s -c).
    #[arg(
        short = 'c',
        long = "command",
        value_name = "STRING",
        conflicts_with = "command"
    )]
    pub(crate) shell: Option<OsString>,
    /// Lock the open file description of descriptor N, which this program
    /// inherited, and exit, leaving the lock with whoever keeps N open:
    /// flock(1)'s `( flock 9; … ) 9>FILE`. A bare number with no COMMAND
    /// (`lock 9`) means the same. Unix only.
    #[arg(
        long,
        value_name = "N",
        conflicts_with_all = ["path", "command", "shell", "inherit", "no_inherit", "close", "stop_on_loss"]
    )]
    pub(crate) fd: Option<u32>,
    /// With a descriptor (`--fd N` or a bare number): unlock it instead
    /// (flock(1)'s -u).
    #[arg(short = 'u', long)]
    pub(crate) unlock: bool,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// The lock file (created if missing); a bare number with no COMMAND is
    /// an inherited descriptor (see --fd).
    #[arg(required_unless_present = "fd", value_name = "FILE")]
    pub(crate) path: Option<PathBuf>,
    /// The command and its arguments (`--` before them is optional).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub(crate) command: Vec<OsString>,
}

/// What `lock` was asked to lock.
pub(crate) enum LockTarget {
    /// A file, and the command to run holding it.
    File(PathBuf, Vec<OsString>),
    /// An inherited descriptor (flock(1)'s third form).
    Descriptor(u32),
}

impl LockArgs {
    /// Sorts out the forms flock(1) users write: `FILE COMMAND…`,
    /// `FILE -c STRING`, `--fd N`, and a bare `N` with no command.
    pub(crate) fn target(&mut self) -> Result<LockTarget, String> {
        if let Some(fd) = self.fd {
            return Ok(LockTarget::Descriptor(fd));
        }
        let Some(path) = self.path.take() else {
            return Err("a FILE (or --fd N) is required".into());
        };
        let number = path.to_str().and_then(|s| s.parse::<u32>().ok());
        let command = match self.shell.take() {
            Some(line) => vec!["sh".into(), "-c".into(), line],
            None => std::mem::take(&mut self.command),
        };
        match (number, command.is_empty()) {
            (Some(fd), true) => Ok(LockTarget::Descriptor(fd)),
            (None, true) => Err(format!(
                "no COMMAND to run while holding {}; give one (or -c STRING)",
                path.display()
            )),
            (_, false) if self.unlock => {
                Err("-u unlocks a descriptor (--fd N, or a bare N): it takes no COMMAND".into())
            }
            (Some(fd), false) if !path.exists() => Err(format!(
                "{fd} is a descriptor number only without a COMMAND; to lock a file named \
                 {fd} write ./{fd}, to lock descriptor {fd} use --fd {fd} (then no COMMAND)"
            )),
            (_, false) => Ok(LockTarget::File(path, command)),
        }
    }
}

#[derive(Args)]
pub(crate) struct SemaphoreArgs {
    /// How many may hold a slot at once.
    #[arg(long, value_name = "N")]
    pub(crate) max: usize,
    /// The semaphore's name: every program using the same name and
    /// directory shares it.
    #[arg(long, default_value = "portalocker")]
    pub(crate) name: String,
    /// Where the slot files live.
    #[arg(long, value_name = "DIR", default_value_os_t = std::env::temp_dir())]
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Args)]
pub(crate) struct PidfileArgs {
    /// Wait up to SECONDS for the other instance to end (default: fail at once).
    #[arg(short = 'w', long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,
    /// Exit code when another instance runs.
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = EXIT_BUSY)]
    pub(crate) conflict_exit_code: u8,
    /// The pid file (its lock file is PATH.lock).
    pub(crate) path: PathBuf,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Args)]
pub(crate) struct RedisArgs {
    /// The Redis server, e.g. redis://host:6379/0 or unix:///run/redis.sock;
    /// or the primary that Redis Sentinel names, followed across failovers:
    /// redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]. With
    /// --cluster: a node of the cluster (repeat --url for more seeds).
    #[arg(long, value_name = "URL", required = true)]
    pub(crate) url: Vec<String>,
    /// The URLs are nodes of a Redis Cluster: take the cluster lock (a
    /// replicated lease record in the slot of CHANNEL; this crate's own
    /// protocol, which Python portalocker cannot join; always fenced).
    #[arg(long, conflicts_with_all = ["shared", "fencing"])]
    pub(crate) cluster: bool,
    /// With --cluster: the lease TTL, how long the lock outlives this
    /// program if it dies or is cut off from the cluster.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds, requires = "cluster")]
    pub(crate) ttl: Duration,
    /// Take a fencing token ($PORTALOCKER_FENCING_TOKEN for COMMAND).
    #[arg(long)]
    pub(crate) fencing: bool,
    /// Take a shared (reader) lock.
    #[arg(short, long)]
    pub(crate) shared: bool,
    /// When the lock is lost: SIGTERM, then SIGKILL after SECONDS.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) grace: Duration,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// The lock's channel name (the same as Python portalocker's).
    pub(crate) channel: String,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[cfg(feature = "etcd")]
#[derive(Args)]
pub(crate) struct EtcdArgs {
    /// The etcd members, e.g. 10.0.0.1:2379,10.0.0.2:2379 (http:// and
    /// https:// prefixes are accepted).
    #[arg(
        long,
        value_name = "HOST:PORT,…",
        value_delimiter = ',',
        required = true
    )]
    pub(crate) endpoints: Vec<String>,
    /// Take a shared (reader) lock.
    #[arg(short, long)]
    pub(crate) shared: bool,
    /// The lease TTL: how long the lock outlives this program if it dies or
    /// is cut off from etcd.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) ttl: Duration,
    /// When the lock is lost: SIGTERM, then SIGKILL after SECONDS.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) grace: Duration,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// The lock's name (its keys are NAME/…, as for `etcdctl lock NAME`).
    pub(crate) name: String,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Args)]
pub(crate) struct LeaseArgs {
    /// The lease TTL: how long the lock outlives this program if it dies,
    /// hangs or loses the filesystem (another host takes over after
    /// TTL × 5/4). From 0.1 s to 7 days.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) ttl: Duration,
    /// When the lock is lost: SIGTERM, then SIGKILL after SECONDS.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub(crate) grace: Duration,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// The lease lock's directory (created if missing; every host names the
    /// same directory on the shared filesystem).
    pub(crate) path: PathBuf,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// A directory (or a file in it) where locks would live.
    pub(crate) path: PathBuf,
}

#[derive(Args)]
pub(crate) struct WhoArgs {
    /// Look up a Redis lock on this server (any URL `redis --url` takes);
    /// the argument is then its channel.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Look up an etcd lock on these members (HOST:PORT,…); the argument
    /// is then its name.
    #[cfg(feature = "etcd")]
    #[arg(
        long,
        value_name = "HOST:PORT,…",
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    pub(crate) etcd: Option<Vec<String>>,
    /// The lock file or lease lock directory (or, with --redis, the
    /// channel; with --etcd, the name).
    pub(crate) target: OsString,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DurabilityArg {
    /// fsync the file and its directory.
    Full,
    /// fsync the file.
    File,
    /// No fsync.
    None,
}

#[derive(Args)]
pub(crate) struct WriteArgs {
    /// Replace PATH if it exists (default: refuse).
    #[arg(long)]
    pub(crate) replace: bool,
    /// How durable the write is once this program exits.
    #[arg(long, value_enum, default_value = "full")]
    pub(crate) durability: DurabilityArg,
    /// The destination.
    pub(crate) path: PathBuf,
}

pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_nan() || v < 0.0 {
        return Err(format!("{s:?}: seconds must be zero or more"));
    }
    Ok(Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}
