//! What filesystem a path is on, and which lock holds there:
//! [`filesystem_of`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The broad kind of a filesystem, as far as locking is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FilesystemKind {
    /// A local filesystem (ext4, xfs, btrfs, tmpfs, overlayfs, APFS, …):
    /// `flock(2)` excludes every process of this host, which is every
    /// process that can reach it.
    Local,
    /// A network or cluster filesystem (NFS, SMB/CIFS, Ceph, Lustre, GPFS,
    /// 9p, …): `flock` may be emulated with byte-range locks, local to
    /// one client (NFS `local_lock=flock|all`), or lost when a client's
    /// lease lapses. [`LeaseLock`](crate::LeaseLock) holds there.
    Network,
    /// A FUSE filesystem (sshfs, bindfs, s3fs, gcsfuse, …): whether
    /// `flock` reaches anything beyond this host's kernel is up to the
    /// daemon, and most do not forward locks.
    /// [`LeaseLock`](crate::LeaseLock) holds there when the daemon's
    /// `link(2)` is atomic.
    Fuse,
    /// Not recognised: treat as [`Network`](Self::Network).
    Unknown,
}

/// The filesystem a path is on ([`filesystem_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filesystem {
    /// The kind, for locking.
    pub kind: FilesystemKind,
    /// The filesystem's type name as the OS reports it (`ext4`, `tmpfs`,
    /// `nfs4`, `fuse.sshfs`, `apfs`, …; `unknown` where it cannot tell).
    pub name: String,
    /// Where it is mounted, where the OS says.
    pub mount_point: Option<PathBuf>,
    /// Its mount options (Linux: the mount's and the superblock's, e.g.
    /// `local_lock=none`, `nobrl`), where the OS lists them.
    pub mount_options: Vec<String>,
}

impl Filesystem {
    /// Whether `flock(2)` — [`Lock`](crate::Lock) and every file
    /// primitive — excludes every process that can reach files here.
    /// True only for [`FilesystemKind::Local`].
    pub fn flock_is_reliable(&self) -> bool {
        self.kind == FilesystemKind::Local
    }

    /// Which lock of this crate to use here, and why, in a sentence.
    pub fn advice(&self) -> String {
        let flags = |names: &[&str]| {
            self.mount_options
                .iter()
                .filter(|o| names.iter().any(|n| o.starts_with(n)))
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        };
        match self.kind {
            FilesystemKind::Local => {
                "Lock (flock) excludes every process that can reach this filesystem".into()
            }
            FilesystemKind::Network => {
                let noted = flags(&["local_lock", "nolock", "nobrl", "lock"]);
                let noted = if noted.is_empty() {
                    String::new()
                } else {
                    format!(" (mounted with {noted})")
                };
                format!(
                    "{} is a network filesystem{noted}: flock may be local to each client or \
                     lost with a client's lease; use LeaseLock (`portalocker lease`), or a \
                     lock server (RedisLock, EtcdLock)",
                    self.name
                )
            }
            FilesystemKind::Fuse => format!(
                "{} is a FUSE filesystem: its daemon decides whether flock reaches other hosts \
                 (most do not forward locks); use LeaseLock (`portalocker lease`) if other \
                 hosts share these files",
                self.name
            ),
            FilesystemKind::Unknown => format!(
                "{} is not a filesystem this crate knows: if other hosts share these files, \
                 use LeaseLock (`portalocker lease`)",
                self.name
            ),
        }
    }

    /// `Ok(())` on a local filesystem; otherwise an error of kind
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) naming
    /// `path`, the filesystem and what to use instead.
    pub(crate) fn ensure_local(&self, op: &'static str, path: &Path) -> Result<()> {
        if self.flock_is_reliable() {
            return Ok(());
        }
        Err(Error::new(crate::ErrorKind::Unsupported, op)
            .with_path(path)
            .with_reason(format!(
                "refused: {} (this lock refuses filesystems where flock may not exclude other \
                 hosts)",
                self.advice()
            )))
    }
}

/// What filesystem `path` is on (the path itself, or its nearest existing
/// ancestor if it does not exist yet), and so whether
/// [`Lock`](crate::Lock)'s `flock` holds there or
/// [`LeaseLock`](crate::LeaseLock) is the lock to use.
///
/// Linux reads the filesystem's magic number (`statfs`) and the mount's
/// entry in `/proc/self/mountinfo` (type name, mount point, options such
/// as NFS's `local_lock=`); macOS and the BSDs `statfs`'s type name and
/// `MNT_LOCAL`; Windows tells UNC paths (`\\server\share`) as network
/// shares and everything else as unknown.
///
/// Blocking (a `statfs` and, on Linux, a read of `/proc`), and quick.
///
/// # Errors
///
/// [`ErrorKind::Io`](crate::ErrorKind::Io) if no ancestor of `path` can
/// be examined.
///
/// # Examples
///
/// ```
/// let fs = portalocker::filesystem_of(std::env::temp_dir())?;
/// println!("{} ({:?}): {}", fs.name, fs.kind, fs.advice());
/// # Ok::<(), portalocker::Error>(())
/// ```
pub fn filesystem_of(path: impl AsRef<Path>) -> Result<Filesystem> {
    let path = path.as_ref();
    let mut at = path;
    loop {
        match crate::sys::mount(at) {
            Ok(m) => return Ok(Filesystem::from_mount(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => return Err(Error::io("failed to examine the filesystem", Some(path), e)),
            },
            Err(e) => return Err(Error::io("failed to examine the filesystem", Some(path), e)),
        }
    }
}

impl Filesystem {
    /// Sorts what the platform layer found: by the magic number where
    /// there is one, else (or where the magic list lacks it: a FUSE daemon
    /// reports `fuse.<name>`) by the type name and the local flag.
    fn from_mount(m: crate::sys::Mount) -> Self {
        let mut kind = m.magic.map_or(FilesystemKind::Unknown, kind_of_magic);
        if kind == FilesystemKind::Unknown {
            kind = kind_of_name(&m.name, m.local);
        }
        Self {
            kind,
            name: m.name,
            mount_point: m.mount_point,
            mount_options: m.options,
        }
    }
}

/// The kind of a Linux filesystem by its `statfs` magic number.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn kind_of_magic(magic: u64) -> FilesystemKind {
    const NETWORK: [u64; 16] = [
        0x6969,      // nfs
        0x517B,      // smb
        0xFF53_4D42, // cifs
        0xFE53_4D42, // smb2
        0x00C3_6400, // ceph
        0x5346_414F, // afs
        0x6B41_4653, // kafs
        0x0102_1997, // 9p (v9fs)
        0x0116_1970, // gfs2
        0x7461_636F, // ocfs2
        0x0BD0_0BD0, // lustre
        0x4750_4653, // gpfs
        0x1983_0326, // beegfs
        0x2003_0528, // orangefs
        0x7375_7245, // coda
        0x5346_4846, // wslfs / drvfs (9p-backed Windows drives under WSL)
    ];
    const FUSE: u64 = 0x6573_5546;
    let magic = magic & 0xFFFF_FFFF;
    if crate::sys::local_flock_magic(magic) {
        FilesystemKind::Local
    } else if NETWORK.contains(&magic) {
        FilesystemKind::Network
    } else if magic == FUSE {
        FilesystemKind::Fuse
    } else {
        FilesystemKind::Unknown
    }
}

/// The kind of a filesystem by its type name (macOS, the BSDs; a Linux
/// `mountinfo` name refines a magic number the list above lacks).
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn kind_of_name(name: &str, local_flag: Option<bool>) -> FilesystemKind {
    let n = name.to_ascii_lowercase();
    if n.starts_with("fuse") || n.contains("osxfuse") || n.contains("macfuse") {
        return FilesystemKind::Fuse;
    }
    if [
        "nfs", "smb", "cifs", "afp", "webdav", "ceph", "9p", "lustre", "gpfs",
    ]
    .iter()
    .any(|p| n.starts_with(p))
    {
        return FilesystemKind::Network;
    }
    match local_flag {
        Some(true) => FilesystemKind::Local,
        Some(false) => FilesystemKind::Network,
        None => FilesystemKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Magic numbers are Linux's (elsewhere no filesystem is local by
    /// its magic number).
    #[cfg(target_os = "linux")]
    #[test]
    fn magic_numbers_sort_into_kinds() {
        assert_eq!(kind_of_magic(0xEF53), FilesystemKind::Local);
        assert_eq!(kind_of_magic(0x6969), FilesystemKind::Network);
        assert_eq!(kind_of_magic(0xFF53_4D42), FilesystemKind::Network);
        assert_eq!(kind_of_magic(0x6573_5546), FilesystemKind::Fuse);
        assert_eq!(kind_of_magic(0x1234_5678), FilesystemKind::Unknown);
    }

    #[test]
    fn names_sort_into_kinds() {
        assert_eq!(kind_of_name("apfs", Some(true)), FilesystemKind::Local);
        assert_eq!(kind_of_name("nfs", Some(false)), FilesystemKind::Network);
        assert_eq!(kind_of_name("smbfs", Some(false)), FilesystemKind::Network);
        assert_eq!(kind_of_name("macfuse", Some(true)), FilesystemKind::Fuse);
        assert_eq!(kind_of_name("zzz", None), FilesystemKind::Unknown);
    }

    #[test]
    fn a_network_filesystem_is_refused_with_advice() {
        let fs = Filesystem {
            kind: FilesystemKind::Network,
            name: "nfs4".into(),
            mount_point: None,
            mount_options: vec!["rw".into(), "local_lock=none".into()],
        };
        assert!(!fs.flock_is_reliable());
        let e = fs
            .ensure_local("failed to lock", Path::new("/shared/x.lock"))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        let text = e.to_string();
        assert!(text.contains("nfs4"), "{text}");
        assert!(text.contains("local_lock=none"), "{text}");
        assert!(text.contains("LeaseLock"), "{text}");
    }
}
