//! `portalocker doctor PATH`: which filesystem PATH is on, how locks
//! behave there (probed in a scratch file beside it), and which lock to
//! use.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use portalocker::{filesystem_of, FilesystemKind};

use crate::args::DoctorArgs;
use crate::exit::{say, Outcome, EXIT_FAILED};

pub(crate) async fn doctor(a: DoctorArgs) -> Outcome {
    let path = a.path;
    let fs = match filesystem_of(&path) {
        Ok(fs) => fs,
        Err(e) => {
            say(e);
            return Outcome { code: EXIT_FAILED };
        }
    };
    let kind = match fs.kind {
        FilesystemKind::Local => "local",
        FilesystemKind::Network => "network",
        FilesystemKind::Fuse => "FUSE",
        _ => "unknown",
    };
    println!("path          {}", path.display());
    match &fs.mount_point {
        Some(m) => println!(
            "filesystem    {} ({kind}), mounted on {}",
            fs.name,
            m.display()
        ),
        None => println!("filesystem    {} ({kind})", fs.name),
    }
    if !fs.mount_options.is_empty() {
        println!("options       {}", fs.mount_options.join(","));
    }
    let dir = probe_dir(&path);
    match probe(&dir) {
        Ok(p) => {
            println!(
                "flock         {}",
                if p.flock {
                    "enforced between processes of this host"
                } else {
                    "NOT enforced even on this host: two descriptors both took it"
                }
            );
            match &p.fcntl {
                Some(Ok(())) => {
                    println!("fcntl locks   available (byte-range, as NFS's NLM serves)")
                }
                Some(Err(why)) => println!("fcntl locks   refused: {why}"),
                None => {}
            }
            println!(
                "hard links    {}",
                match p.link {
                    Some(true) => "yes; link(2) to an existing name fails (exclusive)",
                    Some(false) =>
                        "yes, but link(2) replaced an existing name: lease claims are unsafe here",
                    None => "no (lease claims use O_CREAT|O_EXCL)",
                }
            );
        }
        Err(e) => println!(
            "probes        skipped: cannot write a scratch file in {} ({e})",
            dir.display()
        ),
    }
    let across = if fs.flock_is_reliable() {
        "flock (Lock) and lease files (LeaseLock) both hold"
    } else {
        "flock is not known to reach other hosts; lease files (LeaseLock) hold"
    };
    println!("across hosts  {across}");
    if let Some(w) = cache_warning(&fs.mount_options) {
        println!("warning       {w}");
    }
    println!("use           {}", fs.advice());
    Outcome { code: 0 }
}

/// A mount option that breaks what `LeaseLock` relies on: a file opened
/// again shows the last write (NFS's close-to-open consistency).
fn cache_warning(options: &[String]) -> Option<&'static str> {
    options.iter().any(|o| o == "nocto").then_some(
        "mounted nocto: a file opened again may show old contents, so a live lease holder can \
         look stale; remount without nocto before using LeaseLock here",
    )
}

/// The directory to probe in: PATH if it is one, else its nearest
/// existing ancestor.
fn probe_dir(path: &Path) -> PathBuf {
    let mut at = path;
    loop {
        if at.is_dir() {
            return at.to_path_buf();
        }
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return PathBuf::from("."),
        }
    }
}

struct Probe {
    /// Two descriptors of one file exclude each other with flock.
    flock: bool,
    /// Whether a byte-range (`fcntl`) lock could be taken at all (NFS
    /// mounted `nolock`, or without a lock manager, refuses them):
    /// `Err(why)` if not; `None` where there are none (Windows).
    fcntl: Option<Result<(), String>>,
    /// `Some(exclusive)`: hard links work, and a second link to a taken
    /// name fails (`true`); `None`: no hard links.
    link: Option<bool>,
}

/// Probes `dir` with scratch files (removed again).
fn probe(dir: &Path) -> io::Result<Probe> {
    let tag = format!(".portalocker-doctor-{}", std::process::id());
    let a = dir.join(format!("{tag}-a"));
    let b = dir.join(format!("{tag}-b"));
    let c = dir.join(format!("{tag}-c"));
    let result = (|| {
        let f1 = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&a)?;
        let f2 = File::open(&a)?;
        f1.try_lock()
            .map_err(|e| io::Error::other(format!("flock: {e}")))?;
        let flock = matches!(f2.try_lock(), Err(std::fs::TryLockError::WouldBlock));
        drop((f1, f2));
        let fcntl = fcntl_probe(&a);
        File::create(&c)?;
        let link = match std::fs::hard_link(&a, &b) {
            Ok(()) => Some(matches!(
                std::fs::hard_link(&c, &b),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists
            )),
            Err(_) => None,
        };
        Ok(Probe { flock, fcntl, link })
    })();
    for p in [&a, &b, &c] {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Takes and drops a whole-file `fcntl` write lock on `path`.
#[cfg(unix)]
#[allow(clippy::unnecessary_wraps)]
fn fcntl_probe(path: &Path) -> Option<Result<(), String>> {
    use rustix::fs::{fcntl_lock, FlockOperation};
    let f = match File::options().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(
        fcntl_lock(&f, FlockOperation::NonBlockingLockExclusive)
            .and_then(|()| fcntl_lock(&f, FlockOperation::NonBlockingUnlock))
            .map_err(|e| e.to_string()),
    )
}

#[cfg(not(unix))]
fn fcntl_probe(_path: &Path) -> Option<Result<(), String>> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn nocto_is_warned_about() {
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(super::cache_warning(&opts(&["rw", "nocto", "vers=4.2"])).is_some());
        assert!(super::cache_warning(&opts(&["rw", "relatime"])).is_none());
    }
}
