//! Running the command: its own process group, signals passed on, tied
//! to this program's life where its lock cannot outlive it.

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use crate::exit::{exit_code, say, EXIT_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_USAGE};

/// [`run`] without a lock that can be lost.
pub(crate) async fn run_plain(command: &[OsString], env: &[(String, String)], tie: bool) -> u8 {
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
pub(crate) const SUPERVISED: &str = "__supervised";

/// `__supervised PARENT PROGRAM ARGS…`: asks the kernel to SIGKILL this
/// process when its parent (`portalocker`, pid PARENT) dies, makes sure
/// the parent did not die already, then becomes PROGRAM (`exec`: the same
/// pid, process group, descriptors and environment, and the death signal
/// stays). So a command whose lock cannot outlive `portalocker` (Redis,
/// semaphore, pid file, `lock --no-inherit`) never runs on without it, even
/// if `portalocker` is SIGKILLed. Linux and FreeBSD; elsewhere the command
/// is started directly.
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
pub(crate) fn supervised(args: &[OsString]) -> ExitCode {
    use crate::exit::EXIT_LOST;
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
pub(crate) fn supervised(_args: &[OsString]) -> ExitCode {
    say("__supervised is not available on this platform (internal)");
    ExitCode::from(EXIT_USAGE)
}

/// Whether commands can be tied to this program's life here through the
/// re-executed intermediate (Windows ties them with a job object instead:
/// [`kill_with_me`]; every Unix also has the [`watch`]er). A build with
/// `--cfg portalocker_portable` leaves it out, so the watcher alone is
/// tested on Linux as it runs on macOS.
pub(crate) const CAN_TIE: bool = cfg!(all(
    any(target_os = "linux", target_os = "freebsd"),
    not(portalocker_portable)
));

/// The hidden first argument of the watcher (see [`watch`]).
pub(crate) const WATCH: &str = "__watch";

/// What the watcher is told when the command has ended normally.
#[cfg(unix)]
const WATCH_DONE: &str = "done";

/// `__watch`: the other half of the tie, on every Unix. A small process of
/// its own group (a terminal's signals and a supervisor's `kill -- -PGID`
/// of `portalocker`'s group do not reach it) whose standard input is a
/// pipe that only `portalocker` can write to. `portalocker` writes the
/// command's target (`PID GROUP`, GROUP 1 for its process group) once the
/// command runs and `done` once it has ended. When the pipe closes without
/// `done` — `portalocker` died however it died, SIGKILL and the OOM killer
/// included, as the kernel closes a dead process's descriptors — the
/// watcher SIGKILLs the target: the command's whole process group off a
/// terminal, so its background children too, which the parent-death
/// signal does not reach; the command's process on a terminal (there it
/// shares `portalocker`'s group). No kernel facility beyond a pipe, so the
/// same code runs on macOS, where there is no parent-death signal.
#[cfg(unix)]
pub(crate) fn watch() -> ExitCode {
    use std::io::{BufRead, Read};
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    // EOF before a target: `portalocker` ended before the command ran.
    if input.read_line(&mut line).unwrap_or(0) == 0 {
        return ExitCode::SUCCESS;
    }
    let mut words = line.split_whitespace();
    let target = match (
        words.next().and_then(|p| p.parse::<u32>().ok()),
        words.next(),
    ) {
        (Some(pid), Some(g)) => Target {
            pid,
            group: g == "1",
        },
        _ => {
            say("usage: portalocker __watch, with `PID GROUP` on standard input (internal)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut rest = Vec::new();
    let _ = input.read_to_end(&mut rest);
    if String::from_utf8_lossy(&rest).trim() == WATCH_DONE {
        return ExitCode::SUCCESS;
    }
    target.send(Sig::Kill);
    ExitCode::SUCCESS
}

#[cfg(not(unix))]
pub(crate) fn watch() -> ExitCode {
    say("__watch is not available on this platform (internal)");
    ExitCode::from(EXIT_USAGE)
}

/// `portalocker`'s end of the watcher's pipe: dropped without
/// [`Watcher::done`] (this process dying), the watcher kills the command.
struct Watcher {
    #[cfg(unix)]
    stdin: tokio::process::ChildStdin,
}

impl Watcher {
    /// Starts the watcher, before the command: the pipe's writing end is
    /// close-on-exec, so the command never holds it open. `None` (and a
    /// warning) where it cannot be started.
    #[cfg(unix)]
    fn start(me: &std::path::Path) -> Option<Self> {
        let spawned = tokio::process::Command::new(me)
            .arg(WATCH)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn();
        match spawned.map(|mut c| c.stdin.take()) {
            Ok(Some(stdin)) => Some(Self { stdin }),
            Ok(None) => None,
            Err(e) => {
                say(format!(
                    "cannot start the watcher that stops the command if this program is killed \
                     ({e}); if it is, the command runs on without the lock"
                ));
                None
            }
        }
    }

    #[cfg(not(unix))]
    fn start(_me: &std::path::Path) -> Option<Self> {
        None
    }

    /// Tells the watcher whom to kill.
    async fn target(&mut self, t: Target) {
        #[cfg(unix)]
        {
            use tokio::io::AsyncWriteExt;
            let line = format!("{} {}\n", t.pid, u8::from(t.group));
            let _ = self.stdin.write_all(line.as_bytes()).await;
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// The command has ended: the watcher leaves without killing.
    async fn done(mut self) {
        #[cfg(unix)]
        {
            use tokio::io::AsyncWriteExt;
            let _ = self.stdin.write_all(WATCH_DONE.as_bytes()).await;
        }
        #[cfg(not(unix))]
        let _ = &mut self;
    }
}

/// Windows: puts this process in a job that kills every process in it
/// when its last handle closes — this process's, when it ends however it
/// ends (`TerminateProcess`, a crash). Processes started afterwards join
/// the job, so a command whose lock cannot outlive this program (on
/// Windows no lock passes to the command) never runs on without it. The
/// handle is kept open for this process's life on purpose.
#[cfg(windows)]
fn kill_with_me() -> std::io::Result<()> {
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };
    use windows_sys::Win32::System::Threading::GetCurrentProcess;
    static DONE: std::sync::OnceLock<Result<(), std::io::ErrorKind>> = std::sync::OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: plain Win32 calls on a handle this function creates and
        // never closes, with a zeroed structure of the documented type and
        // its exact size; every result is checked.
        unsafe {
            let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if job.is_null() {
                return Err(std::io::Error::last_os_error().kind());
            }
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            let set = SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                std::ptr::addr_of!(info).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            );
            if set == 0 || AssignProcessToJobObject(job, GetCurrentProcess()) == 0 {
                return Err(std::io::Error::last_os_error().kind());
            }
        }
        Ok(())
    });
    r.map_err(std::io::Error::from)
}

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
pub(crate) async fn run<L: Future<Output = ()>>(
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
    let me = std::env::current_exe();
    let via = match &me {
        Ok(me) if tie && CAN_TIE => Some(me.clone()),
        _ => None,
    };
    let mut watcher = match &me {
        Ok(me) if tie && cfg!(unix) => Watcher::start(me),
        Ok(_) => None,
        Err(e) if tie && cfg!(unix) => {
            say(format!(
                "cannot find this program to start the watcher that stops the command if this \
                 program is killed ({e}); if it is, the command runs on without the lock"
            ));
            None
        }
        Err(_) => None,
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
    #[cfg(windows)]
    if tie {
        if let Err(e) = kill_with_me() {
            say(format!(
                "cannot tie the command to this program (a job object: {e}); if this program is \
                 killed, the command runs on without the lock"
            ));
        }
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
    if let (Some(w), Some(t)) = (&mut watcher, target) {
        w.target(t).await;
    }
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
                if let Some(w) = watcher.take() {
                    w.done().await;
                }
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
pub(crate) enum Sig {
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
pub(crate) struct Target {
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
pub(crate) struct Signals {
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
pub(crate) async fn futures_select_all<F: Future<Output = Sig> + Unpin>(
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
