//! [`Holder`]: who holds a file lock, as far as the OS can tell.

use std::fmt;

/// A process that holds a file lock, as the kernel reports it.
///
/// On Linux the kernel lists every `flock` lock in `/proc/locks` with the
/// device and inode of its file and the pid of the process that took it;
/// the command line comes from `/proc/<pid>/cmdline` when it is readable.
/// Elsewhere nothing is known and lookups find no holder. The lookup is
/// best effort: it never fails an acquisition, and a pid may be in another
/// pid namespace (a container) or belong to a process that inherited the
/// descriptor from the one that locked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pid: u32,
    shared: bool,
    command: Option<String>,
}

impl Holder {
    pub(crate) fn new(pid: u32, shared: bool, command: Option<String>) -> Self {
        Self {
            pid,
            shared,
            command,
        }
    }

    /// The pid of the process that took the lock.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it holds the lock shared (else exclusive).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Its command line (arguments separated by spaces, at most 200
    /// characters), when it could be read.
    pub fn command(&self) -> Option<&str> {
        self.command.as_deref()
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(c) = &self.command {
            write!(f, " ({c})")?;
        }
        if self.shared {
            f.write_str(", shared")?;
        }
        Ok(())
    }
}

/// The holders of the file `id` other than this process, best effort.
pub(crate) fn of(id: crate::sys::FileId) -> Vec<Holder> {
    let me = std::process::id();
    crate::sys::lock_holders(id)
        .into_iter()
        .filter(|&(pid, _)| pid != me)
        .map(|(pid, shared)| Holder::new(pid, shared, crate::sys::command_line(pid)))
        .collect()
}
